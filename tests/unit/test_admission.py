"""Admission under the cap and the budgets: chunks wait in the ledger and are woken by the slots
given back (never re-delivered to poll); budgets are reserved before creates, so duplicate
deliveries, concurrent workers and crashes can under-use them but never overspend."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime

from rowcall.admission import Admission
from rowcall.batch_actions import BatchActions
from rowcall.finishing import BatchFinisher
from rowcall.ledger.budget import Limits
from rowcall.ledger.keys import batch_key
from rowcall.models import BatchStatus, ChunkMessage, to_micro_usd
from rowcall.provider import ProviderConnection
from rowcall.runs import ChunkBusy, RunStarter
from rowcall.safety_net import SafetyNet, SafetyNetTimes
from rowcall_local.provider_emulator import ProviderEmulator
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import Aws, chunk_messages, ingest
from .loopback_runs import API_KEY, FAST_RETRY
from .loopback_runs import starter as shared_starter

# 8 data rows: chunks 0 and 1 of four rows each.
ROWS = b"prompt\n" + b"".join(f"row {n}\n".encode() for n in range(1, 9))
CAP = 4  # a fair share of cap // 4 = 1 row per delivery


def starter(
    aws: Aws,
    provider: ProviderEmulator,
    callbacks: Receiver,
    *,
    cap: int = CAP,
    daily_budget_usd: float | None = None,
    clock: float | None = None,
) -> RunStarter:
    """The shared starter with admission on: the chunk queue to defer to, the cap and the budget."""
    return shared_starter(
        aws,
        provider,
        callbacks,
        chunk_queue=aws.chunk_queue,
        max_in_flight=cap,
        daily_budget_usd=daily_budget_usd,
        clock=(lambda: clock) if clock is not None else time.time,
    )


def admission(aws: Aws, cap: int = CAP) -> Admission:
    return Admission(aws.ledger, aws.chunk_queue, cap)


def waiting(aws: Aws) -> list[tuple[str, int]]:
    return [(w.batch_id, w.chunk) for w in aws.ledger.waiting.waiters()]


def set_budget(aws: Aws, batch_id: str, *, run_cost_usd: float, max_cost_usd: float | None) -> None:
    """What ingest writes on the batch (contract shapes: the technique's price, the budget)."""
    if max_cost_usd is None:
        aws.ledger.table.update(
            batch_key(batch_id),
            "SET #run_cost_micro_usd = :cost REMOVE #max_cost_micro_usd",
            values={":cost": to_micro_usd(run_cost_usd)},
        )
    else:
        aws.ledger.table.update(
            batch_key(batch_id),
            "SET #run_cost_micro_usd = :cost, #max_cost_micro_usd = :max",
            values={":cost": to_micro_usd(run_cost_usd), ":max": to_micro_usd(max_cost_usd)},
        )


def held(aws: Aws) -> int:
    acquired, released = aws.ledger.slots.held()
    return acquired - released


# -- waiting and wake-ups ----------------------------------------------------------------------


def test_a_chunk_without_a_free_slot_waits_in_the_ledger_and_costs_nothing_until_woken(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    batch_id = ingest(aws, ROWS)
    first, _ = chunk_messages(aws)
    assert aws.ledger.slots.acquire(CAP, CAP) == CAP  # another batch holds every slot
    report = starter(aws, provider, callbacks).start_chunk(first, lambda: 300.0)
    assert (report.started, report.waiting_for_slots) == (0, 4)
    # Listed, not re-sent: nothing comes back through the queue while it waits.
    assert waiting(aws) == [(batch_id, 0)]
    assert chunk_messages(aws) == []
    assert provider.stats()["creates"] == 0
    # One slot given back wakes exactly one waiter, with its place and its cursor.
    assert admission(aws).release(1, 0) == 1
    (woken,) = chunk_messages(aws)
    assert woken.waiting_since_ms is not None and woken.cursor is not None
    assert woken.cursor.record == first.chunk.first_record
    assert waiting(aws) == []
    report = starter(aws, provider, callbacks).start_chunk(woken, lambda: 300.0)
    assert report.started == 1 and held(aws) == CAP
    # It went behind (it started a row); the next delivery resumes after the row it started.
    (listed,) = list(aws.ledger.waiting.take(1))
    assert listed.cursor is not None and listed.cursor.record == first.chunk.first_record + 1
    assert listed.cursor.offset > first.chunk.start
    assert listed.waiting_since_ms is not None and listed.waiting_since_ms >= woken.waiting_since_ms


def test_a_chunk_that_finds_its_wakeup_taken_keeps_its_place(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    batch_id = ingest(aws, ROWS)
    first, second = chunk_messages(aws)
    assert aws.ledger.slots.acquire(CAP, CAP) == CAP
    run = starter(aws, provider, callbacks)
    run.start_chunk(first, lambda: 300.0)
    time.sleep(0.01)
    run.start_chunk(second, lambda: 300.0)
    assert waiting(aws) == [(batch_id, 0), (batch_id, 1)]
    assert admission(aws).wake(1) == 1  # chunk 0 woken, but its slot is gone before it runs
    (woken,) = chunk_messages(aws)
    assert run.start_chunk(woken, lambda: 300.0).started == 0
    assert waiting(aws) == [(batch_id, 0), (batch_id, 1)]  # still first in line


def test_a_slot_freed_between_a_failed_try_and_the_listing_is_not_lost(aws: Aws) -> None:
    batch_id = ingest(aws, ROWS)
    first, _ = chunk_messages(aws)
    # The releaser looked at the list before the chunk was in it: nobody was woken ...
    aws.ledger.slots.release(1, 0)
    # ... so the chunk, listing itself, sees the free slot and wakes the head of the list.
    assert admission(aws).wait(first) == 1
    (woken,) = chunk_messages(aws)
    assert (woken.batch_id, woken.chunk.index) == (batch_id, 0)
    assert waiting(aws) == []


def test_two_releasers_at_once_wake_each_waiter_once(aws: Aws) -> None:
    batch_id = ingest(aws, ROWS)
    messages = chunk_messages(aws)
    gate = admission(aws)
    assert aws.ledger.slots.acquire(CAP, CAP) == CAP
    for n, message in enumerate(messages * 2):  # four entries: each chunk listed at two moments
        aws.ledger.waiting.add(message, 1000 + n)
    woken: list[int] = []
    barrier = threading.Barrier(2)

    def release() -> None:
        barrier.wait()
        woken.append(gate.release(2, 0))

    threads = [threading.Thread(target=release) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(woken) == 4
    sent = chunk_messages(aws)
    assert len(sent) == 4
    assert waiting(aws) == [] and held(aws) == 0
    assert {(m.batch_id, m.chunk.index) for m in sent} == {(batch_id, 0), (batch_id, 1)}


def test_the_safety_net_repairs_a_lost_wakeup_and_never_resends_a_waiting_chunk(
    aws: Aws, provider: ProviderEmulator
) -> None:
    batch_id = ingest(aws, ROWS)
    first, second = chunk_messages(aws)
    assert aws.ledger.slots.acquire(CAP, CAP) == CAP
    gate = admission(aws)
    gate.wait(first)
    gate.wait(second)

    def net(at: float) -> SafetyNet:
        return SafetyNet(
            ledger=aws.ledger,
            finisher=BatchFinisher(aws.ledger, aws.done_queue, capped=True, admission=gate),
            chunk_queue=aws.chunk_queue,
            done_queue=aws.done_queue,
            provider=ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY),
            times=SafetyNetTimes(reconcile_after_s=60, callback_deadline_s=600),
            clock=lambda: at,
            admission=gate,
        )

    # Quiet and unleased for long, but listed: waiting for slots, not lost. Nothing is sent.
    report = net(time.time() + 3600).sweep()
    assert (report.chunks_resent, report.woken) == (0, 0)
    assert chunk_messages(aws) == []
    # A waker died after giving its slot back and before taking a waiter off the list.
    aws.ledger.slots.release(1, 0)
    report = net(time.time()).sweep()
    assert report.woken == 1
    (woken,) = chunk_messages(aws)
    assert (woken.batch_id, woken.chunk.index) == (batch_id, 0)
    assert waiting(aws) == [(batch_id, 1)]


def test_recorded_outcomes_wake_waiters(aws: Aws, provider: ProviderEmulator, callbacks: Receiver) -> None:
    batch_id = ingest(aws, ROWS)
    first, second = chunk_messages(aws)
    run = starter(aws, provider, callbacks)
    assert aws.ledger.slots.acquire(CAP - 1, CAP) == CAP - 1  # taken elsewhere
    assert run.start_chunk(first, lambda: 300.0).started == 1  # the last free slot
    run.start_chunk(second, lambda: 300.0)
    assert chunk_messages(aws) == []
    assert len(waiting(aws)) == 2
    finisher = BatchFinisher(aws.ledger, aws.done_queue, capped=True, admission=admission(aws))
    finisher.release_slots(1)  # a recorder recorded one outcome
    (woken,) = chunk_messages(aws)
    assert (woken.batch_id, woken.chunk.index) == (batch_id, 0)


# -- budgets -----------------------------------------------------------------------------------


def test_a_batch_budget_is_never_passed_by_concurrent_workers_and_duplicate_deliveries(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    batch_id = ingest(aws, ROWS)
    first, second = chunk_messages(aws)
    # Three runs of $0.01 fit in $0.035: whoever races, at most three are created.
    set_budget(aws, batch_id, run_cost_usd=0.01, max_cost_usd=0.035)
    barrier = threading.Barrier(4)

    def deliver(message: ChunkMessage) -> None:
        barrier.wait()
        # A duplicate that finds the chunk busy is retried later by SQS.
        with contextlib.suppress(ChunkBusy):
            starter(aws, provider, callbacks, cap=0).start_chunk(message, lambda: 300.0)

    threads = [threading.Thread(target=deliver, args=(m,)) for m in (first, second, first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for message in (first, second, first):  # late duplicates
        starter(aws, provider, callbacks, cap=0).start_chunk(message, lambda: 300.0)
    assert provider.stats()["creates"] == 3
    assert aws.ledger.budget.reserved(batch_id) <= to_micro_usd(0.035)
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.reason) == (BatchStatus.PAUSED, "over_budget")
    # A higher budget and a resume finish it, still without a second run for any row.
    chunk_messages(aws)
    BatchActions(aws.ledger, aws.chunk_queue, aws.finisher).resume(batch_id, max_cost_usd=1.0)
    for message in chunk_messages(aws):
        starter(aws, provider, callbacks, cap=0).start_chunk(message, lambda: 300.0)
    assert provider.stats()["creates"] == 8 and provider.stats()["duplicate_creates"] == 0


def test_a_reservation_is_kept_for_a_lost_answer_and_given_back_for_a_refusal(aws: Aws) -> None:
    batch_id = ingest(aws, ROWS)
    budget = aws.ledger.budget
    limits = Limits(run_cost=to_micro_usd(0.01), batch_max=to_micro_usd(0.05), daily_max=to_micro_usd(0.03))
    now = time.time()
    first = budget.reserve(batch_id, 2, limits, now)
    assert (first.runs, first.short_by) == (2, None)
    second = budget.reserve(batch_id, 4, limits, now)  # the daily budget is the tighter
    assert (second.runs, second.short_by) == (1, "daily_budget")
    assert budget.reserve(batch_id, 1, limits, now).runs == 0
    budget.give_back(batch_id, 1, limits, first.day)  # refused: no run
    assert budget.reserve(batch_id, 5, limits, now).runs == 1
    assert budget.reserved(batch_id) == budget.reserved_on(first.day) == to_micro_usd(0.03)
    # A price-less provider is not budgeted at all.
    free = Limits(run_cost=0, batch_max=to_micro_usd(0.01), daily_max=to_micro_usd(0.01))
    assert budget.reserve(batch_id, 100, free, now).runs == 100


def test_the_daily_budget_pauses_and_the_next_utc_day_resumes(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    batch_id = ingest(aws, ROWS)
    first, second = chunk_messages(aws)
    set_budget(aws, batch_id, run_cost_usd=0.01, max_cost_usd=None)
    day1 = datetime(2026, 3, 1, 23, 59, tzinfo=UTC).timestamp()
    day2 = datetime(2026, 3, 2, 0, 1, tzinfo=UTC).timestamp()
    run = starter(aws, provider, callbacks, cap=0, daily_budget_usd=0.02, clock=day1)
    run.start_chunk(first, lambda: 300.0)
    run.start_chunk(second, lambda: 300.0)
    assert provider.stats()["creates"] == 2
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.reason) == (BatchStatus.PAUSED, "daily_budget")

    def sweep(at: float) -> int:
        return (
            SafetyNet(
                ledger=aws.ledger,
                finisher=aws.finisher,
                chunk_queue=aws.chunk_queue,
                done_queue=aws.done_queue,
                provider=ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY),
                times=SafetyNetTimes(reconcile_after_s=3600, callback_deadline_s=7200),
                clock=lambda: at,
                daily_budget_usd=0.02,
            )
            .sweep()
            .resumed
        )

    assert sweep(day1 + 30) == 0  # the same day: still paused
    assert chunk_messages(aws) == []
    assert sweep(day2) == 1
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.status is BatchStatus.RUNNING
    resent = chunk_messages(aws)
    assert {m.chunk.index for m in resent} == {0, 1}
    next_day = starter(aws, provider, callbacks, cap=0, daily_budget_usd=0.02, clock=day2)
    for message in resent:
        next_day.start_chunk(message, lambda: 300.0)
    assert provider.stats()["creates"] == 4  # two more: the new day's budget
    assert aws.ledger.budget.reserved_on("2026-03-02") == to_micro_usd(0.02)


def test_a_woken_chunk_with_nothing_to_start_hands_its_wakeup_on(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    batch_id = ingest(aws, ROWS)
    first, second = chunk_messages(aws)
    assert aws.ledger.slots.acquire(CAP, CAP) == CAP
    gate = admission(aws)
    gate.wait(first)
    time.sleep(0.01)
    gate.wait(second)
    assert gate.release(1, 0) == 1
    (woken,) = chunk_messages(aws)
    assert woken.chunk.index == 0
    # Its batch was paused meanwhile: it starts nothing, and its slot must not stay idle.
    assert aws.ledger.batches.pause(batch_id, "insufficient_credits", "402")
    report = starter(aws, provider, callbacks).start_chunk(woken, lambda: 300.0)
    assert report.not_open == "paused" and report.started == 0
    (next_woken,) = chunk_messages(aws)
    assert next_woken.chunk.index == 1 and waiting(aws) == []


def test_rows_a_cursor_passed_by_are_started_once_the_chain_ends(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    """A crashed worker's row (a fresh intent, no run) is skipped and the cursor moves past it;
    once no delivery is left and the chunk is quiet, the safety net sends the chunk again whole,
    and the row starts once its intent is stale. No row gets a second run."""
    batch_id = ingest(aws, ROWS)
    first, _ = chunk_messages(aws)
    aws.ledger.rows.record_intents(batch_id, 0, [1], "dead-00001", time.time())
    run = starter(aws, provider, callbacks)
    deliveries = [first]
    while deliveries:  # every wake-up delivered at once, as the queue would
        for message in deliveries:
            run.start_chunk(message, lambda: 300.0)
        aws.ledger.slots.release(held(aws), 0)  # the runs end
        admission(aws).wake(10)
        deliveries = chunk_messages(aws)
    assert provider.stats()["creates"] == 3  # rows 2-4; row 1 waits for its intent to go stale
    net = SafetyNet(
        ledger=aws.ledger,
        finisher=aws.finisher,
        chunk_queue=aws.chunk_queue,
        done_queue=aws.done_queue,
        provider=ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY),
        times=SafetyNetTimes(reconcile_after_s=60, callback_deadline_s=3600),
        clock=lambda: time.time() + 120,
        admission=admission(aws),
    )
    assert net.sweep().chunks_resent == 2  # chunk 0, and chunk 1 (never delivered here)
    (whole,) = [m for m in chunk_messages(aws) if m.chunk.index == 0]
    assert whole.cursor is None
    stale = starter(aws, provider, callbacks)
    stale._intent_valid_s = 0.0
    assert stale.start_chunk(whole, lambda: 300.0).started == 1
    assert provider.stats()["creates"] == 4 and provider.stats()["duplicate_creates"] == 0
