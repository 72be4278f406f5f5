"""`rowcall`: the command line of contract §8, for the local stack (default) or a deployed one (--stack).

Exit codes: 0 success; 1 an error (one line on stderr: API refusal, unknown batch, stack not
running, network); 2 bad arguments; 3 `submit --wait` saw the batch end other than `completed`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.table import Table

from rowcall_client import ui as status_page
from rowcall_client.api import ApiError, RowcallApi
from rowcall_client.progress import cost_summary, counts, watch
from rowcall_client.submit import find_batch, upload
from rowcall_client.target import StackTarget, TargetError, deployed_target, local_target

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_COMPLETED = 3
DEFAULT_STATE_DIR = Path(".rowcall")

# Piped, there is no width to fit: rich's default of 80 columns would cut ids short.
out = Console(highlight=False, markup=False, soft_wrap=True, width=None if sys.stdout.isatty() else 4096)
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)

app = typer.Typer(
    name="rowcall",
    help="rowcall: submit, watch and manage CSV batches on the local stack or a deployed one (--stack).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


BatchId = Annotated[str, typer.Argument(metavar="ID", help="a batch id (rowcall list shows them)")]
AsJson = Annotated[bool, typer.Option("--json", help="print the API's JSON as it is")]
Cursor = Annotated[str | None, typer.Option("--cursor", help="next_cursor of a previous page")]


class CliError(Exception):
    """A refusal of the command line itself, reported as one line like every other error."""


@dataclass
class Options:
    stack: str | None
    region: str | None
    state_dir: Path
    state_dir_given: bool

    def target(self) -> StackTarget:
        if self.stack:
            return deployed_target(self.stack, self.region)
        return local_target(self.state_dir)

    def api(self) -> RowcallApi:
        return self.target().api()


def _options(ctx: typer.Context) -> Options:
    options: Options = ctx.ensure_object(Options)
    return options


@app.callback()
def main_options(
    ctx: typer.Context,
    stack: Annotated[
        str | None, typer.Option("--stack", help="a deployed stack's name (CloudFormation); SigV4 auth")
    ] = None,
    region: Annotated[str | None, typer.Option("--region", help="AWS region of --stack")] = None,
    state_dir: Annotated[
        Path,
        typer.Option("--state-dir", envvar="ROWCALL_STATE_DIR", help="the local stack's state directory"),
    ] = DEFAULT_STATE_DIR,
) -> None:
    source = ctx.get_parameter_source("state_dir")
    given = source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")
    ctx.obj = Options(stack=stack, region=region, state_dir=state_dir, state_dir_given=given)


def _show(table: Table) -> None:
    out.print(table)


def _print_json(value: Any) -> None:
    # Plain print, not rich: `--json` must be exactly the API's JSON, never wrapped or highlighted.
    print(json.dumps(value, indent=2))


# -- the local stack: `rowcall up` / `rowcall demo` are the local runtime's own command line --------

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _local_runtime(ctx: typer.Context, command: str) -> None:
    try:
        from rowcall_local import cli as local_cli
    except ImportError:
        raise CliError(f"`rowcall {command}` needs the local runtime: pip install 'rowcall[local]'") from None
    args = [command, *ctx.args]
    options = _options(ctx)
    if options.state_dir_given and "--state-dir" not in ctx.args:
        args += ["--state-dir", str(options.state_dir)]
    raise typer.Exit(local_cli.main(args))


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def up(ctx: typer.Context) -> None:
    """Run the local stack until Ctrl-C (flags: `rowcall up --help`)."""
    _local_runtime(ctx, "up")


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def demo(ctx: typer.Context) -> None:
    """Start the local stack, run one CSV through it, stop (flags: `rowcall demo --help`)."""
    _local_runtime(ctx, "demo")


# -- batches ---------------------------------------------------------------------------------------


def _split(raw: str | None, option: str) -> list[str] | None:
    if raw is None:
        return None
    parts = [p.strip() for p in raw.split(";") if p.strip()]
    if not parts:
        raise CliError(f"{option}: {raw!r} names no column (write col1;col2)")
    return parts


def _types(raw: str | None) -> dict[str, str] | None:
    if raw is None:
        return None
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(";"))):
        column, sep, kind = part.partition("=")
        if not sep or not column.strip() or not kind.strip():
            raise CliError(f"--input-types: {part!r} is not column=type (e.g. photo=imageUrl)")
        pairs[column.strip()] = kind.strip()
    return pairs


def _static(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CliError(f"--static-inputs: not JSON ({exc.msg} at character {exc.pos})") from None


def _on_off(raw: str | None, option: str) -> str | None:
    if raw is None:
        return None
    if raw.strip().lower() not in ("on", "off"):
        raise CliError(f"{option}: {raw!r} is neither on nor off")
    return raw.strip().lower()


@app.command()
def submit(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="the CSV to upload", dir_okay=False)],
    technique: Annotated[str | None, typer.Option("--technique", help="technique id per row")] = None,
    key_column: Annotated[str | None, typer.Option("--key-column", help="column naming a row")] = None,
    input_columns: Annotated[
        str | None, typer.Option("--input-columns", help="only these columns are inputs: col1;col2")
    ] = None,
    input_types: Annotated[
        str | None, typer.Option("--input-types", help="col=imageUrl;col2=videoUrl (default text)")
    ] = None,
    static_inputs: Annotated[
        str | None, typer.Option("--static-inputs", help='JSON list: [{"id","type","value"}]')
    ] = None,
    on_done_url: Annotated[
        str | None, typer.Option("--on-done-url", help="receives the signed on-done webhook")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="the batch's display name")] = None,
    provider: Annotated[str | None, typer.Option("--provider", help="flora or replicate")] = None,
    max_cost_usd: Annotated[
        float | None, typer.Option("--max-cost-usd", min=0, help="the batch's budget in USD")
    ] = None,
    reuse: Annotated[
        str | None, typer.Option("--reuse", help="on/off: complete unchanged rows from earlier batches")
    ] = None,
    save_outputs: Annotated[
        str | None, typer.Option("--save-outputs", help="on/off: copy every output into the bucket")
    ] = None,
    max_failed_percent: Annotated[
        float | None,
        typer.Option("--max-failed-percent", min=0, max=100, help="pause once more than this % failed"),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="show progress until it ends; 0 only if completed")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="with --wait: give up after this many seconds")
    ] = None,
) -> None:
    """Upload FILE under uploads/ with the batch's metadata and print the batch id."""
    if not file.is_file():
        raise CliError(f"{file}: no such file")
    metadata = {
        "technique_id": technique,
        "key_column": key_column,
        "input_columns": _split(input_columns, "--input-columns"),
        "input_types": _types(input_types),
        "static_inputs": _static(static_inputs),
        "on_done_url": on_done_url,
        "batch_name": name,
        "provider": provider,
        "max_cost_usd": max_cost_usd,
        "reuse": _on_off(reuse, "--reuse"),
        "save_outputs": _on_off(save_outputs, "--save-outputs"),
        "max_failed_percent": max_failed_percent,
    }
    with _options(ctx).api() as api:
        grant = upload(api, file, **metadata)
        batch = find_batch(api, grant["key"], timeout_s=60)
        print(batch["batch_id"], flush=True)
        if not wait:
            return
        try:
            final = watch(api, batch["batch_id"], err, timeout_s=timeout)
        except TimeoutError as exc:
            raise CliError(str(exc)) from None
    done, failed, total = counts(final)
    reason = f" ({final['reason']})" if final.get("reason") else ""
    err.print(
        f"{final['batch_id']}: {final['status']}{reason}: {done} done, {failed} failed of {total}"
        f"{cost_summary(final)}"
    )
    if final.get("reason_detail"):
        err.print(f"  {final['reason_detail']}")
    if final["status"] != "completed":
        raise typer.Exit(EXIT_NOT_COMPLETED)


def _progress(batch: dict[str, Any]) -> str:
    done, failed, total = counts(batch)
    return f"{done}/{failed}/{'?' if total is None else total}"


@app.command("list")
def list_batches(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="batches per page")] = 20,
    cursor: Cursor = None,
    as_json: AsJson = False,
) -> None:
    """Batches, newest first."""
    with _options(ctx).api() as api:
        page = api.list_batches(limit=limit, cursor=cursor)
    if as_json:
        _print_json(page)
        return
    table = Table(box=None)
    table.add_column("batch_id", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("provider", no_wrap=True)
    table.add_column("done/failed/total", no_wrap=True)
    table.add_column("created_at", no_wrap=True)
    for batch in page.get("items", []):
        table.add_row(
            batch.get("batch_id"),
            batch.get("name"),
            batch.get("status"),
            batch.get("provider") or "-",
            _progress(batch),
            batch.get("created_at"),
        )
    _show(table)
    _more(page, "rowcall list")


@app.command()
def status(
    ctx: typer.Context,
    batch_id: BatchId,
    as_json: AsJson = False,
) -> None:
    """One batch."""
    with _options(ctx).api() as api:
        batch = api.get_batch(batch_id)
    if as_json:
        _print_json(batch)
        return
    table = Table(show_header=False, box=None)
    for field, value in batch.items():
        shown = (
            json.dumps(value) if isinstance(value, dict | list) else ("-" if value is None else str(value))
        )
        table.add_row(field, shown)
    _show(table)


@app.command()
def rows(
    ctx: typer.Context,
    batch_id: BatchId,
    status: Annotated[
        str | None, typer.Option("--status", help="pending | running | completed | failed")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, max=100, help="rows per page")] = None,
    cursor: Cursor = None,
    as_json: AsJson = False,
) -> None:
    """A batch's rows, in file order."""
    with _options(ctx).api() as api:
        page = api.rows(batch_id, status=status, limit=limit, cursor=cursor)
    if as_json:
        _print_json(page)
        return
    table = Table(box=None)
    for column in ("row_id", "line", "key", "status", "attempt", "run_id"):
        table.add_column(column, no_wrap=column != "key", overflow="fold")
    table.add_column("error", overflow="fold")
    for row in page.get("items", []):
        error = ": ".join(str(row[k]) for k in ("error_code", "error_message") if row.get(k))
        table.add_row(
            *(
                str(row.get(k) if row.get(k) is not None else "-")
                for k in ("row_id", "line", "key", "status")
            ),
            str(row.get("attempt") or "-"),
            str(row.get("run_id") or "-"),
            error or "-",
        )
    _show(table)
    _more(page, f"rowcall rows {batch_id}")


@app.command()
def errors(
    ctx: typer.Context,
    batch_id: BatchId,
    limit: Annotated[int | None, typer.Option("--limit", min=1, max=100, help="errors per page")] = None,
    cursor: Cursor = None,
    as_json: AsJson = False,
) -> None:
    """A batch's CSV validation errors (rows skipped)."""
    with _options(ctx).api() as api:
        page = api.row_errors(batch_id, limit=limit, cursor=cursor)
    if as_json:
        _print_json(page)
        return
    table = Table("line", "code", "message", box=None)
    for error in page.get("items", []):
        table.add_row(str(error.get("line")), str(error.get("code")), str(error.get("message")))
    _show(table)
    _more(page, f"rowcall errors {batch_id}")


def _more(page: dict[str, Any], command: str) -> None:
    if page.get("next_cursor"):
        err.print(f"more: {command} --cursor {page['next_cursor']}")


@app.command()
def results(
    ctx: typer.Context,
    batch_id: BatchId,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write here (default stdout)")] = None,
) -> None:
    """Download the batch's results.csv."""
    target = _options(ctx).target()
    with target.api() as api:
        batch = api.get_batch(batch_id)
    key = (batch.get("results") or {}).get("csv_key")
    if not key:
        raise CliError(f"batch {batch_id} has no results yet (status {batch.get('status')})")
    try:
        body = target.s3().get_object(Bucket=target.bucket, Key=key)["Body"]
        if output is None:
            shutil.copyfileobj(body, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            with output.open("wb") as file:
                shutil.copyfileobj(body, file)
            err.print(f"{output}: results of batch {batch_id} (s3://{target.bucket}/{key})")
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise CliError(f"s3://{target.bucket}/{key}: {error.get('Code')}: {error.get('Message')}") from None


@app.command()
def outputs(
    ctx: typer.Context,
    batch_id: BatchId,
    output: Annotated[Path, typer.Option("-o", "--output", help="directory to download into")],
) -> None:
    """Download the batch's saved outputs into DIR, as under outputs/{batch_id}/ in the bucket."""
    target = _options(ctx).target()
    with target.api() as api:
        batch = api.get_batch(batch_id)
    prefix = f"outputs/{batch_id}/"
    root = output.resolve()
    s3 = target.s3()
    count = size = 0
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                relative = entry["Key"][len(prefix) :]
                destination = (root / relative).resolve()
                if not relative or not destination.is_relative_to(root):
                    continue  # never written outside DIR, whatever a key says
                destination.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(target.bucket, entry["Key"], str(destination))
                count += 1
                size += entry["Size"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise CliError(
            f"s3://{target.bucket}/{prefix}: {error.get('Code')}: {error.get('Message')}"
        ) from None
    status = batch.get("status")
    err.print(f"{output}: {count} saved outputs of batch {batch_id} ({size} bytes, status {status})")


def _act(
    ctx: typer.Context,
    batch_id: str,
    as_json: bool,
    action: str,
    row_ids: list[str] | None = None,
    max_cost_usd: float | None = None,
) -> None:
    with _options(ctx).api() as api:
        if action == "reprocess":
            answer = api.reprocess(batch_id, row_ids)
        elif action == "cancel":
            answer = api.cancel(batch_id)
        else:
            answer = api.resume(batch_id, max_cost_usd)
    if as_json:
        _print_json(answer)
        return
    out.print(f"{answer.get('batch_id', batch_id)}: {action} accepted, status {answer.get('status', '-')}")


@app.command()
def reprocess(
    ctx: typer.Context,
    batch_id: BatchId,
    row_ids: Annotated[
        str | None, typer.Option("--rows", help="R1,R2: these rows (default: every failed row)")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Run rows again: the named ones, or every failed row."""
    chosen = None if row_ids is None else [r.strip() for r in row_ids.split(",") if r.strip()]
    if chosen is not None and not chosen:
        raise CliError("--rows: name at least one row id (R1,R2)")
    _act(ctx, batch_id, as_json, "reprocess", chosen)


@app.command()
def cancel(
    ctx: typer.Context,
    batch_id: BatchId,
    as_json: AsJson = False,
) -> None:
    """Cancel a batch: in-flight rows finish, nothing new starts."""
    _act(ctx, batch_id, as_json, "cancel")


@app.command()
def resume(
    ctx: typer.Context,
    batch_id: BatchId,
    max_cost_usd: Annotated[
        float | None,
        typer.Option(
            "--max-cost-usd", min=0, help="set the budget first (approves a batch paused over_budget)"
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Resume a paused batch."""
    _act(ctx, batch_id, as_json, "resume", max_cost_usd=max_cost_usd)


# -- the status page (rowcall_client.ui) -----------------------------------------------------------


@app.command()
def ui(
    ctx: typer.Context,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="port on 127.0.0.1 (0: any free one)")
    ] = status_page.DEFAULT_PORT,
) -> None:
    """Serve the stack's status page on 127.0.0.1 until Ctrl-C."""
    target = _options(ctx).target()
    try:
        status_page.serve(target, port, lambda url: print(f"rowcall ui: {url}", flush=True))
    except OSError as exc:
        raise CliError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror or exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; every failure is one line on stderr and a non-zero exit, never a traceback."""
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    try:
        result = app(args=args, prog_name="rowcall", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        err.print("rowcall: aborted")
        return EXIT_ERROR
    except typer.TyperException as exc:
        # typer's own click: UsageError, BadParameter, NoSuchOption... each formats its one message.
        format_message = getattr(exc, "format_message", None)
        message = format_message() if callable(format_message) else str(exc)
        err.print(f"rowcall: {message} (see rowcall --help)")
        return EXIT_USAGE
    except (ApiError, TargetError, CliError) as exc:
        err.print(f"rowcall: {exc}")
        return EXIT_ERROR
    except BrokenPipeError:
        # `rowcall results ID | head`: the reader left; Python's docs' way to exit without a complaint.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (BotoCoreError, ClientError, OSError) as exc:
        err.print(f"rowcall: {type(exc).__name__}: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.print("rowcall: interrupted")
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
