"""SigV4 for httpx: how a deployed stack's API (IAM auth at API Gateway) is called."""

from __future__ import annotations

from collections.abc import Generator

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SERVICE = "execute-api"
# Only these request headers are signed: what httpx adds on the way (connection, accept-encoding,
# user-agent) may be changed by a proxy, and a signed header that changes makes API Gateway answer 403.
SIGNED_HEADERS = ("host", "content-type")


class SigV4(httpx.Auth):
    """Signs each request with botocore's own signer for `execute-api` in `region`.

    `credentials` is botocore's (refreshable ones refresh themselves): the frozen set is taken per
    request so a long `--wait` outlives a session token."""

    requires_request_body = True

    def __init__(self, credentials: Credentials, region: str, service: str = SERVICE) -> None:
        self._credentials = credentials
        self._region = region
        self._service = service

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        headers = {name: request.headers[name] for name in SIGNED_HEADERS if name in request.headers}
        headers.setdefault("host", request.url.netloc.decode("ascii"))
        aws_request = AWSRequest(
            method=request.method, url=str(request.url), data=request.content, headers=headers
        )
        frozen = self._credentials.get_frozen_credentials()
        SigV4Auth(frozen, self._service, self._region).add_auth(aws_request)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            value = aws_request.headers.get(name)
            if value is not None:
                request.headers[name] = value
        yield request
