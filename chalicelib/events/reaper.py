"""The scheduled sweep that makes every build end and every instance go, whatever events
were lost. One tick reads the active builds (the sparse ``by-active`` index: its cost grows
with active builds, not with history), one paged DescribeInstances of this stage's live
instances, the quota item and the newest SUCCEEDED builds, then:

- a launched build with no instance recorded adopts the live instance tagged with its id
  and current attempt (the launcher died after RunInstances);
- builds past ``deadline_at``: instance terminated, TIMED_OUT;
- cancelled builds whose instance is gone: CANCELLED (the instance is terminated first);
- QUEUED or LAUNCHING past the launch grace: launched again as ``attempt + 1``, or FAILED;
- RUNNING with a stale heartbeat: instance terminated, FAILED (SUCCEEDED with a note when it
  was pushing and ECR holds every tag at its image: see pushed.py);
- orphans (tagged ours; build final, unknown or on another instance): tagged
  ``voltabuild:orphan-seen-at`` on one tick, terminated on a later one if still orphaned;
  ``voltabuild:keep`` exempts an instance;
- quota slots still held by final builds are given back;
- SUCCEEDED builds whose image ECR never reported: checked in ECR, flagged in ``reason``;
- final builds whose Slack delivery was never claimed after ``notify_grace``: their notify
  message is sent again (lost between the final write and the send).

A little over 300 lines: one named step per item above, each a few lines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from botocore.exceptions import ClientError

from chalicelib import clock, metrics, observability
from chalicelib.builds.records import BuildRecord
from chalicelib.builds.states import FINAL, Status
from chalicelib.builds.store import BuildStore, digest_unchecked
from chalicelib.errors import BuildNotFound, InvalidTransition
from chalicelib.events.instances import Instances, TaggedInstance
from chalicelib.events.lifecycle import LAUNCHED, Lifecycle
from chalicelib.notifications.notify_events import enqueue_final

log = logging.getLogger(__name__)
_DAY = timedelta(days=1)


@dataclass
class ReapReport:
    adopted: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    relaunched: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    orphans_marked: list[str] = field(default_factory=list)
    orphans_terminated: list[str] = field(default_factory=list)
    slots_released: list[str] = field(default_factory=list)
    digests_checked: list[str] = field(default_factory=list)
    digests_flagged: list[str] = field(default_factory=list)
    notifications_requeued: list[str] = field(default_factory=list)
    settled_pushed: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.__dict__.items() if v}


def _at(value: str | None) -> datetime | None:
    return clock.parse(value) if value else None


@dataclass
class _Tick:
    """What one tick knows while it reaps builds."""

    now: datetime
    alive: dict[str, TaggedInstance]
    terminated: set[str]
    report: ReapReport


@dataclass(frozen=True)
class ReaperConfig:
    launch_grace: timedelta = timedelta(minutes=10)
    stale_heartbeat: timedelta = timedelta(minutes=15)
    orphan_grace: timedelta = timedelta(minutes=4)
    digest_grace: timedelta = timedelta(minutes=15)
    # a final build whose Slack delivery nobody claimed this long after it ended lost its
    # notify message (the Lambda died between the final write and the send): send it again
    notify_grace: timedelta = timedelta(minutes=10)


class Reaper:
    def __init__(self, store: BuildStore, lifecycle: Lifecycle, instances: Instances,
                 config: ReaperConfig | None = None, ecr=None) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.instances = instances
        self.config = config or ReaperConfig()
        self._ecr = ecr

    def tick(self) -> ReapReport:
        report = ReapReport()
        now = clock.now()
        active = list(self.store.active_records())
        alive = {i.id: i for i in self.instances.alive()}
        terminated: set[str] = set()
        active = [self._adopt(record, alive, report) for record in active]
        for record in active:
            observability.bind_build(record.id)
            self._reap_build(record, now, alive, terminated, report)
        observability.bind_build(None)
        self._reap_orphans(active, alive, terminated, now, report)
        self._release_slots({r.id for r in active}, report)
        # the newest builds of each final state: one Query each, whole items (nothing read again)
        recent = {status: self.store.recent_records(status, 20) for status in sorted(FINAL)}
        if self._ecr is not None:
            self._check_digests(recent[Status.SUCCEEDED], now, report)
        self._requeue_notifications(recent, now, report)
        if report.summary():
            log.info("reaper: %s", report.summary())
        metrics.reaper_ran(len(report.orphans_marked), len(report.orphans_terminated))
        return report

    # ---- builds -----------------------------------------------------------------
    def _adopt(self, record: BuildRecord, alive: dict[str, TaggedInstance], report: ReapReport) -> BuildRecord:
        """A launched build with no instance recorded whose current attempt has a live
        instance (the launcher died after RunInstances): record that instance instead of
        reaping a healthy build and terminating its instance as an orphan."""
        if record.instance_id or record.status not in LAUNCHED:
            return record
        mine = sorted((i for i in alive.values() if i.build_id == record.id and i.attempt == record.attempt),
                      key=lambda i: (i.launched_at or "", i.id))
        if not mine:
            return record
        adopted = self.lifecycle.adopt(record, mine[0])
        if adopted is None:
            return record
        report.adopted.append(record.id)
        return adopted

    def _terminate(self, iid: str | None, terminated: set[str]) -> None:
        if iid:
            self.instances.terminate([iid])
            terminated.add(iid)

    def _reap_build(self, record: BuildRecord, now: datetime, alive: dict[str, TaggedInstance],
                    terminated: set[str], report: ReapReport) -> None:
        if record.status.final:  # the index lags a moment behind the table
            return
        tick = _Tick(now, alive, terminated, report)
        # a healthy build's instance is terminated only once the build is final (or queued
        # again): the write first, so a tick that dies between the two leaves an orphan the
        # next tick terminates, never a live build without its instance
        if self._timed_out(record, tick):
            return
        if record.cancel_requested:
            self._reap_cancelled(record, tick)
            return
        {Status.QUEUED: self._reap_queued, Status.LAUNCHING: self._reap_launching,
         Status.RUNNING: self._reap_running}[record.status](record, tick)

    @staticmethod
    def _since(record: BuildRecord) -> datetime | None:
        """When the current attempt's instance started (or its launch did, or the last write)."""
        return _at((record.instance.launched_at if record.instance else None) or record.launch_started_at
                   or record.updated_at)

    def _timed_out(self, record: BuildRecord, tick: _Tick) -> bool:
        """A launched build past its deadline: TIMED_OUT, then its instance terminated."""
        deadline = _at(record.deadline_at)
        if record.status not in LAUNCHED or not deadline or tick.now < deadline:
            return False
        reason = (f"timed out: still {record.status.value.lower()} at its deadline "
                  f"({record.timeout_minutes} minutes)")
        if self.lifecycle.time_out(record, reason, expect=[record.status]):
            self._terminate(record.instance_id, tick.terminated)
            tick.report.timed_out.append(record.id)
        return True

    def _reap_cancelled(self, record: BuildRecord, tick: _Tick) -> None:
        """A cancel was requested: CANCELLED once its instance is gone (terminated first)."""
        lc, bid, iid = self.lifecycle, record.id, record.instance_id
        if record.status == Status.QUEUED:
            if lc.cancel(record, expect=[Status.QUEUED]):
                tick.report.cancelled.append(bid)
        elif iid:
            gone = iid not in tick.alive
            self._terminate(iid, tick.terminated)
            if gone and lc.cancel(record, expect=[record.status], instance_id=iid, note=f"instance {iid} gone"):
                tick.report.cancelled.append(bid)
        elif tick.now - (self._since(record) or tick.now) > self.config.launch_grace:
            if lc.cancel(record, expect=[record.status]):
                tick.report.cancelled.append(bid)

    def _reap_queued(self, record: BuildRecord, tick: _Tick) -> None:
        """Not launched within the grace (its launch message lost): launched again, or FAILED."""
        queued = _at(record.queued_at or record.created_at) or tick.now
        if tick.now - queued <= self.config.launch_grace:
            return
        mins = int(self.config.launch_grace.total_seconds() // 60)
        item = self.lifecycle.requeue(record, f"not launched within {mins} minutes")
        if item is not None:
            (tick.report.failed if item.status == Status.FAILED else tick.report.relaunched).append(record.id)

    def _reap_launching(self, record: BuildRecord, tick: _Tick) -> None:
        """Its instance did not start within the grace: launched again as attempt + 1, or FAILED."""
        if tick.now - (self._since(record) or tick.now) <= self.config.launch_grace:
            return
        iid = record.instance_id
        mins = int(self.config.launch_grace.total_seconds() // 60)
        item = self.lifecycle.relaunch(record, f"instance {iid or '(none)'} did not start within {mins} minutes")
        if item is not None:
            self._terminate(iid, tick.terminated)
            (tick.report.relaunched if item.status == Status.QUEUED else tick.report.failed).append(record.id)

    def _reap_running(self, record: BuildRecord, tick: _Tick) -> None:
        """No heartbeat within the grace: SUCCEEDED if it had pushed (pushed.py), else FAILED.
        A split build's test stage whose instance is not recorded within the launch grace (its
        launch message lost, its launcher dead) is launched again, as a stuck launch is."""
        if record.split and record.stage == "test" and not record.instance_id:
            if tick.now - (self._since(record) or tick.now) > self.config.launch_grace:
                mins = int(self.config.launch_grace.total_seconds() // 60)
                item = self.lifecycle.relaunch(record, f"the test stage did not start within {mins} minutes")
                if item is not None:
                    (tick.report.relaunched if item.status == Status.QUEUED else tick.report.failed).append(record.id)
            return
        beat = _at(record.heartbeat_at) or self._since(record) or tick.now
        if tick.now - beat <= self.config.stale_heartbeat:
            return
        lc, iid = self.lifecycle, record.instance_id
        mins = int((tick.now - beat).total_seconds() // 60)
        if lc.settle_pushed(record, f"no report from instance {iid} for {mins} minutes after it began pushing"):
            self._terminate(iid, tick.terminated)
            tick.report.settled_pushed.append(record.id)
        elif lc.fail(record, f"no report from instance {iid} for {mins} minutes",
                     expect=[Status.RUNNING], instance_id=iid):
            self._terminate(iid, tick.terminated)
            tick.report.failed.append(record.id)

    # ---- orphans ----------------------------------------------------------------
    def _reap_orphans(self, active: list[BuildRecord], alive: dict[str, TaggedInstance], terminated: set[str],
                      now: datetime, report: ReapReport) -> None:
        by_id = {r.id: r for r in active}
        for inst in alive.values():
            if inst.id in terminated or inst.keep:
                continue
            if self._belongs(inst, by_id.get(inst.build_id or "")):
                if inst.orphan_seen_at:
                    self.instances.unmark_orphan(inst.id)
                continue
            seen = _at(inst.orphan_seen_at) if inst.orphan_seen_at else None
            if seen is None:
                self.instances.mark_orphan(inst.id, clock.iso(now))
                report.orphans_marked.append(inst.id)
            elif now - seen >= self.config.orphan_grace:
                self.instances.terminate([inst.id])
                report.orphans_terminated.append(inst.id)

    @staticmethod
    def _belongs(inst: TaggedInstance, record: BuildRecord | None) -> bool:
        if record is None or record.status.final:
            return False
        if record.instance_id:
            return record.instance_id == inst.id
        # launched, not yet recorded by the launcher: the attempt must be the current one (a
        # split build's test stage launches while the build stays RUNNING, issue 23)
        launching = record.status in (Status.QUEUED, Status.LAUNCHING) or (
            record.status == Status.RUNNING and record.split and record.stage == "test")
        return launching and inst.attempt == record.attempt

    # ---- quota ------------------------------------------------------------------
    def _release_slots(self, active_ids: set[str], report: ReapReport) -> None:
        for build_id in sorted(self.store.slot_holders() - active_ids):
            try:
                final = self.store.get_record(build_id).status.final
            except BuildNotFound:
                final = True
            if final:
                self.store.release_slot(build_id)
                report.slots_released.append(build_id)

    # ---- notifications ----------------------------------------------------------
    def _requeue_notifications(self, recent: dict[Status, list[BuildRecord]], now: datetime,
                               report: ReapReport) -> None:
        """The newest final builds of each final state whose Slack delivery was never
        claimed (no ``notification``) ``notify_grace`` after they ended: their notify
        message was lost between the final write and the send. The message goes on the
        notify queue again; the consumer's conditional claim keeps it to one Slack
        message however many copies arrive. A day after the end they are left alone."""
        grace = self.config.notify_grace
        for status, records in recent.items():
            for record in records:
                finished = _at(record.finished_at)
                if record.notification or finished is None or not grace <= now - finished <= grace + _DAY:
                    continue
                enqueue_final(self.lifecycle.transitions.notify_queue, record.id, status)
                report.notifications_requeued.append(record.id)

    # ---- digests ----------------------------------------------------------------
    def _check_digests(self, succeeded: list[BuildRecord], now: datetime, report: ReapReport) -> None:
        """SUCCEEDED builds of the last while with no ECR push seen: ask ECR once each. The
        index query returns whole items, so nothing is read again; the write is conditional
        on what was checked (no digest recorded meanwhile, not checked by another tick)."""
        for record in succeeded:
            finished = _at(record.finished_at)
            # checked once, on the first tick past the grace; a day later it is left alone
            if finished is None or not self.config.digest_grace <= now - finished <= self.config.digest_grace + _DAY:
                continue
            if record.ecr_digest or record.digest_checked:
                continue
            repository, digest, tags = record.image.repository, record.image.digest, record.image.tags
            found = self._ecr_digest(repository, digest, tags)
            if found == "not-ecr":
                continue
            fields: dict = {"digest_checked": True}
            if found:
                fields["ecr_digest"] = found
            else:
                what = digest or ", ".join(tags[:1])
                fields["reason"] = f"reported SUCCEEDED but ECR has no image {what} in {repository}"
            try:
                self.store.update_fields(
                    record.id, fields, expect=[Status.SUCCEEDED],
                    extra_condition=digest_unchecked())
            except InvalidTransition:
                continue  # a push event or another tick got there first
            if not found:
                report.digests_flagged.append(record.id)
            report.digests_checked.append(record.id)

    def _ecr_digest(self, repository: str, digest: str | None, tags: list[str]) -> str | None:
        registry, _, name = repository.partition("/")
        if ".dkr.ecr." not in registry:  # a local registry (the local stack): not ECR's to judge
            return "not-ecr"
        image_id = {"imageDigest": digest} if digest else {"imageTag": tags[0]} if tags else None
        if not name or image_id is None:
            return None
        kwargs = {"repositoryName": name, "imageIds": [image_id]}
        kwargs["registryId"] = registry.split(".", 1)[0]
        try:
            details = self._ecr.describe_images(**kwargs).get("imageDetails", [])
        except ClientError as e:
            if e.response["Error"]["Code"] in ("ImageNotFoundException", "RepositoryNotFoundException"):
                return None
            raise
        return details[0].get("imageDigest") if details else None
