"""What the cloud's events do to a build: EC2 state changes, spot interruption warnings
and ECR pushes (parsed in cloud_events.py), and the moves the reaper shares: adopt an
instance, relaunch, requeue, fail, cancel.

Every action is a conditional write through :class:`Transitions` that also checks the
event's instance is still the build's current one, so a duplicate, late or out-of-order
event (EventBridge delivers at least once, in no particular order) fails the condition
and is ignored: nothing that is final ever changes.

An instance's events decide from the build as the ``by-instance`` index has it (one
Query, no second read): the index may lag a moment behind the table, so the write made
from it is conditioned on everything the decision rested on (status, instance, no cancel
requested, attempt). Only when that write loses is the build read once, consistently, and
the decision made again from what it really is.

Over 300 lines: the three events' decisions and the moves the reaper shares with them
(adopt, relaunch, requeue, fail, time out, cancel, settle a pushed build) belong together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from chalicelib import clock, metrics, observability
from chalicelib.builds.records import BuildRecord
from chalicelib.builds.states import Status
from chalicelib.builds.store import (
    BuildStore,
    all_of,
    at_attempt,
    in_stage,
    not_cancelled,
    on_instance,
    stage_termination_unrecorded,
    termination_unrecorded,
    without_instance,
)
from chalicelib.builds.transitions import Transitions
from chalicelib.costs import costagg
from chalicelib.costs.billing import Cost
from chalicelib.costs.build_costs import BuildCosts
from chalicelib.errors import BuildNotFound, InvalidTransition
from chalicelib.events.cloud_events import ImagePushed, InstanceStateChange, SpotInterruption
from chalicelib.events.instances import ALIVE, SPOT_RECLAIMED, TAG_BUILD_STAGE, TAG_STAGE, Instances, TaggedInstance
from chalicelib.launching.buildlogs import BuildLogs
from chalicelib.launching.hostscript import candidate_tag
from chalicelib.launching.pushed import PushedImages, settle
from chalicelib.queues import Queue

log = logging.getLogger(__name__)

LAUNCHED = (Status.LAUNCHING, Status.RUNNING)
T = TypeVar("T")
_LOST = "lost"  # a conditional write made from the index's copy lost: read again, decide again
# attributes of one attempt (its instance, its report token): dropped when the build is
# queued again, so the old instance's late events and reports no longer match anything
ATTEMPT_FIELDS = ("instance_id", "instance", "heartbeat_at", "deadline_at", "token_hash", "launch_started_at")


def unless_lost(write: Callable[[], T]) -> T | None:
    """``write()``, or None when its condition did not hold (a duplicate, late or out-of-order
    event, or a race another writer won): logged for the operators, never raised."""
    try:
        return write()
    except InvalidTransition as e:
        log.info("ignored: %s", e)
        return None


@dataclass(frozen=True)
class LifecycleConfig:
    stage: str = "dev"
    log_lines: int = 20  # of the build's log, in the reason of a build whose instance was lost


@dataclass(frozen=True)
class Termination:
    """What recording a final build's instance termination writes: ``fields`` on the build
    (when, for its terminate lag), ``also`` (the cost aggregates' ADDs; empty when no price
    is known) and the final ``cost`` they book."""

    fields: dict[str, Any]
    also: list[dict]
    cost: Cost | None
    booking: costagg.Booking | None
    finished_at: str | None = None  # the build's end the cost was computed with


class Lifecycle:
    """Moves builds in answer to what happens to their instances and images."""

    def __init__(self, store: BuildStore, transitions: Transitions, instances: Instances,
                 launch_queue: Queue, config: LifecycleConfig, logs: BuildLogs | None = None,
                 pushed: PushedImages | None = None, costs: BuildCosts | None = None) -> None:
        self.costs = costs  # prices the build once its instance is terminated (issue 22; None: not booked)
        self.pushed = pushed  # ECR, to settle a build that pushed but never reported (None: never)
        self.store = store
        self.transitions = transitions
        self.instances = instances
        self.launch_queue = launch_queue
        self.config = config
        self.logs = logs

    # ---- lookups ----------------------------------------------------------------
    def build_for_instance(self, instance_id: str) -> tuple[BuildRecord, bool] | None:
        """The build whose current instance is ``instance_id`` and whether that copy was
        read consistently; None when it is not ours (another stage's, or an earlier
        attempt's instance).

        The ``by-instance`` index first (one query; its copy may lag a moment, so every
        write made from it is conditional on what it was decided on); when it has nothing
        yet the instance's ``voltabuild:build-id`` tag names the build, read consistently."""
        hit = self.store.find_by_instance(instance_id)
        if hit is not None:
            return hit, False
        inst = self.instances.describe(instance_id)
        if inst is None or not inst.build_id or inst.tags.get(TAG_STAGE) != self.config.stage:
            return None
        record = self.current_build(inst.build_id, instance_id, adopt=inst)
        return (record, True) if record is not None else None

    def current_build(self, build_id: str, instance_id: str, *,
                      adopt: TaggedInstance | None = None) -> BuildRecord | None:
        """The build read consistently, if ``instance_id`` is still its current instance
        (or, given the instance as ``adopt``, becomes it: see :meth:`adopt`)."""
        try:
            record = self.store.get_record(build_id)
        except BuildNotFound:
            return None
        if record.instance_id == instance_id:
            return record
        if adopt is not None and adopt.id == instance_id:
            return self.adopt(record, adopt)
        return None

    def adopt(self, record: BuildRecord, inst: TaggedInstance) -> BuildRecord | None:
        """Record ``inst`` as the build's instance when the launcher did not (it died after
        RunInstances): only an instance of this stage tagged with the build's id and its
        *current* attempt, only while the build is LAUNCHING or RUNNING with no instance
        recorded (one conditional write, so a late launcher, an event and the reaper agree
        on one instance). Returns the build as it is now, or None (not adoptable, or lost)."""
        if (inst.build_id != record.id or inst.attempt != record.attempt
                or inst.tags.get(TAG_STAGE) != self.config.stage or record.instance_id
                or record.status not in LAUNCHED or inst.state not in ALIVE):
            return None
        observability.bind_build(record.id)
        info = {"id": inst.id, "type": inst.type or "unknown", "az": inst.az, "lifecycle": inst.lifecycle,
                "price": None, "launched_at": inst.launched_at}
        fields = {"instance_id": inst.id, "instance": info}
        if record.split and record.stage in record.stages:  # a split build keeps each stage's instance (issue 23)
            fields[f"stages.{record.stage}.instance"] = info
        try:
            item = self.store.update_fields(
                record.id, fields, expect=LAUNCHED,
                extra_condition=at_attempt(record.attempt) & without_instance())
        except InvalidTransition as e:
            log.info("not adopted: %s", e)
            return None
        log.warning("build %s: adopted instance %s of attempt %s (its launch was not recorded)",
                    record.id, inst.id, inst.attempt)
        return item

    def _for_instance(self, instance_id: str, decide: Callable[[BuildRecord], str]) -> str:
        """``decide`` on the index's copy of the build; when a write it made lost (the copy
        lagged, or another event won), read the build once, consistently, and decide again."""
        found = self.build_for_instance(instance_id)
        if found is None:
            return "not ours"
        record, consistent = found
        observability.bind_build(record.id)
        outcome = decide(record)
        if outcome == _LOST and not consistent:
            record = self.current_build(record.id, instance_id)
            if record is None:
                return "not ours"
            outcome = decide(record)
        return "ignored" if outcome == _LOST else outcome

    # ---- moves ------------------------------------------------------------------
    def _move(self, build_id: str, to: Status, *, expect: Iterable[Status], instance_id: str | None = None,
              unless_cancelled: bool = False, **kwargs: Any) -> BuildRecord | None:
        """Transitions.move that treats a lost race (duplicate/late event) as a no-op.
        ``instance_id``: only while that is the build's instance; ``unless_cancelled``:
        only while no cancel was requested."""
        kwargs["extra_condition"] = all_of(on_instance(instance_id) if instance_id else None,
                                           not_cancelled() if unless_cancelled else None)
        return unless_lost(lambda: self.transitions.move(build_id, to, expect=list(expect), **kwargs))

    def fail(self, record: BuildRecord, reason: str, *, expect: Iterable[Status],
             instance_id: str | None = None, unless_cancelled: bool = False,
             fields: dict[str, Any] | None = None, terminated: Termination | None = None) -> BuildRecord | None:
        return self._end(record, Status.FAILED, reason, expect=expect, instance_id=instance_id,
                         unless_cancelled=unless_cancelled, fields=fields, terminated=terminated)

    def time_out(self, record: BuildRecord, reason: str, *, expect: Iterable[Status]) -> BuildRecord | None:
        return self._end(record, Status.TIMED_OUT, reason, expect=expect)

    def _end(self, record: BuildRecord, to: Status, reason: str, *, expect: Iterable[Status],
             instance_id: str | None = None, unless_cancelled: bool = False,
             fields: dict[str, Any] | None = None, terminated: Termination | None = None) -> BuildRecord | None:
        return self._final_move(record, to, terminated, expect=expect, instance_id=instance_id, message=reason,
                                fields={"reason": reason, **(fields or {})}, unless_cancelled=unless_cancelled)

    def cancel(self, record: BuildRecord, *, expect: Iterable[Status], instance_id: str | None = None,
               note: str = "", terminated: Termination | None = None) -> BuildRecord | None:
        msg = "cancelled by request" + (f"; {note}" if note else "")
        return self._final_move(record, Status.CANCELLED, terminated, expect=expect, instance_id=instance_id,
                                message=msg, fields={"reason": "cancelled by request"})

    def _final_move(self, record: BuildRecord, to: Status, terminated: Termination | None, *,
                    fields: dict[str, Any], **kwargs: Any) -> BuildRecord | None:
        """A move to a final state; with ``terminated`` (its instance is already gone) the
        termination and its cost are written in the same transaction (one write, not two)."""
        if terminated is None:
            return self._move(record.id, to, fields=fields, **kwargs)
        moved = self._move(record.id, to, fields={**fields, **terminated.fields}, also=terminated.also or None,
                           base=record, at=terminated.finished_at, **kwargs)
        if moved is not None:
            self._terminated(moved, terminated)
        return moved

    def settle_pushed(self, record: BuildRecord, what: str) -> BuildRecord | None:
        """A RUNNING build in PUSHING whose instance went silent or away (``what``): when
        ECR holds every tag at the image this attempt pushed, SUCCEEDED with a note (see
        chalicelib/launching/pushed.py). Returns the new item, or None (not pushed, or the write lost:
        the caller goes on to fail it, conditionally, as before)."""
        if self.pushed is None or record.status != Status.RUNNING or record.cancel_requested:
            return None
        digest = self.pushed.digest(record)
        if not digest:
            return None
        when = all_of(not_cancelled(), on_instance(record.instance_id) if record.instance_id else None)
        return unless_lost(lambda: settle(self.transitions, record, digest, what, extra_condition=when))

    def start_test_stage(self, record: BuildRecord, digest: str, *, fields: dict[str, Any] | None = None,
                         extra_condition: Any = None) -> BuildRecord:
        """A split build's build stage pushed its candidate ``digest`` (issue 23): the build
        stays RUNNING, moves to its test stage as ``attempt + 1`` (a new instance, a new token:
        the build instance's reports no longer match), and the launch message for the GPU
        test stage is sent. One conditional write (the build stage, this attempt and instance,
        no cancel; ``extra_condition``: the reporter's token). Raises InvalidTransition when
        it loses (nothing sent). The build instance halts itself after its report."""
        attempt, iid = record.attempt, record.instance_id
        item = self.transitions.move(
            record.id, Status.RUNNING, expect=[Status.RUNNING],
            message=f"build stage done on {iid or 'its instance'}: candidate {digest}; "
                    f"launching the GPU test stage as attempt {attempt + 1}",
            event={"stage": "test", "instance_id": iid},
            fields={"stage": "test", "candidate_digest": digest, "candidate_tag": candidate_tag(record.id, attempt),
                    "attempt": attempt + 1, "stages.test.attempts": 1,
                    "heartbeat_at": clock.now_iso(), "queued_at": clock.now_iso(), "launch_rounds": 0,
                    **(fields or {})},
            remove=[*ATTEMPT_FIELDS[:2], "token_hash", "launch_started_at", "deadline_at", "phase"],
            extra_condition=all_of(extra_condition, in_stage("build"), at_attempt(attempt),
                                   on_instance(iid) if iid else None, not_cancelled()),
        )
        self.launch_queue.send({"build_id": record.id, "attempt": attempt + 1, "stage": "test"})
        return item

    def relaunch(self, record: BuildRecord, why: str, *, reclaimed: bool = False,
                 fields: dict[str, Any] | None = None) -> BuildRecord | None:
        """Queue a launched build again as ``attempt + 1`` (or fail it when its attempts are
        spent) and send the launch message. ``record`` is LAUNCHING or RUNNING; it may be
        an index's copy: the write holds only for its attempt and instance, and only while
        no cancel was requested (a cancel it did not see makes the write lose). ``fields``
        are written with the move (a host failure's record)."""
        attempt, max_attempts, iid = record.attempt, record.max_attempts, record.instance_id
        reclaims = record.spot_reclaims + (1 if reclaimed else 0)
        if record.cancel_requested:
            return self.cancel(record, expect=LAUNCHED, instance_id=iid, note=why)
        # a split build (issue 23) relaunches its current stage only, and counts that stage's
        # attempts: the build's own attempt number still grows (tokens, tags, messages)
        stage = record.stage if record.split and record.stage in record.stages else None
        used = record.stages[stage].attempts if stage else attempt
        if stage:
            fields = {**(fields or {}), f"stages.{stage}.attempts": used + 1}
        if used >= max_attempts:
            if reclaimed:  # the record counts the reclaim that ended it, as its reason does
                fields = {**(fields or {}), "spot_reclaims": reclaims}
            reason = (f"spot capacity reclaimed {reclaims} times" if reclaimed
                      else f"{why}; gave up after {used} attempts" + (f" of the {stage} stage" if stage else ""))
            failed = self.fail(record, reason, expect=LAUNCHED, instance_id=iid, unless_cancelled=True,
                               fields=fields)
            metrics.emit_many({"SpotInterruptions": 1} if failed and reclaimed else {})
            return failed
        past = [p.model_dump(mode="json") for p in record.past_instances]
        if record.instance is not None:  # its cost still counts (issue 22): the write holds only at this attempt
            past.append({**record.instance.model_dump(mode="json"), "left_at": clock.now_iso()})
        item = unless_lost(lambda: self.transitions.move(
                record.id, Status.QUEUED, expect=list(LAUNCHED),
                message=f"{why}; launching again as attempt {attempt + 1}"
                        + (f" ({stage} stage, its attempt {used + 1} of {max_attempts})" if stage else f" of {max_attempts}"),
                fields={"attempt": attempt + 1, "queued_at": clock.now_iso(), "spot_reclaims": reclaims,
                        "past_instances": past, **(fields or {})},
                remove=ATTEMPT_FIELDS,
                extra_condition=all_of(at_attempt(attempt), on_instance(iid) if iid else None, not_cancelled()),
            ))
        if item is None:
            return None
        self.launch_queue.send({"build_id": record.id, "attempt": attempt + 1})
        metrics.emit_many({"Relaunches": 1, **({"SpotInterruptions": 1} if reclaimed else {})})
        return item

    def requeue(self, record: BuildRecord, why: str) -> BuildRecord | None:
        """A build stuck in QUEUED (its launch message lost or failed): bump the attempt so a
        late launcher run of the old one is ignored, and send the launch message again."""
        attempt = record.attempt
        if record.cancel_requested:
            return self.cancel(record, expect=[Status.QUEUED])
        # a split build counts its current stage's attempts (issue 23), as relaunch does
        stage = record.stage if record.split and record.stage in record.stages else None
        used = record.stages[stage].attempts if stage else attempt
        if used >= record.max_attempts:
            return self.fail(record, f"{why}; gave up after {used} attempts" + (f" of the {stage} stage" if stage else ""),
                             expect=[Status.QUEUED])
        fields: dict[str, Any] = {"attempt": attempt + 1, "queued_at": clock.now_iso()}
        if stage:
            fields[f"stages.{stage}.attempts"] = used + 1
        item = unless_lost(lambda: self.store.update_fields(record.id, fields, expect=[Status.QUEUED],
                                                           extra_condition=at_attempt(attempt)))
        if item is None:
            return None
        self.launch_queue.send({"build_id": record.id, "attempt": attempt + 1})
        return item

    # ---- events -----------------------------------------------------------------
    def instance_state(self, ev: InstanceStateChange) -> str:
        """What an instance's state change does. Returns a short word for logs/tests."""
        if ev.state in ("pending", "stopping"):
            return "ignored"
        outcome = self._for_instance(ev.instance_id, lambda record: self._state_change(record, ev))
        if outcome == "not ours" and ev.state == "terminated":
            return self._stage_terminated(ev) or outcome
        return outcome

    def _stage_terminated(self, ev: InstanceStateChange) -> str | None:
        """A split build's earlier stage's instance (the build stage's, which halts itself
        after its BUILT report) was terminated: record when, for the build's cost (issue 23).
        Once only (conditional), and only the instance the record keeps for that stage."""
        inst = self.instances.describe(ev.instance_id)
        stage = inst.tags.get(TAG_BUILD_STAGE) if inst is not None else None
        if inst is None or not inst.build_id or stage not in ("build", "test"):
            return None
        try:
            record = self.store.get_record(inst.build_id)
        except BuildNotFound:
            return None
        info = record.stages.get(stage)
        if info is None or info.instance is None or info.instance.id != ev.instance_id or info.terminated_at:
            return None
        done = unless_lost(lambda: self.store.update_fields(
            record.id, {f"stages.{stage}.terminated_at": self._event_time(ev, record)},
            expect=[record.status], extra_condition=stage_termination_unrecorded(stage)))
        return "stage terminated" if done is not None else None

    @staticmethod
    def _event_time(ev: InstanceStateChange, record: BuildRecord) -> str:
        try:
            when = clock.parse(ev.time) if ev.time else clock.now()
        except ValueError:
            when = clock.now()
        if record.finished_at:  # EventBridge's time has whole seconds: never before the end
            when = max(when, clock.parse(record.finished_at))
        return clock.iso(when)

    def _state_change(self, record: BuildRecord, ev: InstanceStateChange) -> str:
        status = record.status
        if status.final:
            if ev.state in ("running", "stopped"):
                self.instances.terminate([ev.instance_id])  # its build is over: don't pay for it
                return "terminated"
            if ev.state == "terminated" and not record.instance_terminated_at:
                self._note_terminated(record, ev)  # the build's terminate lag (chalicelib/builds/segments.py)
            return "final"
        if ev.state == "running":
            if record.cancel_requested:
                self.instances.terminate([ev.instance_id])
                return "terminated"
            if status != Status.LAUNCHING:
                return "ignored"  # already RUNNING: a duplicate event
            moved = self._move(record.id, Status.RUNNING, expect=[Status.LAUNCHING], instance_id=ev.instance_id,
                               unless_cancelled=True, message=f"instance {ev.instance_id} running")
            return "running" if moved else _LOST
        if ev.state == "stopped":
            # shutdown behaviour is terminate: a stopped instance never finishes its build
            self.instances.terminate([ev.instance_id])
            return "terminated"
        outcome = self.instance_gone(record, ev.state, ev if ev.state == "terminated" else None)
        if ev.state == "terminated" and outcome == "succeeded":  # its termination and cost too (issue 22),
            # no read: the write is conditional on the status this event just moved it to
            self._note_terminated(record.model_copy(update={"status": Status.SUCCEEDED,
                                                            "finished_at": clock.now_iso()}), ev)
        return outcome

    def _note_terminated(self, record: BuildRecord, ev: InstanceStateChange) -> None:
        """Record when a final build's instance was terminated (EventBridge's time of the change)
        and book its cost, once: conditional on that instance and no termination recorded yet."""
        term = self.termination(record, ev)
        condition = all_of(on_instance(ev.instance_id), termination_unrecorded())

        def write() -> bool:
            if term.also:  # the final cost, booked into the day's aggregates exactly once (the same condition)
                self.store.update_fields_with(record.id, term.fields, term.also, expect=[record.status],
                                              extra_condition=condition)
            else:  # no price known: the termination is recorded, no cost booked
                self.store.update_fields(record.id, term.fields, expect=[record.status], extra_condition=condition)
            return True

        if unless_lost(write) is None:
            return
        self._terminated(record.model_copy(update={"instance_terminated_at": term.fields["instance_terminated_at"]}),
                         term)

    def termination(self, record: BuildRecord, ev: InstanceStateChange) -> Termination:
        """What recording the termination of ``record``'s instance (``ev``) writes; ``record``
        with the end it has (or is about to have: its status is not read)."""
        at = self._event_time(ev, record)
        when = clock.parse(at)
        fields = {"instance_terminated_at": at}
        stages = record.stages
        if record.split and record.stage in stages:  # the current stage's instance (issue 23)
            fields[f"stages.{record.stage}.terminated_at"] = at
            stages = {**stages, record.stage: stages[record.stage].model_copy(update={"terminated_at": at})}
        build = record.public().model_copy(update={"instance_terminated_at": at, "stages": stages})
        cost = self.costs.cost(build, when) if self.costs is not None else None
        if cost is None:
            return Termination(fields, [], None, None, record.finished_at)
        booking = self.costs.booking(build, record.owner_key, cost, when)
        return Termination(fields, costagg.update_items(self.store.table_name, booking), cost, booking,
                           record.finished_at)

    def _terminated(self, record: BuildRecord, term: Termination) -> None:
        """After the write that recorded ``term``: the budget alert may be due, and the metrics."""
        if term.booking is not None:
            self.costs.booked(term.booking)  # the MONTHLY_BUDGET_USD alert may be due (issue 22)
        metrics.instance_terminated(record, term.cost)

    def instance_gone(self, record: BuildRecord, state: str, terminated: InstanceStateChange | None = None) -> str:
        """The build's instance is shutting down or terminated. Returns ``_LOST`` when the
        write lost (``record`` was out of date); the spot-reclaim check and the log tail are
        read only for a build that (as far as ``record`` knows) is still on this instance.
        ``terminated``: the event that says it is terminated, whose time (and the build's cost)
        a cancel or a failure writes with the move."""
        iid = record.instance_id
        if record.status not in LAUNCHED:
            return "ignored"

        def ended() -> Termination | None:  # the build as it is about to end: now
            if terminated is None:
                return None
            return self.termination(record.model_copy(update={"finished_at": clock.now_iso()}), terminated)

        if record.cancel_requested:
            moved = self.cancel(record, expect=LAUNCHED, instance_id=iid, note=f"instance {iid} {state}",
                                terminated=ended())
            return "cancelled" if moved else _LOST
        inst = self.instances.describe(iid) if iid else None
        if inst is not None and inst.state_reason == SPOT_RECLAIMED:
            moved = self.relaunch(record, f"spot capacity reclaimed instance {iid}", reclaimed=True)
            return "relaunched" if moved else _LOST
        if self.settle_pushed(record, f"instance {iid} was {state} before it reported the result"):
            return "succeeded"
        reason = f"instance lost: {iid} was {state} before the build finished"
        lines = self.logs.last_lines(record.id, self.config.log_lines) if self.logs else []
        if lines:
            reason += "; last log lines:\n" + "\n".join(lines)
        moved = self.fail(record, reason, expect=LAUNCHED, instance_id=iid, unless_cancelled=True,
                          terminated=ended())
        if moved:
            metrics.emit("HostFailures", Cause="instance-lost")
        return "failed" if moved else _LOST

    def spot_interruption(self, ev: SpotInterruption) -> str:
        """Send the build back to the queue (the registry cache keeps its layers). The
        instance is left to EC2 for its last two minutes; the reaper catches a survivor."""
        return self._for_instance(ev.instance_id, lambda record: self._interrupted(record, ev))

    def _interrupted(self, record: BuildRecord, ev: SpotInterruption) -> str:
        if record.status not in LAUNCHED:
            return "ignored"
        moved = self.relaunch(record, f"spot interruption warning for {ev.instance_id} ({ev.action})",
                              reclaimed=True)
        if moved is None:
            return _LOST
        return "relaunched" if moved.status == Status.QUEUED else moved.status.value.lower()

    def image_pushed(self, ev: ImagePushed) -> str:
        """Record the digest ECR saw on the build that pushed it; flag a SUCCEEDED build
        whose reported digest differs. One read when the build already reported this
        digest (the newest succeeded builds), two when it did not (the active builds too)."""
        if not ev.successful_push:
            return "ignored"
        record = self._build_for_image(ev)
        if record is None:
            return "not ours"
        observability.bind_build(record.id)
        fields: dict[str, Any] = {"ecr_digest": ev.digest}
        status = record.status
        reported = record.image.digest
        flagged = False
        if status == Status.SUCCEEDED and reported and reported != ev.digest:
            fields["reason"] = (f"ECR saw {ev.digest} pushed as {ev.tag}, but the build reported {reported}")
            flagged = True
        if unless_lost(lambda: self.store.update_fields(record.id, fields, expect=[status])) is None:
            return "ignored"
        return "flagged" if flagged else "recorded"

    def _build_for_image(self, ev: ImagePushed) -> BuildRecord | None:
        def matches(r: BuildRecord) -> bool:
            repo = r.image.repository
            registry, _, name = repo.partition("/")
            # an ECR repository must be this account's and region's; a local stack's registry
            # (not ECR) is matched by the repository name its local push events carry
            same = repo == ev.repository or (".dkr.ecr." not in registry and name == ev.name)
            return same and ev.tag in r.image.tags

        # a build reports its digest only in its SUCCEEDED result, so only a succeeded build
        # can match the digest itself; that result usually arrives before ECR's event: look there first
        done = [r for r in self.store.recent_records(Status.SUCCEEDED, 20) if matches(r)]
        same = [r for r in done if r.image.digest == ev.digest]
        if same:
            return same[0]
        active = [r for r in self.store.active_records() if matches(r) and r.status == Status.RUNNING]
        if active:
            return max(active, key=lambda r: r.created_key)
        return done[0] if done else None
