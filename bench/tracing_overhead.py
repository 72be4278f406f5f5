"""What tracing costs an invocation: the same handler (Powertools `Tracer` as the functions build it,
20 DynamoDB calls against a moto server) run untraced, traced and not sampled (Lambda's usual case:
its default rule samples 1 a second and 5% more), and traced and sampled, sending to the local
X-Ray daemon stand-in. Run: `.venv/bin/python bench/tracing_overhead.py` (prints JSON).

Each mode runs in its own interpreter: Powertools keeps its tracer configuration per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CALLS = 20
INVOCATIONS = 100

_CHILD = r"""
import json, os, sys, time
mode, endpoint, calls, invocations = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from aws_lambda_powertools import Tracer
from rowcall.tracing import TRACED_MODULES
from rowcall_local.xray_daemon import TraceContext
import boto3
tracer = Tracer(patch_modules=TRACED_MODULES)
client = boto3.client("dynamodb", endpoint_url=endpoint)

@tracer.capture_lambda_handler
def handler(event, context):
    for _ in range(calls):
        client.get_item(TableName="t", Key={"pk": {"S": "x"}})

class Context:
    function_name = "f"; memory_limit_in_mb = 128; invoked_function_arn = "arn"; aws_request_id = "r"

handler({}, Context())  # warm: imports, connections
took = []
for _ in range(invocations):
    os.environ["_X_AMZN_TRACE_ID"] = TraceContext.new(mode == "sampled").header
    started = time.perf_counter()
    handler({}, Context())
    took.append(time.perf_counter() - started)
took.sort()
median, p90 = took[len(took) // 2], took[int(len(took) * 0.9)]
print(json.dumps({"median_ms": round(1000 * median, 1), "p90_ms": round(1000 * p90, 1)}))
"""


def main() -> None:
    import logging

    from moto.server import ThreadedMotoServer

    from rowcall_local.xray_daemon import XRayDaemon

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    import boto3

    ddb = boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ddb.create_table(
        TableName="t",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
    )
    with tempfile.TemporaryDirectory() as scratch:
        daemon = XRayDaemon(Path(scratch) / "xray.jsonl")
        address = daemon.start()
        lambda_env = {**env, "LAMBDA_TASK_ROOT": scratch, "AWS_LAMBDA_FUNCTION_NAME": "f"}
        modes = {
            "untraced": {**lambda_env, "POWERTOOLS_TRACE_DISABLED": "true"},
            "not_sampled": {**lambda_env, "AWS_XRAY_DAEMON_ADDRESS": address},
            "sampled": {**lambda_env, "AWS_XRAY_DAEMON_ADDRESS": address},
        }
        results: dict[str, object] = {"calls_per_invocation": CALLS, "invocations": INVOCATIONS}
        for mode, mode_env in modes.items():
            started = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, mode, endpoint, str(CALLS), str(INVOCATIONS)],
                env=mode_env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[mode] = json.loads(out.strip().splitlines()[-1])
            results[mode]["wall_s"] = round(time.perf_counter() - started, 1)  # type: ignore[index]
        daemon.stop()
        results["datagrams_received"] = daemon.received
    server.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
