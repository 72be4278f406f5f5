"""Tracing on, as `Tracing: Active` has it on AWS (real local stack, every invocation sampled).

The local runtime plays Lambda's part (the sampling decision, the `_X_AMZN_TRACE_ID` header, the
function's own segment) and runs a stand-in X-Ray daemon on loopback UDP
(`local/rowcall_local/xray_daemon.py`). A batch whose provider calls are concurrent in every
function that makes them - the worker's run creations, the recorder's fetches, the safety net's
questions about silent runs - must run clean with every invocation sampled, and every datagram
must be a well-formed segment: header line + JSON document, ids and trace ids as X-Ray's, start
before end, nothing left in progress, every parent a segment of the same trace.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from rowcall_local.xray_daemon import HEADER, XRAY_SEGMENTS_FILE

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e

ROWS = 48
TRACED = ("WorkerFunction", "RecorderFunction", "SafetyNetFunction")
TRACE_ID = re.compile(r"^1-[0-9a-f]{8}-[0-9a-f]{24}$")
ENTITY_ID = re.compile(r"^[0-9a-f]{16}$")
# What the X-Ray SDK raises or logs when subsegments are begun and ended out of turn.
TRACING_ERRORS = ("AlreadyEndedException", "SegmentNotFoundException", "cannot find the current segment")


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    flags = {
        "--xray-sample-rate": "1",
        "--provider-delay-ms": "20:200",
        # Dropped webhooks leave runs silent: the safety net asks for them, concurrently.
        "--provider-drop-callback-rate": "0.3",
        "--reconcile-after-s": "1",
        "--schedule-every-s": "2",
    }
    with running_stack(
        tmp_path_factory.mktemp("rowcall-xray"), *[x for kv in flags.items() for x in kv]
    ) as stack:
        yield stack


def _entities(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield document
    for child in document.get("subsegments") or []:
        yield from _entities(child)


def test_sampled_invocations_with_concurrent_provider_calls_raise_nothing_and_trace_well(
    traced: LocalStack,
) -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["id", "prompt"])
    writer.writerows([f"T{n}", f"prompt {n}"] for n in range(ROWS))
    key = "uploads/traced.csv"
    traced.s3.put_object(Bucket=traced.info["bucket"], Key=key, Body=out.getvalue().encode())
    done = traced.wait_terminal(traced.batch_for(key)["batch_id"], timeout_s=180)
    assert done["status"] == "completed", done
    stats = traced.provider_stats()
    assert stats["creates"] >= ROWS and stats["gets"] > 0  # creates (worker), fetches (recorder, net)

    logs = traced.state_dir / "logs"
    for function in TRACED:
        text = (logs / f"{function}.log").read_text(errors="replace")
        # (A duplicate chunk delivery's ChunkBusy is logged with its traceback by design.)
        for problem in TRACING_ERRORS:
            assert problem not in text, f"{function}: {text[text.find(problem) - 500 :][:2000]}"

    lines = [json.loads(line) for line in (logs / XRAY_SEGMENTS_FILE).read_text().splitlines()]
    assert [line for line in lines if "problem" in line] == []
    assert all(line["header"] == HEADER for line in lines)
    documents = [line["segment"] for line in lines]
    function_segments = [d for d in documents if d.get("origin") == "AWS::Lambda::Function"]
    for function in TRACED:
        assert any(function in d["name"] for d in function_segments), function
    # Every entity, sent alone or inside its parent, complete and closed.
    ids_by_trace: dict[str, set[str]] = {}
    for document in documents:
        assert TRACE_ID.match(document["trace_id"]), document
        for entity in _entities(document):
            assert ENTITY_ID.match(entity["id"]), entity
            assert not entity.get("in_progress"), entity
            assert entity["start_time"] <= entity["end_time"], entity
            ids_by_trace.setdefault(document["trace_id"], set()).add(entity["id"])
    # A subsegment sent alone names a parent of its own trace; the function's segment (what Lambda
    # records, sent once the handler has returned) is every trace's root. An invocation still running
    # when the file is read has sent some subsegments and not yet their parents: only finished
    # invocations' traces are complete.
    finished = {d["trace_id"] for d in function_segments}
    for document in documents:
        if document.get("type") != "subsegment":
            assert document.get("origin") == "AWS::Lambda::Function", document
        elif document["trace_id"] in finished:
            assert document["parent_id"] in ids_by_trace[document["trace_id"]], document
    handled = [d for d in documents if d.get("name") == "## lambda_handler"]
    assert {d["trace_id"] for d in handled} <= {d["trace_id"] for d in function_segments}
    assert len({d["trace_id"] for d in function_segments}) == len(function_segments)
    # botocore calls are traced (by the service's endpoint prefix).
    names = {e["name"] for d in documents for e in _entities(d)}
    assert {"dynamodb", "sqs"} <= names, names
