"""What DynamoDB would bill, metered inside the embedded AWS: write and read units, and the hottest items.

Installed in the moto server process by `moto_fidelity.apply_all`. Every DynamoDB request moto answers is
billed as on-demand DynamoDB bills it, from the items as they are before and after the request (item sizes
as `strict_dynamodb.item_size` counts them for the 400 KB limit: the same "Item sizes and formats" rules).
`GET /_rowcall/capacity` on the moto endpoint returns the totals, the units by operation and the busiest
items; `?requesters=functions` counts only requests signed with a function's key (`fn-<LogicalId>`);
`POST /_rowcall/capacity/reset` starts again from zero.

Billing rules, with their source. "Developer guide" is the Amazon DynamoDB Developer Guide;
"read-write-operations" is its page "DynamoDB read and write operations" (capacity unit consumption).

- One write unit per 1 KB, item size rounded up to the next 1 KB (read-write-operations: "Item sizes for
  writes are rounded up to the next 1 KB multiple").
- PutItem: the larger of the replaced item and the new one. UpdateItem: the larger of the item "before" and
  "after" the update, whatever attributes it touched. DeleteItem: the deleted item (read-write-operations,
  one bullet each). A delete of a missing item is billed one unit, as a failed condition on a missing
  item is (below); the guide does not say it for an unconditional delete.
- BatchWriteItem: each put or delete as its own PutItem/DeleteItem, each rounded up on its own
  (read-write-operations: "500-byte and 3.5 KB ... 5 KB (1 KB + 4 KB)").
- A conditional write whose condition is false is billed too, by the size of "an existing item in the
  table or a new one you're attempting to create or update ... existing 300 KB, new 310 KB ... 310 KB"
  (read-write-operations): the larger of the existing item and the item the write would have made; at
  least one unit ("If the item does not currently exist in the table, DynamoDB consumes one write capacity
  unit", developer guide, "Working with items", capacity units consumed by conditional writes).
- TransactWriteItems: two units per 1 KB for each item, Put/Update/Delete/ConditionCheck alike, sized as
  above ("Transactional write requests require 2 write units to perform one write for items up to 1 KB",
  read-write-operations; "two underlying reads or writes of every item in the transaction: one to prepare
  the transaction and one to commit", developer guide, "Transactions: how it works", capacity management).
  A cancelled transaction is billed as if each item were a failed conditional write at 2x. The stored AWS
  text says nothing explicit on cancellation; two independent quotations of the current page say the
  capacity "is consumed even when the transaction is canceled". Billing it makes this meter an upper bound
  on that point, never an underestimate.
- Secondary indexes: a table write that changes an index costs the index its own writes, sized by the
  index entry (the projected item): one write when an item enters or leaves the index or when projected
  attributes change, two when an index key changes (delete + put), none when the index is untouched
  (developer guide, "Global secondary indexes", "Provisioned throughput considerations": "The cost of
  writing an item to a global secondary index depends on several factors"). Index writes are billed at 1x
  even inside a transaction: the index is updated after the transaction, not as one of its items (an
  assumption: the guide does not say). Failed writes change no index.
- Reads: one unit per 4 KB rounded up, half a unit when eventually consistent (the default), two units
  in TransactGetItems; a read of a missing item costs the same as a read of a small one (read-write-
  operations, "Capacity unit consumption for read operations" and its "Important" note). BatchGetItem:
  each item rounded up on its own. Query and Scan: the summed size of all items read, rounded up once, at
  least one unit; a filter expression does not lower it ("a Query consumes the same amount of read capacity,
  regardless of whether a filter expression is present", developer guide, "Query", filter expressions) and
  a projection does not either ("doing so has no impact on the item size calculations").

Hot items: each item write (a failed one included; it used the partition's throughput) is timestamped; an
item's peak is the most writes (and write units) it received within any one second. AWS serves ~1,000 write
units per second per partition.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from rowcall_local.strict_dynamodb import item_size

log = logging.getLogger(__name__)

CONTROL_PATH = "/_rowcall/capacity"
RESET_PATH = CONTROL_PATH + "/reset"
REQUESTERS = ("all", "functions")
FUNCTION_KEY_PREFIX = "fn-"  # the local runtime's per-function access keys, as aws_faults.py reads them

WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096
TRANSACTION_FACTOR = 2
WINDOW_S = 1.0
TOP_ITEMS = 10

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# (table, index or None, partition key value, sort key value or None)
ItemKey = tuple[str, str | None, str, str | None]


def write_units(size: int) -> int:
    """Units for one write of an item of `size` bytes: 1 KB each, rounded up, at least one."""
    return max(1, math.ceil(size / WRITE_UNIT_BYTES))


def read_units(size: int, consistent: bool) -> float:
    """Units for reading `size` bytes in one read: 4 KB each, rounded up, at least one; half when eventual."""
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return float(units) if consistent else units / 2


# --- the meter --------------------------------------------------------------------------------------


@dataclass
class ItemWrite:
    key: ItemKey
    units: float


@dataclass
class WriteBill:
    """What one write request cost: its table items and the index entries it changed."""

    operation: str
    items: list[ItemWrite]
    index_items: list[ItemWrite] = field(default_factory=list)
    failed: bool = False  # a condition was false or the transaction was cancelled


@dataclass
class ReadBill:
    operation: str
    items: int
    units: float


@dataclass
class _ItemHeat:
    writes: int = 0
    units: float = 0.0
    peak_writes: int = 0
    peak_units: float = 0.0
    window_units: float = 0.0
    window: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, now: float, units: float) -> None:
        # The busiest one-second window ends at one of the writes: keep the writes of the last second.
        self.writes += 1
        self.units += units
        self.window.append((now, units))
        self.window_units += units
        while self.window[0][0] <= now - WINDOW_S:
            self.window_units -= self.window.popleft()[1]
        self.peak_writes = max(self.peak_writes, len(self.window))
        self.peak_units = max(self.peak_units, self.window_units)


@dataclass
class _Operation:
    requests: int = 0
    items: int = 0
    units: float = 0.0
    index_units: float = 0.0
    failed: int = 0


class Meter:
    """Units and item heat for one set of requesters. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._since = time.time()
            self._writes: dict[str, _Operation] = {}
            self._reads: dict[str, _Operation] = {}
            self._heat: dict[ItemKey, _ItemHeat] = {}

    def add_write(self, bill: WriteBill, now: float) -> None:
        with self._lock:
            op = self._writes.setdefault(bill.operation, _Operation())
            op.requests += 1
            op.items += len(bill.items)
            op.failed += bill.failed
            for write in bill.items:
                op.units += write.units
                self._heat.setdefault(write.key, _ItemHeat()).add(now, write.units)
            for write in bill.index_items:
                op.index_units += write.units
                self._heat.setdefault(write.key, _ItemHeat()).add(now, write.units)

    def add_read(self, bill: ReadBill) -> None:
        with self._lock:
            op = self._reads.setdefault(bill.operation, _Operation())
            op.requests += 1
            op.items += bill.items
            op.units += bill.units

    def report(self, top: int = TOP_ITEMS) -> dict[str, Any]:
        with self._lock:
            table_units = sum(op.units for op in self._writes.values())
            index_units = sum(op.index_units for op in self._writes.values())
            busiest = sorted(self._heat.items(), key=lambda kv: (-kv[1].peak_writes, -kv[1].writes))[:top]
            return {
                "since": self._since,
                "seconds": round(time.time() - self._since, 3),
                "write_units": table_units + index_units,
                "table_write_units": table_units,
                "index_write_units": index_units,
                "read_units": sum(op.units for op in self._reads.values()),
                "writes_by_operation": {
                    name: {
                        "requests": op.requests,
                        "items": op.items,
                        "write_units": op.units + op.index_units,
                        "index_write_units": op.index_units,
                        "failed": op.failed,
                    }
                    for name, op in sorted(self._writes.items())
                },
                "reads_by_operation": {
                    name: {"requests": op.requests, "items": op.items, "read_units": op.units}
                    for name, op in sorted(self._reads.items())
                },
                "busiest_items": [
                    {
                        "table": key[0],
                        "index": key[1],
                        "pk": key[2],
                        "sk": key[3],
                        "writes": heat.writes,
                        "write_units": heat.units,
                        "peak_writes_per_s": heat.peak_writes,
                        "peak_write_units_per_s": heat.peak_units,
                    }
                    for key, heat in busiest
                ],
            }


class Meters:
    """One meter for every requester, one for the functions' requests only."""

    def __init__(self) -> None:
        self.by_requesters = {name: Meter() for name in REQUESTERS}

    def add(self, bill: WriteBill | ReadBill, from_function: bool) -> None:
        now = time.monotonic()
        for name, meter in self.by_requesters.items():
            if name == "functions" and not from_function:
                continue
            if isinstance(bill, WriteBill):
                meter.add_write(bill, now)
            else:
                meter.add_read(bill)

    def reset(self) -> None:
        for meter in self.by_requesters.values():
            meter.reset()


METERS = Meters()


# --- items as moto keeps them -----------------------------------------------------------------------


def _scalar(value: Any) -> str:
    """A key attribute's value, from the wire ({"S": "x"}) or a moto DynamoType."""
    inner = next(iter(value.values())) if isinstance(value, Mapping) else value.value
    return str(inner)


def _key_of(table: Any, attributes: Mapping[str, Any]) -> dict[str, Any]:
    key = {table.hash_key_attr: attributes[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attributes[table.range_key_attr]
    return key


def _item_key(table: Any, key: Mapping[str, Any]) -> ItemKey:
    sort = table.range_key_attr
    return (table.name, None, _scalar(key[table.hash_key_attr]), _scalar(key[sort]) if sort else None)


def _lookup(table: Any, key: Mapping[str, Any]) -> Any:
    from moto.dynamodb.models.dynamo_type import DynamoType

    sort = table.range_key_attr
    return table.get_item(
        DynamoType(key[table.hash_key_attr]), DynamoType(key[sort]) if sort is not None else None
    )


def _size(item: Any) -> int:
    return 0 if item is None else item_size(item.attrs)


def _indexes(table: Any) -> list[Any]:
    return list(table.global_indexes or []) + list(table.indexes or [])


def _index_entry(index: Any, item: Any) -> tuple[tuple[str, ...], Any] | None:
    """The entry `item` has in `index` (its index key and projected item), or None when not indexed."""
    if item is None or any(name not in item.attrs for name in index.schema_key_attrs):
        return None
    return tuple(_scalar(item.attrs[name]) for name in index.schema_key_attrs), index.project(item)


def index_writes(table: Any, before: Any, after: Any) -> list[ItemWrite]:
    """The index writes a table write from `before` to `after` (moto Items or None) costs.

    Developer guide, "Global secondary indexes", provisioned throughput considerations: entering or leaving
    an index is one write, a changed index key two (delete the old entry, put the new), changed projected
    attributes one, an untouched index none; each sized by its index entry.
    """
    writes: list[ItemWrite] = []
    for index in _indexes(table):
        old, new = _index_entry(index, before), _index_entry(index, after)
        if old is not None and new is not None:
            if old[0] != new[0]:
                writes += [_index_write(table, index, old), _index_write(table, index, new)]
            elif dict(old[1].attrs) != dict(new[1].attrs):
                writes.append(_index_write(table, index, new, max(_size(old[1]), _size(new[1]))))
        elif old is not None or new is not None:
            writes.append(_index_write(table, index, old or new))  # type: ignore[arg-type]
    return writes


def _index_write(
    table: Any, index: Any, entry: tuple[tuple[str, ...], Any], size: int | None = None
) -> ItemWrite:
    keys = entry[0]
    item_key = (table.name, index.name, keys[0], keys[1] if len(keys) > 1 else None)
    return ItemWrite(item_key, write_units(_size(entry[1]) if size is None else size))


def _attempted_update(table: Any, key: Mapping[str, Any], before: Any, op: Mapping[str, Any]) -> Any:
    """The item an UpdateItem would have made, worked out on a copy: a failed one is billed by it."""
    from moto.dynamodb.models.dynamo_type import DynamoType, Item
    from moto.dynamodb.parsing.executors import UpdateExpressionExecutor
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]
    from moto.dynamodb.parsing.validators import UpdateExpressionValidator

    expression = op.get("UpdateExpression")
    if not expression:
        return before
    sort = table.range_key_attr
    item = (
        copy.deepcopy(before)
        if before is not None
        else Item(
            DynamoType(key[table.hash_key_attr]),
            DynamoType(key[sort]) if sort is not None else None,
            dict(key),
        )
    )
    names = op.get("ExpressionAttributeNames") or {}
    try:
        validated = UpdateExpressionValidator(
            UpdateExpressionParser.make(expression),
            expression_attribute_names=names,
            expression_attribute_values=op.get("ExpressionAttributeValues") or {},
            item=item,
            table=table,
        ).validate()
        validated.normalize()
        UpdateExpressionExecutor(validated, item, names).execute()
    except Exception:  # e.g. over 400 KB: then the item as it is is the best estimate
        return before
    return item


# --- billing one request ----------------------------------------------------------------------------


@dataclass
class _Write:
    """One item a write request touches, seen before the request runs."""

    kind: str  # Put | Update | Delete | ConditionCheck
    table: Any
    key: dict[str, Any]
    op: Mapping[str, Any]
    before: Any
    before_size: int

    @classmethod
    def plan(cls, backend: Any, kind: str, op: Mapping[str, Any]) -> _Write:
        table = backend.get_table(op["TableName"])
        key = _key_of(table, op["Item"]) if kind == "Put" else dict(op["Key"])
        before = _lookup(table, key)
        if before is not None and kind == "Update":
            before = copy.deepcopy(before)  # moto updates the stored item in place: keep what it was
        return cls(kind, table, key, op, before, _size(before))

    def attempted_size(self) -> int:
        if self.kind == "Put":
            return item_size(self.op["Item"])
        if self.kind == "Update":
            return _size(_attempted_update(self.table, self.key, self.before, self.op))
        return 0

    def bill_done(self, factor: int) -> tuple[ItemWrite, list[ItemWrite]]:
        if self.kind == "ConditionCheck":
            return ItemWrite(_item_key(self.table, self.key), factor * write_units(self.before_size)), []
        after = _lookup(self.table, self.key)
        units = factor * write_units(max(self.before_size, _size(after)))
        return ItemWrite(_item_key(self.table, self.key), units), index_writes(self.table, self.before, after)

    def bill_failed(self, factor: int) -> ItemWrite:
        units = factor * write_units(max(self.before_size, self.attempted_size()))
        return ItemWrite(_item_key(self.table, self.key), units)


def _writes_of(handler: Any, action: str) -> tuple[list[_Write], int]:
    body, backend = handler.body, handler.dynamodb_backend
    if action == "TransactWriteItems":
        ops = [next(iter(entry.items())) for entry in body["TransactItems"]]
        return [_Write.plan(backend, kind, op) for kind, op in ops], TRANSACTION_FACTOR
    if action == "BatchWriteItem":
        writes = []
        for table_name, requests in body["RequestItems"].items():
            for request in requests:
                if "PutRequest" in request:
                    writes.append(
                        _Write.plan(backend, "Put", {"TableName": table_name, **request["PutRequest"]})
                    )
                else:
                    writes.append(
                        _Write.plan(backend, "Delete", {"TableName": table_name, **request["DeleteRequest"]})
                    )
        return writes, 1
    kind = {"PutItem": "Put", "UpdateItem": "Update", "DeleteItem": "Delete"}[action]
    return [_Write.plan(backend, kind, body)], 1


def _metered_write(method: Callable[[Any], Any], action: str) -> Callable[[Any], Any]:
    from moto.dynamodb.exceptions import ConditionalCheckFailed, TransactionCanceledException

    @functools.wraps(method)
    def metered(handler: Any) -> Any:
        try:
            writes, factor = _writes_of(handler, action)
        except Exception:  # a request moto will refuse: AWS does not bill it either
            return method(handler)
        try:
            result = method(handler)
        except (ConditionalCheckFailed, TransactionCanceledException):
            _add(handler, WriteBill(action, [w.bill_failed(factor) for w in writes], failed=True))
            raise
        bill = WriteBill(action, [])
        for write in writes:
            item, index_items = write.bill_done(factor)
            bill.items.append(item)
            bill.index_items += index_items
        _add(handler, bill)
        return result

    return metered


class _Evaluated(threading.local):
    """Bytes of the items a Query or Scan reads, counted as moto evaluates them (None: not counting)."""

    size: int | None = None
    items: int = 0


_evaluated = _Evaluated()


class _CountingFilter:
    """Stands in for a Query/Scan filter: moto passes it every item read, before filtering or projecting."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def expr(self, item: Any) -> bool:
        if _evaluated.size is not None:
            _evaluated.size += _size(item)
            _evaluated.items += 1
        return True if self._inner is None else bool(self._inner.expr(item))


def _count_evaluated_items(method: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(method)

    @functools.wraps(method)
    def counted(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.arguments["filter_expression"] = _CountingFilter(bound.arguments.get("filter_expression"))
        return method(*bound.args, **bound.kwargs)

    return counted


def _point_reads(handler: Any, action: str) -> list[tuple[int, float]]:
    """(size, units per 4 KB) of each item a GetItem, BatchGetItem or TransactGetItems reads."""
    body, backend = handler.body, handler.dynamodb_backend
    if action == "GetItem":
        requests = [(body["TableName"], body["Key"], 1.0 if body.get("ConsistentRead") else 0.5)]
    elif action == "BatchGetItem":
        requests = [
            (name, key, 1.0 if wanted.get("ConsistentRead") else 0.5)
            for name, wanted in body["RequestItems"].items()
            for key in wanted["Keys"]
        ]
    else:
        requests = [
            (e["Get"]["TableName"], e["Get"]["Key"], float(TRANSACTION_FACTOR)) for e in body["TransactItems"]
        ]
    return [(_size(_lookup(backend.get_table(name), key)), factor) for name, key, factor in requests]


def _metered_read(method: Callable[[Any], Any], action: str) -> Callable[[Any], Any]:
    @functools.wraps(method)
    def metered(handler: Any) -> Any:
        if action in ("Query", "Scan"):
            _evaluated.size, _evaluated.items = 0, 0
            try:
                result = method(handler)
                size, items = _evaluated.size, _evaluated.items
            finally:
                _evaluated.size = None
            units = read_units(size or 0, bool(handler.body.get("ConsistentRead")))
            _add(handler, ReadBill(action, items, units))
            return result
        try:
            reads = _point_reads(handler, action)
        except Exception:
            return method(handler)
        result = method(handler)
        units = sum(max(1, math.ceil(size / READ_UNIT_BYTES)) * factor for size, factor in reads)
        _add(handler, ReadBill(action, len(reads), units))
        return result

    return metered


def _from_function(handler: Any) -> bool:
    found = _CREDENTIAL.search(handler.headers.get("Authorization", "") or "")
    return bool(found and found.group(1).startswith(FUNCTION_KEY_PREFIX))


def _add(handler: Any, bill: WriteBill | ReadBill) -> None:
    try:
        METERS.add(bill, _from_function(handler))
    except Exception:  # the meter must never break the request it measures
        log.exception("capacity meter: could not record %s", bill.operation)


# --- the control endpoint ---------------------------------------------------------------------------


def _json(start_response: StartResponse, status: str, body: Any) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def control(environ: Mapping[str, Any], start_response: StartResponse) -> list[bytes] | None:
    """Answers `GET /_rowcall/capacity[?requesters=all|functions&top=N]` and `POST .../reset`, else None."""
    path, method = environ.get("PATH_INFO"), environ.get("REQUEST_METHOD")
    if path == RESET_PATH and method == "POST":
        METERS.reset()
        return _json(start_response, "200 OK", {"reset": True})
    if path != CONTROL_PATH or method != "GET":
        return None
    query = parse_qs(environ.get("QUERY_STRING", ""))
    requesters = query.get("requesters", ["all"])[0]
    if requesters not in REQUESTERS:
        return _json(
            start_response, "400 Bad Request", {"message": f"requesters must be one of {REQUESTERS}"}
        )
    top = query.get("top", [str(TOP_ITEMS)])[0]
    if not top.isdigit():
        return _json(start_response, "400 Bad Request", {"message": "top must be a whole number"})
    return _json(
        start_response,
        "200 OK",
        {"requesters": requesters, **METERS.by_requesters[requesters].report(int(top))},
    )


# --- installation -----------------------------------------------------------------------------------

_WRITES = {
    "put_item": "PutItem",
    "update_item": "UpdateItem",
    "delete_item": "DeleteItem",
    "batch_write_item": "BatchWriteItem",
    "transact_write_items": "TransactWriteItems",
}
_READS = {
    "get_item": "GetItem",
    "batch_get_item": "BatchGetItem",
    "transact_get_items": "TransactGetItems",
    "query": "Query",
    "scan": "Scan",
}
_installed = threading.Lock()
_done = False


def install() -> None:
    """Meter every DynamoDB request moto's server answers and serve the control endpoint; once per process."""
    global _done
    with _installed:
        if _done:
            return
        _done = True
    import moto.dynamodb.responses as responses
    from moto.dynamodb.models.table import Table
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    for name, action in _WRITES.items():
        setattr(responses.DynamoHandler, name, _metered_write(getattr(responses.DynamoHandler, name), action))
    for name, action in _READS.items():
        setattr(responses.DynamoHandler, name, _metered_read(getattr(responses.DynamoHandler, name), action))
    for name in ("query", "scan"):
        setattr(Table, name, _count_evaluated_items(getattr(Table, name)))

    call = DomainDispatcherApplication.__call__

    def __call__(self: Any, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:  # noqa: N807
        answered = control(environ, start_response)
        return answered if answered is not None else call(self, environ, start_response)

    setattr(DomainDispatcherApplication, "__call__", __call__)  # noqa: B010 - moto's WSGI entry
