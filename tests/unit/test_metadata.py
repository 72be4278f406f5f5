from __future__ import annotations

import pytest

from rowcall.metadata import (
    InvalidHeader,
    InvalidMetadata,
    check_header,
    row_inputs,
    row_key,
    spec_from_metadata,
)
from rowcall.models import RunInput

HEADER = ["sku", "prompt", "photo", "notes"]


def spec(**meta: str):  # type: ignore[no-untyped-def]
    return spec_from_metadata(meta, key="uploads/x.csv", default_technique_id="tech-default")


def test_defaults_send_every_column_but_the_key_as_text() -> None:
    defaults = spec()
    assert (defaults.technique_id, defaults.name, defaults.on_done_url) == (
        "tech-default",
        "uploads/x.csv",
        None,
    )
    fields = ["A1", "a cat", "https://i/1.png", ""]
    assert [i.id for i in row_inputs(HEADER, fields, defaults)] == HEADER
    assert row_key(HEADER, fields, defaults, 7) == "7"


def test_metadata_picks_columns_types_static_inputs_and_key() -> None:
    chosen = spec(
        **{
            "technique-id": "t-9",
            "key-column": "sku",
            "input-columns": "prompt;photo",
            "input-types": "photo=imageUrl",
            "static-inputs": '[{"id":"reference_0","type":"imageUrl","value":"https://i/ref.png"}]',
            "batch-name": "spring",
        }
    )
    fields = ["A1", "a cat", "https://i/1.png", "ignored"]
    check_header(HEADER, chosen)
    assert row_inputs(HEADER, fields, chosen) == [
        RunInput(id="prompt", type="text", value="a cat"),
        RunInput(id="photo", type="imageUrl", value="https://i/1.png"),
        RunInput(id="reference_0", type="imageUrl", value="https://i/ref.png"),
    ]
    assert row_key(HEADER, fields, chosen, 1) == "A1"
    assert (chosen.technique_id, chosen.name) == ("t-9", "spring")


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        ({"input-types": "photo"}, "not column=type"),
        ({"input-types": "photo=gif"}, "unknown type"),
        ({"static-inputs": '{"id": 1}'}, "static-inputs"),
        ({"on-done-url": "ftp://x"}, "http(s)"),
    ],
)
def test_bad_metadata_says_what_is_wrong(meta: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidMetadata, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        spec(**meta)


@pytest.mark.parametrize(
    ("header", "meta", "fragment"),
    [
        (["a", ""], {}, "has no name"),
        (["a", "a"], {}, "duplicate"),
        (["a", "b"], {"key-column": "z"}, "lacks"),
        (["a", "b"], {"input-columns": "b;c"}, "lacks"),
        (["a"], {"key-column": "a"}, "no column is left"),
    ],
)
def test_a_header_that_cannot_drive_the_batch_is_refused(
    header: list[str], meta: dict[str, str], fragment: str
) -> None:
    with pytest.raises(InvalidHeader, match=fragment):
        check_header(header, spec(**meta))
