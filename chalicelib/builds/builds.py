"""The build service: what the API routes do, in domain terms."""

from __future__ import annotations

import hashlib
import json
import re
import secrets

from chalicelib import clock
from chalicelib.builds.names import check_build_id
from chalicelib.builds.schemas import Build, BuildRequest, ImageInfo, NotifyOptions, StageInfo, TimelineEvent
from chalicelib.builds.spend import Ceilings, KeyQuota, gpu_hours
from chalicelib.builds.states import Status
from chalicelib.builds.store import BuildStore, Idempotency
from chalicelib.builds.transitions import Transitions
from chalicelib.clock import now_iso
from chalicelib.costs.billing import BudgetExceeded
from chalicelib.errors import BadRequest, Conflict, InvalidTransition
from chalicelib.queues import Queue
from chalicelib.settings import Settings
from chalicelib.specs import gpu
from chalicelib.specs.catalog import Catalog

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


STAGE_TAG_SEPARATOR = "__"  # between a stage's tag prefix and the tag (issue 17)


def stage_tags(prefix: str, tags: list[str]) -> list[str]:
    """A stage that shares its repositories with another pushes every tag under its own
    prefix (``dev__2.5.1-cu124-py311``, ``dev__latest``); no request may send a tag that
    looks prefixed, so no stage can take another's tags."""
    for t in tags:
        if STAGE_TAG_SEPARATOR in t:
            raise BadRequest(f"tags: {t!r} contains {STAGE_TAG_SEPARATOR!r}, which marks a stage's tags",
                             field="tags")
    return [prefix + t for t in tags]


def split_fields(build_types: list[str], instance_types: list[str]) -> dict:
    """A split build's fields at submission (issue 23): it starts in the build stage."""
    return {"split": True, "stage": "build",
            "stages": {"build": StageInfo(instance_types=build_types, attempts=1),
                       "test": StageInfo(instance_types=instance_types)}}


def new_build_id() -> str:
    return "b-" + secrets.token_hex(10)


class BuildService:
    def __init__(self, store: BuildStore, catalog: Catalog, settings: Settings, launch_queue: Queue,
                 transitions: Transitions, instances=None, contexts=None, costs=None, budget=None) -> None:
        self.store = store
        self.costs = costs  # chalicelib.costs.build_costs.BuildCosts: each build's cost (issue 22)
        self.budget = budget  # a callable that refuses (429) builds over MONTHLY_BUDGET_USD (issue 22)
        self.contexts = contexts  # chalicelib.custom.contexts.Contexts: uploaded contexts (issue 20)
        self.instances = instances  # chalicelib.events.instances.Instances: stops a cancelled build's instance
        self.transitions = transitions
        self.catalog = catalog
        self.settings = settings
        self.launch_queue = launch_queue
        self.ceilings = Ceilings(settings.max_instance_sizes, settings.max_price_ceiling,
                                 settings.max_timeout_minutes)

    # ---- submit -----------------------------------------------------------------
    def plan(self, req: BuildRequest) -> Build:
        """Validate a request against the catalog and resolve every default. No I/O (but
        a source build's uploaded context is looked up: chalicelib/custom/custom_builds.py)."""
        if req.source is not None or req.extend is not None:
            if req.split:
                raise BadRequest("split: only catalog builds split (a source or extend build runs on the GPU "
                                 "instance only)", field="split")
            from chalicelib.custom import custom_builds
            return custom_builds.plan(self, req, new_build_id(), self.contexts)
        spec = self.catalog.spec(req.framework)
        hw = self.catalog.hardware
        resolved = spec.resolve(req.version, req.cuda, req.python)
        build_args = spec.check_build_args(req.build_args)
        build_types = spec.split_types(req.split, build_args)

        # GPU compatibility (chalicelib/specs/gpu.py): every type must run this CUDA; defaults that
        # cannot are dropped with a warning; a source build's arch list must cover them all.
        placement = gpu.place(hw, spec, resolved.cuda, req.instance_types, build_args)
        instance_types = placement.instance_types

        limits = spec.timeout_minutes
        timeout = req.timeout_minutes if req.timeout_minutes is not None else limits.default
        if timeout > limits.max:
            raise BadRequest(
                f"timeout_minutes: {timeout} is over the {spec.framework} limit; allowed 5 to {limits.max}",
                field="timeout_minutes",
            )

        self.ceilings.check(hw, instance_types, req.max_price, timeout)

        notify = req.notify if isinstance(req.notify, NotifyOptions) else NotifyOptions(slack=req.notify)
        if notify.channel and notify.channel not in self.settings.slack_channels:
            raise BadRequest(
                f"notify.channel: {notify.channel!r} is not configured; configured channels: "
                f"{', '.join(self.settings.slack_channels) or 'none'}",
                field="notify.channel",
            )

        now = now_iso()
        warnings = [f"{spec.framework} is deprecated: {spec.deprecated}"] if spec.deprecated else []
        vdeprecated = spec.version(resolved.version).deprecated
        if vdeprecated:
            warnings.append(f"{spec.framework} {resolved.version} is deprecated: {vdeprecated}")
        warnings += placement.warnings
        return Build(
            id=new_build_id(),
            status=Status.QUEUED,
            framework=spec.framework,
            version=resolved.version,
            cuda=resolved.cuda,
            python=resolved.python,
            build_args=build_args,
            instance_types=instance_types,
            max_price=req.max_price,
            timeout_minutes=timeout,
            notify=notify,
            image=ImageInfo(
                repository=f"{self.settings.registry}/{spec.repository}",
                tags=stage_tags(self.settings.image_tag_prefix, spec.tags_for(resolved, hw, req.tags, build_args)),
            ),
            max_attempts=self.settings.max_attempts,
            warnings=warnings,
            created_at=now,
            updated_at=now,
            events=[TimelineEvent(at=now, status=Status.QUEUED, message="accepted",
                                  stage="build" if build_types else None)],
            **(split_fields(build_types, instance_types) if build_types else {}),
        )

    def submit(self, req: BuildRequest, *, idempotency_key: str | None = None,
               api_key_id: str = "local") -> tuple[Build, bool]:
        """Record a new build and queue it for launch. Returns ``(build, created)``.
        ``api_key_id`` (API Gateway's id of the caller's key) owns the build for the
        per-key quotas."""
        idem = None
        if idempotency_key is not None:
            self.check_idempotency_key(idempotency_key)
            body = json.dumps(req.model_dump(mode="json"), sort_keys=True).encode()
            idem = Idempotency(idempotency_key, hashlib.sha256(body).hexdigest())
        build = self.plan(req)
        if self.budget is not None:
            earlier = self.check_budget([build], idem)
            if earlier is not None and earlier.get("build_id"):
                return self.store.get(earlier["build_id"]), False
        build, created = self.store.create(build, idempotency=idem, quota=self.key_quota(api_key_id),
                                           gpu_hours=self.gpu_hours(build))
        if created:
            self.launch_queue.send({"build_id": build.id, "attempt": build.attempt,
                                    "timeout_minutes": build.timeout_minutes})  # the launcher writes first
        return build, created

    def check_budget(self, builds: list[Build], idem: Idempotency | None) -> dict | None:
        """Refuse builds over MONTHLY_BUDGET_USD (429), unless the Idempotency-Key already made
        them (a retried submit must get its build back, not be counted twice): then what it
        made (``build_id`` or ``group_id``) is returned."""
        try:
            self.budget(builds)
        except BudgetExceeded:
            earlier = self.store.earlier(idem) if idem is not None else None
            if earlier is None:
                raise
            return earlier
        return None

    @staticmethod
    def check_idempotency_key(key: str) -> None:
        if not IDEMPOTENCY_KEY.match(key):
            raise BadRequest("Idempotency-Key: 1 to 255 printable ASCII characters without spaces",
                             field="Idempotency-Key")

    def key_quota(self, api_key_id: str) -> KeyQuota:
        return KeyQuota(api_key_id, self.settings.max_active_builds_per_key, self.settings.max_gpu_hours_per_key_day)

    def gpu_hours(self, build: Build) -> float:
        return gpu_hours(self.catalog.hardware, build.instance_types, build.timeout_minutes)

    # ---- read -------------------------------------------------------------------
    def get(self, build_id: str) -> Build:
        build = self.store.get(check_build_id(build_id))
        return self.costs.with_cost(build, clock.now()) if self.costs is not None else build

    def list(self, *, status: str | None, framework: str | None, limit: str | None,
             cursor: str | None) -> tuple[list[Build], str | None]:
        st = None
        if status is not None:
            try:
                st = Status(status.upper())
            except ValueError:
                raise BadRequest(
                    f"status: {status!r} is not a status; one of {', '.join(s.value for s in Status)}",
                    field="status",
                ) from None
        if framework is not None and framework != "custom":  # "custom": a user's own Dockerfile (issue 20)
            self.catalog.spec(framework)
        try:
            n = int(limit) if limit is not None else 20
        except ValueError:
            n = 0
        if not 1 <= n <= 100:
            raise BadRequest(f"limit: {limit!r} is not a number from 1 to 100", field="limit")
        return self.store.list(status=st, framework=framework, limit=n, cursor=cursor)

    # ---- cancel -----------------------------------------------------------------
    def cancel(self, build_id: str) -> tuple[Build, bool]:
        """Cancel a build. Returns ``(build, done)``: done is True when it is CANCELLED
        now (it was QUEUED), False when the cancel was recorded for a build that has an
        instance to stop first."""
        build = self.get(build_id)
        if build.status == Status.QUEUED:
            try:
                item = self.transitions.move(build.id, Status.CANCELLED, expect=[Status.QUEUED],
                                             message="cancelled by request")
                return item.public(), True
            except InvalidTransition:
                build = self.get(build_id)  # it moved on meanwhile: fall through
        if build.status.final:
            raise Conflict(f"build {build.id} already finished as {build.status.value}; nothing to cancel")
        try:
            item = self.store.update_fields(build.id, {"cancel_requested": True},
                                            expect=[Status.QUEUED, Status.LAUNCHING, Status.RUNNING])
        except InvalidTransition:
            build = self.get(build_id)
            raise Conflict(f"build {build.id} already finished as {build.status.value}; nothing to cancel") from None
        if self.instances is not None and item.instance_id and item.status in (Status.LAUNCHING, Status.RUNNING):
            # the build becomes CANCELLED when the termination is seen (EC2 event or the reaper)
            self.instances.terminate([item.instance_id])
        return item.public(), False
