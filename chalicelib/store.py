"""Build records in DynamoDB, moved only by conditional writes. Every read and write
returns a :class:`~chalicelib.records.BuildRecord` (the item layout is described there).

A build enters the quota sets in the same transaction that creates it and leaves them
once final (set deletes are idempotent).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from chalicelib.clock import epoch_in, now_iso
from chalicelib.cursor import CursorCodec
from chalicelib.errors import (
    BuildNotFound,
    Busy,
    IdempotencyConflict,
    InvalidTransition,
    QuotaExceeded,
)
from chalicelib.records import BuildRecord
from chalicelib.schemas import Build, TimelineEvent
from chalicelib.spend import KeyQuota
from chalicelib.states import ACTIVE, FINAL, Phase, Status, allowed, sources_for

QUOTA_ID = "quota#active"
QUOTA_KEY_PREFIX = "quota#key#"  # + API key id: the key's active build ids (issue 17)
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
# an extra condition for a write decided on "no cancel was requested" (the flag may be absent)
NOT_CANCELLED = ("NOT (cancel_requested = :cancel_yes)", {":cancel_yes": True})
_ser = TypeSerializer()
_deser = TypeDeserializer()


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, set)):
        return [_plain(v) for v in value]
    return value


def to_av(value: Any) -> dict:
    return _ser.serialize(json.loads(json.dumps(value), parse_float=Decimal))


def from_item(item: dict) -> dict:
    return {k: _plain(_deser.deserialize(v)) for k, v in item.items()}


def _path(names: dict[str, str], placeholder: str, name: str) -> str:
    """An attribute path for an update expression; ``a.b`` names attribute ``b`` of map ``a``."""
    if "." not in name:
        names[placeholder] = name
        return placeholder
    parts = [f"{placeholder}_{j}" for j in range(len(name.split(".")))]
    names.update(zip(parts, name.split("."), strict=True))
    return ".".join(parts)


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

    # ---- create -----------------------------------------------------------------
    def create(self, build: Build, *, idempotency: Idempotency | None = None, quota: KeyQuota | None = None,
               gpu_hours: float = 0.0) -> tuple[Build, bool]:
        """Write a new QUEUED build and take a quota slot, in one transaction; with
        ``quota``, also a slot of its API key's and ``gpu_hours`` of the key's day.

        Returns ``(build, created)``; ``created`` is False when an Idempotency-Key
        matched an earlier request with the same body, whose build is returned.
        """
        # `notification` belongs to the notifier, which claims it with attribute_not_exists
        record = build.model_dump(mode="json", exclude={"notification"})
        record.update(
            kind="build",
            created_key=f"{build.created_at}#{build.id}",
            active="1",
        )
        if quota is not None:
            record["owner_key"] = quota.key_id
        items: list[dict] = [{
            "Put": {
                "TableName": self._table,
                "Item": {k: to_av(v) for k, v in record.items()},
                "ConditionExpression": "attribute_not_exists(id)",
            }
        }]
        items.append({
            "Update": {
                "TableName": self._table,
                "Key": {"id": {"S": QUOTA_ID}},
                "UpdateExpression": "ADD ids :me",
                "ConditionExpression": "attribute_not_exists(ids) OR size(ids) < :max",
                "ExpressionAttributeValues": {":me": {"SS": [build.id]}, ":max": {"N": str(self.max_active)}},
            }
        })
        if idempotency:
            items.append({
                "Put": {
                    "TableName": self._table,
                    "Item": {
                        "id": {"S": idempotency.item_id},
                        "build_id": {"S": build.id},
                        "body_hash": {"S": idempotency.body_hash},
                        "expires_at": {"N": str(epoch_in(days=1))},
                    },
                    "ConditionExpression": "attribute_not_exists(id)",
                }
            })
        key_limits: list[tuple[int, str]] = []  # (position in the transaction, limit)
        for limit, item in self._key_quota_items(build, quota, gpu_hours) if quota is not None else ():
            key_limits.append((len(items), limit))
            items.append(item)
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self._db.transact_write_items(TransactItems=items)
                return build, True
            except ClientError as e:
                if e.response["Error"]["Code"] != "TransactionCanceledException":
                    raise
                reasons = [r.get("Code") for r in e.response.get("CancellationReasons", [])]
                if idempotency and len(reasons) > 2 and reasons[2] == "ConditionalCheckFailed":
                    return self._replay(idempotency), False
                if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                    raise QuotaExceeded(
                        f"too many active builds: the limit is {self.max_active}; "
                        "wait for one to finish or cancel one"
                    ) from None
                for at, limit in key_limits:
                    if len(reasons) > at and reasons[at] == "ConditionalCheckFailed":
                        self._raise_key_quota(quota, gpu_hours, limit)
                if "TransactionConflict" not in reasons:
                    raise
            # every submit's transaction touches the quota item, so concurrent submits
            # conflict (DynamoDB cancels all but one): try again after a short jitter
            time.sleep(random.uniform(0, 0.025 * 2**attempt))
        raise Busy("too many builds are being submitted at this moment; retry in a second")

    # ---- per-key quotas (issue 17) --------------------------------------------------
    def _key_quota_items(self, build: Build, quota: KeyQuota, hours: float) -> list[tuple[str, dict]]:
        """The key's active-build set and its GPU-hours booked today (UTC), each conditional,
        as ``(limit, transaction item)`` for the limits the deployment sets."""
        out: list[tuple[str, dict]] = []
        if quota.max_active is not None:
            out.append(("active", {"Update": {
                "TableName": self._table,
                "Key": {"id": {"S": f"{QUOTA_KEY_PREFIX}{quota.key_id}"}},
                "UpdateExpression": "ADD ids :me",
                "ConditionExpression": "attribute_not_exists(ids) OR size(ids) < :max",
                "ExpressionAttributeValues": {":me": {"SS": [build.id]}, ":max": {"N": str(quota.max_active)}},
            }}))
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

    # ---- transitions ------------------------------------------------------------
    def transition(
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
        extra_condition: tuple[str, dict[str, Any]] | None = None,
    ) -> BuildRecord:
        """Move a build to ``to`` if it is in one of ``expect`` (default: every state
        the table allows ``to`` from). One conditional UpdateItem; returns the new item.

        A field name with a dot sets an attribute of a map (``image.digest``).

        Raises InvalidTransition (a :class:`ConditionFailed` carrying the old item) when
        the build was not in an expected state (a duplicate, late or out-of-order event):
        the caller decides whether that is an error or something to ignore.
        """
        sources = set(expect) if expect is not None else set(sources_for(to))
        sources = {s for s in sources if allowed(s, to)}
        if not sources:
            raise InvalidTransition(f"no state may move to {to.value}")
        now = now_iso()
        values: dict[str, Any] = {":to": to.value, ":now": now}
        sets = ["#s = :to", "updated_at = :now"]
        removes = list(remove)
        if record_event:
            ev = TimelineEvent(at=now, status=to, phase=phase, message=message[:2000])
            values[":ev"] = [ev.model_dump(mode="json")]
            sets.append("events = list_append(events, :ev)")
        if phase is not None:
            values[":ph"] = phase.value
            sets.append("phase = :ph")
        elif to != Status.RUNNING:
            removes.append("phase")
        if to in FINAL:
            sets.append("finished_at = :now")
            removes.append("active")
        names = {"#s": "status"}
        for i, (name, value) in enumerate((fields or {}).items()):
            values[f":f{i}"] = value
            sets.append(f"{_path(names, f'#f{i}', name)} = :f{i}")
        src = sorted(s.value for s in sources)
        cond = "#s IN (" + ", ".join(f":src{i}" for i in range(len(src))) + ")"
        values.update({f":src{i}": s for i, s in enumerate(src)})
        if extra_condition:
            cond = f"({cond}) AND ({extra_condition[0]})"
            values.update(extra_condition[1])
        expr = "SET " + ", ".join(sets)
        if removes:
            expr += " REMOVE " + ", ".join(dict.fromkeys(removes))
        try:
            resp = self._db.update_item(
                TableName=self._table,
                Key={"id": {"S": build_id}},
                UpdateExpression=expr,
                ConditionExpression=f"attribute_exists(id) AND kind = :kind AND {cond}",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={":kind": {"S": "build"}, **{k: to_av(v) for k, v in values.items()}},
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as e:
            if e.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            old = e.response.get("Item")
            if not old:
                raise BuildNotFound(f"no build with id {build_id!r}") from None
            record = BuildRecord.of(from_item(old))
            raise ConditionFailed(
                f"build {build_id} is {record.status.value}; it cannot move to {to.value}", record
            ) from None
        return BuildRecord.of(from_item(resp["Attributes"]))

    def update_fields(self, build_id: str, fields: dict[str, Any], *,
                      expect: Iterable[Status] = ACTIVE, remove: Iterable[str] = (),
                      extra_condition: tuple[str, dict[str, Any]] | None = None) -> BuildRecord:
        """Set fields on a build that is still in one of ``expect`` (no timeline entry) and,
        with ``extra_condition``, for which that condition holds too."""
        names = {"#s": "status", **{f"#f{i}": n for i, n in enumerate(fields)}}
        values = {f":f{i}": v for i, v in enumerate(fields.values())}
        src = sorted(s.value for s in expect)
        values.update({f":src{i}": s for i, s in enumerate(src)})
        values[":now"] = now_iso()
        expr = "SET updated_at = :now" + "".join(f", #f{i} = :f{i}" for i in range(len(fields)))
        rm = list(remove)
        if rm:
            expr += " REMOVE " + ", ".join(rm)
        cond = "attribute_exists(id) AND #s IN (" + ", ".join(f":src{i}" for i in range(len(src))) + ")"
        if extra_condition:
            cond = f"{cond} AND ({extra_condition[0]})"
            values.update(extra_condition[1])
        try:
            resp = self._db.update_item(
                TableName=self._table,
                Key={"id": {"S": build_id}},
                UpdateExpression=expr,
                ConditionExpression=cond,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={k: to_av(v) for k, v in values.items()},
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as e:
            if e.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            old = e.response.get("Item")
            if not old:
                raise BuildNotFound(f"no build with id {build_id!r}") from None
            record = BuildRecord.of(from_item(old))
            raise ConditionFailed(f"build {build_id} is {record.status.value}", record) from None
        return BuildRecord.of(from_item(resp["Attributes"]))

    def set_if(self, build_id: str, attribute: str, value: Any, *, condition: str,
               names: dict[str, str] | None = None, values: dict[str, Any] | None = None) -> BuildRecord | None:
        """Set one attribute of a build when ``condition`` holds (optimistic concurrency
        for bookkeeping such as the Slack notification claim). ``condition`` may use
        ``#s`` for ``status`` and ``#a`` for ``attribute``. Returns the new item, or None
        when the condition failed."""
        try:
            resp = self._db.update_item(
                TableName=self._table,
                Key={"id": {"S": build_id}},
                UpdateExpression="SET #a = :a, updated_at = :now",
                ConditionExpression=f"attribute_exists(id) AND kind = :kind AND ({condition})",
                ExpressionAttributeNames={"#a": attribute, **({"#s": "status"} if "#s" in condition else {}),
                                          **(names or {})},
                ExpressionAttributeValues={
                    ":kind": {"S": "build"}, ":a": to_av(value), ":now": to_av(now_iso()),
                    **{k: to_av(v) for k, v in (values or {}).items()},
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as e:
            if e.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return None
        return BuildRecord.of(from_item(resp["Attributes"]))

    # ---- quota ------------------------------------------------------------------
    def release_slot(self, build_id: str) -> None:
        """Give a finished build's quota slots back, the stage's and its API key's (idempotent)."""
        self._db.update_item(
            TableName=self._table,
            Key={"id": {"S": QUOTA_ID}},
            UpdateExpression="DELETE ids :me",
            ExpressionAttributeValues={":me": {"SS": [build_id]}},
        )
        resp = self._db.get_item(TableName=self._table, Key={"id": {"S": build_id}},
                                 ProjectionExpression="owner_key", ConsistentRead=True)
        owner = resp.get("Item", {}).get("owner_key", {}).get("S")
        if owner:
            self._db.update_item(
                TableName=self._table,
                Key={"id": {"S": f"{QUOTA_KEY_PREFIX}{owner}"}},
                UpdateExpression="DELETE ids :me",
                ExpressionAttributeValues={":me": {"SS": [build_id]}},
            )

    def key_slot_holders(self, key_id: str) -> set[str]:
        resp = self._db.get_item(TableName=self._table, Key={"id": {"S": f"{QUOTA_KEY_PREFIX}{key_id}"}},
                                 ConsistentRead=True)
        return set(from_item(resp.get("Item", {})).get("ids", []))

    def slot_holders(self) -> set[str]:
        resp = self._db.get_item(TableName=self._table, Key={"id": {"S": QUOTA_ID}}, ConsistentRead=True)
        return set(from_item(resp.get("Item", {})).get("ids", []))
