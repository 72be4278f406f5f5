"""The upload's S3 user metadata (contract §3) -> BatchSpec, with a specific error for each mistake."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from rowcall.models import MAX_USD, PROVIDERS, BatchSpec, InputType, ProviderName, RunInput
from rowcall.outbound import DestinationPolicy

_static_input = TypeAdapter(RunInput)
_known_types = {t.value for t in InputType}
# BatchSpec field -> the metadata key a user wrote, so a refusal names what they can fix.
_METADATA_KEY = {
    "technique_id": "technique-id",
    "key_column": "key-column",
    "input_columns": "input-columns",
    "input_types": "input-types",
    "static_inputs": "static-inputs",
    "on_done_url": "on-done-url",
    "name": "batch-name",
    "max_cost_usd": "max-cost-usd",
    "reuse": "reuse",
    "save_outputs": "save-outputs",
    "max_failed_percent": "max-failed-percent",
    "provider": "provider",
}
_SWITCHES = {"on": True, "off": False}


class SpecDefaults(BaseModel):
    """What a batch gets for a §3 key its upload leaves out: the stack's parameters
    (`MaxBatchCostUsd`, `ReuseCompletedRows`, `SaveOutputs`, `DefaultProvider`)."""

    model_config = ConfigDict(frozen=True)

    max_cost_usd: float | None = Field(default=None, ge=0, le=MAX_USD)
    reuse: bool = True
    save_outputs: bool = True
    provider: ProviderName = "flora"


class InvalidMetadata(ValueError):
    """The metadata cannot describe a batch; the batch fails with reason `invalid_metadata`.

    Every message starts with the metadata key at fault (`input-types: ...`)."""


def _columns(raw: str) -> tuple[str, ...]:
    columns = tuple(c.strip() for c in raw.split(";") if c.strip())
    if not columns:
        raise InvalidMetadata(f"input-columns: {raw!r} names no column (write col1;col2)")
    return columns


def _types(raw: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(";"))):
        column, sep, value = part.partition("=")
        if not sep or not column.strip() or not value.strip():
            raise InvalidMetadata(f"input-types: {part!r} is not column=type (e.g. photo=imageUrl)")
        pairs[column.strip()] = value.strip()
    unknown = sorted(t for t in pairs.values() if t not in _known_types)
    if unknown:
        raise InvalidMetadata(f"input-types: unknown type(s) {unknown}; known: {sorted(_known_types)}")
    return pairs


def _static_inputs(raw: str) -> tuple[RunInput, ...]:
    try:
        parsed: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidMetadata(f"static-inputs: not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(parsed, list):
        raise InvalidMetadata(
            f"static-inputs: must be a JSON list of {{id, type, value}} objects, not {_json_kind(parsed)}"
        )
    inputs: list[RunInput] = []
    for index, entry in enumerate(parsed):
        try:
            inputs.append(_static_input.validate_python(entry))
        except ValidationError as exc:
            raise InvalidMetadata(f"static-inputs[{index}]: {_describe(exc)}") from None
    ids = [i.id for i in inputs]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise InvalidMetadata(f"static-inputs: id(s) {repeated} appear more than once")
    return tuple(inputs)


def _switch(key: str, raw: str | None, default: bool) -> bool:
    if raw is None or not raw.strip():
        return default
    value = _SWITCHES.get(raw.strip().lower())
    if value is None:
        raise InvalidMetadata(f"{key}: {raw!r} is neither on nor off")
    return value


def _amount(key: str, raw: str | None, *, most: float | None = None) -> float | None:
    """A non-negative finite number (at most `most`), or None when the key is absent."""
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        raise InvalidMetadata(f"{key}: {raw!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidMetadata(f"{key}: {raw!r} is not a finite number")
    if value < 0:
        raise InvalidMetadata(f"{key}: {raw!r} is negative")
    if most is not None and value > most:
        raise InvalidMetadata(f"{key}: {raw!r} is over {most:,.0f}")
    return value


def _provider(raw: str | None, default: ProviderName) -> ProviderName:
    if raw is None or not raw.strip():
        return default
    for name in PROVIDERS:
        if raw.strip().lower() == name:
            return name
    raise InvalidMetadata(f"provider: {raw!r} is not one of {list(PROVIDERS)}")


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return kinds.get(type(value), "null")


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"] for e in exc.errors()
    )


def spec_from_metadata(
    metadata: Mapping[str, str],
    *,
    key: str,
    default_technique_id: str,
    destinations: DestinationPolicy | None = None,
    defaults: SpecDefaults | None = None,
) -> BatchSpec:
    """What can be checked without the file; `check_header` checks the rest against the header.

    With `destinations`, the on-done URL must also be one a webhook may go to (https to public
    addresses; its host is resolved): refused here, the batch never sends to it."""
    meta = {k.lower().removeprefix("x-amz-meta-"): v for k, v in metadata.items()}
    stack = defaults or SpecDefaults()
    max_cost = _amount("max-cost-usd", meta.get("max-cost-usd"), most=MAX_USD)
    try:
        spec = BatchSpec(
            technique_id=meta.get("technique-id") or default_technique_id,
            key_column=meta.get("key-column", "").strip() or None,
            input_columns=_columns(meta["input-columns"]) if meta.get("input-columns") else None,
            input_types=_types(meta.get("input-types", "")),
            static_inputs=_static_inputs(meta["static-inputs"]) if meta.get("static-inputs") else (),
            on_done_url=meta.get("on-done-url") or None,
            name=meta.get("batch-name") or key,
            max_cost_usd=stack.max_cost_usd if max_cost is None else max_cost,
            reuse=_switch("reuse", meta.get("reuse"), stack.reuse),
            save_outputs=_switch("save-outputs", meta.get("save-outputs"), stack.save_outputs),
            max_failed_percent=_amount("max-failed-percent", meta.get("max-failed-percent"), most=100),
            provider=_provider(meta.get("provider"), stack.provider),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _METADATA_KEY.get(str(first["loc"][0]), str(first["loc"][0])) if first["loc"] else "metadata"
        raise InvalidMetadata(f"{field}: {first['msg'].removeprefix('Value error, ')}") from None
    if destinations is not None and spec.on_done_url is not None:
        problem = destinations.upload_problem(spec.on_done_url)
        if problem is not None:
            raise InvalidMetadata(f"on-done-url: {problem}")
    return spec


class InvalidHeader(ValueError):
    """The header row cannot drive the batch; the batch fails with reason `invalid_header`."""


def check_header(header: list[str], spec: BatchSpec) -> None:
    """The header itself (InvalidHeader), then the metadata's columns against it (InvalidMetadata)."""
    names = [h.strip() for h in header]
    if any(not n for n in names):
        raise InvalidHeader(f"column {names.index('') + 1} has no name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidHeader(f"duplicate column names {duplicates}")
    present = _listed(header)
    if spec.key_column is not None and spec.key_column not in header:
        raise InvalidMetadata(f"key-column: {spec.key_column!r} is not a column of the header ({present})")
    for field, columns in (("input-columns", spec.input_columns or ()), ("input-types", spec.input_types)):
        missing = sorted(c for c in columns if c not in header)
        if missing:
            raise InvalidMetadata(f"{field}: {missing} not column(s) of the header ({present})")
    inputs = input_columns_of(header, spec)
    if not inputs:
        raise InvalidMetadata(
            f"key-column: {spec.key_column!r} is the only column; no column is left to send as an input"
        )
    clashing = sorted({s.id for s in spec.static_inputs} & set(inputs))
    if clashing:
        raise InvalidMetadata(f"static-inputs: id(s) {clashing} are also input columns of the file")


def _listed(header: list[str], most: int = 10) -> str:
    """The header's names for a message, capped: a message is stored with the batch."""
    shown = ", ".join(h[:40] for h in header[:most])
    return shown if len(header) <= most else f"{shown}, ... {len(header)} columns"


def input_columns_of(header: list[str], spec: BatchSpec) -> list[str]:
    if spec.input_columns is not None:
        return list(spec.input_columns)
    return [c for c in header if c != spec.key_column]


def row_inputs(header: list[str], fields: list[str], spec: BatchSpec) -> list[RunInput]:
    """One row's run inputs: its input columns in header order, then the static inputs."""
    by_name = dict(zip(header, fields, strict=True))
    inputs = [
        RunInput(id=c, type=spec.input_types.get(c, InputType.TEXT.value), value=by_name[c])
        for c in input_columns_of(header, spec)
    ]
    return inputs + list(spec.static_inputs)


# The key is stored on the row's ledger item, which DynamoDB caps at 400 KB: a 1 MB cell in the
# key column would fail that write on every redelivery and strand the batch. The key only names
# the row (results.csv keeps the full cell, idempotency uses the row id), so a long one is cut.
MAX_KEY_CHARS = 1024


def row_key(header: list[str], fields: list[str], spec: BatchSpec, record: int) -> str:
    if spec.key_column is None:
        return str(record)
    key = fields[header.index(spec.key_column)]
    if len(key) <= MAX_KEY_CHARS:
        return key
    kept = MAX_KEY_CHARS - 32
    return f"{key[:kept]}… (+{len(key) - kept:,} characters)"
