"""The on-done latency split into hops, from the local runtime's invocation spans (FunctionRuntime.trace).

From the provider sending a batch's last run webhook to the signed on-done arriving:

    callback -> webhook fn      the provider's POST through the local HTTP API to the handler
    webhook fn                  signature check, until the finished-run message is sent (FIFO)
    finished-run queue          the message waiting for the recorder's event source (long poll)
    recorder                    outputs fetched, the row written, the chunk counted, the batch
                                settled and finished, until the done message is sent (with
                                outputs saved: until the row's save message is sent, then)
    save queue                  (outputs saved) the save message waiting for the saver
    saver                       (outputs saved) the outputs copied, the batch settled and finished,
                                until the done message is sent
    done queue                  the done message waiting for the notifier's event source
    notifier -> POST received   the results CSV written, SNS published, the on-done POSTed

The queue hops start at the message's SentTimestamp (SQS's own, carried in the event's records), so
the hops add up to the whole latency: a handler's work after its send overlaps the next hop.

The notifier's inner steps (results CSV, SNS, POST) run in one invocation: `notifier_steps` splits
it by the invocation's X-Ray subsegments (each AWS call's own, from the stack's segment log; an
invocation the sampling rule left untraced is not split):

    notifier: results CSV       from its start to the results CSV's last write (the batch's rows
                                read page by page, the CSV and the row-errors CSV stored)
    notifier: SNS publish       the finish recorded, SNS published
    notifier: POST              the signing secret read, the POST until it arrived

The recorder's steps (outputs fetched, row written, chunk counted, batch settled) are not split: its
AWS calls do not say which step made them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from bench.e2e_throughput import percentile

WEBHOOK, RECORDER, NOTIFIER = "WebhookFunction", "RecorderFunction", "NotifierFunction"
SAVER = "SaverFunction"
HOPS = (
    "callback -> webhook fn",
    "webhook fn",
    "finished-run queue",
    "recorder",
    "done queue",
    "notifier -> POST received",
)
# With outputs saved (`save-outputs` on, the default) the batch finishes after its last save: the
# recorder queues the saves, the saver copies them and sends the done message. Then the "recorder"
# hop ends at the save message's send and these two come before the done queue.
SAVE_HOPS = ("save queue", "saver")


class Span(Protocol):
    @property
    def function_id(self) -> str: ...
    @property
    def started_at(self) -> float: ...
    @property
    def ended_at(self) -> float: ...
    @property
    def sent_at(self) -> tuple[float, ...]: ...


NOTIFIER_STEPS = ("notifier: results CSV", "notifier: SNS publish", "notifier: POST")


def _notifier(spans: Sequence[Span], last_callback_at: float, received_at: float) -> Span | None:
    """The notifier invocation that sent the on-done: the first to start after the last callback."""
    after = (s for s in spans if s.started_at >= last_callback_at)
    return next((s for s in after if s.function_id == NOTIFIER and s.started_at <= received_at), None)


def read_segments(path: Path) -> list[dict[str, Any]]:
    """Every segment and subsegment in a stack's X-Ray log (logs/xray.jsonl), [] when none."""
    if not path.exists():
        return []
    segments = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            segment = json.loads(line).get("segment")
        except ValueError:
            continue  # a line being written
        if isinstance(segment, dict):
            segments.append(segment)
    return segments


def notifier_steps(
    segments: Iterable[dict[str, Any]], spans: Sequence[Span], last_callback_at: float, received_at: float
) -> dict[str, float] | None:
    """Seconds per step of the notifier hop ("notifier -> POST received"; they add up to it), or None
    when its invocation was not traced or the trace lacks the results write or the SNS publish."""
    notifier = _notifier(spans, last_callback_at, received_at)
    if notifier is None:
        return None
    segments = list(segments)
    own = [
        s
        for s in segments
        if s.get("origin") == "AWS::Lambda::Function"
        and NOTIFIER in str(s.get("name"))
        and notifier.started_at - 0.5 <= float(s.get("start_time", 0)) <= notifier.ended_at
    ]
    if not own:
        return None
    trace_id = own[0]["trace_id"]
    calls = [s for s in segments if s.get("trace_id") == trace_id and isinstance(s.get("aws"), dict)]
    writes = [
        float(c["end_time"])
        for c in calls
        if c["aws"].get("operation") in ("PutObject", "CompleteMultipartUpload")
        and str(c["aws"].get("key", "")).startswith("results/")
    ]
    published = [float(c["end_time"]) for c in calls if c["aws"].get("operation") == "Publish"]
    if not writes or not published:
        return None
    results_at, published_at = max(writes), max(published)
    return {
        NOTIFIER_STEPS[0]: results_at - notifier.started_at,
        NOTIFIER_STEPS[1]: published_at - results_at,
        NOTIFIER_STEPS[2]: received_at - published_at,
    }


def hops(spans: Sequence[Span], last_callback_at: float, received_at: float) -> dict[str, float] | None:
    """Seconds per hop for one batch (batches run one at a time), or None when the spans do not show
    the chain (an invocation missing: nothing is guessed)."""
    after = [s for s in spans if s.started_at >= last_callback_at]
    notifier = _notifier(spans, last_callback_at, received_at)
    if notifier is None:
        return None
    webhooks = [s for s in after if s.function_id == WEBHOOK]
    if not webhooks or not notifier.sent_at:
        return None
    done_sent = max(notifier.sent_at)
    # What sent the done message: the last recorder or saver to start before it was sent.
    sender = [s for s in after if s.function_id in (RECORDER, SAVER) and s.started_at <= done_sent][-1:]
    if not sender or not sender[0].sent_at:
        return None
    saved: dict[str, float] = {}
    recorder_until = done_sent
    if sender[0].function_id == SAVER:
        saver = sender[0]
        recorder_until = max(saver.sent_at)  # the last save message, queued by the recorder
        saved = {SAVE_HOPS[0]: saver.started_at - recorder_until, SAVE_HOPS[1]: done_sent - saver.started_at}
    recorder = [s for s in after if s.function_id == RECORDER and s.started_at <= recorder_until][-1:]
    if not recorder or not recorder[0].sent_at:
        return None
    finished_sent = max(recorder[0].sent_at)
    webhook = webhooks[0]  # the last callback's own delivery: the first webhook call after it
    return {
        HOPS[0]: webhook.started_at - last_callback_at,
        HOPS[1]: finished_sent - webhook.started_at,
        HOPS[2]: recorder[0].started_at - finished_sent,
        HOPS[3]: recorder_until - recorder[0].started_at,
        **saved,
        HOPS[4]: notifier.started_at - done_sent,
        HOPS[5]: received_at - notifier.started_at,
    }


def in_order() -> tuple[str, ...]:
    """Every hop and step name in the order of the chain (the saves before the done queue)."""
    return (*HOPS[:4], *SAVE_HOPS, *HOPS[4:], *NOTIFIER_STEPS)


def summarize(samples: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per hop, p50 and p95 in ms (nearest rank, as the total's)."""
    out: dict[str, float] = {}
    for hop in in_order():
        values = [s[hop] for s in samples if hop in s]
        if values:
            out[f"on_done_hop_ms.{hop}.p50"] = 1000 * percentile(values, 50)
            out[f"on_done_hop_ms.{hop}.p95"] = 1000 * percentile(values, 95)
    return out


def table(results: dict[str, float], prefix: str = "e2e_on_done_hop_ms.") -> str:
    lines = [f"{'on-done hop, 10-row batches one at a time':44s} {'p50 ms':>8s} {'p95 ms':>8s}"]
    for hop in in_order():
        p50, p95 = results.get(f"{prefix}{hop}.p50"), results.get(f"{prefix}{hop}.p95")
        if p50 is not None and p95 is not None:
            indent = "    " if hop in NOTIFIER_STEPS else "  "  # the notifier hop's own steps
            lines.append(f"{indent}{hop:{44 - len(indent)}s} {p50:8.0f} {p95:8.0f}")
    whole = prefix.removesuffix("hop_ms.") + "latency_ms_"  # e2e_on_done_latency_ms_p95 beside the hops
    total50, total95 = results.get(whole + "p50"), results.get(whole + "p95")
    if total50 is not None and total95 is not None:
        lines.append(f"  {'last webhook -> on-done received (whole)':42s} {total50:8.0f} {total95:8.0f}")
    return "\n".join(lines)
