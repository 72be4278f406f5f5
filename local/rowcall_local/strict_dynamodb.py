"""DynamoDB requests the embedded AWS refuses because DynamoDB refuses them, though moto alone accepts them.

Installed inside the moto server process by `moto_fidelity.apply_all`. Each refusal is moto's
`ValidationException` (HTTP 400) with DynamoDB's own message, raised before moto acts on the request.
Seen here: an empty `ExpressionAttributeNames` passed every local test and would have stopped every
batch on AWS.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

# DynamoDB developer guide, "Expression attribute names (aliases)" / "Using expression attribute
# values": a name placeholder is `#` and a value placeholder is `:`, each followed by one or more
# alphanumerics or `_`. Expressions have no string literals, so a token scan finds every placeholder.
_NAME = re.compile(r"#[A-Za-z0-9_]+")
_VALUE = re.compile(r":[A-Za-z0-9_]+")

# DynamoDB developer guide, "Service, account, and table quotas": items up to 400 KB.
MAX_ITEM_BYTES = 400 * 1024
# API reference, BatchWriteItem: "up to 25 item put or delete operations".
MAX_BATCH_WRITE_REQUESTS = 25
# API reference, TransactGetItems: "can contain up to 100 TransactGetItem objects" (moto stops at 25).
MAX_TRANSACT_GET_ITEMS = 100

_EXPRESSIONS = ("KeyConditionExpression", "FilterExpression", "ProjectionExpression", "ConditionExpression")
_EXPRESSIONS_OF_UPDATE = ("UpdateExpression", "ConditionExpression")


def _refuse(message: str) -> Exception:
    from moto.dynamodb.exceptions import MockValidationException

    error: Exception = MockValidationException(message)
    return error


def check_expression_attributes(request: Mapping[str, Any], expressions: Iterable[str]) -> None:
    """Refuse empty or unused `ExpressionAttributeNames`/`ExpressionAttributeValues` as DynamoDB does.

    DynamoDB's messages, as its SDKs report them: "ExpressionAttributeNames must not be empty",
    "ExpressionAttributeNames can only be specified when using expressions", "Value provided in
    ExpressionAttributeNames unused in expressions: keys: {#x}" (and the same for values). The
    developer guide says every placeholder defined must be used ("If you define an expression
    attribute value, you must use it consistently throughout the entire expression").
    """
    texts = [str(request[e]) for e in expressions if request.get(e) is not None]
    for field, pattern in (("ExpressionAttributeNames", _NAME), ("ExpressionAttributeValues", _VALUE)):
        given = request.get(field)
        if given is None:
            continue
        if not given:
            raise _refuse(f"{field} must not be empty")
        if not texts:
            raise _refuse(f"{field} can only be specified when using expressions")
        used = {token for text in texts for token in pattern.findall(text)}
        unused = sorted(set(given) - used)
        if unused:
            raise _refuse(f"Value provided in {field} unused in expressions: keys: {{{', '.join(unused)}}}")


def _transact_write_operations(request: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for entry in request.get("TransactItems") or []:
        yield from entry.items()


def check_request(action: str, request: Mapping[str, Any]) -> None:
    """Everything DynamoDB would refuse in this request before touching any item."""
    if action in ("GetItem", "Query", "Scan", "PutItem", "DeleteItem"):
        check_expression_attributes(request, _EXPRESSIONS)
    elif action == "UpdateItem":
        check_expression_attributes(request, _EXPRESSIONS_OF_UPDATE)
    elif action == "TransactWriteItems":
        for op_type, op in _transact_write_operations(request):
            check_expression_attributes(op, _EXPRESSIONS_OF_UPDATE if op_type == "Update" else _EXPRESSIONS)
    elif action == "TransactGetItems":
        for entry in request.get("TransactItems") or []:
            check_expression_attributes(entry.get("Get") or {}, ("ProjectionExpression",))
    elif action == "BatchGetItem":
        for table_request in (request.get("RequestItems") or {}).values():
            check_expression_attributes(table_request, ("ProjectionExpression",))
    elif action == "BatchWriteItem":
        _check_batch_write(request)


def _check_batch_write(request: Mapping[str, Any]) -> None:
    tables: Mapping[str, list[Any]] = request.get("RequestItems") or {}
    for requests in tables.values():
        if len(requests) > MAX_BATCH_WRITE_REQUESTS:
            # DynamoDB's request-validation message for the per-table list.
            raise _refuse(
                "1 validation error detected: Value at 'requestItems' failed to satisfy constraint: "
                "Map value must satisfy constraint: [Member must have length less than or equal to 25, "
                "Member must have length greater than or equal to 1]"
            )
    if sum(len(r) for r in tables.values()) > MAX_BATCH_WRITE_REQUESTS:
        raise _refuse("Too many items requested for the BatchWriteItem call")


# --- item size --------------------------------------------------------------------------------------


def _number_size(text: str) -> int:
    """Developer guide, "Item sizes and formats": about 1 byte per two significant digits, plus 1."""
    mantissa = re.split(r"[eE]", text.strip().lstrip("+-"))[0].replace(".", "")
    digits = mantissa.strip("0") or "0"
    return (len(digits) + 1) // 2 + 1


def _binary_size(value: Any) -> int:
    # "the value's raw byte length is used": moto keeps binaries base64-encoded as the wire has them.
    return len(value) if isinstance(value, bytes | bytearray) else len(base64.b64decode(value))


def _typed(value: Any) -> tuple[str, Any]:
    if isinstance(value, Mapping):
        return next(iter(value.items()))
    return str(value.type), value.value  # a moto DynamoType


def attribute_value_size(value: Any) -> int:
    """The size DynamoDB counts for one attribute value (developer guide, "Item sizes and formats")."""
    kind, inner = _typed(value)
    if kind == "S":
        return len(str(inner).encode())
    if kind == "N":
        return _number_size(str(inner))
    if kind == "B":
        return _binary_size(inner)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(v).encode()) for v in inner)
    if kind == "NS":
        return sum(_number_size(str(v)) for v in inner)
    if kind == "BS":
        return sum(_binary_size(v) for v in inner)
    # List and Map: 3 bytes of overhead, plus 1 byte per element.
    if kind == "L":
        return 3 + sum(attribute_value_size(v) + 1 for v in inner)
    if kind == "M":
        return 3 + sum(len(k.encode()) + attribute_value_size(v) + 1 for k, v in inner.items())
    raise ValueError(f"unknown attribute type {kind}")


def item_size(attributes: Mapping[str, Any]) -> int:
    """Attribute names (UTF-8 bytes) plus values, as DynamoDB counts an item against its 400 KB."""
    return sum(len(name.encode()) + attribute_value_size(v) for name, v in attributes.items())


def _count_items_as_dynamodb_does() -> None:
    """moto checks items against 405,000 bytes, counts binaries base64-encoded and lists/maps without
    their overhead; DynamoDB's limit is 400 KB counted by `item_size`. Its messages are moto's:
    "Item size has exceeded the maximum allowed size" (UpdateItem: "Item size to update has ...")."""
    from moto.dynamodb.exceptions import ItemSizeTooLarge
    from moto.dynamodb.models.dynamo_type import LimitedSizeDict

    def __setitem__(self: dict[str, Any], key: str, value: Any) -> None:  # noqa: N807 - dict protocol
        if item_size({**self, key: value}) > MAX_ITEM_BYTES:
            raise ItemSizeTooLarge
        dict.__setitem__(self, key, value)

    setattr(LimitedSizeDict, "__setitem__", __setitem__)  # noqa: B010


# --- installation -----------------------------------------------------------------------------------

_ACTIONS = {
    "get_item": "GetItem",
    "query": "Query",
    "scan": "Scan",
    "put_item": "PutItem",
    "delete_item": "DeleteItem",
    "update_item": "UpdateItem",
    "transact_write_items": "TransactWriteItems",
    "transact_get_items": "TransactGetItems",
    "batch_get_item": "BatchGetItem",
    "batch_write_item": "BatchWriteItem",
}


def _checked(method: Callable[[Any], Any], action: str) -> Callable[[Any], Any]:
    @functools.wraps(method)
    def checked(handler: Any) -> Any:
        # Raised inside the action method, moto answers it as DynamoDB's JSON error with HTTP 400.
        try:
            check_request(action, handler.body)
        except Exception as refused:
            log.warning("embedded AWS refused DynamoDB %s: %s", action, refused)
            raise
        return method(handler)

    return checked


# API reference, TransactWriteItems `ClientRequestToken`: a repeat of a successful call within 10
# minutes "returns successfully without making any changes"; the same token with other parameters
# is IdempotentParameterMismatchException. moto ignores the token, so a retry of a transaction whose
# first answer was lost (aws_faults' 500 after applying) would apply it twice here and never on AWS.
CLIENT_TOKEN_TTL_S = 600


class _ClientTokens:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[str, float]] = {}

    def wrap(self, method: Callable[[Any], Any]) -> Callable[[Any], Any]:
        @functools.wraps(method)
        def idempotent(handler: Any) -> Any:
            body = handler.body
            token = body.get("ClientRequestToken") if isinstance(body, Mapping) else None
            if not token:
                return method(handler)
            fingerprint = json.dumps(body.get("TransactItems"), sort_keys=True)
            # One lock around apply-and-remember: a retry racing its own original must not apply too.
            with self._lock:
                now = time.monotonic()
                seen = self._seen.get(token)
                if seen is not None and now - seen[1] < CLIENT_TOKEN_TTL_S:
                    if seen[0] != fingerprint:
                        raise _mismatch()
                    from moto.core.responses import ActionResult

                    return ActionResult({"ConsumedCapacity": [], "ItemCollectionMetrics": {}})
                result = method(handler)
                self._seen = {t: v for t, v in self._seen.items() if now - v[1] < CLIENT_TOKEN_TTL_S}
                self._seen[token] = (fingerprint, now)
                return result

        return idempotent


def _mismatch() -> Exception:
    from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException

    return DynamodbException(
        ERROR_TYPE_PREFIX + "IdempotentParameterMismatchException",
        "Request parameters do not match the parameters of the original request with this token",
    )


def install() -> None:
    import moto.dynamodb.responses as responses

    for method_name, action in _ACTIONS.items():
        method = getattr(responses.DynamoHandler, method_name)
        setattr(responses.DynamoHandler, method_name, _checked(method, action))
    transact = responses.DynamoHandler.transact_write_items
    setattr(responses.DynamoHandler, "transact_write_items", _ClientTokens().wrap(transact))  # noqa: B010
    setattr(responses, "TRANSACTION_MAX_ITEMS", MAX_TRANSACT_GET_ITEMS)  # noqa: B010 - moto's module global
    _count_items_as_dynamodb_does()
