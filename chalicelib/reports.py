"""What a build instance reports to ``POST /builds/{id}/events``: phases, heartbeats, the result.

Authenticated by the per-attempt token the launcher put into the user-data (only its
sha256 is stored, as ``token_hash``). A report is accepted only while the build is
LAUNCHING or RUNNING with exactly that hash, and every write is conditional on it, so a
forged, missing or stale token (another attempt's, or any token once the build is final)
gets 403 and changes nothing, even when it races a relaunch.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints, model_validator

from chalicelib.clock import now_iso
from chalicelib.errors import BuildNotFound, Conflict, Forbidden, InvalidTransition
from chalicelib.http import parse_body
from chalicelib.states import PHASE_ORDER, Phase, Status
from chalicelib.store import BuildStore
from chalicelib.transitions import Transitions

Text = Annotated[str, StringConstraints(max_length=2000)]
_FORBIDDEN = "missing, wrong or stale build token: send the token of this build attempt as 'Authorization: Bearer <token>'"
_REPORTABLE = (Status.LAUNCHING, Status.RUNNING)


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhaseReport(_Report):
    type: Literal["phase"]
    phase: Phase
    message: Text = ""


class HeartbeatReport(_Report):
    type: Literal["heartbeat"]


class ResultReport(_Report):
    type: Literal["result"]
    status: Literal["SUCCEEDED", "FAILED"]
    digest: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")] | None = None
    message: Text = ""
    reason: Text = ""
    log_tail: Annotated[str, StringConstraints(max_length=8000)] = ""

    @model_validator(mode="after")
    def _digest_iff_succeeded(self) -> ResultReport:
        if self.status == "SUCCEEDED" and not self.digest:
            raise ValueError("digest: required when status is SUCCEEDED (sha256:<64 hex>)")
        return self


class InstanceReport(RootModel):
    """The body of ``POST /builds/{id}/events``: one of the three report types."""

    root: Annotated[PhaseReport | HeartbeatReport | ResultReport, Field(discriminator="type")]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class Reports:
    def __init__(self, store: BuildStore, transitions: Transitions) -> None:
        self.store = store
        self.transitions = transitions

    def receive(self, build_id: str, authorization: str | None, raw_body: bytes | None) -> dict:
        """Authenticate, then parse and apply one report. Returns the build's status and phase."""
        hashed, record = self._authenticate(build_id, authorization)
        report = parse_body(raw_body, InstanceReport).root
        guard = ("token_hash = :token_hash", {":token_hash": hashed})
        try:
            if isinstance(report, PhaseReport):
                item = self._phase(record, report, guard)
            elif isinstance(report, HeartbeatReport):
                item = self._heartbeat(record, guard)
            else:
                item = self._result(record, report, guard)
        except InvalidTransition:
            # the conditional write lost: tell a stale token (403) from a late report (409)
            self._authenticate(build_id, authorization)
            raise Conflict(f"build {build_id} moved on; the report was not applied") from None
        return {"id": build_id, "status": item["status"], "phase": item.get("phase")}

    # ---- auth -------------------------------------------------------------------------------
    def _authenticate(self, build_id: str, authorization: str | None) -> tuple[str, dict]:
        token = bearer(authorization)
        if not token:
            raise Forbidden(_FORBIDDEN)
        try:
            record = self.store.get_record(build_id)
        except BuildNotFound:
            raise Forbidden(_FORBIDDEN) from None
        hashed = hash_token(token)
        stored = record.get("token_hash") or ""
        if not stored or not hmac.compare_digest(stored, hashed) or record["status"] not in _REPORTABLE:
            raise Forbidden(_FORBIDDEN)
        return hashed, record

    # ---- the reports ------------------------------------------------------------------------
    def _running(self, build_id: str, guard: tuple, message: str, phase: Phase | None = None) -> dict:
        """LAUNCHING -> RUNNING: the instance spoke before EC2's 'running' event arrived."""
        try:
            return self.store.transition(build_id, Status.RUNNING, expect=[Status.LAUNCHING], phase=phase,
                                         message=message, fields={"heartbeat_at": now_iso()},
                                         extra_condition=guard)
        except InvalidTransition:
            return self.store.get_record(build_id)

    def _phase(self, record: dict, report: PhaseReport, guard: tuple) -> dict:
        build_id = record["id"]
        message = report.message or f"{report.phase.value.lower()}"
        if record["status"] == Status.LAUNCHING:
            record = self._running(build_id, guard, message, report.phase)
            if record.get("phase") == report.phase.value:
                return record
        current = record.get("phase")
        if current and PHASE_ORDER[Phase(current)] > PHASE_ORDER[report.phase]:
            raise Conflict(f"phase: the build is already {current}; {report.phase.value} would move it backwards")
        allowed = [p.value for p in Phase if PHASE_ORDER[p] <= PHASE_ORDER[report.phase]]
        values = {f":pp{i}": p for i, p in enumerate(allowed)}
        cond = f"({guard[0]}) AND (attribute_not_exists(phase) OR phase IN ({', '.join(values)}))"
        try:
            return self.store.transition(
                build_id, Status.RUNNING, expect=[Status.RUNNING], phase=report.phase, message=message,
                fields={"heartbeat_at": now_iso()}, record_event=current != report.phase.value,
                extra_condition=(cond, {**guard[1], **values}),
            )
        except InvalidTransition:
            latest = self.store.get_record(build_id)
            if latest.get("phase") and PHASE_ORDER[Phase(latest["phase"])] > PHASE_ORDER[report.phase]:
                raise Conflict(
                    f"phase: the build is already {latest['phase']}; {report.phase.value} would move it backwards"
                ) from None
            raise

    def _heartbeat(self, record: dict, guard: tuple) -> dict:
        build_id = record["id"]
        if record["status"] == Status.LAUNCHING:
            return self._running(build_id, guard, "the instance reported in")
        return self.store.transition(build_id, Status.RUNNING, expect=[Status.RUNNING], record_event=False,
                                     fields={"heartbeat_at": now_iso()}, extra_condition=guard)

    def _result(self, record: dict, report: ResultReport, guard: tuple) -> dict:
        build_id = record["id"]
        if record["status"] == Status.LAUNCHING and report.status == "SUCCEEDED":
            record = self._running(build_id, guard, "the instance reported in")
        if report.status == "SUCCEEDED":
            image = {**record["image"], "digest": report.digest}
            return self.transitions.move(
                build_id, Status.SUCCEEDED, expect=[Status.RUNNING],
                message=report.message or f"pushed {report.digest}",
                fields={"image": image, "heartbeat_at": now_iso()}, remove=["token_hash"], extra_condition=guard,
            )
        reason = report.reason or "the build failed"
        if report.log_tail.strip():
            reason = f"{reason}\n--- last log lines ---\n{report.log_tail.rstrip()}"
        if record.get("cancel_requested"):
            # a cancel terminates the instance, whose trap then reports a failure: that
            # failure is the cancel taking effect, and may beat the EC2 event here
            return self.transitions.move(
                build_id, Status.CANCELLED, expect=list(_REPORTABLE), message="cancelled by request",
                fields={"reason": f"cancelled by request; the instance stopped: {reason}"[:6000]},
                remove=["token_hash"], extra_condition=guard,
            )
        return self.transitions.move(
            build_id, Status.FAILED, expect=list(_REPORTABLE), message=report.reason or "the build failed",
            fields={"reason": reason[-6000:]}, remove=["token_hash"], extra_condition=guard,
        )
