"""The pre-flight (contract §4): the technique's definition, read once per batch before any run,
checked against the file's input columns and static inputs; and the per-row checks it implies
(`missing_input`, `invalid_input_url`), applied alike by ingest, workers, row listing and results.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from threading import Lock
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from rowcall.csvsplit import CsvRecord
from rowcall.metadata import input_columns_of
from rowcall.models import URL_INPUT_TYPES, BatchSpec, InputType, RowError, RowRules

# A definition read once serves every batch of that technique in this container for this long:
# a burst of uploads costs one GET, and a changed definition is seen within minutes.
TECHNIQUE_TTL_S = 300
TECHNIQUE_CACHE_SIZE = 256
# A reason_detail is stored on the batch item; a file with thousands of wrong columns names the
# first of them and how many more.
MAX_PROBLEMS_SHOWN = 20


class TechniqueInput(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(min_length=1)
    name: str | None = None
    type: str
    optional: bool | None = None


class TechniqueDefinition(BaseModel):
    """`GET /techniques/{id}` (the SDK's TechniqueRetrieveResponse), as far as rowcall reads it."""

    model_config = ConfigDict(extra="allow", frozen=True)

    technique_id: str
    name: str | None = None
    inputs: list[TechniqueInput] = Field(default_factory=list)
    outputs: list[dict[str, object]] = Field(default_factory=list)
    run_cost: float | None = Field(default=None, ge=0)


@dataclass(frozen=True)
class TechniqueRefused:
    """The provider's permanent answer that no run of the batch can start: the batch's reason."""

    reason: str
    message: str


class TechniqueCache:
    """Definitions by technique id, per container, each kept TECHNIQUE_TTL_S. Refusals are not
    kept: a technique created or a key fixed a moment later is seen by the next upload."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._kept: OrderedDict[str, tuple[float, TechniqueDefinition]] = OrderedDict()
        self._lock = Lock()

    def get(self, technique_id: str) -> TechniqueDefinition | None:
        with self._lock:
            kept = self._kept.get(technique_id)
            if kept is None or self._clock() - kept[0] > TECHNIQUE_TTL_S:
                return None
            self._kept.move_to_end(technique_id)
            return kept[1]

    def put(self, definition: TechniqueDefinition) -> None:
        with self._lock:
            self._kept[definition.technique_id] = (self._clock(), definition)
            self._kept.move_to_end(definition.technique_id)
            while len(self._kept) > TECHNIQUE_CACHE_SIZE:
                self._kept.popitem(last=False)


@dataclass(frozen=True)
class InputPlan:
    """What the pre-flight decided: each input column's type, and the rows' rules."""

    input_types: dict[str, str]
    rules: RowRules


class InputsMismatch(ValueError):
    """The file's inputs do not fit the technique; the message names every problem."""


def plan_inputs(definition: TechniqueDefinition, header: list[str], spec: BatchSpec) -> InputPlan:
    """Checks the inputs a row will send (its input columns plus the static inputs) against the
    technique's declared inputs: required present, none unknown, types agreeing. A technique that
    declares none takes any columns, typed by `input-types` or as text."""
    columns = input_columns_of(header, spec)
    declared = {i.id: i for i in definition.inputs}
    if not declared:
        types = {c: spec.input_types.get(c, InputType.TEXT.value) for c in columns}
        return InputPlan(types, RowRules(urls=_url_columns(types)))
    problems: list[str] = []
    sent = {c: spec.input_types.get(c) for c in columns} | {s.id: s.type for s in spec.static_inputs}
    for input_id, technique_input in declared.items():
        if input_id not in sent and not technique_input.optional:
            problems.append(f"missing required input {input_id!r} ({technique_input.type})")
    for input_id, given_type in sent.items():
        wanted = declared.get(input_id)
        source = "static input" if input_id not in columns else "column"
        if wanted is None:
            problems.append(f"unknown input {input_id!r} ({source}): the technique has no such input")
        elif given_type is not None and given_type != wanted.type:
            where = "static-inputs" if source == "static input" else "input-types"
            problems.append(
                f"input {input_id!r} is {given_type} in {where}; the technique takes {wanted.type}"
            )
    if problems:
        known = ", ".join(f"{i.id} ({i.type}{', optional' if i.optional else ''})" for i in declared.values())
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = (
            f"; ... {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        )
        raise InputsMismatch(f"{shown}{more} (technique {definition.technique_id} takes: {known})")
    types = {c: declared[c].type for c in columns}
    required = tuple(c for c in columns if not declared[c].optional)
    return InputPlan(types, RowRules(required=required, urls=_url_columns(types)))


def _url_columns(types: dict[str, str]) -> tuple[str, ...]:
    url_types = {t.value for t in URL_INPUT_TYPES}
    return tuple(c for c, t in types.items() if t in url_types)


def is_https_url(value: str) -> bool:
    if value != value.strip() or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    return parts.scheme == "https" and bool(parts.hostname)


def row_checker(header: list[str], rules: RowRules | None) -> Callable[[CsvRecord], CsvRecord] | None:
    """The per-row check of a batch (None when it has no rules): a record of the right width
    whose required cell is empty or whose URL cell is not an absolute https URL becomes a
    skipped record with its row error."""
    if rules is None or not (rules.required or rules.urls):
        return None
    index = {name: i for i, name in enumerate(header)}
    required = [(c, index[c]) for c in rules.required if c in index]
    urls = [(c, index[c]) for c in rules.urls if c in index]

    def check(record: CsvRecord) -> CsvRecord:
        fields = record.fields
        if fields is None or len(fields) != len(header):
            return record
        error: RowError | None = None
        for column, at in required:
            if not fields[at].strip():
                message = f"line {record.line}: input {column!r} is required and its cell is empty"
                error = RowError(line=record.line, code="missing_input", message=message)
                break
        if error is None:
            for column, at in urls:
                value = fields[at]
                if value and not is_https_url(value):
                    shown = value if len(value) <= 80 else value[:77] + "..."
                    message = f"line {record.line}: input {column!r} is not an absolute https URL: {shown!r}"
                    error = RowError(line=record.line, code="invalid_input_url", message=message)
                    break
        if error is None:
            return record
        return CsvRecord(record.number, record.line, record.start, record.end, None, error)

    return check
