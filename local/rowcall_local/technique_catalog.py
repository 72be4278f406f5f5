"""The provider emulator's technique catalog (contract §5): definitions as FLORA's
`GET /techniques/{id}` answers them (the SDK's TechniqueRetrieveResponse), and FLORA's check of
a run's inputs against a definition (400 `input_validation_error` with `fields`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

MediaType = Literal["imageUrl", "videoUrl", "audioUrl", "text", "documentUrl"]
DEFAULT_RUN_COST_USD = 0.04
MISSING_PREFIX = "missing-"


class TechniqueField(BaseModel):
    """One input or output (the SDK's TechniqueRetrieveResponse.Input / .Output)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    name: str
    type: MediaType
    accepts_element: bool | None = None
    allow_multiple: bool | None = None
    description: str | None = None
    optional: bool | None = None
    specified_aspect_ratio: str | None = None
    specified_duration: float | None = None


class Technique(BaseModel):
    """The SDK's TechniqueRetrieveResponse: optional fields are omitted on the wire, not null."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    technique_id: str = Field(min_length=1)
    name: str
    description: str | None = None
    inputs: list[TechniqueField]
    outputs: list[TechniqueField]
    run_cost: float = Field(ge=0)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


_catalog_file = TypeAdapter(list[Technique])


def load_catalog(path: Path) -> tuple[Technique, ...]:
    """The JSON list of definitions in `path`; ValueError says what is wrong with it."""
    try:
        techniques = _catalog_file.validate_json(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{path}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    ids = [t.technique_id for t in techniques]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"{path}: technique ids {repeated} appear more than once")
    return tuple(techniques)


class Catalog:
    """Catalog techniques by id; any other id but `missing-*` is an open technique (no declared
    inputs, one imageUrl output) at the default run cost."""

    def __init__(
        self, techniques: Iterable[Technique] = (), run_cost_usd: float = DEFAULT_RUN_COST_USD
    ) -> None:
        self._known = {t.technique_id: t for t in techniques}
        self.run_cost_usd = run_cost_usd

    def find(self, technique_id: str) -> Technique | None:
        if technique_id.startswith(MISSING_PREFIX):
            return None
        known = self._known.get(technique_id)
        if known is not None:
            return known
        return Technique(
            technique_id=technique_id,
            name=technique_id,
            inputs=[],
            outputs=[TechniqueField(id="output_0", name="Image", type="imageUrl")],
            run_cost=self.run_cost_usd,
        )

    def declared(self, technique_id: str) -> Technique | None:
        """A catalog technique (one whose inputs are checked), else None."""
        return self._known.get(technique_id)


def input_problems(technique: Technique, inputs: Sequence[tuple[str, str, str]]) -> dict[str, str]:
    """FLORA's check of a run's (id, type, value) inputs: each required input present, none
    unknown, each of its declared type. Input id -> what is wrong; empty when it passes."""
    declared = {f.id: f for f in technique.inputs}
    given: dict[str, tuple[str, str]] = {}
    problems: dict[str, str] = {}
    for input_id, kind, value in inputs:
        if input_id in given:
            problems[input_id] = "given more than once"
        given[input_id] = (kind, value)
    for input_id, (kind, value) in given.items():
        spec = declared.get(input_id)
        if spec is None:
            problems.setdefault(input_id, f"not an input of technique {technique.technique_id}")
        elif kind != spec.type:
            problems.setdefault(input_id, f"must be of type {spec.type}, not {kind}")
        elif not value and not spec.optional:
            problems.setdefault(input_id, "is required and empty")
    for spec in technique.inputs:
        if spec.id not in given and not spec.optional:
            problems[spec.id] = "is required"
    return problems


def catalog_json(techniques: Iterable[Technique]) -> str:
    return json.dumps([t.wire() for t in techniques], indent=2)
