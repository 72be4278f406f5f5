"""The on-done latency split into hops, from the local runtime's invocation spans (FunctionRuntime.trace).

From the provider sending a batch's last run webhook to the signed on-done arriving:

    callback -> webhook fn      the provider's POST through the local HTTP API to the handler
    webhook fn                  signature check, until the finished-run message is sent (FIFO)
    finished-run queue          the message waiting for the recorder's event source (long poll)
    recorder                    outputs fetched, the row written, the chunk counted, the batch
                                settled and finished, until the done message is sent
    done queue                  the done message waiting for the notifier's event source
    notifier -> POST received   the results CSV written, SNS published, the on-done POSTed

The queue hops start at the message's SentTimestamp (SQS's own, carried in the event's records), so
the hops add up to the whole latency: a handler's work after its send overlaps the next hop.

The recorder's and the notifier's inner steps (count, settle; results, SNS, POST) run in one
invocation each: the spans do not split them (their logs' timestamps would).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from bench.e2e_throughput import percentile

WEBHOOK, RECORDER, NOTIFIER = "WebhookFunction", "RecorderFunction", "NotifierFunction"
HOPS = (
    "callback -> webhook fn",
    "webhook fn",
    "finished-run queue",
    "recorder",
    "done queue",
    "notifier -> POST received",
)


class Span(Protocol):
    @property
    def function_id(self) -> str: ...
    @property
    def started_at(self) -> float: ...
    @property
    def ended_at(self) -> float: ...
    @property
    def sent_at(self) -> tuple[float, ...]: ...


def hops(spans: Sequence[Span], last_callback_at: float, received_at: float) -> dict[str, float] | None:
    """Seconds per hop for one batch (batches run one at a time), or None when the spans do not show
    the chain (an invocation missing: nothing is guessed)."""
    after = [s for s in spans if s.started_at >= last_callback_at]
    notifier = next((s for s in after if s.function_id == NOTIFIER and s.started_at <= received_at), None)
    if notifier is None:
        return None
    recorders = [s for s in after if s.function_id == RECORDER and s.started_at <= notifier.started_at]
    webhooks = [s for s in after if s.function_id == WEBHOOK]
    if not recorders or not webhooks or not notifier.sent_at:
        return None
    done_sent = max(notifier.sent_at)
    # The recorder that sent the done message: the last one to start before it was sent.
    recorder = [s for s in recorders if s.started_at <= done_sent][-1:]
    if not recorder or not recorder[0].sent_at:
        return None
    finished_sent = max(recorder[0].sent_at)
    webhook = webhooks[0]  # the last callback's own delivery: the first webhook call after it
    return {
        HOPS[0]: webhook.started_at - last_callback_at,
        HOPS[1]: finished_sent - webhook.started_at,
        HOPS[2]: recorder[0].started_at - finished_sent,
        HOPS[3]: done_sent - recorder[0].started_at,
        HOPS[4]: notifier.started_at - done_sent,
        HOPS[5]: received_at - notifier.started_at,
    }


def summarize(samples: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per hop, p50 and p95 in ms (nearest rank, as the total's)."""
    out: dict[str, float] = {}
    for hop in HOPS:
        values = [s[hop] for s in samples]
        if values:
            out[f"on_done_hop_ms.{hop}.p50"] = 1000 * percentile(values, 50)
            out[f"on_done_hop_ms.{hop}.p95"] = 1000 * percentile(values, 95)
    return out


def table(results: dict[str, float], prefix: str = "e2e_on_done_hop_ms.") -> str:
    lines = [f"{'on-done hop, 10-row batches one at a time':44s} {'p50 ms':>8s} {'p95 ms':>8s}"]
    for hop in HOPS:
        p50, p95 = results.get(f"{prefix}{hop}.p50"), results.get(f"{prefix}{hop}.p95")
        if p50 is not None and p95 is not None:
            lines.append(f"  {hop:42s} {p50:8.0f} {p95:8.0f}")
    return "\n".join(lines)
