"""Property: whatever the cloud does — events duplicated, dropped, out of order; instances
crashing, reclaimed, finishing; users cancelling; the reaper ticking at any time; a handler
or the reaper dying between two AWS calls (issue 16) — every
build ends final, only through legal transitions, never changes once final, gets exactly
one final notification, and no instance of ours is left running.

The cloud is simulated on top of moto: EC2 state changes seen in moto become the events
AWS would send (delivered later, maybe twice, maybe never), the launch queue is served by
a stand-in launcher, instance reports are the store/move calls the report handler
makes, the notify consumer's conditional claim stands in for Slack, and the clock is moved
by the test.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lifecycle_helpers import Crasher, load_event

from chalicelib import clock as clock_module
from chalicelib.builds.states import FINAL, Phase, Status, allowed
from chalicelib.builds.store import on_instance
from chalicelib.errors import InvalidTransition, VoltabuildError

# weighted by repetition: mostly the normal life of a build, with the faults mixed in
OPS = ("launch",) * 4 + ("deliver",) * 5 + ("report",) * 6 + ("drop", "interrupt", "cancel", "tick", "tick", "advance",
                                                             "crash")

operations = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, 50), st.integers(0, 11)),
    min_size=5, max_size=30,
)


class Cloud:
    def __init__(self, world, api, clock, n_builds: int) -> None:
        self.world, self.api, self.clock = world, api, clock
        world.aws.messages("LaunchQueue")  # leftovers of an earlier example
        world.aws.messages("NotifyQueue")
        # every other build is split (issue 23): a build stage, BUILT, then the test stage
        self.builds = [world.submit(split=i % 2 == 1) for i in range(n_builds)]
        self.pending: list[tuple[str, dict]] = []  # events AWS has emitted, not yet delivered
        self.seen_state: dict[str, str] = {}
        self.final_seen: dict[str, tuple[str, int]] = {}
        self.notifications: list[dict] = []  # notify messages whose delivery claim won (one per build)
        self.crasher = Crasher()
        self.crashes = 0

    # ---- the world's moves --------------------------------------------------------
    def fire(self, handler: str, event: dict) -> None:
        self.api.lambda_.invoke(handler, event)

    def tick(self) -> None:
        event = self.api.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event",
                                                  detail={}, resources=[], region="us-east-1")
        self.api.lambda_.invoke("reaper", event)

    def current_instance(self, bid: str) -> str | None:
        iid = self.world.get(bid).get("instance_id")
        return iid if iid and self.seen_state.get(iid) == "running" else None

    def launch(self, b: int) -> None:
        """The launcher serves the launch queue; now and then a message is lost."""
        for i, msg in enumerate(self.world.aws.messages("LaunchQueue")):
            if msg["build_id"] in self.builds and (i + b) % 7 != 6:
                self.world.launch(msg["build_id"], attempt=msg["attempt"])

    def deliver(self, k: int, keep: bool) -> None:
        if self.pending:
            handler, event = self.pending[k % len(self.pending)]
            if not keep:
                self.pending.remove((handler, event))
            self.fire(handler, event)

    def drop(self, k: int) -> None:
        if self.pending:
            self.pending.pop(k % len(self.pending))

    def report(self, bid: str, kind: int) -> None:
        """What the instance's own reports do (through the report handler, issue 4)."""
        iid = self.current_instance(bid)
        if iid is None:
            return
        guard = on_instance(iid)
        moves = self.world.wiring.transitions()
        now = clock_module.now_iso()
        try:
            if kind < 6:  # a phase report / heartbeat
                moves.move(bid, Status.RUNNING, expect=[Status.LAUNCHING, Status.RUNNING], phase=Phase.BUILDING,
                           fields={"heartbeat_at": now}, extra_condition=guard)
                return
            record = self.world.store.get_record(bid)
            if kind < 9 and record.split and record.stage == "build":  # the build stage pushed its candidate
                if record.status == Status.RUNNING:
                    self.world.wiring.lifecycle().start_test_stage(record, "sha256:" + "b" * 64,
                                                                   extra_condition=guard)
            elif kind < 9:  # the build succeeded
                moves.move(bid, Status.SUCCEEDED, expect=[Status.RUNNING], message="pushed", extra_condition=guard)
            elif kind < 10:  # the build failed
                moves.move(bid, Status.FAILED, expect=[Status.RUNNING], message="build failed",
                           fields={"reason": "build failed"}, extra_condition=guard)
        except InvalidTransition:
            pass
        # success, failure or a crash: the instance terminates itself
        self.world.ec2.terminate_instances(InstanceIds=[iid])

    def interrupt(self, bid: str) -> None:
        iid = self.current_instance(bid)
        if iid:
            self.pending.append(("on_spot_interruption",
                                 load_event("ec2-spot-interruption", **{"instance-id": iid})))
            self.world.ec2.terminate_instances(InstanceIds=[iid])  # EC2 reclaims it

    def crash(self, a: int, b: int) -> None:
        """The next event delivery (EventBridge retries it later: it stays pending) or reaper
        tick dies before its 2nd..5th AWS call."""
        n = 2 + b % 4
        if a % 2 and self.pending:
            handler, ev = self.pending[a % len(self.pending)]
            died = self.crasher.during(n, lambda: self.fire(handler, ev))
        else:
            self.clock.advance(minutes=b + 1)
            died = self.crasher.during(n, self.tick)
        self.crashes += died

    def cancel(self, bid: str) -> None:
        try:
            self.world.wiring.builds().cancel(bid)
        except VoltabuildError:
            pass

    def apply(self, op: str, a: int, b: int) -> None:
        bid = self.builds[a % len(self.builds)]
        if op == "launch":
            self.launch(b)
        elif op == "deliver":
            self.deliver(a, keep=b % 3 == 0)
        elif op == "drop":
            self.drop(a)
        elif op == "report":
            self.report(bid, b)
        elif op == "interrupt":
            self.interrupt(bid)
        elif op == "cancel":
            self.cancel(bid)
        elif op == "tick":
            self.clock.advance(minutes=b + 1)
            self.tick()
        elif op == "crash":
            self.crash(a, b)
        else:
            self.clock.advance(minutes=b * 2)

    # ---- what AWS emits, and what we check ------------------------------------------
    def our_instances(self) -> list[dict]:
        resp = self.world.ec2.describe_instances(
            Filters=[{"Name": "tag:voltabuild:build-id", "Values": self.builds}])
        return [i for r in resp["Reservations"] for i in r["Instances"]]

    def emit(self) -> None:
        """EC2 sends a state-change event for every state change (delivered later, or not)."""
        for inst in self.our_instances():
            iid, state = inst["InstanceId"], inst["State"]["Name"]
            if self.seen_state.get(iid) != state:
                self.seen_state[iid] = state
                if state in ("shutting-down", "terminated"):
                    self.pending.append(("on_instance_state", load_event("ec2-state-shutting-down",
                                                                         **{"instance-id": iid})))
                self.pending.append(("on_instance_state", load_event(f"ec2-state-{state}", **{"instance-id": iid})))

    def notify(self) -> None:
        """The notify consumer's conditional claim: however many copies of a build's final
        message arrive (the reaper re-sends one that was lost), one claim wins."""
        for msg in self.world.aws.messages("NotifyQueue"):
            if msg.get("event", "final") != "final":
                continue
            if self.world.store.record_delivery(msg["build_id"], False, {"status": "sent"}, None):
                self.notifications.append(msg)
            self.world.store.release_slot(msg["build_id"])

    def check(self) -> None:
        self.notify()
        for bid in self.builds:
            record = self.world.get(bid)
            trail = [Status(e["status"]) for e in record["events"]]
            assert trail[0] == Status.QUEUED
            for prev, nxt in zip(trail, trail[1:], strict=False):
                assert allowed(prev, nxt), f"{bid}: illegal {prev} -> {nxt} in {trail}"
            status = Status(record["status"])
            assert trail[-1] == status
            if bid in self.final_seen:
                assert (record["status"], len(record["events"])) == self.final_seen[bid], f"{bid} changed after final"
            elif status in FINAL:
                self.final_seen[bid] = (record["status"], len(record["events"]))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_builds=st.integers(1, 3), ops=operations)
def test_every_build_ends_final_and_no_instance_is_left(world, api, clock, n_builds, ops):
    cloud = Cloud(world, api, clock, n_builds)
    for op, a, b in ops:
        cloud.apply(op, a, b)
        cloud.emit()
        cloud.check()

    # the final sweep: no more launches or events, only the reaper, past every deadline
    for _ in range(10):
        world.aws.messages("LaunchQueue")
        clock.advance(minutes=12)
        cloud.tick()
        cloud.emit()
        cloud.check()

    for bid in cloud.builds:
        record = world.get(bid)
        assert Status(record["status"]) in FINAL, record
        split = f", split, ended in its {record['stage']} stage" if record.get("split") else ""
        event(f"ended {record['status']} after {record['attempt']} attempt(s){split}")
        for stage in (record.get("stages") or {}).values():
            assert stage["attempts"] <= record["max_attempts"], record
    event(f"{cloud.crashes} crash(es)")
    # exactly one final notification per build, with the build's final status
    assert sorted((n["build_id"], n["status"]) for n in cloud.notifications) == sorted(
        (bid, world.get(bid)["status"]) for bid in cloud.builds)
    left = [i["InstanceId"] for i in cloud.our_instances() if i["State"]["Name"] in ("pending", "running")]
    assert left == []
    assert not set(cloud.builds) & world.store.slot_holders()
