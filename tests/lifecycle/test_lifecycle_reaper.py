"""The scheduled reaper, invoked through chalice.test.Client with a clock the test moves."""

from __future__ import annotations

from chalicelib import clock as clock_module
from chalicelib.builds.records import BuildRecord
from chalicelib.builds.states import Status


def tick(api) -> dict:
    event = api.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, region="us-east-1",
        resources=["arn:aws:events:us-east-1:123456789012:rule/voltabuild-dev-reaper"])
    return api.lambda_.invoke("reaper", event).payload


def test_past_deadline_is_timed_out_and_the_instance_terminated(world, api, clock):
    bid = world.submit()
    iid = world.launch(bid, timeout_minutes=15)
    world.wiring.transitions().move(bid, Status.RUNNING, expect=[Status.LAUNCHING])
    clock.advance(minutes=10)
    world.store.update_fields(bid, {"heartbeat_at": clock_module.now_iso()})
    assert tick(api) == {}
    clock.advance(minutes=6)
    assert tick(api) == {"timed_out": 1}
    record = world.get(bid)
    assert record["status"] == "TIMED_OUT" and "deadline" in record["reason"]
    assert world.state(iid) == "terminated"
    # the quota slot comes back (normally the notifier does it first), then nothing changes
    assert tick(api) == {"slots_released": 1}
    assert tick(api) == {}
    assert world.get(bid)["events"] == record["events"]


def test_stale_heartbeat_fails_the_build(world, api, clock):
    bid = world.submit(timeout_minutes=60)
    iid = world.launch(bid, timeout_minutes=60)
    world.wiring.transitions().move(bid, Status.RUNNING, expect=[Status.LAUNCHING])
    world.store.update_fields(bid, {"heartbeat_at": clock_module.now_iso()})
    clock.advance(minutes=14)
    assert tick(api) == {}
    clock.advance(minutes=2)
    assert tick(api) == {"failed": 1}
    record = world.get(bid)
    assert record["status"] == "FAILED" and record["reason"] == f"no report from instance {iid} for 16 minutes"
    assert world.state(iid) == "terminated"


def test_stuck_launching_is_launched_again_then_failed(world, api, clock, aws):
    bid = world.submit()
    aws.messages("LaunchQueue")
    first = world.launch(bid)
    clock.advance(minutes=11)
    assert tick(api) == {"relaunched": 1}
    assert world.state(first) == "terminated"
    record = world.get(bid)
    assert record["status"] == "QUEUED" and record["attempt"] == 2
    assert aws.messages("LaunchQueue") == [{"build_id": bid, "attempt": 2}]
    # the launch message is lost this time: the build sits QUEUED until its attempts are spent
    clock.advance(minutes=11)
    assert tick(api) == {"relaunched": 1}
    assert world.get(bid)["attempt"] == 3
    clock.advance(minutes=11)
    assert tick(api) == {"failed": 1}
    record = world.get(bid)
    assert record["status"] == "FAILED" and "not launched within 10 minutes" in record["reason"]


def test_orphans_are_marked_then_terminated_on_a_later_tick(world, api, clock):
    # GIVEN a finished build whose instance never went, an instance of an unknown build,
    # an instance exempted with voltabuild:keep, and a live build's own instance
    done = world.submit()
    done_iid = world.launch(done)
    world.wiring.transitions().move(done, Status.FAILED, expect=[Status.LAUNCHING], message="x")
    unknown_iid = world.run_instance("b-00000000000000000000", 1)
    kept_iid = world.run_instance("b-00000000000000000001", 1, extra_tags={"voltabuild:keep": "debugging"})
    live = world.submit()
    live_iid = world.launch(live)

    assert tick(api) == {"orphans_marked": 2, "slots_released": 1}
    assert "voltabuild:orphan-seen-at" in world.tags(done_iid)
    assert world.state(done_iid) == "running"  # not yet: phase one only marks
    clock.advance(minutes=5)
    assert tick(api) == {"orphans_terminated": 2}
    assert world.state(done_iid) == "terminated" and world.state(unknown_iid) == "terminated"
    assert world.state(kept_iid) == "running" and world.state(live_iid) == "running"
    assert "voltabuild:orphan-seen-at" not in world.tags(live_iid)


def test_an_instance_that_stops_being_an_orphan_is_unmarked(world, api, clock):
    bid = world.submit()
    iid = world.run_instance(bid, 2)  # an attempt the build is not on
    assert tick(api) == {"orphans_marked": 1}
    world.store.update_fields(bid, {"attempt": 2})  # e.g. the launcher's record landed late
    clock.advance(minutes=5)
    assert tick(api) == {}
    assert world.state(iid) == "running"
    assert "voltabuild:orphan-seen-at" not in world.tags(iid)


def test_cancelled_build_whose_termination_event_was_lost(world, api, clock):
    bid = world.submit()
    iid = world.launch(bid)
    assert api.http.delete(f"/builds/{bid}").status_code == 202
    assert world.state(iid) == "terminated"
    assert tick(api) == {"cancelled": 1}
    assert world.get(bid)["status"] == "CANCELLED"
    assert [n["status"] for n in world.final_notifications()] == ["CANCELLED"]


def test_quota_slot_of_a_final_build_is_given_back(world, api):
    bid = world.submit()
    world.wiring.transitions().move(bid, Status.FAILED, expect=[Status.QUEUED], message="x")
    assert bid in world.store.slot_holders()
    assert tick(api)["slots_released"] == 1
    assert bid not in world.store.slot_holders()


def test_succeeded_build_whose_image_ecr_never_saw_is_flagged(world, api, clock, aws, monkeypatch):
    monkeypatch.setenv("IMAGE_REGISTRY", "123456789012.dkr.ecr.us-east-1.amazonaws.com")  # moto's account
    world.wiring.reset()
    ok, missing = world.submit(), world.submit(tags=["other"])
    ecr = aws.client("ecr")
    # the repository comes from infra/resources.yaml
    manifest = '{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}'
    pushed = ecr.put_image(repositoryName="voltabuild/canary", imageManifest=manifest,
                           imageTag="1.0")["image"]["imageId"]["imageDigest"]
    for bid, digest in ((ok, pushed), (missing, "sha256:" + "d" * 64)):
        world.launch(bid)
        world.wiring.transitions().move(bid, Status.RUNNING, expect=[Status.LAUNCHING])
        image = dict(world.get(bid)["image"], digest=digest)
        world.wiring.transitions().move(bid, Status.SUCCEEDED, expect=[Status.RUNNING], fields={"image": image})
    clock.advance(minutes=16)
    report = tick(api)
    assert report["digests_flagged"] == 1
    assert world.get(ok)["ecr_digest"] == pushed and not world.get(ok).get("reason")
    assert "ECR has no image sha256:dddd" in world.get(missing)["reason"]
    assert "digests_flagged" not in tick(api)  # checked once


def test_reaper_reads_only_active_builds(world, api, monkeypatch):
    for _ in range(3):
        bid = world.submit()
        world.wiring.transitions().move(bid, Status.CANCELLED, expect=[Status.QUEUED])
    tick(api)  # releases their slots
    seen = []
    original = type(world.store).get_record

    def counting(self, build_id):
        seen.append(build_id)
        return original(self, build_id)

    monkeypatch.setattr(type(world.store), "get_record", counting)
    assert tick(api) == {}
    assert seen == []  # finished builds were never read again


def test_two_ticks_at_once_relaunch_only_once(world, api, clock, aws):
    bid = world.submit()
    aws.messages("LaunchQueue")
    world.launch(bid)
    clock.advance(minutes=11)
    assert tick(api) == {"relaunched": 1}
    assert tick(api) == {}  # the same instant again (a retried invocation): nothing more
    assert world.get(bid)["attempt"] == 2
    assert aws.messages("LaunchQueue") == [{"build_id": bid, "attempt": 2}]


def test_an_instance_the_launcher_has_not_recorded_is_adopted_not_orphaned(world, api, clock):
    # the launcher moved the build to LAUNCHING and started the instance, but has not
    # written instance_id (it died, or is about to): the instance carries the build's current attempt
    bid = world.submit()
    world.wiring.transitions().move(bid, Status.LAUNCHING, expect=[Status.QUEUED],
                                    fields={"launch_started_at": clock_module.now_iso()})
    iid = world.run_instance(bid, 1)
    stale = world.run_instance(bid, 0)  # an earlier attempt's survivor is not adopted
    assert tick(api) == {"adopted": 1, "orphans_marked": 1}
    rec = world.get(bid)
    assert (rec["status"], rec["instance_id"], rec["instance"]["type"]) == ("LAUNCHING", iid, "g5.xlarge")
    clock.advance(minutes=5)
    assert tick(api) == {"orphans_terminated": 1}
    assert world.state(iid) == "running" and world.state(stale) in ("shutting-down", "terminated")


def _succeeded_in_ecr_account(world, monkeypatch, digests: list[str]) -> list[str]:
    monkeypatch.setenv("IMAGE_REGISTRY", "123456789012.dkr.ecr.us-east-1.amazonaws.com")  # moto's account
    world.wiring.reset()
    ids = []
    for i, digest in enumerate(digests):
        bid = world.submit(tags=[f"t{i}"])
        iid = world.launch(bid)
        world.wiring.transitions().move(bid, Status.RUNNING, expect=[Status.LAUNCHING])
        image = dict(world.get(bid)["image"], digest=digest)
        world.wiring.transitions().move(bid, Status.SUCCEEDED, expect=[Status.RUNNING], fields={"image": image})
        world.ec2.terminate_instances(InstanceIds=[iid])  # the instance ends itself after its report
        world.store.record_delivery(bid, False, {"status": "sent"}, None)
        ids.append(bid)
    return ids


def test_digest_check_reads_no_build_again(world, api, clock, monkeypatch):
    from lifecycle_helpers import CallLog

    seen, unseen = _succeeded_in_ecr_account(world, monkeypatch, ["sha256:" + "1" * 64, "sha256:" + "2" * 64])
    world.store.update_fields(seen, {"ecr_digest": "sha256:" + "1" * 64}, expect=[Status.SUCCEEDED])
    tick(api)  # gives the quota slots back
    calls = CallLog()
    clock.advance(minutes=16)
    assert tick(api) == {"digests_checked": 1, "digests_flagged": 1}
    # the index query's items are used as they are: only the build ECR never reported is asked about
    # (one Query per final state: the newest SUCCEEDED for the digests, all four for lost notifications)
    assert calls.take() == ["dynamodb.Query", "ec2.DescribeInstances", "dynamodb.GetItem",
                            *["dynamodb.Query"] * 4, "ecr.DescribeImages", "dynamodb.UpdateItem"]
    assert "ECR has no image" in world.get(unseen)["reason"] and not world.get(seen).get("reason")


def test_digest_recorded_after_the_index_read_is_not_flagged(world, api, clock, monkeypatch):
    # GIVEN the index's copy of a SUCCEEDED build without an ECR digest...
    (bid,) = _succeeded_in_ecr_account(world, monkeypatch, ["sha256:" + "3" * 64])
    copy = world.get(bid)
    monkeypatch.setattr(type(world.store), "recent_records", lambda self, status, limit: [BuildRecord.of(copy)])
    # ...while the push event recorded it in the table meanwhile
    world.store.update_fields(bid, {"ecr_digest": "sha256:" + "3" * 64}, expect=[Status.SUCCEEDED])
    clock.advance(minutes=16)
    # WHEN the reaper checks (ECR has no such image: moto's repository is empty)
    report = tick(api)
    # THEN its conditional write loses: the build is not flagged
    assert "digests_flagged" not in report and "digests_checked" not in report
    assert not world.get(bid).get("reason") and "digest_checked" not in world.get(bid)


# ---- lost notifications (issue 16) ---------------------------------------------------------
def test_a_final_build_whose_notify_message_was_lost_is_notified_again_once(world, api, clock, aws):

    bid = world.submit()
    world.launch(bid)
    world.wiring.transitions().move(bid, Status.CANCELLED, message="cancelled")
    assert world.final_notifications() == [{"build_id": bid, "status": "CANCELLED"}]  # ... and then lost
    clock.advance(minutes=9)
    assert tick(api).get("notifications_requeued") is None, "within the grace the consumer may still be at it"
    clock.advance(minutes=2)
    assert tick(api)["notifications_requeued"] == 1
    assert world.final_notifications() == [{"build_id": bid, "status": "CANCELLED"}]
    # once the consumer claimed the delivery (here: Slack was off for it), it is never sent again
    world.store.record_delivery(bid, False, {"status": "skipped"}, None)
    clock.advance(minutes=5)
    assert tick(api).get("notifications_requeued") is None
    assert world.final_notifications() == []


# ---- pushed, then silent (issue 16) ----------------------------------------------------------
def test_a_silent_build_that_pushed_every_tag_succeeds_and_one_that_did_not_fails(world, api, clock, monkeypatch,
                                                                                 aws):
    from chalicelib.builds.states import Phase

    monkeypatch.setenv("IMAGE_REGISTRY", "123456789012.dkr.ecr.us-east-1.amazonaws.com")  # moto's account
    world.wiring.reset()
    pushed, partial = world.submit(tags=["a1"], timeout_minutes=60), world.submit(tags=["b1"], timeout_minutes=60)
    iids = {}
    for bid in (pushed, partial):
        iids[bid] = world.launch(bid, timeout_minutes=60)
        world.wiring.transitions().move(bid, Status.RUNNING, expect=[Status.LAUNCHING], phase=Phase.PUSHING,
                                        fields={"heartbeat_at": clock_module.now_iso()})
    ecr = aws.client("ecr")
    manifest = ('{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json", '
                '"layers": []}')
    image = world.get(pushed)["image"]
    for tag in image["tags"]:
        ecr.put_image(repositoryName=image["repository"].split("/", 1)[1], imageManifest=manifest, imageTag=tag)
    # the other build's shared tags (its version, latest) are in ECR, its own "b1" never got there
    clock.advance(minutes=16)
    assert tick(api) == {"settled_pushed": 1, "failed": 1}
    done, failed = world.get(pushed), world.get(partial)
    assert done["status"] == "SUCCEEDED" and "no report from instance" in done["events"][-1]["message"]
    assert "but ECR holds every tag" in done["events"][-1]["message"]
    assert failed["status"] == "FAILED" and failed["reason"].startswith("no report from instance")
    assert world.state(iids[pushed]) == world.state(iids[partial]) == "terminated"
