"""Host failures move on: a FAILED result with cause "host" (no nvidia-smi, driver below the
CUDA minimum, GPU not visible in a container) records the failure on the build and queues it
again as a new attempt, which the launcher starts on the next instance type; out of attempts
it fails with that cause. Build, test and push failures stay final."""

from __future__ import annotations

import hashlib
import json

import test_launch_launcher as launch_tests
from test_launch_launcher import instances

from chalicelib import wiring
from chalicelib.builds.records import BuildRecord, HostFailure
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.states import Phase, Status
from chalicelib.launching.launcher import Launcher

ec2_env = launch_tests.ec2_env  # the fixture: a deployment's AMI, subnets, security group, profile
TOKEN = "tok-" + "h" * 40
HOST_FAIL = {"type": "result", "status": "FAILED", "cause": "host",
             "reason": "NVIDIA driver 535.183.01 is too old for CUDA 12.4, which needs 550.54.14 or newer",
             "log_tail": "nvidia-smi ..."}


def _running_on(aws, itype: str, *, attempt: int = 1, types: list[str] | None = None) -> str:
    """A build as a launched attempt leaves it: RUNNING on ``itype`` with its token stored."""
    build, _ = wiring.builds().submit(BuildRequest(framework="canary", instance_types=types))
    aws.messages("LaunchQueue")
    wiring.transitions().move(build.id, Status.LAUNCHING, expect=[Status.QUEUED], fields={
        "token_hash": hashlib.sha256(TOKEN.encode()).hexdigest(), "instance_id": "i-0123456789abcdef0",
        "attempt": attempt,
        "instance": {"id": "i-0123456789abcdef0", "type": itype, "az": "us-east-1a", "lifecycle": "spot",
                     "price": None, "launched_at": "2026-12-02T05:00:00Z"}})
    wiring.transitions().move(build.id, Status.RUNNING, expect=[Status.LAUNCHING], phase=Phase.PREPARING)
    return build.id


def post(api, build_id: str, body: dict, token: str = TOKEN):
    return api.http.post(f"/builds/{build_id}/events", body=json.dumps(body),
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})


def record(build_id: str) -> dict:
    """The stored build as plain data (the fields the item holds)."""
    return wiring.store().get_record(build_id).model_dump(mode="json", exclude_unset=True)


def test_a_host_failure_records_its_cause_and_queues_a_new_attempt(api, aws):
    # GIVEN canary attempt 1 preparing on p3.2xlarge
    build_id = _running_on(aws, "p3.2xlarge")
    # WHEN the host reports that its driver is too old
    resp = post(api, build_id, HOST_FAIL)
    # THEN the build is queued again as attempt 2 with the failure recorded, and not notified
    assert resp.status_code == 202, resp.body
    rec = record(build_id)
    assert (rec["status"], rec["attempt"]) == ("QUEUED", 2)
    assert rec["host_failures"] == [{"attempt": 1, "instance_type": "p3.2xlarge", "reason": HOST_FAIL["reason"]}]
    assert "instance_id" not in rec and "token_hash" not in rec
    assert aws.messages("LaunchQueue") == [{"build_id": build_id, "attempt": 2}]
    assert aws.messages("NotifyQueue") == []
    assert "host failure on p3.2xlarge" in rec["events"][-1]["message"]
    assert "attempt 2 of 3" in rec["events"][-1]["message"]
    # the old attempt's token opens nothing any more
    assert post(api, build_id, HOST_FAIL).status_code == 403


def test_the_next_attempt_starts_on_the_next_instance_type(api, aws, ec2_env):
    build_id = _running_on(aws, "g5.xlarge", types=["g5.xlarge", "g4dn.xlarge"])
    assert post(api, build_id, HOST_FAIL).status_code == 202
    (msg,) = aws.messages("LaunchQueue")
    assert Launcher._order(wiring.store().get_record(build_id)) == ["g4dn.xlarge", "g5.xlarge"]
    assert wiring.launcher().handle(msg).action == "launched"
    (inst,) = instances(ec2_env["ec2"])
    assert inst["InstanceType"] == "g4dn.xlarge"
    assert record(build_id)["instance"]["type"] == "g4dn.xlarge"


def test_every_type_that_failed_its_host_goes_last_in_the_order_it_was_listed():
    rec = BuildRecord.model_construct(
        instance_types=["p3.2xlarge", "g4dn.xlarge", "g5.xlarge"],
        host_failures=[HostFailure(attempt=1, instance_type="p3.2xlarge"),
                       HostFailure(attempt=2, instance_type="g4dn.xlarge")])
    assert Launcher._order(rec) == ["g5.xlarge", "p3.2xlarge", "g4dn.xlarge"]


def test_out_of_attempts_a_host_failure_fails_the_build_with_its_cause(api, aws):
    build_id = _running_on(aws, "p3.2xlarge", attempt=3)
    assert post(api, build_id, HOST_FAIL).status_code == 202
    rec = record(build_id)
    assert rec["status"] == "FAILED"
    assert "host failure on p3.2xlarge: NVIDIA driver 535.183.01 is too old" in rec["reason"]
    assert "gave up after 3 attempts" in rec["reason"]
    assert rec["host_failures"][-1]["attempt"] == 3
    assert aws.messages("LaunchQueue") == []
    assert aws.messages("NotifyQueue") == [{"build_id": build_id, "status": "FAILED"}]


def test_a_build_failure_stays_final(api, aws):
    build_id = _running_on(aws, "p3.2xlarge")
    body = {"type": "result", "status": "FAILED", "reason": "the image build failed"}
    assert post(api, build_id, body).status_code == 202
    rec = record(build_id)
    assert (rec["status"], rec["attempt"]) == ("FAILED", 1)
    assert "host_failures" not in rec and aws.messages("LaunchQueue") == []


def test_a_cause_is_validated(api, aws):
    build_id = _running_on(aws, "p3.2xlarge")
    before = record(build_id)
    for body in ({**HOST_FAIL, "cause": "gpu"},
                 {"type": "result", "status": "SUCCEEDED", "digest": "sha256:" + "a" * 64, "cause": "host"}):
        resp = post(api, build_id, body)
        assert resp.status_code == 400, resp.body
        assert "cause" in json.loads(resp.body)["Message"]
    assert record(build_id) == before


def test_a_forged_token_cannot_relaunch(api, aws):
    build_id = _running_on(aws, "p3.2xlarge")
    before = record(build_id)
    assert post(api, build_id, HOST_FAIL, token="forged-" + "f" * 40).status_code == 403
    assert record(build_id) == before and aws.messages("LaunchQueue") == []


def test_a_host_failure_after_a_cancel_was_asked_ends_cancelled(api, aws):
    build_id = _running_on(aws, "p3.2xlarge")
    wiring.store().update_fields(build_id, {"cancel_requested": True}, expect=[Status.RUNNING])
    assert post(api, build_id, HOST_FAIL).status_code == 202
    assert record(build_id)["status"] == "CANCELLED"
    assert aws.messages("LaunchQueue") == []
