"""Provider requests per row, for each provider: one FLORA batch and one Replicate batch, at once on
one local stack, with no faults.

    .venv/bin/python bench/provider_requests.py [ROWS]        (default 200 rows per batch)

Each emulator counts what the pipeline asked of it (`GET {provider_url}/_stats`,
`GET {replicate_url}/_stats`): creates, single-run GETs and lists, and polls (GETs of a run not
yet finished). FLORA's webhook carries no outputs, so each row costs a create and a GET; Replicate's
carries the whole prediction, so a row costs its create alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.e2e_throughput import _on_done, make_csv
from rowcall_local.provider_emulator import ProviderFaults
from rowcall_local.stack import LocalStack, StackOptions
from rowcall_local.webhook_receiver import WebhookReceiver

RUN_MS = (200, 1000)
ON_DONE_TIMEOUT_S = 900.0
REPLICATE_MODEL = "bench/painter"
PROVIDERS = {"flora": "provider_url", "replicate": "replicate_url"}


def measure(rows: int = 200) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="rowcall-provider-requests-"))
    hook = WebhookReceiver()
    try:
        options = StackOptions(state_dir=state, provider_faults=ProviderFaults(delay_ms=RUN_MS, seed=5))
        with LocalStack(options) as stack:
            s3 = stack.aws.s3()
            for provider in PROVIDERS:
                metadata = {
                    "key-column": "sku",
                    "on-done-url": f"{hook.url}/done/{provider}",
                    "provider": provider,
                    "reuse": "off",
                }
                if provider == "replicate":
                    metadata["technique-id"] = REPLICATE_MODEL
                body = make_csv(rows, provider)
                s3.put_object(
                    Bucket=stack.info["bucket"], Key=f"uploads/{provider}.csv", Body=body, Metadata=metadata
                )
            done = {
                provider: _on_done(hook, f"/done/{provider}", ON_DONE_TIMEOUT_S) for provider in PROVIDERS
            }
            stats = {
                p: httpx.get(stack.info[key] + "/_stats", timeout=10).json() for p, key in PROVIDERS.items()
            }
    finally:
        hook.close()
    figures: dict[str, float] = {"provider_requests_rows": float(rows)}
    for provider, counts in stats.items():
        batch: dict[str, Any] = json.loads(done[provider].body)["data"]
        if (batch["status"], batch["completed_count"]) != ("completed", rows):
            raise RuntimeError(f"the {provider} batch ended {batch['status']}: {batch}")
        figures |= {
            f"{provider}_provider_requests_per_row": (counts["creates"] + counts["gets"] + counts["lists"])
            / rows,
            f"{provider}_creates_per_row": counts["creates"] / rows,
            f"{provider}_gets_per_row": counts["gets"] / rows,
            f"{provider}_lists_per_row": counts["lists"] / rows,
            f"{provider}_polls_per_row": counts["polls"] / rows,
        }
    return figures


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="?", type=int, default=200)
    args = parser.parse_args(argv)
    for name, value in measure(args.rows).items():
        print(f"{name:40s} {value:10.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
