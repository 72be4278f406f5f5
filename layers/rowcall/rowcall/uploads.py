"""POST /uploads: a presigned S3 PUT under `uploads/`, bound to the declared size and `text/csv`
(contract §3, §4), and the batch's metadata kept on rowcall's side.

The PUT succeeds with exactly `Content-Type: text/csv` and `Content-Length`, as a browser's XHR
or `curl -T` sends it: the metadata is not signed into the URL (that would make every uploader
send it back as `x-amz-meta-*` headers) but kept in the ledger under the granted key
(`UploadIntentLedger`), where ingest reads it. It is checked with the same code ingest runs
(`metadata.spec_from_metadata`), so a bad batch is refused now with 400 rather than failing later.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from rowcall.api import ApiError
from rowcall.ledger import UploadIntentLedger
from rowcall.metadata import InvalidMetadata, SpecDefaults, spec_from_metadata
from rowcall.models import iso, utcnow
from rowcall.outbound import DestinationPolicy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

UPLOAD_PREFIX = "uploads/"
CONTENT_TYPE = "text/csv"
# Contract §4: the URL is valid 5 minutes.
UPLOAD_URL_VALID_S = 300
# S3 user guide, "Working with object metadata": user-defined metadata is at most 2 KB, counted as the
# UTF-8 bytes of each key and value.
MAX_METADATA_BYTES = 2048
MAX_FILENAME_CHARS = 200
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
# Printable ASCII: S3 returns other metadata characters RFC 2047-encoded, and a signed header
# with them is not one every HTTP client sends unchanged.
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]*$")


class UploadRequest(BaseModel):
    """The body of POST /uploads: `filename`, `size_bytes`, and contract §3's metadata, each optional.

    Each metadata field is also accepted under its §3 name (`technique-id`...). `input_columns`,
    `input_types` and `static_inputs` take JSON (a list, an object column -> type, a list of
    `{id, type, value}`) or §3's own text (`col1;col2`, `col=imageUrl;col2=text`, the JSON list as
    a string). `batch_name` defaults to the filename."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, loc_by_alias=False)

    filename: str = Field(min_length=1, max_length=1024)
    size_bytes: StrictInt = Field(gt=0)
    technique_id: str | None = Field(default=None, min_length=1, alias="technique-id")
    key_column: str | None = Field(default=None, min_length=1, alias="key-column")
    input_columns: list[str] | str | None = Field(default=None, min_length=1, alias="input-columns")
    input_types: dict[str, str] | str | None = Field(default=None, alias="input-types")
    static_inputs: list[dict[str, Any]] | str | None = Field(default=None, alias="static-inputs")
    on_done_url: str | None = Field(default=None, min_length=1, alias="on-done-url")
    batch_name: str | None = Field(default=None, min_length=1, alias="batch-name")
    # Numbers and on/off switches as JSON (25, true) or as §3's own text ("25", "on").
    max_cost_usd: float | str | None = Field(default=None, alias="max-cost-usd")
    reuse: bool | str | None = Field(default=None, alias="reuse")
    save_outputs: bool | str | None = Field(default=None, alias="save-outputs")
    max_failed_percent: float | str | None = Field(default=None, alias="max-failed-percent")
    provider: str | None = Field(default=None, min_length=1, alias="provider")

    def metadata(self) -> dict[str, str]:
        """Contract §3's metadata keys (without `x-amz-meta-`), in the syntax ingest reads."""
        raw = {
            "technique-id": self.technique_id,
            "key-column": self.key_column,
            "input-columns": _listed_columns(self.input_columns),
            "input-types": _listed_types(self.input_types),
            "static-inputs": self.static_inputs
            if isinstance(self.static_inputs, str) or self.static_inputs is None
            else json.dumps(self.static_inputs, separators=(",", ":")),
            "on-done-url": self.on_done_url,
            "batch-name": self.batch_name or _default_name(self.filename),
            "max-cost-usd": _number_text(self.max_cost_usd),
            "reuse": _switch_text(self.reuse),
            "save-outputs": _switch_text(self.save_outputs),
            "max-failed-percent": _number_text(self.max_failed_percent),
            "provider": self.provider,
        }
        return {k: v for k, v in raw.items() if v is not None}


def _number_text(value: float | str | None) -> str | None:
    return value if value is None or isinstance(value, str) else repr(float(value))


def _switch_text(value: bool | str | None) -> str | None:
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def _listed_columns(columns: list[str] | str | None) -> str | None:
    if columns is None or isinstance(columns, str):
        return columns
    for column in columns:
        if ";" in column:
            raise _refused("input_columns", f"{column!r}: a column name with ';' cannot be listed")
    return ";".join(columns)


def _listed_types(types: dict[str, str] | str | None) -> str | None:
    if types is None or isinstance(types, str):
        return types
    for column, kind in types.items():
        if ";" in column or "=" in column or ";" in kind:
            raise _refused("input_types", f"{column!r}: a column name with ';' or '=' cannot be typed")
    return ";".join(f"{c}={t}" for c, t in types.items()) or None


def _default_name(filename: str) -> str | None:
    name = filename[:MAX_FILENAME_CHARS]
    return name if _PRINTABLE_ASCII.match(name) else None


class UploadGrant(BaseModel):
    """The answer: PUT the file to `upload_url` with exactly `headers` (all of them are signed)."""

    upload_url: str
    key: str
    expires_at: str
    headers: dict[str, str]


def _field_of(metadata_key: str) -> str:
    """`static-inputs[2]` -> `static_inputs`: the request's field a metadata refusal is about."""
    return metadata_key.split("[")[0].replace("-", "_")


def _refused(field: str, problem: str) -> ApiError:
    return ApiError(400, "invalid_metadata", f"{field}: {problem}", {field: problem})


def parse_request(body: Any) -> UploadRequest:
    try:
        return UploadRequest.model_validate(body)
    except ValidationError as exc:
        # By field, not by pydantic's path: a field that takes a list or a string fails as both.
        fields: dict[str, str] = {}
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "body"
            fields[field] = f"{fields[field]}, or {error['msg']}" if field in fields else error["msg"]
        raise ApiError(400, "invalid_body", "the upload request is not valid", fields) from None


def object_key(filename: str, token: str) -> str:
    """`uploads/<token>/<filename made safe>`: unique per grant, so two uploads never overwrite."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    safe = _UNSAFE_KEY_CHARS.sub("_", base).lstrip(".")[-MAX_FILENAME_CHARS:] or "upload.csv"
    return f"{UPLOAD_PREFIX}{token}/{safe}"


class Uploads:
    def __init__(
        self,
        s3: S3Client,
        bucket: str,
        max_bytes: int,
        default_technique_id: str,
        destinations: DestinationPolicy,
        clock: Callable[[], datetime] = utcnow,
        new_token: Callable[[], str] = lambda: uuid.uuid4().hex,
        defaults: SpecDefaults | None = None,
        intents: UploadIntentLedger | None = None,
    ) -> None:
        """`s3` must sign with SigV4 (its presigned URLs carry the signed headers)."""
        self._s3 = s3
        self._bucket = bucket
        self._max_bytes = max_bytes
        self._default_technique_id = default_technique_id
        self._destinations = destinations
        self._defaults = defaults or SpecDefaults()
        self._intents = intents
        self._clock = clock
        self._new_token = new_token

    def grant(self, request: UploadRequest) -> UploadGrant:
        if request.size_bytes > self._max_bytes:
            raise ApiError(
                413,
                "file_too_large",
                f"{request.size_bytes} bytes is over this stack's limit of {self._max_bytes} bytes",
                {"size_bytes": f"at most {self._max_bytes}"},
            )
        metadata = request.metadata()
        self._check(metadata)
        key = object_key(request.filename, self._new_token())
        try:
            spec_from_metadata(
                metadata,
                key=key,
                default_technique_id=self._default_technique_id,
                destinations=self._destinations,
                defaults=self._defaults,
            )
        except InvalidMetadata as exc:
            at_fault, _, problem = str(exc).partition(": ")
            raise _refused(_field_of(at_fault), problem or str(exc)) from None
        now = self._clock()
        expires_at = now + timedelta(seconds=UPLOAD_URL_VALID_S)
        params: dict[str, Any] = {
            "Bucket": self._bucket,
            "Key": key,
            "ContentLength": request.size_bytes,
            "ContentType": CONTENT_TYPE,
        }
        headers = {"Content-Type": CONTENT_TYPE, "Content-Length": str(request.size_bytes)}
        if self._intents is not None:
            # Before the URL exists: an object can never land without its metadata kept.
            self._intents.remember(key, metadata, now_epoch=now.timestamp())
        else:  # no ledger to keep it in: the metadata is signed, and must be sent back
            params["Metadata"] = metadata
            headers.update({f"x-amz-meta-{k}": v for k, v in metadata.items()})
        url = self._s3.generate_presigned_url("put_object", Params=params, ExpiresIn=UPLOAD_URL_VALID_S)
        return UploadGrant(upload_url=url, key=key, expires_at=iso(expires_at), headers=headers)

    @staticmethod
    def _check(metadata: dict[str, str]) -> None:
        for key, value in metadata.items():
            if not _PRINTABLE_ASCII.match(value):
                raise _refused(_field_of(key), "S3 metadata must be printable ASCII")
        size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
        if size > MAX_METADATA_BYTES:
            raise ApiError(
                400,
                "invalid_metadata",
                f"the metadata is {size} bytes; S3 allows {MAX_METADATA_BYTES}",
                {"metadata": f"{size} bytes, at most {MAX_METADATA_BYTES}"},
            )


def presigning_s3_client(region_name: str | None = None) -> S3Client:
    """The S3 client that presigns upload URLs: SigV4, against the bucket's Regional virtual-hosted
    endpoint `https://{bucket}.s3.{region}.amazonaws.com` (per partition).

    botocore otherwise presigns with the legacy global host `{bucket}.s3.amazonaws.com`, where S3
    answers 307 for a bucket less than a day old and 400 in Regions opened after March 2019 - and the
    stack creates its bucket, so the first day after a deploy is when uploads would fail. SigV4
    carries the signed headers (size, type, metadata). Where an endpoint is configured (the local
    stack's embedded AWS, an IP address) botocore addresses the bucket by path there instead.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "virtual", "us_east_1_regional_endpoint": "regional"},
    )
    client: S3Client = boto3.client("s3", region_name=region_name, config=config)
    return client
