"""`rowcall demo`: one CSV through the local stack, watched from the outside as a user would."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.json import JSON
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from rowcall.signing import WebhookSigner
from rowcall_local.batch_api import BatchWatcher, is_terminal
from rowcall_local.stack import LocalStack, StackOptions
from rowcall_local.webhook_receiver import WebhookReceiver

POLL_S = 0.3
FIND_BATCH_S = 60.0
ON_DONE_WAIT_S = 30.0


class DemoFailed(Exception):
    pass


def _watch(watcher: BatchWatcher, console: Console, batch_id: str, timeout_s: float) -> dict[str, Any]:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("validating", total=None)

        def show(batch: dict[str, Any]) -> None:
            done = int(batch.get("completed_count") or 0) + int(batch.get("failed_count") or 0)
            progress.update(
                task, description=str(batch.get("status")), total=batch.get("total_count"), completed=done
            )

        return watcher.wait(batch_id, is_terminal, timeout_s, on_poll=show)


def _show_results(stack: LocalStack, console: Console, batch: Mapping[str, Any], rows: int = 5) -> None:
    bucket = stack.info["bucket"]
    key = (batch.get("results") or {}).get("csv_key") or f"results/{batch['batch_id']}/results.csv"
    console.print(f"results: [bold]s3://{bucket}/{key}[/bold]", soft_wrap=True)
    body = stack.aws.s3().get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8-sig")
    lines = body.splitlines()
    console.print(f"first {min(rows, max(len(lines) - 1, 0))} rows:")
    for line in lines[: rows + 1]:
        console.print(Text(line), no_wrap=True, overflow="ellipsis")


def _run(stack: LocalStack, csv_path: Path, console: Console, timeout_s: float) -> int:
    receiver = WebhookReceiver()
    try:
        key = f"uploads/{csv_path.name}"
        stack.aws.s3().put_object(
            Bucket=stack.info["bucket"],
            Key=key,
            Body=csv_path.read_bytes(),
            ContentType="text/csv",
            Metadata={"on-done-url": receiver.url + "/on-done", "batch-name": csv_path.stem},
        )
        console.print(f"uploaded [bold]{csv_path}[/bold] to s3://{stack.info['bucket']}/{key}")
        headers = {"Authorization": f"Bearer {stack.info['api_token']}"}
        with httpx.Client(base_url=stack.info["api_url"], headers=headers, timeout=30) as api:
            watcher = BatchWatcher(api, POLL_S)
            try:
                batch = watcher.find(key, FIND_BATCH_S)
                batch = _watch(watcher, console, str(batch["batch_id"]), timeout_s)
            except (TimeoutError, RuntimeError) as exc:
                raise DemoFailed(str(exc)) from None
        console.print(
            f"batch [bold]{batch['batch_id']}[/bold]: {batch['status']}"
            + (f" ({batch['reason']})" if batch.get("reason") else "")
        )
        try:
            delivery = receiver.wait_for(bool, timeout_s=ON_DONE_WAIT_S)[0]
        except AssertionError:
            raise DemoFailed(
                f"no on-done POST arrived within {ON_DONE_WAIT_S:.0f}s of the batch finishing"
            ) from None
        if not WebhookSigner(stack.info["webhook_secret"]).verify(delivery.headers, delivery.body):
            raise DemoFailed("the on-done POST's Standard Webhooks signature does not verify")
        console.print("on-done (signature verified):")
        console.print(JSON(delivery.body.decode()))
        if batch.get("status") in ("completed", "partial"):
            _show_results(stack, console, batch)
        return 0 if batch.get("status") in ("completed", "partial") else 1
    finally:
        receiver.close()


def run_demo(csv_path: Path, options: StackOptions, timeout_s: float = 300.0) -> int:
    console = Console()
    if not csv_path.is_file():
        console.print(f"[red]rowcall demo: no such CSV: {csv_path}[/red]")
        return 2
    stack = LocalStack(options)
    stack.logs_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        filename=stack.logs_dir / "runtime.log",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs request URLs at INFO; run callbacks carry their token in the URL.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        with console.status("starting the local stack..."):
            stack.start()
        console.print(f"local stack ready (logs in {stack.logs_dir})")
        return _run(stack, csv_path, console, timeout_s)
    except DemoFailed as exc:
        console.print(f"[red]rowcall demo failed: {exc}[/red] (logs in {stack.logs_dir})")
        return 1
    finally:
        with console.status("stopping the local stack..."):
            stack.stop()
