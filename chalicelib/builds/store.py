"""Build records in DynamoDB, moved only by conditional writes. Every read and write
returns a :class:`~chalicelib.builds.records.BuildRecord` (the item layout is described there).

A build enters the quota sets in the same transaction that creates it and leaves them
once final (set deletes are idempotent).

Over 300 lines on purpose: every DynamoDB expression of the builds table lives here (callers
name what a write rests on with the conditions below: :func:`not_cancelled`,
:func:`at_attempt`, ...), so none is spelled anywhere else.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from boto3.dynamodb.conditions import Attr, ConditionBase, ConditionExpressionBuilder
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from chalicelib.api.cursor import CursorCodec
from chalicelib.builds.records import BuildRecord
from chalicelib.builds.schemas import Build, TimelineEvent
from chalicelib.builds.spend import KeyQuota
from chalicelib.builds.states import ACTIVE, FINAL, PHASE_ORDER, Phase, Status, allowed, sources_for
from chalicelib.clock import epoch_in, now_iso
from chalicelib.errors import (
    BuildNotFound,
    Busy,
    IdempotencyConflict,
    InvalidTransition,
    QuotaExceeded,
)

QUOTA_ID = "quota#active"
QUOTA_KEY_PREFIX = "quota#key#"  # + API key id: the key's active build ids
GROUP_PREFIX = "group#"  # + group id: a matrix's cells (issue 22)
QUOTA_GPU_PREFIX = "quota#gpuh#"  # + API key id + "#" + UTC day: GPU-hours booked that day
# the key attributes of each index a listing pages (a cursor must name exactly these)
LIST_INDEX_KEYS = {
    "by-created": frozenset({"id", "kind", "created_key"}),
    "by-status": frozenset({"id", "status", "created_key"}),
    "by-framework": frozenset({"id", "framework", "created_key"}),
}
CONFLICT_RETRIES = 5
# the most index items one listing request reads (a status+framework filter skips the
# others' builds after reading them); when reached, the page ends early with a cursor
MAX_ITEMS_READ = 200
_LOOK_UP = object()  # release_slot: read the build's owner key
_KEEP = object()  # record_delivery: leave the quota slots alone
_ser = TypeSerializer()
_deser = TypeDeserializer()


def _native(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _native(v) for k, v in value.items()}
    if isinstance(value, (list, set)):
        return [_native(v) for v in value]
    return value


def to_av(value: Any) -> dict:
    return _ser.serialize(json.loads(json.dumps(value), parse_float=Decimal))


def from_item(item: dict) -> dict:
    return {k: _native(_deser.deserialize(v)) for k, v in item.items()}


def _path(names: dict[str, str], placeholder: str, name: str) -> str:
    """An attribute path for an update expression; ``a.b`` names attribute ``b`` of map ``a``."""
    if "." not in name:
        names[placeholder] = name
        return placeholder
    parts = [f"{placeholder}_{j}" for j in range(len(name.split(".")))]
    names.update(zip(parts, name.split("."), strict=True))
    return ".".join(parts)


def _applied(record: BuildRecord, sets: dict[str, Any], removes: Iterable[str],
             appends: dict[str, list]) -> BuildRecord:
    """``record`` with one write's SET, list_append and REMOVE applied (``a.b``: attribute ``b``
    of map ``a``): the build after a transaction, which returns no item."""
    doc = record.model_dump(mode="json")

    def parent(name: str) -> tuple[dict, str]:
        *head, last = name.split(".")
        node = doc
        for key in head:
            node = node[key]  # a map the write set an attribute of: there, or the write failed
        return node, last

    for name, value in {"updated_at": now_iso(), **sets}.items():
        node, key = parent(name)
        node[key] = _native(value)
    for name, items in appends.items():
        node, key = parent(name)
        node[key] = [*(node.get(key) or []), *items]
    for name in removes:
        node, key = parent(name)
        node.pop(key, None)
    return BuildRecord.of(doc)


# ---- conditions a write may rest on, by name (combine them with & and |) -------------
def all_of(*conditions: ConditionBase | None) -> ConditionBase | None:
    """The conditions that are not None, all together (None when there are none)."""
    out = None
    for c in conditions:
        if c is not None:
            out = c if out is None else out & c
    return out


def _in_states(states: Iterable[Status]) -> ConditionBase:
    return Attr("status").is_in(sorted(s.value for s in states))


def not_cancelled() -> ConditionBase:
    """No cancel was requested (the flag may be absent)."""
    return ~Attr("cancel_requested").eq(True)


def at_attempt(attempt: int) -> ConditionBase:
    return Attr("attempt").eq(attempt)


def on_instance(instance_id: str) -> ConditionBase:
    """``instance_id`` is the build's recorded instance."""
    return Attr("instance_id").eq(instance_id)


def without_instance() -> ConditionBase:
    """No instance is recorded for the current attempt."""
    return Attr("instance_id").not_exists()


def without_token() -> ConditionBase:
    """No report token is drawn for the current attempt (a split build's test stage before its launch)."""
    return Attr("token_hash").not_exists()


def in_stage(stage: str) -> ConditionBase:
    """A split build is in ``stage`` (issue 23)."""
    return Attr("stage").eq(stage)


def holding_token(hashed: str) -> ConditionBase:
    """The current attempt's report token hashes to ``hashed``."""
    return Attr("token_hash").eq(hashed)


def in_phase(phase: Phase) -> ConditionBase:
    return Attr("phase").eq(phase.value)


def not_in_phase(phase: Phase) -> ConditionBase:
    return Attr("phase").not_exists() | Attr("phase").ne(phase.value)


def before_phase(phase: Phase) -> ConditionBase:
    """No phase yet, or one earlier than ``phase``."""
    earlier = [p.value for p in Phase if PHASE_ORDER[p] < PHASE_ORDER[phase]]
    return Attr("phase").not_exists() | Attr("phase").is_in(earlier) if earlier else Attr("phase").not_exists()


def termination_unrecorded() -> ConditionBase:
    """The instance's termination time is not recorded yet (the EC2 handler writes it once)."""
    return Attr("instance_terminated_at").not_exists()


def stage_termination_unrecorded(stage: str) -> ConditionBase:
    """A split build's ``stage`` instance has no termination time yet (issue 23)."""
    at = Attr(f"stages.{stage}.terminated_at")
    return at.not_exists() | at.attribute_type("NULL")  # stored as null at submission


def digest_unchecked() -> ConditionBase:
    """Neither ECR's push event nor the reaper recorded a digest check."""
    return Attr("ecr_digest").not_exists() & Attr("digest_checked").not_exists()


class ConditionFailed(InvalidTransition):
    """A conditional write lost: ``old`` is the build as it was when the condition was
    checked (``ReturnValuesOnConditionCheckFailure=ALL_OLD``), so the caller can tell why
    without another read."""

    def __init__(self, message: str, old: BuildRecord) -> None:
        super().__init__(message)
        self.old = old


@dataclass(frozen=True)
class Idempotency:
    key: str
    body_hash: str

    @property
    def item_id(self) -> str:
        return "idem#" + hashlib.sha256(self.key.encode()).hexdigest()


class BuildStore:
    """Builds in one DynamoDB table. Takes a boto3 DynamoDB *client*."""

    def __init__(self, client, table_name: str, *, cursor_key: bytes, max_active: int) -> None:
        self._db = client
        self._table = table_name
        self._cursors = CursorCodec(cursor_key, LIST_INDEX_KEYS)
        self.max_active = max_active

    @property
    def table_name(self) -> str:
        return self._table

    # ---- create -----------------------------------------------------------------
    def create(self, build: Build, *, idempotency: Idempotency | None = None, quota: KeyQuota | None = None,
               gpu_hours: float = 0.0) -> tuple[Build, bool]:
        """Write a new QUEUED build and take a quota slot, in one transaction; with
        ``quota``, also a slot of its API key's and ``gpu_hours`` of the key's day.

        Returns ``(build, created)``; ``created`` is False when an Idempotency-Key
        matched an earlier request with the same body, whose build is returned.
        """
        items, key_limits = self._creation(build, idempotency, quota, gpu_hours)
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self._db.transact_write_items(TransactItems=items)
                return build, True
            except ClientError as e:
                if e.response["Error"]["Code"] != "TransactionCanceledException":
                    raise
                reasons = [r.get("Code") for r in e.response.get("CancellationReasons", [])]
                refused = {at for at, code in enumerate(reasons) if code == "ConditionalCheckFailed"}
                if idempotency and 2 in refused:
                    return self._replay(idempotency), False
                if 1 in refused:
                    raise QuotaExceeded(
                        f"too many active builds: the limit is {self.max_active}; "
                        "wait for one to finish or cancel one"
                    ) from None
                for at, limit in key_limits:
                    if at in refused:
                        self._raise_key_quota(quota, gpu_hours, limit)
                if "TransactionConflict" not in reasons:
                    raise
            # every submit's transaction touches the quota item, so concurrent submits
            # conflict (DynamoDB cancels all but one): try again after a short jitter
            time.sleep(random.uniform(0, 0.025 * 2**attempt))
        raise Busy("too many builds are being submitted at this moment; retry in a second")

    def _idempotency_item(self, idempotency: Idempotency, **created: str) -> dict:
        """The Idempotency-Key's item, written with what it created (``build_id`` or
        ``group_id``): a retry with the same key and body replays it for a day."""
        return {"Put": {"TableName": self._table, "Item": {
            "id": {"S": idempotency.item_id}, **{k: {"S": v} for k, v in created.items()},
            "body_hash": {"S": idempotency.body_hash}, "expires_at": {"N": str(epoch_in(days=1))}},
            "ConditionExpression": "attribute_not_exists(id)"}}

    def _creation(self, build: Build, idempotency: Idempotency | None, quota: KeyQuota | None,
                  gpu_hours: float) -> tuple[list[dict], list[tuple[int, str]]]:
        """The transaction that creates ``build``: its item, the stage's quota slot, the
        Idempotency-Key's item and the key's quota items; and where each key limit sits in it
        as ``(position, limit)`` (a refusal there is that limit reached)."""
        # `notification` belongs to the notifier, which claims it with attribute_not_exists, and
        # `instance_terminated_at` to the EC2 handler (the same); `segments` is computed on reading
        # `cost` is computed on reading too (issue 22)
        record = build.model_dump(mode="json", exclude={"notification", "instance_terminated_at", "segments",
                                                        "cost"})
        if record.get("group_id") is None:
            record.pop("group_id", None)
        record.update(kind="build", created_key=f"{build.created_at}#{build.id}", active="1")
        if quota is not None:
            record["owner_key"] = quota.key_id
        items: list[dict] = [
            {"Put": {"TableName": self._table, "Item": {k: to_av(v) for k, v in record.items()},
                     "ConditionExpression": "attribute_not_exists(id)"}},
            self._slot_item(QUOTA_ID, build.id, self.max_active),
        ]
        if idempotency:
            items.append(self._idempotency_item(idempotency, build_id=build.id))
        key_limits: list[tuple[int, str]] = []
        for limit, item in self._key_quota_items(build, quota, gpu_hours) if quota is not None else ():
            key_limits.append((len(items), limit))
            items.append(item)
        return items, key_limits

    def _slot_item(self, quota_id: str, build_id: str, limit: int) -> dict:
        """Take a slot in the active-build set ``quota_id`` while it holds fewer than ``limit``."""
        return {"Update": {
            "TableName": self._table,
            "Key": {"id": {"S": quota_id}},
            "UpdateExpression": "ADD ids :me",
            "ConditionExpression": "attribute_not_exists(ids) OR size(ids) < :max",
            "ExpressionAttributeValues": {":me": {"SS": [build_id]}, ":max": {"N": str(limit)}},
        }}

    # ---- groups (issue 22): a matrix's cells, written all or nothing ----------------------
    def create_group(self, group_id: str, builds: list[Build], group: dict[str, Any], *,
                     idempotency: Idempotency | None = None, quota: KeyQuota | None = None,
                     gpu_hours: float = 0.0) -> tuple[str, bool]:
        """Write a matrix's builds (each QUEUED, with ``group_id``), the group item
        ``group#<id>`` (``group``: its attributes besides id/kind/cell_ids), the quota slots of
        every cell and the Idempotency-Key, in ONE transaction: all or nothing. ``gpu_hours``:
        what all the cells book together. Returns ``(group_id, created)``; not created: the
        Idempotency-Key's earlier group (same body), whose id is returned.

        A matrix that does not fit the stage's or the key's quota is a 429 and writes nothing."""
        ids = [b.id for b in builds]
        if len(ids) > self.max_active:
            raise QuotaExceeded(f"too many active builds: this matrix has {len(ids)} cells and the limit is "
                                f"{self.max_active}; build fewer cells")
        record = {**group, "id": GROUP_PREFIX + group_id, "kind": "group", "cell_ids": ids}
        items: list[dict] = [
            {"Put": {"TableName": self._table, "Item": {k: to_av(v) for k, v in record.items()},
                     "ConditionExpression": "attribute_not_exists(id)"}},
            self._slots_item(QUOTA_ID, ids, self.max_active),
        ]
        if idempotency:
            items.append(self._idempotency_item(idempotency, group_id=group_id))
        key_limits: list[tuple[int, str]] = []
        if quota is not None:
            if quota.max_active is not None:
                if len(ids) > quota.max_active:
                    raise QuotaExceeded(f"too many active builds for this API key: this matrix has {len(ids)} cells "
                                        f"and the limit per key is {quota.max_active}; build fewer cells")
                key_limits.append((len(items), "active"))
                items.append(self._slots_item(f"{QUOTA_KEY_PREFIX}{quota.key_id}", ids, quota.max_active))
            for limit, item in self._key_quota_items(builds[0], KeyQuota(
                    quota.key_id, None, quota.max_gpu_hours_per_day), gpu_hours):
                key_limits.append((len(items), limit))
                items.append(item)
        for build in builds:
            items.append(self._creation(build, None, None, 0.0)[0][0])
            if quota is not None:
                items[-1]["Put"]["Item"]["owner_key"] = to_av(quota.key_id)
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self._db.transact_write_items(TransactItems=items)
                return group_id, True
            except ClientError as e:
                if e.response["Error"]["Code"] != "TransactionCanceledException":
                    raise
                reasons = [r.get("Code") for r in e.response.get("CancellationReasons", [])]
                refused = {at for at, code in enumerate(reasons) if code == "ConditionalCheckFailed"}
                if idempotency and 2 in refused:
                    return self._replay_group(idempotency), False
                if 1 in refused:
                    raise QuotaExceeded(
                        f"too many active builds: this matrix has {len(ids)} cells, the limit is {self.max_active} "
                        "and the other active builds leave too little room; build fewer cells or wait") from None
                for at, limit in key_limits:
                    if at in refused:
                        if limit == "active":
                            raise QuotaExceeded(
                                f"too many active builds for this API key: this matrix has {len(ids)} cells and the "
                                f"limit per key is {quota.max_active}; build fewer cells or wait") from None
                        self._raise_key_quota(quota, gpu_hours, limit)
                if "TransactionConflict" not in reasons:
                    raise
            time.sleep(random.uniform(0, 0.025 * 2**attempt))
        raise Busy("too many builds are being submitted at this moment; retry in a second")

    def _slots_item(self, quota_id: str, build_ids: list[str], limit: int) -> dict:
        """Take ``len(build_ids)`` slots in the active-build set ``quota_id`` at once, while
        they all fit under ``limit`` (one item may appear once in a transaction)."""
        return {"Update": {
            "TableName": self._table,
            "Key": {"id": {"S": quota_id}},
            "UpdateExpression": "ADD ids :us",
            "ConditionExpression": "attribute_not_exists(ids) OR size(ids) <= :room",
            "ExpressionAttributeValues": {":us": {"SS": list(build_ids)},
                                          ":room": {"N": str(limit - len(build_ids))}},
        }}

    def earlier(self, idem: Idempotency) -> dict[str, Any] | None:
        """What an Idempotency-Key already made (``build_id`` or ``group_id``), None when it
        made nothing yet; the same key with another body is an IdempotencyConflict."""
        resp = self._db.get_item(TableName=self._table, Key={"id": {"S": idem.item_id}}, ConsistentRead=True)
        if "Item" not in resp:
            return None
        item = from_item(resp["Item"])
        if item.get("body_hash") != idem.body_hash:
            raise IdempotencyConflict("Idempotency-Key was already used with a different request body; "
                                      "send a new key for a new build or matrix")
        return item

    def _replay_group(self, idem: Idempotency) -> str:
        resp = self._db.get_item(TableName=self._table, Key={"id": {"S": idem.item_id}}, ConsistentRead=True)
        item = from_item(resp.get("Item", {}))
        if item.get("body_hash") != idem.body_hash or not item.get("group_id"):
            raise IdempotencyConflict(
                "Idempotency-Key was already used with a different request body; "
                "send a new key for a new build or matrix"
            )
        return item["group_id"]

    def get_group(self, group_id: str) -> dict[str, Any]:
        """The group item (``cell_ids``, ``skipped``, ``created_at``, ...); BuildNotFound if none."""
        resp = self._db.get_item(TableName=self._table, Key={"id": {"S": GROUP_PREFIX + group_id}},
                                 ConsistentRead=True)
        item = from_item(resp.get("Item") or {})
        if item.get("kind") != "group":
            raise BuildNotFound(f"no group with id {group_id!r}")
        return item

    def get_records(self, build_ids: list[str]) -> list[BuildRecord]:
        """The builds ``build_ids`` in that order (BatchGetItem, 100 at a time); missing ones left out."""
        found: dict[str, BuildRecord] = {}
        for i in range(0, len(build_ids), 100):
            request = {self._table: {"Keys": [{"id": {"S": b}} for b in build_ids[i:i + 100]],
                                     "ConsistentRead": True}}
            while request:
                resp = self._db.batch_get_item(RequestItems=request)
                for item in resp.get("Responses", {}).get(self._table, []):
                    if item.get("kind", {}).get("S") == "build":
                        record = BuildRecord.of(from_item(item))
                        found[record.id] = record
                request = resp.get("UnprocessedKeys") or {}
        return [found[b] for b in build_ids if b in found]

    # ---- per-key quotas -----------------------------------------------------------------
    def _key_quota_items(self, build: Build, quota: KeyQuota, hours: float) -> list[tuple[str, dict]]:
        """The key's active-build set and its GPU-hours booked today (UTC), each conditional,
        as ``(limit, transaction item)`` for the limits the deployment sets."""
        out: list[tuple[str, dict]] = []
        if quota.max_active is not None:
            out.append(("active", self._slot_item(f"{QUOTA_KEY_PREFIX}{quota.key_id}", build.id, quota.max_active)))
        if quota.max_gpu_hours_per_day is not None:
            if hours > quota.max_gpu_hours_per_day:
                self._raise_key_quota(quota, hours, "gpu")
            out.append(("gpu", {"Update": {
                "TableName": self._table,
                "Key": {"id": {"S": f"{QUOTA_GPU_PREFIX}{quota.key_id}#{build.created_at[:10]}"}},
                "UpdateExpression": "ADD used :h SET expires_at = :exp",
                "ConditionExpression": "attribute_not_exists(used) OR used <= :room",
                "ExpressionAttributeValues": {
                    ":h": to_av(hours), ":room": to_av(round(quota.max_gpu_hours_per_day - hours, 4)),
                    ":exp": {"N": str(epoch_in(days=2))},
                },
            }}))
        return out

    @staticmethod
    def _raise_key_quota(quota: KeyQuota, hours: float, limit: str) -> None:
        if limit == "active":
            raise QuotaExceeded(
                f"too many active builds for this API key: the limit per key is {quota.max_active}; "
                "wait for one to finish or cancel one"
            )
        raise QuotaExceeded(
            f"daily GPU-hour quota of this API key reached: this build books {hours:g} GPU-hours "
            f"(its timeout on its largest instance type) and the key may book {quota.max_gpu_hours_per_day:g} "
            "per UTC day; ask for a shorter timeout_minutes or smaller instance_types, or wait until tomorrow"
        )

    def key_gpu_hours(self, key_id: str, day: str) -> float:
        resp = self._db.get_item(TableName=self._table, Key={"id": {"S": f"{QUOTA_GPU_PREFIX}{key_id}#{day}"}},
                                 ConsistentRead=True)
        return float(from_item(resp.get("Item", {})).get("used", 0))

    def _replay(self, idem: Idempotency) -> Build:
        resp = self._db.get_item(TableName=self._table, Key={"id": {"S": idem.item_id}}, ConsistentRead=True)
        item = from_item(resp.get("Item", {}))
        if item.get("body_hash") != idem.body_hash:
            raise IdempotencyConflict(
                "Idempotency-Key was already used with a different request body; "
                "send a new key for a new build"
            )
        return self.get(item["build_id"])

    # ---- read -------------------------------------------------------------------
    def get_record(self, build_id: str) -> BuildRecord:
        """The whole stored build, internal fields included."""
        resp = self._db.get_item(TableName=self._table, Key={"id": {"S": build_id}}, ConsistentRead=True)
        item = resp.get("Item")
        if not item or from_item({"kind": item.get("kind", {"S": ""})})["kind"] != "build":
            raise BuildNotFound(f"no build with id {build_id!r}")
        return BuildRecord.of(from_item(item))

    def get(self, build_id: str) -> Build:
        return self.get_record(build_id).public()

    def find_by_instance(self, instance_id: str) -> BuildRecord | None:
        resp = self._db.query(
            TableName=self._table,
            IndexName="by-instance",
            KeyConditionExpression="instance_id = :i",
            ExpressionAttributeValues={":i": {"S": instance_id}},
            Limit=1,
        )
        items = resp.get("Items", [])
        return BuildRecord.of(from_item(items[0])) if items else None

    def list(self, *, status: Status | None = None, framework: str | None = None,
             limit: int = 20, cursor: str | None = None) -> tuple[list[Build], str | None]:
        """Newest first. A status+framework listing filters the status index, so it reads at
        most MAX_ITEMS_READ items a request (in one query where it can); reaching that ends the
        page early, even empty, with a cursor to go on from."""
        if status:
            index, key, value = "by-status", "status", status.value
        elif framework:
            index, key, value = "by-framework", "framework", framework
        else:
            index, key, value = "by-created", "kind", "build"
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": index,
            "KeyConditionExpression": "#k = :v",
            "ExpressionAttributeNames": {"#k": key},
            "ExpressionAttributeValues": {":v": {"S": value}},
            "ScanIndexForward": False,
        }
        filtered = bool(status and framework)
        if filtered:
            kwargs["FilterExpression"] = "framework = :f"
            kwargs["ExpressionAttributeValues"][":f"] = {"S": framework}
        start = self._decode_cursor(cursor, index) if cursor else None
        builds: list[Build] = []
        last: dict | None = None  # the index key of the last build returned
        reads_left = MAX_ITEMS_READ
        while True:
            # DynamoDB applies Limit before the filter: a filtered listing asks for its whole
            # remaining read budget at once, not for the few items the page still needs
            kwargs["Limit"] = reads_left if filtered else limit - len(builds)
            if start:
                kwargs["ExclusiveStartKey"] = start
            resp = self._db.query(**kwargs)
            items = resp.get("Items", [])
            for n, item in enumerate(items):
                builds.append(Build.model_validate(from_item(item)))  # a page: no internal fields
                last = {k: item[k] for k in LIST_INDEX_KEYS[index]}
                if len(builds) >= limit and (n + 1 < len(items) or "LastEvaluatedKey" in resp):
                    return builds, self._encode_cursor(last, index)  # more may follow this one
            start = resp.get("LastEvaluatedKey")
            reads_left -= resp.get("ScannedCount", len(items))
            if not start or len(builds) >= limit or reads_left <= 0:
                break
        # the read budget ran out: the page may be short (even empty) but still has a cursor
        return builds, (self._encode_cursor(start, index) if start else None)

    def recent_records(self, status: Status, limit: int) -> list[BuildRecord]:
        """The newest ``limit`` builds in ``status`` as whole items, internal attributes
        included (the ``by-status`` index projects ALL): one Query."""
        resp = self._db.query(
            TableName=self._table,
            IndexName="by-status",
            KeyConditionExpression="#k = :v",
            ExpressionAttributeNames={"#k": "status"},
            ExpressionAttributeValues={":v": {"S": status.value}},
            ScanIndexForward=False,
            Limit=limit,
        )
        return [BuildRecord.of(from_item(i)) for i in resp.get("Items", [])]

    def active_records(self) -> Iterator[BuildRecord]:
        """Every build that is not final (the sparse ``by-active`` index), oldest first."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": "by-active",
            "KeyConditionExpression": "active = :a",
            "ExpressionAttributeValues": {":a": {"S": "1"}},
        }
        while True:
            resp = self._db.query(**kwargs)
            for item in resp.get("Items", []):
                yield BuildRecord.of(from_item(item))
            if "LastEvaluatedKey" not in resp:
                return
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    # ---- cursors ----------------------------------------------------------------
    def _encode_cursor(self, key: dict, index: str) -> str:
        return self._cursors.encode(index, from_item(key))

    def _decode_cursor(self, cursor: str, index: str) -> dict:
        return {k: {"S": v} for k, v in self._cursors.decode(cursor, index).items()}

    # ---- writes -----------------------------------------------------------------
    def move(
        self,
        build_id: str,
        to: Status,
        *,
        expect: Iterable[Status] | None = None,
        phase: Phase | None = None,
        message: str = "",
        fields: dict[str, Any] | None = None,
        remove: Iterable[str] = (),
        record_event: bool = True,
        extra_condition: ConditionBase | None = None,
        event: dict[str, Any] | None = None,
        also: list[dict] | None = None,
        base: BuildRecord | None = None,
        at: str | None = None,
    ) -> BuildRecord:
        """Move a build to ``to`` if it is in one of ``expect`` (default: every state
        the table allows ``to`` from) and ``extra_condition`` holds. One conditional
        UpdateItem; returns the build as it is now.

        A field name with a dot sets an attribute of a map (``image.digest``). ``event``: more
        fields of the timeline entry (a split build's ``stage`` and ``instance_id``, issue 23).

        ``also``: TransactWriteItems actions on other items (the cost aggregates' ADDs) written
        in one transaction with the move, both or neither. A transaction returns no item, so
        the build returned is ``base`` (the caller's read of it) with this write applied.
        ``at``: the move's time (its timeline entry, a final state's ``finished_at``) when the
        caller computed something from it already; by default now.

        Raises InvalidTransition (a :class:`ConditionFailed` carrying the old build) when
        the build was not in an expected state (a duplicate, late or out-of-order event):
        the caller decides whether that is an error or something to ignore.
        """
        sources = set(expect) if expect is not None else set(sources_for(to))
        sources = {s for s in sources if allowed(s, to)}
        if not sources:
            raise InvalidTransition(f"no state may move to {to.value}")
        sets, removes, appends = self._moved_fields(to, phase, message, record_event, event, at or now_iso())
        sets, removes = {**sets, **(fields or {})}, [*removes, *remove]
        condition = _in_states(sources) & extra_condition if extra_condition else _in_states(sources)
        if also:
            if base is None:
                raise ValueError("a move written with other items needs the build as the caller read it (base)")
            write = self._update_request(build_id, sets, condition=condition, removes=removes, appends=appends)
            self._transact(build_id, write, also)
            return _applied(base, sets, removes, appends)
        return self._update(
            build_id, sets, removes=removes, appends=appends, condition=condition,
            refused=lambda old: f"build {build_id} is {old.status.value}; it cannot move to {to.value}",
        )

    @staticmethod
    def _moved_fields(to: Status, phase: Phase | None, message: str, record_event: bool,
                      event: dict[str, Any] | None, now: str) -> tuple[dict[str, Any], list[str], dict[str, list]]:
        """What a move to ``to`` sets, removes and appends besides the caller's fields:
        the status and its timeline entry, the phase, and for a final state its end."""
        sets: dict[str, Any] = {"status": to.value}
        removes: list[str] = []
        appends: dict[str, list] = {}
        if record_event:
            ev = TimelineEvent(at=now, status=to, phase=phase, message=message[:2000], **(event or {}))
            dumped = ev.model_dump(mode="json")
            for name in ("stage", "instance_id"):  # a split build's only (issue 23)
                if dumped[name] is None:
                    del dumped[name]
            appends["events"] = [dumped]
        if phase is not None:
            sets["phase"] = phase.value
        elif to != Status.RUNNING:
            removes.append("phase")
        if to in FINAL:
            sets["finished_at"] = now
            removes.append("active")
        return sets, removes, appends

    def update_fields(self, build_id: str, fields: dict[str, Any], *,
                      expect: Iterable[Status] = ACTIVE, remove: Iterable[str] = (),
                      extra_condition: ConditionBase | None = None) -> BuildRecord:
        """Set fields on a build that is still in one of ``expect`` (no timeline entry) and,
        with ``extra_condition``, for which that condition holds too."""
        cond = _in_states(expect)
        return self._update(build_id, fields, removes=list(remove),
                            condition=cond & extra_condition if extra_condition else cond,
                            refused=lambda old: f"build {build_id} is {old.status.value}")

    def update_fields_with(self, build_id: str, fields: dict[str, Any], also: list[dict], *,
                           expect: Iterable[Status], extra_condition: ConditionBase | None = None) -> None:
        """:meth:`update_fields` in one transaction with ``also`` (TransactWriteItems actions on
        other items, e.g. the cost aggregates' ADDs): both or neither. Raises InvalidTransition
        when the build's condition fails (a redelivered event: nothing is added)."""
        cond = _in_states(expect)
        write = self._update_request(build_id, fields, condition=cond & extra_condition if extra_condition else cond)
        self._transact(build_id, write, also)

    def _transact(self, build_id: str, write: dict[str, Any], also: list[dict]) -> None:
        """The build's UpdateItem ``write`` and ``also`` in one TransactWriteItems, tried again
        on a conflict. Raises InvalidTransition when the build's condition fails."""
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self._db.transact_write_items(TransactItems=[{"Update": write}, *also])
                return
            except ClientError as e:
                if e.response["Error"]["Code"] != "TransactionCanceledException":
                    raise
                reasons = [r.get("Code") for r in e.response.get("CancellationReasons", [])]
                if reasons[:1] == ["ConditionalCheckFailed"]:
                    raise InvalidTransition(f"build {build_id}: the write's condition does not hold") from None
                if "TransactionConflict" not in reasons:
                    raise
            time.sleep(random.uniform(0, 0.025 * 2**attempt))
        raise Busy(f"build {build_id}: the write kept conflicting; it is retried with the event")

    def record_delivery(self, build_id: str, started: bool, value: dict[str, Any], prev_token: str | None,
                        *, release_owner: str | None | object = _KEEP) -> bool:
        """Write the notifier's bookkeeping of the "started" or the final Slack message, if
        nobody changed it since it held ``prev_token`` (None: since it did not exist) and the
        build is still RUNNING (started) or final. Returns whether it was written.

        With ``release_owner`` (the build's API key, or None), the build's quota slots are
        given back too: in the same transaction as the write, or, when the write lost, on
        their own (either way they are released)."""
        attr = "start_notification" if started else "notification"
        unchanged = (Attr(attr).not_exists() if prev_token is None
                     else Attr(f"{attr}.token").eq(prev_token))
        state = _in_states([Status.RUNNING] if started else FINAL)
        if release_owner is _KEEP:
            try:
                self._update(build_id, {attr: value}, condition=unchanged & state, refused=lambda old: "")
            except InvalidTransition:
                return False
            return True
        write = self._update_request(build_id, {attr: value}, condition=unchanged & state)
        leave = self._leave_requests(build_id, release_owner)
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self._db.transact_write_items(TransactItems=[{"Update": u} for u in [write, *leave]])
                return True
            except ClientError as e:
                reasons = [r.get("Code") for r in e.response.get("CancellationReasons", [])]
                if e.response["Error"]["Code"] != "TransactionCanceledException":
                    raise
                if reasons[:1] == ["ConditionalCheckFailed"]:
                    self._leave(leave)
                    return False
                if "TransactionConflict" not in reasons:
                    raise
            # a submit's transaction holds a quota set a moment: try again after a short jitter
            time.sleep(random.uniform(0, 0.025 * 2**attempt))
        written = self.record_delivery(build_id, started, value, prev_token)
        self._leave(leave)
        return written

    # ---- messages about no one build: a group's, the budget alert (issue 22) --------------
    def get_notice(self, item_id: str) -> dict[str, Any] | None:
        """The notifier's bookkeeping (``notification``) on item ``item_id``, or None."""
        resp = self._db.get_item(TableName=self._table, Key={"id": {"S": item_id}}, ConsistentRead=True,
                                 ProjectionExpression="notification")
        return from_item(resp.get("Item") or {}).get("notification")

    def record_notice(self, item_id: str, kind: str, value: dict[str, Any], prev_token: str | None, *,
                      create: bool = False) -> bool:
        """Write the notifier's bookkeeping of a message about no one build on item
        ``item_id`` of ``kind`` (``group#<id>``: its group message; ``budget-alert#<month>``:
        the budget alert), if nobody changed it since it held ``prev_token`` (None: since it
        did not exist): one conditional UpdateItem, so of racing writers exactly one wins.
        ``create``: the item may not exist yet (it is made, with ``kind``). Returns whether it
        was written."""
        unchanged = Attr("notification").not_exists() if prev_token is None else Attr("notification.token").eq(
            prev_token)
        mine = Attr("kind").eq(kind) | Attr("id").not_exists() if create else Attr("kind").eq(kind)
        cond = ConditionExpressionBuilder().build_expression(mine & unchanged)
        try:
            self._db.update_item(
                TableName=self._table, Key={"id": {"S": item_id}},
                UpdateExpression="SET #notice = :notice, #kind = :kind",
                ConditionExpression=cond.condition_expression,
                ExpressionAttributeNames={"#notice": "notification", "#kind": "kind",
                                          **cond.attribute_name_placeholders},
                ExpressionAttributeValues={k: to_av(v) for k, v in {
                    ":notice": value, ":kind": kind, **cond.attribute_value_placeholders}.items()})
        except ClientError as e:
            if e.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def _update_request(self, build_id: str, sets: dict[str, Any], *, condition: ConditionBase,
                        removes: Iterable[str] = (), appends: dict[str, list] | None = None) -> dict[str, Any]:
        """The UpdateItem request of a build: SET ``sets`` (and ``updated_at``), append to the
        lists in ``appends``, REMOVE ``removes``, when the item is a build and ``condition`` holds."""
        names: dict[str, str] = {}
        values: dict[str, Any] = {":now": now_iso()}
        parts = ["updated_at = :now"]
        for i, (name, value) in enumerate(sets.items()):
            values[f":u{i}"] = value
            parts.append(f"{_path(names, f'#u{i}', name)} = :u{i}")
        for i, (name, items) in enumerate((appends or {}).items()):
            values[f":a{i}"] = items
            path = _path(names, f"#a{i}", name)
            parts.append(f"{path} = list_append({path}, :a{i})")
        expr = "SET " + ", ".join(parts)
        gone = [_path(names, f"#r{i}", name) for i, name in enumerate(dict.fromkeys(removes))]
        if gone:
            expr += " REMOVE " + ", ".join(gone)
        cond = ConditionExpressionBuilder().build_expression(
            Attr("id").exists() & Attr("kind").eq("build") & condition)
        names.update(cond.attribute_name_placeholders)
        values.update(cond.attribute_value_placeholders)
        return {
            "TableName": self._table,
            "Key": {"id": {"S": build_id}},
            "UpdateExpression": expr,
            "ConditionExpression": cond.condition_expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {k: to_av(v) for k, v in values.items()},
        }

    def _update(self, build_id: str, sets: dict[str, Any], *, condition: ConditionBase,
                refused: Callable[[BuildRecord], str], removes: Iterable[str] = (),
                appends: dict[str, list] | None = None) -> BuildRecord:
        """The one UpdateItem of a build (see :meth:`_update_request`). Returns the build after
        the write. Raises BuildNotFound, or ConditionFailed with the old build and ``refused(old)``."""
        request = self._update_request(build_id, sets, condition=condition, removes=removes, appends=appends)
        try:
            resp = self._db.update_item(**request, ReturnValues="ALL_NEW",
                                        ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except ClientError as e:
            if e.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            old = e.response.get("Item")
            if not old or old.get("kind", {}).get("S") != "build":
                raise BuildNotFound(f"no build with id {build_id!r}") from None
            record = BuildRecord.of(from_item(old))
            raise ConditionFailed(refused(record), record) from None
        return BuildRecord.of(from_item(resp["Attributes"]))

    # ---- quota ------------------------------------------------------------------
    def release_slot(self, build_id: str, *, owner_key: str | None | object = _LOOK_UP) -> None:
        """Give a finished build's quota slots back, the stage's and its API key's (idempotent).
        ``owner_key``: the build's API key as the caller read it (None: none); by default the
        store reads it."""
        owner = owner_key
        if owner is _LOOK_UP:
            resp = self._db.get_item(TableName=self._table, Key={"id": {"S": build_id}},
                                     ProjectionExpression="owner_key", ConsistentRead=True)
            owner = resp.get("Item", {}).get("owner_key", {}).get("S")
        self._leave(self._leave_requests(build_id, owner))

    def _leave_requests(self, build_id: str, owner: str | None) -> list[dict[str, Any]]:
        """The UpdateItem requests that take ``build_id`` out of the stage's set and its key's."""
        sets = [QUOTA_ID, *([f"{QUOTA_KEY_PREFIX}{owner}"] if owner else [])]
        return [{"TableName": self._table, "Key": {"id": {"S": s}}, "UpdateExpression": "DELETE ids :me",
                 "ExpressionAttributeValues": {":me": {"SS": [build_id]}}} for s in sets]

    def _leave(self, requests: list[dict[str, Any]]) -> None:
        for request in requests:  # set deletes: idempotent, unconditional
            self._db.update_item(**request)

    def key_slot_holders(self, key_id: str) -> set[str]:
        resp = self._db.get_item(TableName=self._table, Key={"id": {"S": f"{QUOTA_KEY_PREFIX}{key_id}"}},
                                 ConsistentRead=True)
        return set(from_item(resp.get("Item", {})).get("ids", []))

    def slot_holders(self) -> set[str]:
        resp = self._db.get_item(TableName=self._table, Key={"id": {"S": QUOTA_ID}}, ConsistentRead=True)
        return set(from_item(resp.get("Item", {})).get("ids", []))
