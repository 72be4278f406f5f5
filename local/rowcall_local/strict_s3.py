"""S3 refusals of the embedded AWS, installed in the moto server process by `moto_fidelity.apply_all`."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from xml.sax.saxutils import escape

# S3 user guide, "Amazon S3 multipart upload limits": parts are 5 MiB to 5 GiB, "There is no minimum
# size limit on the last part". A smaller earlier part makes CompleteMultipartUpload fail with
# `EntityTooSmall` (HTTP 400, "Your proposed upload is smaller than the minimum allowed object size.").
MIN_PART_BYTES = 5 * 1024 * 1024


def install() -> None:
    """moto already answers `EntityTooSmall` exactly so, but takes the minimum from the environment
    variable S3_UPLOAD_PART_MIN_SIZE; pin it to S3's, so no inherited setting can loosen it. And
    check presigned requests as S3 does (refuse_bad_presigned_requests)."""
    import moto.s3.models as s3_models

    setattr(s3_models, "S3_UPLOAD_PART_MIN_SIZE", MIN_PART_BYTES)  # noqa: B010 - moto's module global
    refuse_bad_presigned_requests()


# S3 API reference, "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)": a
# presigned URL is valid X-Amz-Expires seconds (at most 7 days) from X-Amz-Date; every header in
# X-Amz-SignedHeaders must be sent with the value that was signed, and an x-amz-* header that was not
# signed is refused. moto checks none of it; POST /uploads relies on all of it (size, type, metadata).
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600
_AMZ_DATE = "%Y%m%dT%H%M%SZ"


def _secret_for(access_key: str) -> str:
    """The secret of a key the local stack uses: moto STS's for a role's session (--enforce-iam),
    otherwise the one secret every other local key is paired with (aws_clients.SECRET_ACCESS_KEY)."""
    from rowcall_local.aws_clients import SECRET_ACCESS_KEY

    with contextlib.suppress(Exception):  # moto's backends as they are in this version
        from moto.sts.models import sts_backends

        for account in list(sts_backends):
            for partition in list(sts_backends[account]):
                for role in list(sts_backends[account][partition].assumed_roles):
                    if role.access_key_id == access_key:
                        return str(role.secret_access_key)
    return SECRET_ACCESS_KEY


def presign_problem(
    method: str,
    url: str,
    headers: Mapping[str, str],
    now: datetime,
    secret_for: Callable[[str], str] = _secret_for,
) -> tuple[str, str] | None:
    """(S3 error code, message) for a SigV4 presigned request S3 would refuse, or None.

    `url` is the request's URL as sent (its query still percent-encoded); `headers` case-insensitive."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    try:
        access_key, _date, region, service, _ = query["X-Amz-Credential"].split("/")
        signed_at = datetime.strptime(query["X-Amz-Date"], _AMZ_DATE).replace(tzinfo=UTC)
        expires = int(query["X-Amz-Expires"])
        signed = query["X-Amz-SignedHeaders"].split(";")
        signature = query["X-Amz-Signature"]
    except (KeyError, ValueError):
        return (
            "AuthorizationQueryParametersError",
            "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
            "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.",
        )
    if not 0 < expires <= MAX_PRESIGN_EXPIRES_S:
        return (
            "AuthorizationQueryParametersError",
            "X-Amz-Expires must be less than a week (in seconds) that is 604800",
        )
    if now > signed_at + timedelta(seconds=expires):
        return "AccessDenied", "Request has expired"
    lowered = {k.lower(): v for k, v in headers.items()}
    unsigned = sorted(h for h in lowered if h.startswith("x-amz-") and h not in signed)
    if unsigned:
        return (
            "AccessDenied",
            f"There were headers present in the request which were not signed: {', '.join(unsigned)}",
        )
    unsigned_query = "&".join(p for p in parts.query.split("&") if not p.startswith("X-Amz-Signature="))
    request = AWSRequest(
        method=method.upper(),
        url=urlunsplit((parts.scheme, parts.netloc, parts.path, unsigned_query, "")),
        headers={h: lowered.get(h, "") for h in signed},
    )
    request.context["timestamp"] = query["X-Amz-Date"]
    signer = S3SigV4QueryAuth(Credentials(access_key, secret_for(access_key)), service, region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(expected, signature):
        return (
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method.",
        )
    return None


def _raw_url(request: Any, full_url: str) -> str:
    """The URL as the client sent it: the werkzeug server keeps the undecoded target in RAW_URI."""
    environ = getattr(request, "environ", None) or {}
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if target:
        parts = urlsplit(full_url)
        return f"{parts.scheme}://{parts.netloc}{target}"
    return str(getattr(request, "url", None) or full_url)


def error_document(code: str, message: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
    )


def refuse_bad_presigned_requests() -> None:
    from moto.s3.responses import S3Response

    key_response = S3Response._key_response

    def checked(self: Any, request: Any, full_url: str) -> Any:
        url = _raw_url(request, full_url)
        if "X-Amz-Signature=" in url and "Authorization" not in request.headers:
            problem = presign_problem(request.method, url, request.headers, datetime.now(UTC))
            if problem is not None:
                # Answered here, not raised: moto would give an error its S3 model lacks status 400.
                return 403, {"content-type": "application/xml"}, error_document(*problem)
        return key_response(self, request, full_url)

    S3Response._key_response = checked  # type: ignore[method-assign]
