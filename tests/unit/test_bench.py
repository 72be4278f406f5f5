"""The benchmark aggregator and the cost model: keys written, arithmetic right on a hand-computed case."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench import cost_model, run_all
from bench.cost_model import FunctionUse, RowBasis, Standing, Usage


def test_aggregator_writes_every_key_and_judges_each_goal(tmp_path: Path) -> None:
    # The measurements are stubbed: this checks the aggregator, not the figures.
    figures = dict.fromkeys(run_all.REQUIRED_KEYS, 1.0)
    figures |= {
        "cost_per_million_rows_usd": 2.0,
        "sfn_cost_per_million_rows_usd": 50.0,
        "e2e_rows_per_s": 40.0,
    }
    half = len(run_all.REQUIRED_KEYS) // 2
    first = {k: figures[k] for k in run_all.REQUIRED_KEYS[:half]}
    second = {k: figures[k] for k in run_all.REQUIRED_KEYS[half:]}
    out = tmp_path / "results.json"

    results, failed = run_all.run({"a": lambda: first, "b": lambda: second}, out)

    written = json.loads(out.read_text())
    assert failed == []
    assert written["missing_keys"] == []
    for key in run_all.REQUIRED_KEYS:
        assert isinstance(written[key], float), key
    rendered = run_all.table(results)
    assert "Step Functions design per 1M rows (USD)" in rendered
    lines = {line.split("  ")[0].strip(): line for line in rendered.splitlines()}
    assert lines["rowcall cost per 1M rows (USD)"].endswith("met")
    assert lines["Step Functions design per 1M rows (USD)"].endswith("met")  # 50 >= 20 x 2
    assert lines["end to end rows/s, 20,000 rows"].endswith("MISSED")  # 40 < 100


def test_aggregator_reports_a_failed_piece_and_its_missing_keys(tmp_path: Path) -> None:
    def broken() -> dict[str, float]:
        raise RuntimeError("stack did not start")

    out = tmp_path / "results.json"
    results, failed = run_all.run({"ok": lambda: {"dynamodb_wru_per_row": 1.5}, "broken": broken}, out)

    assert failed == ["broken"]
    written = json.loads(out.read_text())
    assert written["dynamodb_wru_per_row"] == 1.5
    assert "cost_per_million_rows_usd" in written["missing_keys"]
    assert "dynamodb_wru_per_row" not in written["missing_keys"]
    assert "not measured" in run_all.table(results)


def test_sqs_bills_one_request_per_64_kb() -> None:
    assert cost_model.sqs_billed_requests(0) == 1
    assert cost_model.sqs_billed_requests(64 * 1024) == 1
    assert cost_model.sqs_billed_requests(64 * 1024 + 1) == 2
    assert cost_model.sqs_billed_requests(256 * 1024) == 4


def test_rowcall_cost_per_million_rows_by_hand() -> None:
    usage = Usage(
        rows=1000,
        # 100 invocations, 2 s billed at 1 GB: 2 GB-s.
        functions={"A": FunctionUse(invocations=100, billed_ms=2000, memory_mb=1024)},
        dynamodb_write_units=2000,
        dynamodb_read_units=500,
        sqs_standard_requests=1000,
        sqs_fifo_requests=1000,
        s3_write_requests=10,
        s3_read_requests=100,
        sns_publishes=1,
        api_requests=1000,
    )
    standing = Standing(safety_net=FunctionUse(invocations=1, billed_ms=100, memory_mb=512))

    got = cost_model.rowcall_per_million(usage, standing, monthly_rows=1_000_000)

    # Per 1M rows = the run's USD x 1,000 (the run had 1,000 rows):
    # lambda 100 x $0.20/M + 2 GB-s x $0.0000133334 = $0.0000466668 -> 0.0466668
    assert got["lambda"] == pytest.approx(0.0466668)
    # 2,000 WRU x $0.625/M + 500 RRU x $0.125/M = $0.0013125 -> 1.3125
    assert got["dynamodb"] == pytest.approx(1.3125)
    # 1,000 x $0.40/M + 1,000 x $0.50/M = $0.0009 -> 0.9
    assert got["sqs"] == pytest.approx(0.9)
    # 10 x $0.005/1k + 100 x $0.0004/1k = $0.00009 -> 0.09
    assert got["s3"] == pytest.approx(0.09)
    assert got["sns"] == pytest.approx(0.0005)
    assert got["api_gateway"] == pytest.approx(1.0)
    # Standing, per month over 1M rows: the safety net 60/h x 730 h = 43,800 invocations of
    # $0.20/M + 0.1 s x 0.5 GB x $0.0000133334 = $0.00000086667 each -> $0.0379601; the event
    # sources' idle polls 5 pollers x 180/h x 730 h = 657,000 receives on each of 2 standard queues
    # ($0.40/M) and 1 FIFO queue ($0.50/M) = 657,000 x $1.30/M = $0.8541.
    assert got["standing"] == pytest.approx(0.0379601 + 0.8541, rel=1e-5)
    assert got["total"] == pytest.approx(0.0466668 + 1.3125 + 0.9 + 0.09 + 0.0005 + 1.0 + 0.8920601, rel=1e-5)


def test_alternatives_per_million_rows_by_hand() -> None:
    basis = RowBasis(
        create_run=FunctionUse(invocations=1, billed_ms=100, memory_mb=512),
        relay=FunctionUse(invocations=1, billed_ms=20, memory_mb=512),
        fetch_outputs=FunctionUse(invocations=1, billed_ms=40, memory_mb=512),
        rows_per_batch=1000,
    )
    # create: $0.20/M + 0.05 GB-s x $0.0000133334 = $0.00000086667;
    # relay: $0.20/M + 0.01 GB-s = $0.00000033333; fetch: $0.20/M + 0.02 GB-s = $0.00000046667
    sfn = cost_model.per_million(cost_model.step_functions_per_row(basis))
    # 1 child started + CreateRunAndWait + FetchOutputs = 3 per row, and the parent's Rows,
    # WriteResultsCsv, NotifyDone once per 1,000-row batch: 3.003 x $0.025/1k = $75.075/M
    assert sfn["state_transitions"] == pytest.approx(75.075)
    assert sfn["total"] == pytest.approx(75.075 + 0.86667 + 1.0 + 0.33333 + 0.46667, rel=1e-5)

    durable = cost_model.per_million(cost_model.durable_per_row(basis))
    # 5 operations x $8/M = $40; the first invocation like the create one, the replay like the fetch
    assert durable["total"] == pytest.approx(40 + 0.86667 + 0.46667 + 1.0 + 0.33333 + 0.625, rel=1e-5)

    polling = cost_model.PollingWorker(run_s=30, invocation_s=30, runs_per_worker=4, memory_mb=128)
    items = cost_model.per_million(polling.per_row(basis))
    # 30 s / 4 runs = 7.5 s of a 128 MB worker per row = 0.9375 GB-s -> $12.500; 0.25 invocations
    # -> $0.05; 0.25 x 3 SQS requests -> $0.30
    assert items["worker_lambda"] == pytest.approx(12.5001 + 0.05, rel=1e-4)
    assert items["handoff_sqs"] == pytest.approx(0.3)
    assert polling.provider_polls_per_row() == 15


def test_the_e2e_piece_keeps_its_own_keys_and_renames_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    def measure(rows: int) -> dict[str, float]:
        asked.append(rows)
        return {
            "e2e_rows_per_s": 120.0,
            "moto_ops_per_s": 900.0,
            "aws_ops_per_row": 7.5,
            "on_done_latency_ms_p95": 300.0,
        }

    # Stands in for the perf branch's module: the aggregator imports it by name.
    monkeypatch.setitem(sys.modules, "bench.e2e_throughput", SimpleNamespace(measure=measure))

    got = run_all.PIECES["e2e"]()

    assert asked == [20000]
    assert got == {
        "e2e_rows_per_s": 120.0,
        "moto_ops_per_s": 900.0,
        "aws_ops_per_row": 7.5,
        "e2e_on_done_latency_ms_p95": 300.0,
    }


def test_the_step_functions_peer_is_well_formed_asl_with_the_states_the_count_assumes() -> None:
    machine = json.loads(cost_model.SFN_ASL.read_text(encoding="utf-8"))
    rows = machine["States"]["Rows"]
    assert rows["Type"] == "Map"
    assert rows["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    assert rows["ItemReader"]["ReaderConfig"]["InputType"] == "CSV"
    assert rows["ResultWriter"]["Resource"] == "arn:aws:states:::s3:putObject"
    child = rows["ItemProcessor"]["States"]
    assert child["CreateRunAndWait"]["Resource"].endswith(".waitForTaskToken")
    assert "$$.Task.Token" in json.dumps(child["CreateRunAndWait"]["Parameters"])
    # Every Next and every Catch names a state of its own block; every block has a way to end.
    for block in (machine["States"], child):
        for name, state in block.items():
            targets = [state.get("Next"), state.get("Default")]
            targets += [c["Next"] for c in state.get("Catch", []) + state.get("Choices", [])]
            assert all(t in block for t in targets if t is not None), name
        assert any(s.get("End") or s["Type"] in ("Succeed", "Fail") for s in block.values())
    counted = cost_model.sfn_transitions(machine)
    assert counted.child_per_row == ["CreateRunAndWait", "FetchOutputs"]
    assert counted.parent_per_batch == ["Rows", "WriteResultsCsv", "NotifyDone"]
    assert counted.per_row(rows_per_batch=3) == 1 + 2 + 1


def test_the_transition_count_follows_the_machine() -> None:
    """A state added on the path every row takes is a transition more per row."""
    machine = json.loads(cost_model.SFN_ASL.read_text(encoding="utf-8"))
    child = machine["States"]["Rows"]["ItemProcessor"]["States"]
    child["CreateRunAndWait"]["Next"] = "Check"
    child["Check"] = {"Type": "Pass", "Next": "FetchOutputs"}
    assert cost_model.sfn_transitions(machine).per_row(rows_per_batch=3) == 1 + 3 + 1
    child["FetchOutputs"]["Next"] = "Check"
    del child["FetchOutputs"]["End"]
    with pytest.raises(ValueError, match="loops"):
        cost_model.sfn_transitions(machine)


def test_the_ceiling_is_moto_rate_over_requests_per_row() -> None:
    got = run_all.ceiling({"e2e_moto_ops_per_cpu_s": 141.0, "aws_ops_per_row": 2.82, "e2e_rows_per_s": 40.0})
    assert got["e2e_ceiling_rows_per_s"] == pytest.approx(50.0)
    assert got["e2e_share_of_ceiling"] == pytest.approx(0.8)
    assert run_all.ceiling({"aws_ops_per_row": 2.0}) == {}


def test_on_done_hops_follow_the_chain_and_add_up_to_the_latency() -> None:
    from bench import on_done_hops
    from rowcall_local.function_pool import InvocationSpan

    cb = 100.0
    spans = [
        InvocationSpan("WebhookFunction", 99.0, 99.1),  # an earlier callback's: not this hop
        InvocationSpan("WebhookFunction", 100.010, 100.040),
        InvocationSpan("WebhookFunction", 100.050, 100.060),  # a duplicate delivery after it
        InvocationSpan("RecorderFunction", 100.032, 100.200, (100.030,)),  # started before the send's end
        InvocationSpan("RecorderFunction", 100.210, 100.300, (100.055,)),
        InvocationSpan("NotifierFunction", 100.320, 100.600, (100.290,)),
    ]
    got = on_done_hops.hops(spans, cb, received_at=100.500)
    assert got is not None
    # callback -> webhook 10; webhook until the last FIFO send the recorder got 45; queue 155;
    # recorder until the done message 80; done queue 30; notifier until the POST arrived 180
    assert [round(1000 * got[h]) for h in on_done_hops.HOPS] == [10, 45, 155, 80, 30, 180]
    assert sum(got.values()) == pytest.approx(0.5)
    assert on_done_hops.hops(spans[:3], cb, 100.5) is None  # no notifier: nothing guessed
    summary = on_done_hops.summarize([got, got])
    assert summary["on_done_hop_ms.recorder.p95"] == pytest.approx(80)
    # Outputs saved: the saver sends the done message; the recorder's hop ends at its save message.
    saving = [
        *spans[:4],
        InvocationSpan("RecorderFunction", 100.210, 100.250, (100.055,)),
        InvocationSpan("SaverFunction", 100.260, 100.300, (100.240,)),  # its save message sent at 240
        InvocationSpan("NotifierFunction", 100.320, 100.600, (100.290,)),
    ]
    got = on_done_hops.hops(saving, cb, received_at=100.500)
    assert got is not None
    split = [round(1000 * got[h]) for h in on_done_hops.in_order() if h in got]
    assert split == [10, 45, 155, 30, 20, 30, 30, 180]  # ... recorder, save queue, saver, done queue ...
    assert sum(got.values()) == pytest.approx(0.5)


def test_the_notifier_hop_splits_into_results_sns_and_post_by_its_xray_subsegments(tmp_path: Path) -> None:
    from bench import on_done_hops
    from rowcall_local.function_pool import InvocationSpan

    spans = [InvocationSpan("NotifierFunction", 100.320, 100.600, (100.290,))]

    def call(trace: str, operation: str, start: float, end: float, **aws: str) -> dict[str, object]:
        return {
            "trace_id": trace,
            "type": "subsegment",
            "start_time": start,
            "end_time": end,
            "aws": {"operation": operation, **aws},
        }

    function = {
        "trace_id": "1-a",
        "name": "rowcall-local-NotifierFunction-X",
        "origin": "AWS::Lambda::Function",
        "start_time": 100.321,
        "end_time": 100.6,
    }
    segments = [
        function,
        call("1-a", "Query", 100.33, 100.35),
        call("1-a", "PutObject", 100.35, 100.40, key="results/b/results.csv"),
        call("1-a", "PutObject", 100.40, 100.42, key="results/b/row-errors.csv"),
        call("1-a", "Publish", 100.43, 100.45),
        call("1-b", "Publish", 100.43, 100.47),  # another trace's: not this invocation's
    ]
    log = tmp_path / "xray.jsonl"
    log.write_text("".join(json.dumps({"header": {}, "segment": s}) + "\n" for s in segments) + '{"trunc')
    got = on_done_hops.notifier_steps(on_done_hops.read_segments(log), spans, 100.0, received_at=100.500)
    assert got is not None
    # results CSV until its last write 100 ms, SNS 30 ms, then the POST until received 50 ms: the hop's 180
    assert [round(1000 * got[s]) for s in on_done_hops.NOTIFIER_STEPS] == [100, 30, 50]
    assert sum(got.values()) == pytest.approx(0.5 - 0.32)
    # Untraced (no segment of the invocation) or no publish in the trace: not split, nothing guessed.
    assert on_done_hops.notifier_steps(segments[1:], spans, 100.0, 100.5) is None
    assert on_done_hops.notifier_steps(segments[:4], spans, 100.0, 100.5) is None
    table = on_done_hops.table(
        {
            "on_done_hop_ms.notifier: SNS publish.p50": 30.0,
            "on_done_hop_ms.notifier: SNS publish.p95": 31.0,
            "on_done_latency_ms_p50": 400.0,
            "on_done_latency_ms_p95": 500.0,
        },
        prefix="on_done_hop_ms.",
    )
    assert "    notifier: SNS publish" in table and "(whole)" in table and "500" in table


def test_requests_are_counted_by_the_function_that_signed_them() -> None:
    from bench import cost

    def line(key: str, service: str, **more: object) -> str:
        auth = f"AWS4-HMAC-SHA256 Credential={key}/20261203/us-east-1/{service}/aws4_request, SignedHeaders=x"
        return json.dumps({"headers": {"Authorization": auth, **more.pop("headers", {})}, **more})  # type: ignore[dict-item]

    recording = "\n".join(
        [
            line("fn-WebhookFunction", "sqs", headers={"X-Amz-Target": "AmazonSQS.SendMessage"}, body=""),
            line("fn-RecorderFunction", "dynamodb", headers={"X-Amz-Target": "DynamoDB_20120810.UpdateItem"}),
            line("fn-RecorderFunction", "dynamodb", headers={"X-Amz-Target": "DynamoDB_20120810.UpdateItem"}),
            line("testing", "sqs", headers={"X-Amz-Target": "AmazonSQS.ReceiveMessage"}, body=""),
            json.dumps({"headers": {}}),  # unsigned: moto's own control endpoint, not counted
        ]
    )
    counted = cost.count_requests(recording)
    assert counted.by_caller == {"WebhookFunction": 1, "RecorderFunction": 2, "runtime": 1}
    assert counted.by_caller_action["RecorderFunction dynamodb UpdateItem"] == 2
    assert counted.by_caller_action["WebhookFunction sqs SendMessage"] == 1
    assert counted.runtime_receives == 1


def test_the_cost_with_outputs_saved_adds_what_saving_asks_of_aws_to_the_figure_without() -> None:
    from bench import cost, cost_model

    def run(lines: dict[str, float]) -> dict[str, Any]:
        rowcall = {"lambda": 1.0, "standing": 0.2, **lines}
        rowcall["total"] = sum(rowcall.values())
        return {
            "rows": 2000,
            "outputs_saved": 2000,
            "breakdown": {"rowcall": rowcall},
            "lambda": {},
            "aws_requests_by_caller_action": {"SaverFunction s3 PUT": 2000, "WorkerFunction s3 GET": 40},
        }

    off = run({"dynamodb": 0.5, "sqs": 0.3, "s3": 0.01, "sns": 0.0, "api_gateway": 1.0})
    # The "on" run's Lambda line is noise (3.0): only the saver's own time is added.
    on = run({"lambda": 3.0, "dynamodb": 0.9, "sqs": 0.5, "s3": 5.02, "sns": 0.0, "api_gateway": 1.0})
    on["lambda"] = {"SaverFunction": {"invocations": 200, "billed_ms": 100_000, "memory_mb": 1024}}
    figures = cost.with_outputs_saved(off, on)
    saver = 200 * 0.20 / 1e6 + 100 * 1.0 * 0.0000133334
    idle = 5 * 180 * 730 * 0.40 / 1e6
    assert figures["added_usd"]["s3"] == pytest.approx(5.01)
    assert figures["added_usd"]["saver_lambda"] == pytest.approx(saver * 1e6 / 2000, rel=1e-3)
    assert figures["added_usd"]["standing"] == pytest.approx(idle * 1e6 / cost_model.MONTHLY_ROWS)
    expected = off["breakdown"]["rowcall"]["total"] + 0.4 + 0.2 + 5.01 + saver * 500 + idle
    assert figures["with_usd"] == pytest.approx(expected, rel=1e-3)
    assert figures["saver_aws_requests_per_output"] == {"s3 PUT": 1.0}
    assert figures["saver_billed_ms_per_output"] == 50
