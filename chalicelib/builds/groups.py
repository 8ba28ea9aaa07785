"""Groups (issue 22): a matrix request's builds, one per cell, written all or nothing.

``POST /builds`` with a ``matrix`` expands it (``matrix.expand``, each cell planned as a
single build is), checks the stage's budget for every cell, and writes every build, the
group item ``group#<id>``, every cell's quota slots and the Idempotency-Key in ONE
DynamoDB transaction (``BuildStore.create_group``). The group's status is derived from its
cells on every read: RUNNING until every cell is final, then SUCCEEDED only if all did,
else FAILED if any failed or timed out, else CANCELLED.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import datetime

from pydantic import BaseModel, Field

from chalicelib import clock
from chalicelib.builds.matrix import MatrixRequest, expand
from chalicelib.builds.schemas import Build
from chalicelib.builds.states import Status
from chalicelib.builds.store import Idempotency
from chalicelib.clock import now_iso
from chalicelib.errors import BadRequest, BuildNotFound, Conflict

GROUP_ID_PREFIX = "g-"


def new_group_id() -> str:
    return GROUP_ID_PREFIX + secrets.token_hex(10)


_GROUP_ID = re.compile(r"^g-[0-9a-f]{20}\Z")


def check_group_id(group_id: str) -> str:
    if not _GROUP_ID.match(group_id or ""):
        raise BuildNotFound(f"no group with id {group_id!r} (group ids look like g-0123456789abcdef0123)")
    return group_id


class SkippedCell(BaseModel):
    values: dict[str, str]
    reason: str


class GroupCell(BaseModel):
    id: str
    values: dict[str, str] = Field(description="the matrix values of this cell")
    status: Status
    phase: str | None = None
    version: str
    cuda: str
    python: str
    image: dict
    cost: dict | None = None


class Group(BaseModel):
    """A matrix's group as the API returns it."""

    id: str
    status: Status = Field(description="RUNNING until every cell is final; then SUCCEEDED only if every cell did, "
                                        "else FAILED (a cell failed or timed out) or CANCELLED")
    framework: str
    cells: list[GroupCell]
    skipped: list[SkippedCell] = Field(default_factory=list, description="cells refused with skip_invalid: true")
    created_at: str
    cost_usd: str | None = Field(None, description="the cells' costs summed (USD); null when one is unknown")


def aggregate_status(statuses: list[Status]) -> Status:
    if not statuses or any(not s.final for s in statuses):
        return Status.RUNNING
    if all(s == Status.SUCCEEDED for s in statuses):
        return Status.SUCCEEDED
    if any(s in (Status.FAILED, Status.TIMED_OUT) for s in statuses):
        return Status.FAILED
    return Status.CANCELLED


class Groups:
    """What the group routes do. ``service``: the BuildService (plan, quotas, cancel, costs)."""

    def __init__(self, service) -> None:
        self.service = service
        self.store = service.store

    def submit(self, req: MatrixRequest, *, idempotency_key: str | None, api_key_id: str) -> tuple[Group, bool]:
        idem = None
        if idempotency_key is not None:
            self.service.check_idempotency_key(idempotency_key)
            body = json.dumps(req.model_dump(mode="json"), sort_keys=True).encode()
            idem = Idempotency(idempotency_key, hashlib.sha256(b"matrix:" + body).hexdigest())
        expansion = expand(req.base(), req.matrix, self.service.plan, skip_invalid=req.skip_invalid)
        group_id = new_group_id()
        builds = [c.build.model_copy(update={"group_id": group_id}) for c in expansion.cells]
        if self.service.budget is not None:
            earlier = self.service.check_budget(builds, idem)
            if earlier is not None and earlier.get("group_id"):
                return self.get(earlier["group_id"]), False
        hours = sum(self.service.gpu_hours(b) for b in builds)
        skipped = [{"values": s.values, "reason": s.reason} for s in expansion.skipped]
        group_id, created = self.store.create_group(
            group_id, builds, {"created_at": now_iso(), "framework": builds[0].framework, "skipped": skipped,
                               "values": [c.values for c in expansion.cells]},
            idempotency=idem, quota=self.service.key_quota(api_key_id), gpu_hours=hours)
        if created:
            for b in builds:
                self.service.launch_queue.send({"build_id": b.id, "attempt": b.attempt,
                                                "timeout_minutes": b.timeout_minutes})
        return self.get(group_id), created

    def _cells(self, group_id: str) -> tuple[dict, list[Build]]:
        item = self.store.get_group(check_group_id(group_id))
        return item, [r.public() for r in self.store.get_records(item["cell_ids"])]

    def get(self, group_id: str, at: datetime | None = None) -> Group:
        item, builds = self._cells(group_id)
        at = at or clock.now()
        values = item.get("values") or [{} for _ in builds]
        cells = []
        total, known = 0, True
        for build, vals in zip(builds, values, strict=False):
            cost = self.service.costs.cost(build, at) if self.service.costs is not None else None
            known = known and cost is not None
            total = total + cost.usd if cost is not None else total
            cells.append(GroupCell(id=build.id, values=vals, status=build.status,
                                   phase=build.phase.value if build.phase else None, version=build.version,
                                   cuda=build.cuda, python=build.python, image=build.image.model_dump(mode="json"),
                                   cost=cost.model_dump(mode="json") if cost is not None else None))
        return Group(id=group_id, status=aggregate_status([b.status for b in builds]),
                     framework=item.get("framework", ""), cells=cells,
                     skipped=[SkippedCell(**s) for s in item.get("skipped", [])], created_at=item.get("created_at", ""),
                     cost_usd=str(total) if known and self.service.costs is not None else None)

    def builds(self, group_id: str) -> list[Build]:
        """The cells of a group, for ``GET /builds?group=``: none for a group that does not
        exist (a filter that matches nothing, as an unknown framework)."""
        try:
            return self._cells(group_id)[1]
        except BuildNotFound:
            return []

    def cancel(self, group_id: str) -> tuple[Group, bool]:
        """Cancel every cell not yet final (the single-build cancel path). Returns
        ``(group, done)``: done when every cell is final now."""
        _, builds = self._cells(group_id)
        pending = [b for b in builds if not b.status.final]
        if not pending:
            raise Conflict(f"group {group_id}: every cell already finished; nothing to cancel")
        for b in pending:
            try:
                self.service.cancel(b.id)
            except Conflict:
                continue  # it finished meanwhile
        group = self.get(group_id)
        return group, group.status != Status.RUNNING


def group_filter(query: dict[str, str]) -> str | None:
    """``GET /builds?group=`` may not be combined with the other filters or a cursor."""
    group = query.get("group")
    if group is not None and set(query) - {"group"}:
        raise BadRequest("group: lists a group's cells (at most 32, one page); "
                         "it cannot be combined with status, framework, limit or next", field="group")
    if group is not None and not _GROUP_ID.match(group):
        raise BadRequest(f"group: {group[:40]!r} is not a group id (group ids look like g-0123456789abcdef0123)",
                         field="group")
    return group


def has_matrix(raw: bytes | None) -> bool:
    """Whether a ``POST /builds`` body asks for a matrix (a JSON object with ``matrix``);
    anything else is parsed, and refused where wrong, as a single build's body."""
    try:
        data = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "matrix" in data
