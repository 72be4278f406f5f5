"""Slots lost to a crash: a grant taken and never settled is given back by the sweep, once, and
only the part that certainly started no run; a worker that was only late corrects what the sweep
could not know, so the count of held slots always ends at the runs in flight, never below."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from rowcall.admission import Admission
from rowcall.ledger import NO_RUN, StartedRun
from rowcall.ledger.grants import GRANT_LEASE_S, SWEPT_KEPT_S, Grant
from rowcall.provider import ProviderConnection
from rowcall.runs import RunStarter
from rowcall.safety_net import SafetyNet, SafetyNetTimes
from rowcall_local.provider_emulator import ProviderEmulator
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import Aws, chunk_messages, ingest
from .loopback_runs import API_KEY, FAST_RETRY, SIGNER, start_provider

ROWS = b"prompt\n" + b"".join(f"row {n}\n".encode() for n in range(1, 9))
CAP = 4


def held(aws: Aws) -> int:
    acquired, released = aws.ledger.slots.held()
    return acquired - released


def take(aws: Aws, wanted: int, *, holder: str = "dead", at: float | None = None) -> Grant:
    grant = aws.ledger.grants.take(
        wanted, CAP, batch_id="b1", chunk=0, holder=holder, now=time.time() if at is None else at
    )
    assert grant is not None
    return grant


def after_lease(grant: Grant) -> float:
    return grant.taken_at + GRANT_LEASE_S + 1


@pytest.fixture
def provider() -> Iterator[ProviderEmulator]:
    emulator = start_provider()
    yield emulator
    emulator.stop()


@pytest.fixture
def callbacks() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def test_a_grant_never_settled_is_given_back_once_after_its_lease(aws: Aws) -> None:
    grant = take(aws, 3)
    assert held(aws) == 3
    later = grant.taken_at + 5
    other = aws.ledger.grants.take(2, CAP, batch_id="b1", chunk=1, holder="other", now=later)
    assert other is not None and other.slots == 1
    assert aws.ledger.grants.take(1, CAP, batch_id="b1", chunk=1, holder="other", now=later) is None
    # Within its lease the worker may still be at it: nothing is touched.
    assert aws.ledger.grants.sweep(grant.taken_at + GRANT_LEASE_S - 1).given_back == 0
    assert held(aws) == 4
    swept = aws.ledger.grants.sweep(after_lease(grant))
    assert (swept.given_back, swept.kept_for_runs, swept.grants) == (3, 0, 1)
    assert held(aws) == 1  # the other grant, still within its lease
    # A second sweep (or two sweeps at once, one after the other) gives nothing more back.
    assert aws.ledger.grants.sweep(after_lease(grant)).given_back == 0
    assert held(aws) == 1
    # The freed slots can be taken again.
    again = aws.ledger.grants.take(3, CAP, batch_id="b1", chunk=2, holder="next", now=time.time())
    assert again is not None and again.slots == 3


def test_a_late_worker_settling_after_the_sweep_corrects_without_double_return(aws: Aws) -> None:
    grant = take(aws, 3)
    assert aws.ledger.grants.sweep(after_lease(grant)).given_back == 3  # it wrote no intent
    assert held(aws) == 0
    # It was only slow: it created two runs after all. Their slots are taken back, since their
    # outcomes will give them back; its third slot is not given back a second time.
    assert aws.ledger.grants.settle(grant, started=2) == 0
    assert held(aws) == 2
    aws.ledger.slots.release(2, 0)  # the two outcomes are recorded
    assert held(aws) == 0
    assert aws.ledger.grants.open() == {}
    # A settle repeated (its answer lost, botocore retried) changes nothing.
    assert aws.ledger.grants.settle(grant, started=2) == 1
    assert held(aws) == 0


def test_a_late_worker_that_started_nothing_gives_nothing_back_twice(aws: Aws) -> None:
    grant = take(aws, 2)
    aws.ledger.grants.sweep(after_lease(grant))
    assert aws.ledger.grants.settle(grant, started=0) == 0
    assert held(aws) == 0 and aws.ledger.grants.open() == {}


def test_a_settled_grant_is_not_swept_and_a_repeat_settle_changes_nothing(aws: Aws) -> None:
    grant = take(aws, 4)
    assert aws.ledger.grants.settle(grant, started=1) == 3
    assert aws.ledger.grants.settle(grant, started=1) == 3  # a repeat: no second write
    assert held(aws) == 1
    assert aws.ledger.grants.sweep(after_lease(grant)).given_back == 0
    assert held(aws) == 1


def test_a_worker_killed_mid_creates_keeps_the_slots_of_rows_that_may_have_runs(aws: Aws) -> None:
    grant = take(aws, 4, holder="h1")
    rows = aws.ledger.rows
    # An earlier group of the same delivery: not this grant's.
    rows.record_intents("b1", 0, [9], "h1-00001", grant.taken_at - 5)
    rows.record_intents("b1", 0, [1, 2, 3], "h1-00002", grant.taken_at + 0.1)
    rows.record_starts(
        "b1",
        0,
        [
            StartedRun(1, 1, "run-1", 2, grant.taken_at + 0.2),  # a run: its outcome frees its slot
            StartedRun(3, 1, NO_RUN, 4, grant.taken_at + 0.2),  # refused for now: no run
        ],
        "h1-00003",
    )
    # Another delivery's pages say nothing of this grant.
    rows.record_intents("b1", 0, [4], "h2-00001", grant.taken_at + 0.1)
    swept = aws.ledger.grants.sweep(after_lease(grant))
    # Row 4 was never intended and row 3 made no run: back. Rows 1 and 2 may be runs: held.
    assert (swept.given_back, swept.kept_for_runs) == (2, 2)
    assert held(aws) == 2
    aws.ledger.slots.release(1, 0)  # row 1's outcome
    assert held(aws) == 1  # row 2: its create's answer was lost with the worker


def _race(aws: Aws, grant: Grant, started: int) -> dict[str, int]:
    """The worker's settle and a sweep past the grant's lease, let go at the same moment."""
    barrier = threading.Barrier(2)
    results: dict[str, int] = {}

    def settle() -> None:
        barrier.wait()
        results["settle"] = aws.ledger.grants.settle(grant, started)

    def sweep() -> None:
        barrier.wait()
        results["sweep"] = aws.ledger.grants.sweep(after_lease(grant)).given_back

    threads = [threading.Thread(target=settle), threading.Thread(target=sweep)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_settle_and_sweep_at_once_end_at_the_runs_started(aws: Aws) -> None:
    for started in (0, 1, 2, 3, 0, 3):
        grant = take(aws, 3, at=time.time())
        results = _race(aws, grant, started)
        assert held(aws) == started, results
        assert aws.ledger.grants.open() == {}
        aws.ledger.slots.release(started, 1)  # their outcomes
        assert held(aws) == 0


def test_a_swept_grant_whose_worker_never_came_back_is_forgotten_later(aws: Aws) -> None:
    grant = take(aws, 2)
    aws.ledger.grants.sweep(after_lease(grant))
    assert list(aws.ledger.grants.open()) == [grant.grant_id]
    aws.ledger.grants.sweep(grant.taken_at + SWEPT_KEPT_S - 1)
    assert list(aws.ledger.grants.open()) == [grant.grant_id]
    aws.ledger.grants.sweep(grant.taken_at + SWEPT_KEPT_S + 1)
    assert aws.ledger.grants.open() == {} and held(aws) == 0


def test_a_worker_settles_every_grant_it_takes(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    ingest(aws, ROWS)
    first, _ = chunk_messages(aws)
    starter = RunStarter(
        s3=aws.s3,
        ledger=aws.ledger,
        finisher=aws.finisher,
        provider=ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY),
        signer=SIGNER,
        callback_base_url=callbacks.url,
        concurrency=4,
        chunk_queue=aws.chunk_queue,
        max_in_flight=CAP,
    )
    report = starter.start_chunk(first, lambda: 300.0)
    assert report.started == 1  # a fair share of cap // 4
    assert aws.ledger.grants.open() == {}
    assert held(aws) == 1


def test_the_sweep_gives_back_a_dead_workers_slots_and_wakes_a_waiting_chunk(
    aws: Aws, provider: ProviderEmulator
) -> None:
    ingest(aws, ROWS)
    first, _ = chunk_messages(aws)
    gate = Admission(aws.ledger, aws.chunk_queue, CAP)
    # A worker took every slot and was killed before its creates.
    dead = aws.ledger.grants.take(CAP, CAP, batch_id="b1", chunk=0, holder="dead", now=time.time())
    assert dead is not None
    assert gate.wait(first) == 0  # no slot: it waits
    assert chunk_messages(aws) == []

    def net(at: float) -> SafetyNet:
        return SafetyNet(
            ledger=aws.ledger,
            finisher=aws.finisher,
            chunk_queue=aws.chunk_queue,
            done_queue=aws.done_queue,
            provider=ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY),
            times=SafetyNetTimes(reconcile_after_s=3600, callback_deadline_s=7200),
            clock=lambda: at,
            admission=gate,
        )

    assert net(time.time()).sweep().slots_given_back == 0
    assert chunk_messages(aws) == []
    report = net(after_lease(dead)).sweep()
    assert report.slots_given_back == CAP and report.woken == 1
    (woken,) = chunk_messages(aws)
    assert woken.chunk.index == first.chunk.index
    assert held(aws) == 0
    assert net(after_lease(dead)).sweep().slots_given_back == 0
