"""What a build instance reports to ``POST /builds/{id}/events``: phases, heartbeats, the result.

Authenticated by the per-attempt token the launcher put into the user-data (only its
sha256 is stored, as ``token_hash``). A report is accepted only while the build is
LAUNCHING or RUNNING with exactly that hash. There is no read first: the hash is part of
the one conditional write a report makes, and only when that write is refused does the old
item it returns (ALL_OLD) say why. So a forged, missing or stale token (another attempt's,
or any token once the build is final) gets 403 and changes nothing, even when it races a
relaunch; a report that came too late (a phase that would move backwards) gets 409.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from typing import Annotated, Literal

from boto3.dynamodb.conditions import ConditionBase
from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints, model_validator

from chalicelib import metrics
from chalicelib.api.bodies import parse_body
from chalicelib.builds.names import BUILD_ID, DIGEST_PATTERN
from chalicelib.builds.records import BuildRecord, HostFailure, token_hash
from chalicelib.builds.states import Phase, Status, phase_forward
from chalicelib.builds.store import (
    BuildStore,
    ConditionFailed,
    before_phase,
    holding_token,
    in_phase,
    not_cancelled,
    not_in_phase,
    without_instance,
)
from chalicelib.builds.transitions import Transitions
from chalicelib.clock import now_iso
from chalicelib.errors import BadRequest, BuildNotFound, Conflict, Forbidden, InvalidTransition, PayloadTooLarge
from chalicelib.launching.pushed import PushedImages, settle

Text = Annotated[str, StringConstraints(max_length=2000)]
_FORBIDDEN = "missing, wrong or stale build token: send the token of this build attempt as 'Authorization: Bearer <token>'"
_REPORTABLE = (Status.LAUNCHING, Status.RUNNING)
# the launcher draws secrets.token_urlsafe(32): 43 URL-safe characters; anything far from
# that shape is refused before any I/O (issue 17)
TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # the sender's instance id (IMDS): recorded when the build has none (its launch was not)
    instance_id: Annotated[str, StringConstraints(pattern=r"^i-[0-9a-f]{8,17}$")] | None = None


class PhaseReport(_Report):
    type: Literal["phase"]
    phase: Phase
    message: Text = ""
    # a split build's stage (issue 23): recorded on the timeline entry with the instance
    stage: Literal["build", "test"] | None = None


class HeartbeatReport(_Report):
    type: Literal["heartbeat"]


class ResultReport(_Report):
    type: Literal["result"]
    # BUILT: a split build's build stage pushed its candidate (issue 23); the GPU test follows
    status: Literal["SUCCEEDED", "FAILED", "BUILT"]
    digest: Annotated[str, StringConstraints(pattern=DIGEST_PATTERN)] | None = None
    # measured before the push (issue 19): the compressed size, and the digest the base resolved to
    image_size_bytes: int | None = Field(None, ge=0, le=10**13, strict=True)
    base_image_digest: Annotated[str, StringConstraints(pattern=DIGEST_PATTERN)] | None = None
    message: Text = ""
    reason: Text = ""
    log_tail: Annotated[str, StringConstraints(max_length=8000)] = ""
    # "host": the host failed (driver, GPU), not the build: the service tries the next instance type
    cause: Literal["host"] | None = None

    @model_validator(mode="after")
    def _digest_iff_succeeded(self) -> ResultReport:
        if self.status in ("SUCCEEDED", "BUILT") and not self.digest:
            raise ValueError(f"digest: required when status is {self.status} (sha256:<64 hex>)")
        if self.status in ("SUCCEEDED", "BUILT") and self.cause:
            raise ValueError("cause: only a FAILED result has a cause")
        return self


class InstanceReport(RootModel):
    """The body of ``POST /builds/{id}/events``: one of the three report types."""

    root: Annotated[PhaseReport | HeartbeatReport | ResultReport, Field(discriminator="type")]


def _measured(report: ResultReport) -> dict:
    """The image's measurements, as record fields, where the host script reported them."""
    out: dict = {}
    if report.image_size_bytes is not None:
        out["image.compressed_size_bytes"] = report.image_size_bytes
    if report.base_image_digest:
        out["image.base_image_digest"] = report.base_image_digest
    return out


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class Reports:
    """Applies reports with one conditional write each (the token check is part of the
    condition); only a write that lost looks at the item it returned (ALL_OLD) to tell a
    bad token (403) from a report that came too late (409), or to take the rarer path:
    the first report of a LAUNCHING build, a failure reported after a cancel."""

    def __init__(self, store: BuildStore, transitions: Transitions, *,
                 relaunch: Callable[..., BuildRecord | None], pushed: PushedImages,
                 test_stage: Callable[..., BuildRecord]) -> None:
        # Lifecycle.start_test_stage: a split build's BUILT report launches its GPU test stage (issue 23)
        self.test_stage = test_stage
        self.store = store
        self.transitions = transitions
        # Lifecycle.relaunch: a host failure queues the build again as a new attempt
        self.relaunch = relaunch
        self.pushed = pushed  # ECR, to settle a failure reported after the push

    def receive(self, build_id: str, authorization: str | None, raw_body: bytes | None) -> dict:
        """Authenticate, then parse and apply one report. Returns the build's status and phase."""
        token = bearer(authorization)
        # shapes first, so a malformed id or token (an anonymous flood) costs no DynamoDB call
        if not token or not TOKEN_SHAPE.match(token) or not BUILD_ID.match(build_id or ""):
            raise Forbidden(_FORBIDDEN)
        hashed = token_hash(token)
        try:
            report = parse_body(raw_body, InstanceReport).root
        except (BadRequest, PayloadTooLarge):
            self._authenticate(build_id, hashed)  # a bad token is told so before a bad body
            raise
        guard = holding_token(hashed)
        try:
            if isinstance(report, PhaseReport):
                item = self._phase(build_id, report, hashed, guard)
            elif isinstance(report, HeartbeatReport):
                item = self._heartbeat(build_id, hashed, guard)
            else:
                item = self._result(build_id, report, hashed, guard)
        except BuildNotFound:
            raise Forbidden(_FORBIDDEN) from None
        if report.instance_id and not item.instance_id and item.status in _REPORTABLE:
            item = self._identify(build_id, report.instance_id, guard) or item
        return {"id": build_id, "status": item.status.value, "phase": item.phase.value if item.phase else None}

    def _identify(self, build_id: str, instance_id: str, guard: ConditionBase) -> BuildRecord | None:
        """Record the reporting instance on a build that has none (the launcher died after
        RunInstances): the token proves it runs this attempt. Conditional on the token and
        on no instance being recorded meanwhile; losing changes nothing."""
        try:
            return self.store.update_fields(
                build_id, {"instance_id": instance_id}, expect=_REPORTABLE,
                extra_condition=guard & without_instance())
        except InvalidTransition:
            return None

    # ---- auth -------------------------------------------------------------------------------
    @staticmethod
    def _check(old: BuildRecord, hashed: str) -> BuildRecord:
        """``old`` (a build as a lost write found it) if the token opens it, else 403."""
        stored = old.token_hash or ""
        if not stored or not hmac.compare_digest(stored, hashed) or old.status not in _REPORTABLE:
            raise Forbidden(_FORBIDDEN)
        return old

    def _authenticate(self, build_id: str, hashed: str) -> BuildRecord:
        try:
            return self._check(self.store.get_record(build_id), hashed)
        except BuildNotFound:
            raise Forbidden(_FORBIDDEN) from None

    def _lost(self, e: InvalidTransition, build_id: str, hashed: str) -> BuildRecord:
        """The build as the lost write found it, if the token opens it (else 403)."""
        old = e.old if isinstance(e, ConditionFailed) else None
        return self._check(old, hashed) if old is not None else self._authenticate(build_id, hashed)

    @staticmethod
    def _moved_on(build_id: str) -> Conflict:
        return Conflict(f"build {build_id} moved on; the report was not applied")

    # ---- the reports ------------------------------------------------------------------------
    def _running(self, build_id: str, hashed: str, guard: ConditionBase, message: str) -> BuildRecord:
        """LAUNCHING -> RUNNING: the instance spoke before EC2's 'running' event arrived."""
        try:
            return self.transitions.move(build_id, Status.RUNNING, expect=[Status.LAUNCHING], message=message,
                                         fields={"heartbeat_at": now_iso()}, extra_condition=guard)
        except InvalidTransition as e:
            return self._lost(e, build_id, hashed)  # the EC2 event won: it is RUNNING now

    def _phase(self, build_id: str, report: PhaseReport, hashed: str, guard: ConditionBase) -> BuildRecord:
        """One write for a new phase, from LAUNCHING (the first report) or RUNNING; the same
        phase again (a retried report) refreshes the heartbeat only; an earlier one is 409."""
        message = report.message or f"{report.phase.value.lower()}"
        event = {"stage": report.stage, "instance_id": report.instance_id} if report.stage else None
        try:
            return self.transitions.move(
                build_id, Status.RUNNING, expect=list(_REPORTABLE), phase=report.phase, message=message,
                fields={"heartbeat_at": now_iso()}, extra_condition=guard & before_phase(report.phase),
                event=event,
            )
        except InvalidTransition as e:
            old = self._lost(e, build_id, hashed)
        current = old.phase
        if not phase_forward(current, report.phase):
            raise Conflict(f"phase: the build is already {current.value}; {report.phase.value} would move it backwards")
        if current != report.phase:
            raise self._moved_on(build_id)
        try:
            return self.transitions.move(
                build_id, Status.RUNNING, expect=[Status.RUNNING], record_event=False,
                fields={"heartbeat_at": now_iso()},
                extra_condition=guard & in_phase(current),
            )
        except InvalidTransition as e:
            self._lost(e, build_id, hashed)
            raise self._moved_on(build_id) from None

    def _heartbeat(self, build_id: str, hashed: str, guard: ConditionBase) -> BuildRecord:
        try:
            return self.transitions.move(build_id, Status.RUNNING, expect=[Status.RUNNING], record_event=False,
                                         fields={"heartbeat_at": now_iso()}, extra_condition=guard)
        except InvalidTransition as e:
            old = self._lost(e, build_id, hashed)
        if old.status != Status.LAUNCHING:
            raise self._moved_on(build_id)
        return self._running(build_id, hashed, guard, "the instance reported in")

    def _result(self, build_id: str, report: ResultReport, hashed: str, guard: ConditionBase) -> BuildRecord:
        if report.status == "SUCCEEDED":
            return self._succeeded(build_id, report, hashed, guard)
        if report.status == "BUILT":
            return self._built(build_id, report, hashed, guard)
        if report.cause == "host":
            return self._host_failed(build_id, report, hashed)
        reason = report.reason or "the build failed"
        if report.log_tail.strip():
            reason = f"{reason}\n--- last log lines ---\n{report.log_tail.rstrip()}"

        def fail(cond: ConditionBase) -> BuildRecord:
            return self.transitions.move(
                build_id, Status.FAILED, expect=list(_REPORTABLE), message=report.reason or "the build failed",
                fields={"reason": reason[-6000:]}, remove=["token_hash"], extra_condition=cond,
            )

        cond = guard & not_cancelled()
        try:  # a failure after the push may be a lost SUCCEEDED report: that is decided apart
            return fail(cond & not_in_phase(Phase.PUSHING))
        except InvalidTransition as e:
            old = self._lost(e, build_id, hashed)
        if not old.cancel_requested:
            if old.phase != Phase.PUSHING:
                raise self._moved_on(build_id)
            return self._failed_after_push(build_id, old, report, hashed, guard, fail, cond)
        # a cancel terminates the instance, whose trap then reports a failure: that
        # failure is the cancel taking effect, and may beat the EC2 event here
        try:
            return self.transitions.move(
                build_id, Status.CANCELLED, expect=list(_REPORTABLE), message="cancelled by request",
                fields={"reason": f"cancelled by request; the instance stopped: {reason}"[:6000]},
                remove=["token_hash"], extra_condition=guard,
            )
        except InvalidTransition as e:
            self._lost(e, build_id, hashed)
            raise self._moved_on(build_id) from None

    def _failed_after_push(self, build_id: str, old: BuildRecord, report: ResultReport, hashed: str,
                           guard: ConditionBase, fail, cond: ConditionBase) -> BuildRecord:
        """FAILED reported in PUSHING: SUCCEEDED with a note when ECR holds every tag at the
        image this attempt pushed (its SUCCEEDED report was lost), else FAILED as reported.
        See chalicelib/launching/pushed.py for the choice."""
        digest = self.pushed.digest(old)
        try:
            if digest:
                what = f"the instance reported FAILED ({(report.reason or 'no reason given')[:300]})"
                return settle(self.transitions, old, digest, what, extra_condition=guard & not_cancelled())
            return fail(cond)
        except InvalidTransition as e:
            self._lost(e, build_id, hashed)
            raise self._moved_on(build_id) from None

    def _host_failed(self, build_id: str, report: ResultReport, hashed: str) -> BuildRecord:
        """The host failed (no driver, driver too old, GPU not visible): record it and queue
        the build again as a new attempt, which the launcher starts on another instance type
        (Lifecycle.relaunch; its write holds only for this attempt and instance, so a report
        that lost a race changes nothing). Out of attempts, the build fails with the cause."""
        old = self._authenticate(build_id, hashed)
        itype = old.instance.type if old.instance else None
        reason = report.reason or "the host failed"
        failure = HostFailure(attempt=old.attempt, instance_type=itype, reason=reason[:500])
        failures = [f.model_dump(mode="json") for f in [*old.host_failures, failure]]
        item = self.relaunch(old, f"host failure on {itype or 'the instance'}: {reason}"[:1500],
                             fields={"host_failures": failures})
        if item is None:
            raise self._moved_on(build_id)
        metrics.emit("HostFailures", Cause=metrics.host_cause(reason))
        return item

    def _built(self, build_id: str, report: ResultReport, hashed: str, guard: ConditionBase) -> BuildRecord:
        """A split build's build stage pushed its candidate (issue 23): the build stays
        RUNNING and its GPU test stage is launched (Lifecycle.start_test_stage, one write
        conditional on this token and the build stage, then the launch message). Only a
        split build in its build stage may report BUILT (409 otherwise)."""
        old = self._authenticate(build_id, hashed)
        if not old.split or old.stage != "build":
            raise Conflict(f"build {build_id} has no build stage to finish; BUILT is for a split build's build stage")
        if old.status == Status.LAUNCHING:  # no phase report came first
            old = self._running(build_id, hashed, guard, "the instance reported in")
        try:
            return self.test_stage(old, report.digest, fields=_measured(report), extra_condition=guard)
        except InvalidTransition as e:
            self._lost(e, build_id, hashed)
            raise self._moved_on(build_id) from None

    def _succeeded(self, build_id: str, report: ResultReport, hashed: str, guard: ConditionBase) -> BuildRecord:
        def move() -> BuildRecord:
            return self.transitions.move(
                build_id, Status.SUCCEEDED, expect=[Status.RUNNING],
                message=report.message or f"pushed {report.digest}",
                fields={"image.digest": report.digest, "heartbeat_at": now_iso(), **_measured(report)},
                remove=["token_hash"],
                extra_condition=guard,
            )

        try:
            return move()
        except InvalidTransition as e:
            old = self._lost(e, build_id, hashed)
        if old.status != Status.LAUNCHING:
            raise self._moved_on(build_id)
        # no phase report came first: LAUNCHING -> RUNNING -> SUCCEEDED
        self._running(build_id, hashed, guard, "the instance reported in")
        try:
            return move()
        except InvalidTransition as e:
            self._lost(e, build_id, hashed)
            raise self._moved_on(build_id) from None
