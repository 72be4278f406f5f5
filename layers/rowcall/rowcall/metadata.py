"""The upload's S3 user metadata (contract §3) -> BatchSpec, with a specific error for each mistake."""

from __future__ import annotations

import json
from collections.abc import Mapping

from pydantic import TypeAdapter, ValidationError

from rowcall.models import BatchSpec, InputType, RunInput

_static_inputs = TypeAdapter(list[RunInput])
_known_types = {t.value for t in InputType}


class InvalidMetadata(ValueError):
    """The metadata cannot describe a batch; the batch fails with reason `invalid_metadata`."""


def _pairs(raw: str, what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(";"))):
        column, sep, value = part.partition("=")
        if not sep or not column.strip() or not value.strip():
            raise InvalidMetadata(f"{what}: {part!r} is not column=type")
        pairs[column.strip()] = value.strip()
    return pairs


def spec_from_metadata(metadata: Mapping[str, str], *, key: str, default_technique_id: str) -> BatchSpec:
    meta = {k.lower().removeprefix("x-amz-meta-"): v for k, v in metadata.items()}
    input_columns = None
    if meta.get("input-columns"):
        input_columns = tuple(c.strip() for c in meta["input-columns"].split(";") if c.strip())
    input_types = _pairs(meta.get("input-types", ""), "input-types")
    unknown = sorted(t for t in input_types.values() if t not in _known_types)
    if unknown:
        raise InvalidMetadata(f"input-types: unknown type(s) {unknown}; known: {sorted(_known_types)}")
    static_inputs: list[RunInput] = []
    if meta.get("static-inputs"):
        try:
            static_inputs = _static_inputs.validate_python(json.loads(meta["static-inputs"]))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise InvalidMetadata(f"static-inputs: not a JSON list of {{id,type,value}}: {exc}") from None
    try:
        return BatchSpec(
            technique_id=meta.get("technique-id") or default_technique_id,
            key_column=meta.get("key-column") or None,
            input_columns=input_columns,
            input_types=input_types,
            static_inputs=tuple(static_inputs),
            on_done_url=meta.get("on-done-url") or None,
            name=meta.get("batch-name") or key,
        )
    except ValidationError as exc:
        raise InvalidMetadata("; ".join(e["msg"] for e in exc.errors())) from None


class InvalidHeader(ValueError):
    """The header row cannot drive the batch; the batch fails with reason `invalid_header`."""


def check_header(header: list[str], spec: BatchSpec) -> None:
    names = [h.strip() for h in header]
    if any(not n for n in names):
        raise InvalidHeader(f"column {names.index('') + 1} has no name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidHeader(f"duplicate column names {duplicates}")
    wanted = [spec.key_column] if spec.key_column else []
    wanted += list(spec.input_columns or ()) + list(spec.input_types)
    missing = sorted({c for c in wanted if c not in header})
    if missing:
        raise InvalidHeader(f"metadata names columns the header lacks: {missing}")
    if not input_columns_of(header, spec):
        raise InvalidHeader("no column is left to send as an input")


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


def row_key(header: list[str], fields: list[str], spec: BatchSpec, record: int) -> str:
    if spec.key_column is None:
        return str(record)
    return fields[header.index(spec.key_column)]
