"""`--enforce-iam`: the embedded AWS authorizes each function's requests against its own role.

Installed in the moto server process (moto_process.py), before the server starts. moto can check
every request against its IAM (`INITIAL_NO_AUTH_ACTION_COUNT`, facts.md); the local runtime then
runs each function with credentials from `sts:AssumeRole` on the role the template gives it, so a
handler that needs a grant its role lacks gets AccessDenied here as it would on AWS.

What this module adds to moto's own checks, each because moto alone would misjudge a correct role:

- Requests signed with the runtime's own key (`aws_clients.ACCESS_KEY_ID`: the deploy, the event
  sources, tests) are the account's administrator and are not checked. Unsigned requests (none of
  the functions' requests are) pass too.
- A presigned request (SigV4 in the query string: POST /uploads' PUTs) is authorized as the role
  that signed it, as S3 does; its signature is checked by strict_s3, which moto cannot.
- moto names the action after the API operation; IAM does not always: `SendMessageBatch` is
  authorized as `sqs:SendMessage`, and a DynamoDB transaction as each of its items' own actions
  (`Update` -> `dynamodb:UpdateItem`, `ConditionCheck` -> `dynamodb:ConditionCheckItem`, ...) on
  each item's table.
- moto checks DynamoDB, SNS and SSM requests against `"Resource": "*"` only, so a grant scoped to
  the table, topic or parameter ARN was denied (facts.md). Here the resource is the one IAM uses:
  the table (`.../index/<name>` for an index query), the topic, the parameter. S3 and SQS keep
  moto's own resource checks (bucket/key and queue ARN), with `GetQueueUrl` given the named queue's
  ARN (moto had "*").
- Inline role policies deployed by moto's CloudFormation are kept as dicts, which moto's policy
  evaluation cannot read; they are read as the JSON documents they are.
- A GET or HEAD of a missing object is 404 only to a caller that may `s3:ListBucket` the bucket;
  to any other S3 answers 403 AccessDenied, so as not to tell a missing key from a forbidden one
  (S3 API reference, GetObject and HeadObject, "Permissions"). moto answers 404 to everyone.

Not modelled: conditions in identity policies, resource policies, KMS key policies, permission
boundaries, SCPs. Every decision is counted; `GET /_rowcall/iam` on the moto endpoint returns the
denials (role session, action, resource) and, per session, the actions it was allowed.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlparse

from rowcall_local.aws_clients import ACCESS_KEY_ID

log = logging.getLogger("rowcall.iam")

CONTROL_PATH = "/_rowcall/iam"
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")

# IAM action for the API operations whose action is not named after them.
_SQS_ACTIONS = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}
_TRANSACT_WRITE_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Decisions:
    """What was allowed and denied, by role session name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.allowed: defaultdict[str, set[str]] = defaultdict(set)
        self.denied: list[dict[str, str]] = []

    def record(self, session: str, action: str, resource: str, allowed: bool) -> None:
        with self._lock:
            if allowed:
                self.allowed[session].add(action)
            else:
                self.denied.append({"session": session, "action": action, "resource": resource})

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "enforced": True,
                "denied": list(self.denied),
                "allowed": {k: sorted(v) for k, v in sorted(self.allowed.items())},
            }


def access_key_of(authorization: str) -> str | None:
    found = _CREDENTIAL.search(authorization)
    return found.group(1) if found else None


def presigned_headers(headers: Any, query: str) -> dict[str, str] | None:
    """A presigned request (SigV4 in the query string) as moto's IAM reads a signed one: S3 authorizes
    it as whoever signed it, so a role that may not PutObject cannot presign a PUT either."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    credential = params.get("X-Amz-Credential")
    if not credential or params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        return None
    converted = dict(headers.items()) | {"Authorization": f"AWS4-HMAC-SHA256 Credential={credential}, "}
    if params.get("X-Amz-Security-Token"):
        converted["X-Amz-Security-Token"] = params["X-Amz-Security-Token"]
    return converted


_sessions: dict[str, str] = {}


class _ObjectRead(threading.local):
    """Per request (one server thread each): whether the caller reading an object may list its
    bucket; None when the request is not a role's object read."""

    may_list: bool | None = None


_object_read = _ObjectRead()
_OBJECT_READS = {"GetObject", "GetObjectVersion"}
_MISSING = {"NoSuchKey", "NoSuchVersion"}


def assumed_role_session(access_key: str) -> str | None:
    """The role session name of credentials moto's STS issued, or None (in the moto process)."""
    if access_key in _sessions:
        return _sessions[access_key]
    from moto.sts.models import sts_backends

    for account in list(sts_backends):
        for partition in list(sts_backends[account]):
            for role in list(sts_backends[account][partition].assumed_roles):
                if role.access_key_id == access_key:
                    _sessions[access_key] = str(role.session_name)
                    return _sessions[access_key]
    return None


def _arn(handler: Any, service: str, resource: str) -> str:
    return f"arn:aws:{service}:{handler.region}:{handler.current_account}:{resource}"


def _table_arn(handler: Any, table: str, index: str | None = None) -> str:
    arn = table if table.startswith("arn:") else _arn(handler, "dynamodb", f"table/{table}")
    return f"{arn}/index/{index}" if index else arn


def _dynamodb_checks(handler: Any, operation: str) -> list[tuple[str, str]]:
    params: dict[str, Any] = getattr(handler, "params", None) or {}
    if operation == "TransactWriteItems":
        checks = []
        for item in params.get("TransactItems") or []:
            kind, op = next(iter(item.items()))
            checks.append((_TRANSACT_WRITE_ACTIONS.get(kind, kind), _table_arn(handler, op["TableName"])))
        return checks
    if operation == "TransactGetItems":
        items = params.get("TransactItems") or []
        return [("GetItem", _table_arn(handler, item["Get"]["TableName"])) for item in items]
    if operation in ("BatchWriteItem", "BatchGetItem"):
        return [(operation, _table_arn(handler, table)) for table in params.get("RequestItems") or {}]
    if params.get("TableName"):
        return [(operation, _table_arn(handler, params["TableName"], params.get("IndexName")))]
    return [(operation, "*")]


def _param(handler: Any, name: str) -> Any:
    try:
        return handler._get_param(name)
    except Exception:  # a body this parser cannot read: moto's own handling will answer it
        return None


def _ssm_parameter_arn(handler: Any, name: str) -> str:
    return _arn(handler, "ssm", "parameter" + (name if name.startswith("/") else "/" + name))


def checks_for(handler: Any, operation: str, resource: str) -> list[tuple[str, str]]:
    """(IAM action without its service prefix, resource ARN) pairs that authorize one request."""
    service = getattr(handler, "service_name", "")
    if service == "dynamodb":
        return _dynamodb_checks(handler, operation)
    if service == "sqs":
        if operation == "GetQueueUrl" and _param(handler, "QueueName"):
            return [(operation, _arn(handler, "sqs", str(_param(handler, "QueueName"))))]
        return [(_SQS_ACTIONS.get(operation, operation), resource)]
    if service == "sns" and _param(handler, "TopicArn"):
        return [(operation, str(_param(handler, "TopicArn")))]
    if service == "ssm":
        names = _param(handler, "Names") or ([_param(handler, "Name")] if _param(handler, "Name") else [])
        if names:
            return [(operation, _ssm_parameter_arn(handler, str(n))) for n in names]
    return [(operation, resource)]


def _json_access_denied(service: str, principal: str, action: str, resource: str) -> Exception:
    """AccessDenied as a JSON-protocol service answers it (moto answers XML, which botocore reads
    as a bare 403 there): DynamoDB and SSM `AccessDeniedException`, SQS `AccessDenied`."""
    from werkzeug.exceptions import HTTPException

    kind = {
        "dynamodb": "com.amazonaws.dynamodb.v20120810#AccessDeniedException",
        "sqs": "com.amazonaws.sqs#AccessDenied",
    }.get(service, "AccessDeniedException")
    message = (
        f"User: {principal} is not authorized to perform: {action} on resource: {resource} "
        f"because no identity-based policy allows the {action} action"
    )

    class AccessDenied(HTTPException):
        code = 400

    return AccessDenied(description=json.dumps({"__type": kind, "message": message}))


def _without_no_value(value: Any) -> Any:
    """CloudFormation drops a list element that resolves to `AWS::NoValue` (a grant under an unmet
    condition, e.g. Replicate's token when none is configured); moto's CloudFormation leaves None."""
    if isinstance(value, dict):
        return {k: _without_no_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_no_value(v) for v in value if v is not None]
    return value


def _policy_documents_as_json() -> None:
    """moto's CloudFormation stores a role's inline policies as dicts; its evaluator wants JSON."""
    from moto.iam.access_control import AssumedRoleAccessKey

    collect = AssumedRoleAccessKey.collect_policies

    def collect_policies(self: Any) -> list[Any]:
        return [
            json.dumps(_without_no_value(p)) if isinstance(p, dict) and "Statement" in p else p
            for p in collect(self)
        ]

    AssumedRoleAccessKey.collect_policies = collect_policies  # type: ignore[method-assign]


def _may_list_bucket(request: Any, bucket_arn: str) -> bool:
    try:
        request.check_action_permitted(bucket_arn)
    except Exception:  # moto's AccessDenied: the role has no s3:ListBucket on the bucket
        return False
    return True


def _answer_missing_objects_as_s3_does() -> None:
    """A role without `s3:ListBucket` that reads a missing object gets 403 AccessDenied, not 404."""
    from moto.s3.exceptions import S3ClientError
    from moto.s3.responses import S3Response

    from rowcall_local.strict_s3 import error_document

    key_response = S3Response._key_response

    def answered(self: Any, request: Any, full_url: str) -> Any:
        _object_read.may_list = None
        try:
            response = key_response(self, request, full_url)
            status = response[0] if isinstance(response, tuple) else getattr(response, "status_code", 200)
        except S3ClientError as error:
            if error.code not in _MISSING or _object_read.may_list is not False:
                raise
            status = 404
        if status != 404 or _object_read.may_list is not False:
            return response
        body = "" if request.method == "HEAD" else error_document("AccessDenied", "Access Denied")
        return 403, {"content-type": "application/xml"}, body

    S3Response._key_response = answered  # type: ignore[method-assign]


def install(admin_access_key: str = ACCESS_KEY_ID) -> Decisions:
    """Turn moto's IAM enforcement on for every request not signed with `admin_access_key`."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    decisions = Decisions()
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # type: ignore[assignment]
    _policy_documents_as_json()

    def authorize(self: Any, iam_request_cls: type, resource: str = "*") -> None:
        query = urlparse(self.uri).query
        headers = self.headers
        access_key = access_key_of(headers.get("Authorization", ""))
        presigned = access_key is None and presigned_headers(headers, query)
        if presigned:
            headers = presigned
            access_key = access_key_of(headers["Authorization"])
        if access_key is None or access_key == admin_access_key:
            return
        session = assumed_role_session(access_key) or access_key
        service = getattr(self, "service_name", "") or "s3"
        path = self.raw_path + ("?" + query if query else "")
        for operation, target in checks_for(self, self._get_action(), resource):
            request = iam_request_cls(
                account_id=self.current_account,
                method=self.method,
                path=path,
                data=self.data,
                body=self.raw_body,
                headers=headers,
                action=operation,
            )
            if not presigned:  # a presigned URL's signature is strict_s3's to check (moto cannot)
                request.check_signature()
            try:
                request.check_action_permitted(target)
            except Exception:
                action = f"{service}:{operation}"
                decisions.record(session, action, target, allowed=False)
                log.warning("AccessDenied: %s may not %s on %s", session, action, target)
                if not self.headers.get("Content-Type", "").startswith("application/x-amz-json"):
                    raise  # moto's XML AccessDenied is what the query and REST-XML services answer
                raise _json_access_denied(service, request._access_key.arn, action, target) from None
            decisions.record(session, f"{service}:{operation}", target, allowed=True)
            if service == "s3" and operation in _OBJECT_READS and "/" in target.split(":::", 1)[-1]:
                _object_read.may_list = _may_list_bucket(
                    iam_request_cls(
                        account_id=self.current_account,
                        method="GET",
                        path=path,
                        data=self.data,
                        body=self.raw_body,
                        headers=headers,
                        action="ListBucket",
                    ),
                    target.split("/", 1)[0],
                )

    ActionAuthenticatorMixin._authenticate_and_authorize_action = authorize  # type: ignore[method-assign]
    _answer_missing_objects_as_s3_does()

    call = DomainDispatcherApplication.__call__

    def __call__(self: Any, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:  # noqa: N807
        if environ.get("PATH_INFO") == CONTROL_PATH:
            body = json.dumps(decisions.stats()).encode()
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            start_response("200 OK", headers)
            return [body]
        answered: Iterable[bytes] = call(self, environ, start_response)
        return answered

    setattr(DomainDispatcherApplication, "__call__", __call__)  # noqa: B010 - moto's WSGI entry
    return decisions
