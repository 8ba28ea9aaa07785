"""The EventBridge handlers, fed AWS-shaped events through chalice.test.Client."""

from __future__ import annotations

import time

from lifecycle_helpers import load_event

from chalicelib.builds.records import BuildRecord
from chalicelib.builds.states import Status


def state_event(iid: str, state: str) -> dict:
    return load_event(f"ec2-state-{state}", **{"instance-id": iid})


def spot_event(iid: str) -> dict:
    return load_event("ec2-spot-interruption", **{"instance-id": iid})


def statuses(record: dict) -> list[str]:
    return [e["status"] for e in record["events"]]


# ---- EC2 Instance State-change Notification -------------------------------------------
def test_running_moves_a_launching_build_to_running_once(world, fire):
    # GIVEN a build the launcher started
    bid = world.submit()
    iid = world.launch(bid)
    # WHEN EC2 says running, twice (EventBridge delivers at least once)
    assert fire("on_instance_state", state_event(iid, "running")) == "running"
    assert fire("on_instance_state", state_event(iid, "running")) == "ignored"
    # THEN the build is RUNNING with one timeline entry for it
    record = world.get(bid)
    assert record["status"] == "RUNNING"
    assert statuses(record) == ["QUEUED", "LAUNCHING", "RUNNING"]


def test_terminated_while_running_fails_the_build_with_the_reason(world, fire, aws):
    bid = world.submit()
    iid = world.launch(bid)
    fire("on_instance_state", state_event(iid, "running"))
    logs = aws.client("logs")
    # the log group comes from infra/resources.yaml; the instance writes a stream named after the build
    logs.create_log_stream(logGroupName="/voltabuild/builds", logStreamName=bid)
    logs.put_log_events(logGroupName="/voltabuild/builds", logStreamName=bid, logEvents=[
        {"timestamp": int(time.time() * 1000) + i, "message": f"step {i}"} for i in range(30)
    ])
    world.ec2.terminate_instances(InstanceIds=[iid])

    assert fire("on_instance_state", state_event(iid, "shutting-down")) == "failed"
    assert fire("on_instance_state", state_event(iid, "terminated")) == "final"

    record = world.get(bid)
    assert record["status"] == "FAILED"
    assert record["reason"].startswith(f"instance lost: {iid} was shutting-down")
    assert "step 29" in record["reason"] and "step 9\n" not in record["reason"]  # the last 20 lines
    assert record["reason"].endswith("; last log lines:\n" + "\n".join(f"step {i}" for i in range(10, 30)))
    assert [n["build_id"] for n in world.final_notifications()] == [bid]


def test_terminated_before_running_arrives_out_of_order(world, fire):
    bid = world.submit()
    iid = world.launch(bid)
    world.ec2.terminate_instances(InstanceIds=[iid])
    assert fire("on_instance_state", state_event(iid, "terminated")) == "failed"
    # the late "running" finds a final build: nothing changes, the instance stays terminated
    fire("on_instance_state", state_event(iid, "running"))
    record = world.get(bid)
    assert record["status"] == "FAILED"
    assert statuses(record) == ["QUEUED", "LAUNCHING", "FAILED"]
    assert world.state(iid) == "terminated"


def test_cancel_terminates_the_instance_and_the_termination_makes_it_cancelled(world, fire, api):
    bid = world.submit()
    iid = world.launch(bid)
    fire("on_instance_state", state_event(iid, "running"))
    resp = api.http.delete(f"/builds/{bid}")
    assert resp.status_code == 202
    assert world.state(iid) == "terminated"
    assert world.get(bid)["status"] == "RUNNING"

    assert fire("on_instance_state", state_event(iid, "terminated")) == "cancelled"
    record = world.get(bid)
    assert record["status"] == "CANCELLED"
    assert [n["status"] for n in world.final_notifications()] == ["CANCELLED"]
    assert api.http.delete(f"/builds/{bid}").status_code == 409


def test_running_after_a_cancel_terminates_instead_of_running(world, fire, api):
    bid = world.submit()
    iid = world.launch(bid)
    world.store.update_fields(bid, {"cancel_requested": True})  # cancel raced the launcher
    assert fire("on_instance_state", state_event(iid, "running")) == "terminated"
    assert world.state(iid) == "terminated"
    assert world.get(bid)["status"] == "LAUNCHING"


def test_stopped_instance_is_terminated(world, fire):
    bid = world.submit()
    iid = world.launch(bid)
    assert fire("on_instance_state", state_event(iid, "stopped")) == "terminated"
    assert world.state(iid) == "terminated"


def test_instances_that_are_not_ours_are_ignored(world, fire):
    # no tag at all, another stage's instance, and an id that does not exist
    plain = world.ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    bid = world.submit()
    other_stage = world.run_instance(bid, 1, stage="prod")
    for iid in (plain, other_stage, "i-0000000000000dead"):
        assert fire("on_instance_state", state_event(iid, "terminated")) == "not ours"
        assert fire("on_spot_interruption", spot_event(iid)) == "not ours"
    assert world.get(bid)["status"] == "QUEUED"
    assert world.state(plain) == "running"


def test_found_by_tag_when_the_index_has_not_caught_up(world, fire, monkeypatch):
    bid = world.submit()
    iid = world.launch(bid)
    monkeypatch.setattr(type(world.store), "find_by_instance", lambda self, i: None)
    assert fire("on_instance_state", state_event(iid, "running")) == "running"


def test_malformed_events_are_dropped(world, fire):
    event = state_event("i-1", "running")
    del event["detail"]["instance-id"]
    assert fire("on_instance_state", event) == "malformed"
    event = state_event("i-1", "running")
    event["detail"]["state"] = "exploded"
    assert fire("on_instance_state", event) == "malformed"


# ---- EC2 Spot Instance Interruption Warning -------------------------------------------
def test_spot_interruption_requeues_with_the_next_attempt(world, fire, aws):
    bid = world.submit()
    aws.messages("LaunchQueue")  # the submit's own launch message
    iid = world.launch(bid)
    fire("on_instance_state", state_event(iid, "running"))

    assert fire("on_spot_interruption", spot_event(iid)) == "relaunched"
    assert fire("on_spot_interruption", spot_event(iid)) == "not ours"  # duplicate: no longer its instance

    record = world.get(bid)
    assert record["status"] == "QUEUED" and record["attempt"] == 2
    assert "instance_id" not in record and "instance" not in record and "deadline_at" not in record
    assert f"spot interruption warning for {iid}" in record["events"][-1]["message"]
    assert aws.messages("LaunchQueue") == [{"build_id": bid, "attempt": 2}]
    # the old instance's termination, arriving later, changes nothing
    assert fire("on_instance_state", state_event(iid, "terminated")) == "not ours"
    assert world.get(bid)["status"] == "QUEUED"


def test_spot_reclaimed_max_attempts_times_fails(world, fire, aws):
    bid = world.submit()
    for _ in range(3):  # MAX_ATTEMPTS defaults to 3
        iid = world.launch(bid)
        fire("on_instance_state", state_event(iid, "running"))
        fire("on_spot_interruption", spot_event(iid))
    record = world.get(bid)
    assert record["status"] == "FAILED"
    assert record["reason"] == "spot capacity reclaimed 3 times"
    assert record["spot_reclaims"] == 3  # the stored count agrees with the reason
    launches = [m for m in aws.messages("LaunchQueue")]
    assert [m["attempt"] for m in launches] == [1, 2, 3]


def test_interruption_after_success_changes_nothing(world, fire):
    bid = world.submit()
    iid = world.launch(bid)
    fire("on_instance_state", state_event(iid, "running"))
    world.wiring.transitions().move(bid, Status.SUCCEEDED, expect=[Status.RUNNING], message="pushed")
    before = world.get(bid)
    assert fire("on_spot_interruption", spot_event(iid)) == "ignored"
    assert fire("on_instance_state", state_event(iid, "terminated")) == "final"
    after = world.get(bid)
    assert after["status"] == "SUCCEEDED" and after["events"] == before["events"]


def test_termination_by_spot_without_the_warning_still_relaunches(world, fire, monkeypatch):
    from chalicelib.events.instances import Instances, TaggedInstance

    bid = world.submit()
    iid = world.launch(bid)
    fire("on_instance_state", state_event(iid, "running"))
    original = Instances.describe

    def reclaimed(self, instance_id):
        inst = original(self, instance_id)
        return TaggedInstance(inst.id, "terminated", inst.tags, "Server.SpotInstanceTermination")

    monkeypatch.setattr(Instances, "describe", reclaimed)
    assert fire("on_instance_state", state_event(iid, "terminated")) == "relaunched"
    record = world.get(bid)
    assert record["status"] == "QUEUED" and record["attempt"] == 2
    # counted as a reclaim (MAX_ATTEMPTS of them fail the build) and said so on the timeline
    assert record["spot_reclaims"] == 1
    assert record["events"][-1]["message"] == f"spot capacity reclaimed instance {iid}; launching again as attempt 2 of 3"


# ---- ECR Image Action -----------------------------------------------------------------
def push_event(world, bid: str, digest: str, tag: str | None = None) -> dict:
    image = world.get(bid)["image"]
    registry, _, name = image["repository"].partition("/")
    event = load_event("ecr-image-push", **{"repository-name": name, "image-digest": digest,
                                            "image-tag": tag or image["tags"][0]})
    event["account"], _, rest = registry.partition(".dkr.ecr.")
    event["region"] = rest.split(".")[0]
    return event


def test_push_records_the_digest_on_the_running_build(world, fire):
    bid = world.submit()
    iid = world.launch(bid)
    fire("on_instance_state", state_event(iid, "running"))
    digest = "sha256:" + "a" * 64
    assert fire("on_image_pushed", push_event(world, bid, digest)) == "recorded"
    assert world.get(bid)["ecr_digest"] == digest


def test_push_for_an_unknown_repository_is_ignored(world, fire):
    assert fire("on_image_pushed", load_event("ecr-image-push")) == "not ours"


def test_succeeded_build_with_another_digest_is_flagged(world, fire):
    bid = world.submit()
    iid = world.launch(bid)
    fire("on_instance_state", state_event(iid, "running"))
    record = world.get(bid)
    image = dict(record["image"], digest="sha256:" + "b" * 64)
    world.wiring.transitions().move(bid, Status.SUCCEEDED, expect=[Status.RUNNING], fields={"image": image})
    assert fire("on_image_pushed", push_event(world, bid, "sha256:" + "c" * 64)) == "flagged"
    record = world.get(bid)
    assert record["status"] == "SUCCEEDED"
    assert "but the build reported sha256:bbbb" in record["reason"]


def test_local_registry_push_is_matched_by_repository_name(world, fire, monkeypatch):
    # the local stack pushes to a registry on loopback; its worker sends ECR-shaped events
    monkeypatch.setenv("IMAGE_REGISTRY", "127.0.0.1:5055")
    world.wiring.reset()
    bid = world.submit()
    iid = world.launch(bid)
    fire("on_instance_state", state_event(iid, "running"))
    digest = "sha256:" + "e" * 64
    event = load_event("ecr-image-push", **{"image-digest": digest, "image-tag": world.get(bid)["image"]["tags"][0]})
    assert fire("on_image_pushed", event) == "recorded"
    assert world.get(bid)["ecr_digest"] == digest
    # an ECR-hosted build in another account is not matched by name alone
    monkeypatch.setenv("IMAGE_REGISTRY", "999999999999.dkr.ecr.us-east-1.amazonaws.com")
    world.wiring.reset()
    other = world.submit(tags=["x1"])
    fire("on_instance_state", state_event(world.launch(other), "running"))
    assert world.get(other)["status"] == "RUNNING"
    assert fire("on_image_pushed", load_event("ecr-image-push", **{"image-tag": "x1"})) == "not ours"


# ---- AWS calls per event: decided on the index's copy, the checks inside the write -------
def running_build(world, fire) -> tuple[str, str]:
    bid = world.submit()
    iid = world.launch(bid)
    fire("on_instance_state", state_event(iid, "running"))
    return bid, iid


def stale_index(monkeypatch, world, copy: dict) -> None:
    """The by-instance index still returns ``copy`` (an index lags the table a moment)."""
    monkeypatch.setattr(type(world.store), "find_by_instance",
                        lambda self, i: BuildRecord.of(copy) if copy.get("instance_id") == i else None)


def test_running_is_one_query_and_one_conditional_write(world, fire, aws_calls):
    bid = world.submit()
    iid = world.launch(bid)
    aws_calls.take()
    assert fire("on_instance_state", state_event(iid, "running")) == "running"
    assert aws_calls.take() == ["dynamodb.Query", "dynamodb.UpdateItem"]
    # the duplicate: the index already says RUNNING, nothing is written
    assert fire("on_instance_state", state_event(iid, "running")) == "ignored"
    assert aws_calls.take() == ["dynamodb.Query"]
    assert statuses(world.get(bid)) == ["QUEUED", "LAUNCHING", "RUNNING"]


def test_spot_interruption_is_query_write_and_the_launch_message(world, fire, aws, aws_calls):
    bid, iid = running_build(world, fire)
    aws.messages("LaunchQueue")
    aws_calls.take()
    assert fire("on_spot_interruption", spot_event(iid)) == "relaunched"
    assert aws_calls.take() == ["dynamodb.Query", "dynamodb.UpdateItem", "sqs.SendMessage"]
    assert aws.messages("LaunchQueue") == [{"build_id": bid, "attempt": 2}]


def test_termination_of_a_finished_build_reads_nothing_more(world, fire, aws_calls):
    bid, iid = running_build(world, fire)
    world.wiring.transitions().move(bid, Status.SUCCEEDED, expect=[Status.RUNNING], message="pushed")
    aws_calls.take()
    event = state_event(iid, "terminated")
    event["time"] = "2999-01-01T00:00:20Z"
    assert fire("on_instance_state", event) == "final"
    # no spot-reclaim check, no log tail: one write of the termination time (the terminate lag),
    # a transaction with the cost aggregates' ADDs (issue 22)
    assert aws_calls.take() == ["dynamodb.Query", "dynamodb.TransactWriteItems"]
    record = world.get(bid)
    assert record["status"] == "SUCCEEDED" and record["instance_terminated_at"] == "2999-01-01T00:00:20.000Z"
    # a duplicate event writes nothing more
    aws_calls.take()
    assert fire("on_instance_state", state_event(iid, "terminated")) == "final"
    assert aws_calls.take() == ["dynamodb.Query"]
    assert world.get(bid)["instance_terminated_at"] == "2999-01-01T00:00:20.000Z"


def test_terminate_lag_is_never_negative_when_eventbridge_rounds_to_the_second(world, fire):
    bid, iid = running_build(world, fire)
    world.wiring.transitions().move(bid, Status.SUCCEEDED, expect=[Status.RUNNING], message="pushed")
    event = state_event(iid, "terminated")
    event["time"] = "2000-01-01T00:00:00Z"  # before the final state: the second it happened in, truncated
    assert fire("on_instance_state", event) == "final"
    record = world.get(bid)
    assert record["instance_terminated_at"] == record["finished_at"]
    assert world.wiring.builds().get(bid).segments["terminate_lag"] == 0.0


def test_lost_build_makes_no_consistent_read(world, fire, aws_calls):
    bid, iid = running_build(world, fire)
    world.ec2.terminate_instances(InstanceIds=[iid])
    aws_calls.take()
    assert fire("on_instance_state", state_event(iid, "terminated")) == "failed"
    # the build's index copy, why EC2 ended the instance, the log's tail (one read of its own
    # stream), then one transaction: FAILED with the termination time and the cost booked
    # (issue 22), and its notification. Five calls, no consistent read.
    assert aws_calls.take() == ["dynamodb.Query", "ec2.DescribeInstances", "logs.GetLogEvents",
                                "dynamodb.TransactWriteItems", "sqs.SendMessage"]
    record = world.get(bid)
    assert record["status"] == "FAILED" and record["instance_terminated_at"] >= record["finished_at"]
    assert record["events"][-1]["at"] == record["finished_at"]  # the move's one time, the cost's end too
    # a redelivered event changes nothing and books nothing twice
    aws_calls.take()
    assert fire("on_instance_state", state_event(iid, "terminated")) == "final"
    assert aws_calls.take() == ["dynamodb.Query"]


def test_a_cancel_the_index_has_not_seen_still_wins(world, fire, monkeypatch, aws_calls):
    # GIVEN a running build cancelled a moment ago, the index still showing it uncancelled
    bid, iid = running_build(world, fire)
    stale_index(monkeypatch, world, world.get(bid))
    world.store.update_fields(bid, {"cancel_requested": True})
    world.ec2.terminate_instances(InstanceIds=[iid])
    aws_calls.take()
    # WHEN its instance's termination arrives
    assert fire("on_instance_state", state_event(iid, "terminated")) == "cancelled"
    # THEN the write made on the stale copy lost, one consistent read found the cancel
    calls = aws_calls.take()
    assert calls.count("dynamodb.GetItem") == 1 and calls.count("sqs.SendMessage") == 1
    record = world.get(bid)
    assert record["status"] == "CANCELLED" and statuses(record).count("FAILED") == 0
    assert [n["status"] for n in world.final_notifications()] == ["CANCELLED"]


def test_running_after_a_cancel_the_index_has_not_seen(world, fire, monkeypatch):
    bid = world.submit()
    iid = world.launch(bid)
    stale_index(monkeypatch, world, world.get(bid))
    world.store.update_fields(bid, {"cancel_requested": True})
    assert fire("on_instance_state", state_event(iid, "running")) == "terminated"
    assert world.state(iid) == "terminated"
    assert world.get(bid)["status"] == "LAUNCHING"


def test_stale_index_copy_of_an_earlier_attempt_changes_nothing(world, fire, monkeypatch, aws):
    # GIVEN a build relaunched after a spot interruption; the index still maps the old instance to it
    bid, iid = running_build(world, fire)
    copy = world.get(bid)
    fire("on_spot_interruption", spot_event(iid))
    stale_index(monkeypatch, world, copy)
    aws.messages("LaunchQueue")
    before = world.get(bid)
    # WHEN the old instance's late events arrive (a duplicate "running" is dropped without a write)
    assert fire("on_spot_interruption", spot_event(iid)) == "not ours"
    assert fire("on_instance_state", state_event(iid, "running")) == "ignored"
    assert fire("on_instance_state", state_event(iid, "terminated")) == "not ours"
    # THEN the queued attempt 2 is untouched and no second launch was asked for
    assert world.get(bid) == before
    assert aws.messages("LaunchQueue") == []


def test_push_seen_after_the_success_report_is_one_query_and_one_write(world, fire, aws_calls):
    bid, _ = running_build(world, fire)
    digest = "sha256:" + "f" * 64
    image = dict(world.get(bid)["image"], digest=digest)
    world.wiring.transitions().move(bid, Status.SUCCEEDED, expect=[Status.RUNNING], fields={"image": image})
    event = push_event(world, bid, digest)
    aws_calls.take()
    assert fire("on_image_pushed", event) == "recorded"
    assert aws_calls.take() == ["dynamodb.Query", "dynamodb.UpdateItem"]
    assert world.get(bid)["ecr_digest"] == digest


# ---- adopting an instance the launcher did not record (issue 16) ------------------------
def _launching_without_instance(world, attempt: int = 1) -> str:
    """The launcher moved the build to LAUNCHING, ran the instance and died before recording it."""
    bid = world.submit()
    world.wiring.transitions().move(bid, Status.LAUNCHING, expect=[Status.QUEUED], message="launching")
    return bid


def test_running_event_of_an_unrecorded_instance_of_the_current_attempt_adopts_it(world, fire):
    bid = _launching_without_instance(world)
    iid = world.run_instance(bid, 1)
    assert fire("on_instance_state", state_event(iid, "running")) == "running"
    record = world.get(bid)
    assert (record["status"], record["instance_id"]) == ("RUNNING", iid)
    assert record["instance"]["type"] == "g5.xlarge" and record["instance"]["lifecycle"] == "spot"


def test_an_unrecorded_instance_of_another_attempt_or_stage_is_not_adopted(world, fire):
    bid = _launching_without_instance(world)
    old = world.run_instance(bid, 2)  # not the build's attempt (1)
    other = world.run_instance(bid, 1, stage="prod")
    assert fire("on_instance_state", state_event(old, "running")) == "not ours"
    assert fire("on_instance_state", state_event(other, "running")) == "not ours"
    record = world.get(bid)
    assert record["status"] == "LAUNCHING" and "instance_id" not in record


def test_spot_warning_of_an_unrecorded_instance_relaunches_the_build(world, fire, aws):
    bid = _launching_without_instance(world)
    iid = world.run_instance(bid, 1)
    assert fire("on_spot_interruption", spot_event(iid)) == "relaunched"
    record = world.get(bid)
    assert (record["status"], record["attempt"]) == ("QUEUED", 2)
    assert aws.messages("LaunchQueue")[-1] == {"build_id": bid, "attempt": 2}


# ---- pushed, then the instance went away without its result (issue 16) ------------------
def test_instance_gone_after_pushing_every_tag_succeeds_with_a_note(world, fire, monkeypatch, aws):
    from chalicelib.builds.states import Phase

    monkeypatch.setenv("IMAGE_REGISTRY", "123456789012.dkr.ecr.us-east-1.amazonaws.com")  # moto's account
    world.wiring.reset()
    bid = world.submit(tags=["nightly"])
    iid = world.launch(bid)
    world.wiring.transitions().move(bid, Status.RUNNING, expect=[Status.LAUNCHING], phase=Phase.PUSHING)
    image = world.get(bid)["image"]
    ecr = aws.client("ecr")
    manifest = ('{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json", '
                '"layers": []}')
    digest = {ecr.put_image(repositoryName=image["repository"].split("/", 1)[1], imageManifest=manifest,
                            imageTag=t)["image"]["imageId"]["imageDigest"] for t in image["tags"]}.pop()
    world.ec2.terminate_instances(InstanceIds=[iid])
    assert fire("on_instance_state", state_event(iid, "terminated")) == "succeeded"
    record = world.get(bid)
    assert record["status"] == "SUCCEEDED" and record["image"]["digest"] == digest
    assert f"instance {iid} was terminated before it reported the result; but ECR holds every tag" in \
        record["events"][-1]["message"]


def test_a_cancelled_builds_earlier_instance_ending_does_not_end_it(world, fire, monkeypatch):
    # GIVEN a cancel asked of a build now on its second instance, and an index that still
    # shows the first one (a lagging copy)
    bid, first = running_build(world, fire)
    stale = {**world.get(bid), "cancel_requested": True}
    world.store.update_fields(bid, {"cancel_requested": True})
    world.store.update_fields(bid, {"instance_id": "i-0fedcba9876543210"})
    stale_index(monkeypatch, world, stale)
    world.ec2.terminate_instances(InstanceIds=[first])
    # WHEN the first instance's termination arrives THEN the cancel is not taken as done: its
    # write holds only while that instance is the build's, and the build's own is still running
    assert fire("on_instance_state", state_event(first, "terminated")) == "not ours"
    record = world.get(bid)
    assert record["status"] == "RUNNING" and record["instance_id"] == "i-0fedcba9876543210"
