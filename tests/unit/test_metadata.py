from __future__ import annotations

import pytest

from rowcall.ingest import IngestLimits, Ingestor, ObjectCreated
from rowcall.metadata import (
    MAX_KEY_CHARS,
    InvalidHeader,
    InvalidMetadata,
    check_header,
    row_inputs,
    row_key,
    spec_from_metadata,
)
from rowcall.models import RowOutcome, RowStatus, RunInput
from rowcall.outbound import DestinationPolicy

from .conftest import Aws

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
        ({"input-types": "photo"}, "input-types: 'photo' is not column=type"),
        ({"input-types": "photo=gif"}, "input-types: unknown type"),
        ({"input-columns": " ; "}, "input-columns: ' ; ' names no column"),
        ({"static-inputs": "[1,"}, "static-inputs: not JSON"),
        ({"static-inputs": '{"id": 1}'}, "static-inputs: must be a JSON list"),
        (
            {"static-inputs": '"x"'},
            "static-inputs: must be a JSON list of {id, type, value} objects, not a string",
        ),
        ({"static-inputs": '[{"id": "r", "type": "text"}]'}, "static-inputs[0]: value: Field required"),
        (
            {"static-inputs": '[{"id":"r","type":"text","value":"1"},{"id":"r","type":"text","value":"2"}]'},
            "static-inputs: id(s) ['r'] appear more than once",
        ),
        ({"on-done-url": "ftp://x"}, "on-done-url: 'ftp://x' is not an http(s) URL"),
        ({"on-done-url": "https://"}, "on-done-url: 'https://' is not an http(s) URL with a host"),
        ({"on-done-url": "https://h:port/x"}, "on-done-url: 'https://h:port/x' is not a URL"),
        ({"technique-id": "t" * 201}, "technique-id: String should have at most 200 characters"),
    ],
)
def test_bad_metadata_names_the_key_and_what_is_wrong(meta: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidMetadata) as refused:
        spec(**meta)
    assert str(refused.value).startswith(fragment)


@pytest.mark.parametrize(
    ("header", "fragment"),
    [(["a", ""], "column 2 has no name"), (["a", " A ", "b", "A"], "duplicate column names \\['A'\\]")],
)
def test_a_header_that_cannot_drive_the_batch_is_refused(header: list[str], fragment: str) -> None:
    with pytest.raises(InvalidHeader, match=fragment):
        check_header(header, spec())


@pytest.mark.parametrize(
    ("header", "meta", "fragment"),
    [
        (["a", "b"], {"key-column": "z"}, "^key-column: 'z' is not a column of the header \\(a, b\\)"),
        (["a", "b"], {"input-columns": "b;c"}, "^input-columns: \\['c'\\]"),
        (["a", "b"], {"input-types": "c=text"}, "^input-types: \\['c'\\]"),
        (["a"], {"key-column": "a"}, "^key-column: 'a' is the only column"),
        (["a", "b"], {"static-inputs": '[{"id":"b","type":"text","value":"v"}]'}, "^static-inputs: id"),
    ],
)
def test_metadata_naming_columns_the_header_lacks_is_a_metadata_error(
    header: list[str], meta: dict[str, str], fragment: str
) -> None:
    with pytest.raises(InvalidMetadata, match=fragment):
        check_header(header, spec(**meta))


def test_a_long_header_is_capped_in_the_message() -> None:
    header = [f"c{n}" for n in range(500)]
    with pytest.raises(InvalidMetadata) as refused:
        check_header(header, spec(**{"key-column": "zz"}))
    assert len(str(refused.value)) < 200 and "500 columns" in str(refused.value)


def test_a_key_too_long_for_a_ledger_item_is_cut_so_the_row_can_still_be_stored(aws: Aws) -> None:
    fields = ["A1", "k" * 1024 * 1024, "", ""]
    key = row_key(HEADER, fields, spec(**{"key-column": "prompt"}), 1)
    assert len(key) <= MAX_KEY_CHARS and key.startswith("k" * 900) and key.endswith(" characters)")
    refused = RowOutcome(status=RowStatus.FAILED, error_code="invalid_input")
    assert aws.ledger.rows.finish("b1", 0, 1, refused, attempt=1, line=2, key=key)
    assert row_key(HEADER, ["A1", "k" * MAX_KEY_CHARS, "", ""], spec(**{"key-column": "prompt"}), 1) == (
        "k" * MAX_KEY_CHARS
    )


@pytest.mark.parametrize(
    ("url", "allow_loopback", "fragment"),
    [
        ("http://93.184.216.34/done", False, "on-done-url: must be https, not http"),
        ("http://127.0.0.1:9000/done", False, "on-done-url: must be https, not http"),
        ("https://127.0.0.1/done", False, "on-done-url: host 127.0.0.1 is a loopback address"),
        ("https://10.0.0.8/done", True, "on-done-url: host 10.0.0.8 is a private address"),
        (
            "https://[::ffff:169.254.169.254]/",
            True,
            "on-done-url: host ::ffff:169.254.169.254 is an IPv4-mapped",
        ),
        ("https://2852039166/", False, "on-done-url: host 2852039166 resolves to 169.254.169.254"),
    ],
)
def test_an_on_done_url_that_is_not_https_to_a_public_host_is_refused(
    url: str, allow_loopback: bool, fragment: str
) -> None:
    policy = DestinationPolicy(allow_loopback=allow_loopback)
    with pytest.raises(InvalidMetadata) as refused:
        spec_from_metadata({"on-done-url": url}, key="k", default_technique_id="t", destinations=policy)
    assert str(refused.value).startswith(fragment)


def test_loopback_over_http_passes_only_where_configuration_allows_it() -> None:
    url = "http://127.0.0.1:9000/done"
    local = spec_from_metadata(
        {"on-done-url": url},
        key="k",
        default_technique_id="t",
        destinations=DestinationPolicy(allow_loopback=True),
    )
    assert local.on_done_url == url


def test_a_forbidden_on_done_url_fails_the_batch_and_is_never_kept(aws: Aws) -> None:
    put = aws.s3.put_object(
        Bucket=aws.bucket,
        Key="uploads/ssrf.csv",
        Body=b"sku,prompt\nA1,a cat\n",
        Metadata={"on-done-url": "https://169.254.169.254/latest/meta-data/iam/"},
    )
    batch = Ingestor(
        s3=aws.s3,
        ledger=aws.ledger,
        chunk_queue=aws.chunk_queue,
        finisher=aws.finisher,
        limits=IngestLimits(max_rows=10, max_bytes=10**6, chunk_rows=4, default_technique_id="tech"),
    ).ingest(ObjectCreated(bucket=aws.bucket, key="uploads/ssrf.csv", version_id=put["VersionId"]))
    assert batch is not None and (batch.status.value, batch.reason) == ("failed", "invalid_metadata")
    assert (batch.reason_message or "").startswith("on-done-url: host 169.254.169.254 is a link-local")
    # Its own batch.failed on-done goes to SNS only: the URL was never stored.
    assert batch.spec.on_done_url is None
    assert aws.drain(aws.chunk_queue_url) == []
