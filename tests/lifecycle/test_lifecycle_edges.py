"""Edges of the EC2 handlers the other lifecycle tests leave out: the states that change
nothing, instances that must not be adopted, and what the builds' records and the
operators' logs say in the rarer endings."""

from __future__ import annotations

import json

from lifecycle_helpers import load_event

from chalicelib.builds.records import BuildRecord
from chalicelib.builds.states import Status
from chalicelib.events.instances import TAG_BUILD_STAGE


def state_event(iid: str, state: str) -> dict:
    return load_event(f"ec2-state-{state}", **{"instance-id": iid})


def statuses(record: dict) -> list[str]:
    return [e["status"] for e in record["events"]]


def _launching_without_instance(world) -> str:
    """The launcher moved the build to LAUNCHING, ran the instance and died before recording it."""
    bid = world.submit()
    world.wiring.transitions().move(bid, Status.LAUNCHING, expect=[Status.QUEUED], message="launching")
    return bid


# ---- states that change nothing -------------------------------------------------------------
def test_pending_and_stopping_change_nothing_on_a_launched_build(world, fire):
    bid = world.submit()
    iid = world.launch(bid)
    for state in ("pending", "stopping"):
        event = load_event("ec2-state-pending", **{"instance-id": iid, "state": state})
        assert fire("on_instance_state", event) == "ignored"
    record = world.get(bid)
    assert record["status"] == "LAUNCHING" and record["instance_id"] == iid
    assert statuses(record) == ["QUEUED", "LAUNCHING"]
    assert world.state(iid) == "running"


# ---- instances that are not adopted ------------------------------------------------------------
def test_a_terminated_unrecorded_instance_is_not_adopted(world, fire):
    """Its build stays LAUNCHING without an instance: the reaper launches the attempt again."""
    bid = _launching_without_instance(world)
    iid = world.run_instance(bid, 1)
    world.ec2.terminate_instances(InstanceIds=[iid])
    assert fire("on_instance_state", state_event(iid, "terminated")) == "not ours"
    record = world.get(bid)
    assert record["status"] == "LAUNCHING" and "instance_id" not in record
    assert statuses(record) == ["QUEUED", "LAUNCHING"]


def test_an_instance_tagged_for_a_queued_build_is_not_adopted(world, fire):
    bid = world.submit()
    iid = world.run_instance(bid, 1)
    assert fire("on_instance_state", state_event(iid, "running")) == "not ours"
    record = world.get(bid)
    assert record["status"] == "QUEUED" and "instance_id" not in record


# ---- what a cancel records ------------------------------------------------------------------------
def test_a_cancel_ended_by_the_termination_says_which_instance_and_why(world, fire, api):
    bid = world.submit()
    iid = world.launch(bid)
    fire("on_instance_state", state_event(iid, "running"))
    assert api.http.delete(f"/builds/{bid}").status_code == 202
    assert fire("on_instance_state", state_event(iid, "terminated")) == "cancelled"
    record = world.get(bid)
    assert record["reason"] == "cancelled by request"
    assert record["events"][-1]["message"] == f"cancelled by request; instance {iid} terminated"


def test_a_queued_build_whose_cancel_raced_its_launch_message_is_cancelled_by_the_reaper(world, api, clock):
    from test_lifecycle_reaper import tick

    bid = world.submit()
    world.store.update_fields(bid, {"cancel_requested": True})  # the launch message was lost meanwhile
    clock.advance(minutes=11)
    assert tick(api) == {"cancelled": 1}
    record = world.get(bid)
    assert record["status"] == "CANCELLED" and record["reason"] == "cancelled by request"
    assert record["events"][-1]["message"] == "cancelled by request"


# ---- ECR pushes -------------------------------------------------------------------------------------
def test_a_failed_push_records_nothing(world, fire):
    bid = world.submit()
    iid = world.launch(bid)
    fire("on_instance_state", state_event(iid, "running"))
    image = world.get(bid)["image"]
    registry, _, name = image["repository"].partition("/")
    event = load_event("ecr-image-push", **{"repository-name": name, "image-tag": image["tags"][0],
                                            "result": "FAILURE"})
    event["account"], _, rest = registry.partition(".dkr.ecr.")
    event["region"] = rest.split(".")[0]
    assert fire("on_image_pushed", event) == "ignored"
    assert "ecr_digest" not in world.get(bid)
    event["detail"]["result"] = "SUCCESS"
    assert fire("on_image_pushed", event) == "recorded"  # the same event, successful, is this build's


# ---- giving up ------------------------------------------------------------------------------------
def test_a_build_whose_instances_never_start_gives_up_after_its_attempts_saying_why(world, api, clock, aws):
    from test_lifecycle_reaper import tick

    bid = world.submit()
    iids = []
    for _ in range(3):  # MAX_ATTEMPTS defaults to 3
        iids.append(world.launch(bid))
        clock.advance(minutes=11)
        tick(api)
    record = world.get(bid)
    assert record["status"] == "FAILED"
    assert record["reason"] == f"instance {iids[2]} did not start within 10 minutes; gave up after 3 attempts"
    relaunches = [e["message"] for e in record["events"] if e["status"] == "QUEUED"][1:]
    assert relaunches == [f"instance {iids[0]} did not start within 10 minutes; launching again as attempt 2 of 3",
                          f"instance {iids[1]} did not start within 10 minutes; launching again as attempt 3 of 3"]


def test_a_build_never_launched_gives_up_after_its_attempts_saying_why(world, api, clock):
    from test_lifecycle_reaper import tick

    bid = world.submit()  # its launch messages are all lost
    for _ in range(3):
        clock.advance(minutes=11)
        tick(api)
    record = world.get(bid)
    assert record["status"] == "FAILED"
    assert record["reason"] == "not launched within 10 minutes; gave up after 3 attempts"


def test_the_last_spot_warning_fails_the_build(world, fire):
    bid = world.submit()
    outcomes = []
    for _ in range(3):  # MAX_ATTEMPTS defaults to 3
        iid = world.launch(bid)
        fire("on_instance_state", state_event(iid, "running"))
        outcomes.append(fire("on_spot_interruption", load_event("ec2-spot-interruption", **{"instance-id": iid})))
    assert outcomes == ["relaunched", "relaunched", "failed"]
    assert world.get(bid)["reason"] == "spot capacity reclaimed 3 times"


# ---- the terminated event at its edges ---------------------------------------------------------
def _succeeded(world, fire) -> tuple[str, str]:
    bid = world.submit()
    iid = world.launch(bid)
    fire("on_instance_state", state_event(iid, "running"))
    world.wiring.transitions().move(bid, Status.SUCCEEDED, expect=[Status.RUNNING], message="pushed")
    world.ec2.terminate_instances(InstanceIds=[iid])
    return bid, iid


def test_a_terminated_event_with_an_unreadable_time_is_recorded_at_its_arrival(world, fire):
    bid, iid = _succeeded(world, fire)
    event = state_event(iid, "terminated")
    event["time"] = "yesterday at noon"
    assert fire("on_instance_state", event) == "final"
    record = world.get(bid)
    assert record["instance_terminated_at"] >= record["finished_at"]  # now, not a parse error
    assert world.wiring.builds().get(bid).segments["terminate_lag"] >= 0


def test_a_terminated_event_redelivered_past_a_stale_index_books_the_cost_once(world, fire, api, monkeypatch,
                                                                                caplog):
    # GIVEN a finished build whose termination (and cost) is recorded, and an index that
    # still shows it without (an index lags the table a moment)
    bid, iid = _succeeded(world, fire)
    before = world.get(bid)
    assert fire("on_instance_state", state_event(iid, "terminated")) == "final"
    recorded = world.get(bid)
    monkeypatch.setattr(type(world.store), "find_by_instance",
                        lambda self, i: BuildRecord.of(before) if i == iid else None)
    # WHEN EventBridge delivers the event again THEN the conditional write refuses it: the
    # time and the booked cost stay as they were, and the operators' log says why
    with caplog.at_level("INFO", logger="chalicelib.events.lifecycle"):
        assert fire("on_instance_state", state_event(iid, "terminated")) == "final"
    monkeypatch.undo()
    assert [r.getMessage() for r in caplog.records if r.name == "chalicelib.events.lifecycle"] == [
        f"ignored: build {bid}: the write's condition does not hold"]
    assert world.get(bid)["instance_terminated_at"] == recorded["instance_terminated_at"]
    rows = json.loads(api.http.get("/costs?by=framework").body)["rows"]
    assert [r["builds"] for r in rows] == [1]


def test_a_stage_instance_of_a_build_that_is_gone_is_not_ours(world, fire):
    iid = world.run_instance("b-00000000000000000000", 1, extra_tags={TAG_BUILD_STAGE: "build"})
    world.ec2.terminate_instances(InstanceIds=[iid])
    assert fire("on_instance_state", state_event(iid, "terminated")) == "not ours"


def test_a_requeue_of_a_build_whose_cancel_was_asked_cancels_it(world):
    bid = world.submit()
    world.store.update_fields(bid, {"cancel_requested": True}, expect=[Status.QUEUED])
    record = world.store.get_record(bid)
    moved = world.wiring.lifecycle().requeue(record, "its launch message was lost")
    assert moved is not None and moved.status == Status.CANCELLED
    assert world.get(bid)["reason"] == "cancelled by request"
    assert [n["build_id"] for n in world.final_notifications()] == [bid]


def test_a_requeue_that_lost_to_the_launcher_sends_no_second_launch(world, aws):
    # GIVEN a queued build the reaper read at attempt 1, launched meanwhile (attempt moved on)
    bid = world.submit()
    aws.messages("LaunchQueue")
    stale = world.store.get_record(bid)
    world.store.update_fields(bid, {"attempt": 2}, expect=[Status.QUEUED])
    # WHEN the reaper requeues from its read THEN nothing is written and no launch message sent
    assert world.wiring.lifecycle().requeue(stale, "its launch message was lost") is None
    assert aws.messages("LaunchQueue") == []
    assert world.get(bid)["attempt"] == 2


def test_two_instances_of_one_attempt_only_the_first_is_adopted(world):
    # GIVEN a build whose launcher died after RunInstances, and two live instances tagged with
    # its attempt (a retried RunInstances), each seen by a different event from the same read
    bid = _launching_without_instance(world)
    read = world.store.get_record(bid)
    lc = world.wiring.lifecycle()
    first, second = (lc.instances.describe(world.run_instance(bid, 1)) for _ in range(2))
    # WHEN both are adopted from that read THEN the conditional write keeps the first only
    assert lc.adopt(read, first).instance_id == first.id
    assert lc.adopt(read, second) is None
    assert world.get(bid)["instance_id"] == first.id
