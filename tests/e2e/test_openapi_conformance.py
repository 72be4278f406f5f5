"""schemathesis over the committed OpenAPI document against the real local stack: no 5xx, every
status documented, every answer matching its schema and content type. Path parameters are drawn
from what the schema allows and from a batch (and its rows) that exist, so the 200 answers are
checked too, not only the 404s. The callback route gets fuzzed bodies without a valid token:
401, never 5xx."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
# Per operation; with the explicit examples and coverage phases this keeps the module under a
# minute on the shared two-core machine.
MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(tmp_path_factory.mktemp("rowcall-openapi"), "--provider-delay-ms", "5:60") as started:
        yield started


@pytest.fixture(scope="module")
def known(stack: LocalStack) -> dict[str, str]:
    """A finished batch with rows and a row error, so generated requests can name real ids."""
    key = "uploads/openapi.csv"
    body = b"sku,prompt\nA,a\nB,b\nbad\nC,c\n"
    stack.s3.put_object(
        Bucket=stack.info["bucket"], Key=key, Body=body, Metadata={"reuse": "off", "key-column": "sku"}
    )
    batch_id = stack.batch_for(key)["batch_id"]
    stack.wait_terminal(batch_id, timeout_s=60)
    with stack.api as api:
        row_id = api.get(f"/batches/{batch_id}/rows").json()["items"][0]["row_id"]
    return {"batch_id": batch_id, "row_id": row_id}


# The ids of `known`, read when examples are drawn (after the fixture ran).
KNOWN: dict[str, str] = {}
# (method, path template) -> statuses seen.
SEEN: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
schema = schemathesis.openapi.from_path(DOCUMENT)
schema.config.generation.update(max_examples=MAX_EXAMPLES)


@schema.hook
def before_generate_path_parameters(context: Any, strategy: Any) -> Any:
    def with_real_ids(params: Any) -> Any:
        if not isinstance(params, dict):  # negative generation: left as generated
            return params
        return {**params, **{k: v for k, v in KNOWN.items() if k in params}}

    return st.one_of(strategy, strategy.map(with_real_ids))


def test_the_api_conforms_to_its_document(stack: LocalStack, known: dict[str, str]) -> None:
    """Every operation of the document in one test: schemathesis' own parametrization gives each
    operation the same pytest node id, and pytest-xdist then runs only some of them."""
    KNOWN.update(known)
    headers = {"Authorization": f"Bearer {stack.info['api_token']}"}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def conforms(case: Any) -> None:
            response = case.call_and_validate(base_url=stack.info["api_url"], headers=headers, checks=CHECKS)
            SEEN[(case.method, case.operation.path)].add(response.status_code)
            if case.method == "POST" and case.path.startswith("/callbacks/"):
                assert response.status_code == 401, response.text  # no valid token: refused first

        conforms()

    # Not only 404s: the reads answered 200 for the batch that exists, and a bad parameter 400.
    for path in (
        "/batches",
        "/batches/{batch_id}",
        "/batches/{batch_id}/rows",
        "/batches/{batch_id}/row-errors",
    ):
        assert 200 in SEEN[("GET", path)], (path, SEEN[("GET", path)])
    assert 404 in SEEN[("GET", "/batches/{batch_id}")]
    assert any(400 in statuses for statuses in SEEN.values())
    assert SEEN[("POST", "/callbacks/{batch_id}/{row_id}")] == {401}
