"""The launcher against moto EC2: every launch parameter, fallback, retries, duplicates.

Capacity errors are injected by wrapping the launcher's EC2 client (moto never runs out
of capacity). p3.2xlarge is never used here: moto's instance data lacks it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from chalicelib import wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.launching.hostscript import script_of
from chalicelib.launching.launcher import backoff_seconds
from infra.local import prepare_ec2

TYPES = ["g5.xlarge", "g4dn.xlarge"]


class Ec2Faults:
    """The real (moto) client, with RunInstances failing as told; records every attempt."""

    def __init__(self, real, fail: dict | None = None, default: str | None = None) -> None:
        self._real = real
        self.fail = fail or {}  # (type, subnet or None, market) -> error code
        self.default = default
        self.calls: list[tuple[str, str | None, str, str]] = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def run_instances(self, **kw):
        market = "spot" if "InstanceMarketOptions" in kw else "on-demand"
        key = (kw["InstanceType"], kw.get("SubnetId"), market)
        self.calls.append((*key, kw["ClientToken"]))
        code = self.fail.get(key, self.default)
        if code:
            raise ClientError({"Error": {"Code": code, "Message": f"injected {code}"}}, "RunInstances")
        return self._real.run_instances(**kw)


class SentMessages:
    def __init__(self) -> None:
        self.sent: list[tuple[dict, int]] = []

    def send(self, body: dict, *, delay_seconds: int = 0) -> None:
        self.sent.append((body, delay_seconds))


@pytest.fixture
def ec2_env(aws, monkeypatch):
    """What a deployment has before the first launch: an AMI, subnets, the builder
    security group (no inbound rules) and instance profile."""
    prepared = prepare_ec2(aws.session, "voltabuild-test-builder")
    env = {**prepared, "PUBLIC_API_URL": "https://api.example.test/api", "LAUNCH_MAX_RETRIES": "2"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    wiring.reset()
    return {"ami": prepared["AMI_ID"], "subnets": prepared["SUBNET_IDS"].split(","),
            "sg": prepared["SECURITY_GROUP_ID"], "ec2": aws.client("ec2")}


def submit(aws, **req) -> tuple[str, dict]:
    build, _ = wiring.builds().submit(BuildRequest(framework="pytorch", instance_types=TYPES, **req))
    (msg,) = aws.messages("LaunchQueue")
    return build.id, msg


def record(build_id: str) -> dict:
    """The stored build as plain data (the fields the item holds)."""
    return wiring.store().get_record(build_id).model_dump(mode="json", exclude_unset=True)


def instances(ec2) -> list[dict]:
    return [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]


# ---- a launch ---------------------------------------------------------------------------------
def test_launch_sets_every_parameter(aws, ec2_env):
    build_id, msg = submit(aws, max_price=1.5)
    assert msg == {"build_id": build_id, "attempt": 1, "timeout_minutes": 90}

    outcome = wiring.launcher().handle(json.dumps(msg))
    assert outcome.action == "launched", outcome

    ec2 = ec2_env["ec2"]
    (inst,) = instances(ec2)
    iid = inst["InstanceId"]
    assert inst["InstanceType"] == "g5.xlarge"
    assert inst["ImageId"] == ec2_env["ami"]
    assert inst["InstanceLifecycle"] == "spot"
    assert inst["SubnetId"] == ec2_env["subnets"][0]
    assert [g["GroupId"] for g in inst["SecurityGroups"]] == [ec2_env["sg"]]
    assert inst["IamInstanceProfile"]["Arn"].endswith("instance-profile/voltabuild-test-builder")
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    assert inst["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags == {"voltabuild:build-id": build_id, "voltabuild:stage": "dev", "voltabuild:attempt": "1",
                    "Name": f"voltabuild-dev-pytorch-{build_id}"}
    shutdown = ec2.describe_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")
    assert shutdown["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    (vol,) = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])["Volumes"]
    assert (vol["Size"], vol["VolumeType"], vol["Encrypted"]) == (200, "gp3", True)
    sg = ec2.describe_security_groups(GroupIds=[ec2_env["sg"]])["SecurityGroups"][0]
    assert sg["IpPermissions"] == [], "no inbound rules"

    # the user-data is this build's host script, carrying a token whose hash is stored
    raw = base64.b64decode(ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"])
    assert len(raw) <= 16 * 1024
    script = script_of(raw)
    assert f"readonly BUILD_ID={build_id}" in script
    token = re.search(r"^readonly TOKEN=(\S+)$", script, re.M).group(1)
    rec = record(build_id)
    assert rec["token_hash"] == hashlib.sha256(token.encode()).hexdigest()

    assert rec["status"] == "LAUNCHING"
    assert rec["instance_id"] == iid
    assert rec["instance"]["id"] == iid and rec["instance"]["type"] == "g5.xlarge"
    assert rec["instance"]["lifecycle"] == "spot" and rec["instance"]["az"]
    assert isinstance(rec["instance"]["price"], float)
    assert rec["launch_started_at"] and rec["deadline_at"] > rec["launch_started_at"]
    assert wiring.store().find_by_instance(iid).id == build_id


def test_the_app_handler_launches_from_the_queue(aws, ec2_env, api):
    build_id, msg = submit(aws)
    event = api.events.generate_sqs_event(message_bodies=[json.dumps(msg)], queue_name="voltabuild-dev-launch")
    api.lambda_.invoke("launcher", event)
    assert record(build_id)["status"] == "LAUNCHING"
    assert len(instances(ec2_env["ec2"])) == 1


# ---- never twice ------------------------------------------------------------------------------
def test_a_message_delivered_twice_launches_one_instance(aws, ec2_env):
    build_id, msg = submit(aws)
    first = wiring.launcher().handle(json.dumps(msg))
    second = wiring.launcher().handle(json.dumps(msg))
    assert (first.action, second.action) == ("launched", "ignored")
    assert len(instances(ec2_env["ec2"])) == 1


def test_two_racing_launchers_launch_one_instance(aws, ec2_env, monkeypatch):
    """The second launcher read the build while it was still QUEUED: its conditional write loses."""
    build_id, msg = submit(aws)
    stale = wiring.store().get_record(build_id)
    assert wiring.launcher().handle(msg).action == "launched"
    monkeypatch.setattr(wiring.store(), "get_record", lambda _id: stale)
    assert wiring.launcher().handle(msg).action == "ignored"
    assert len(instances(ec2_env["ec2"])) == 1


def test_a_message_for_another_attempt_is_ignored(aws, ec2_env):
    build_id, _ = submit(aws)
    for body in [{"build_id": build_id, "attempt": 2}, "not json", {"build_id": "b-; reboot", "attempt": 1},
                 {"build_id": "b-00000000000000000000", "attempt": 1}]:
        assert wiring.launcher().handle(body if isinstance(body, str) else json.dumps(body)).action == "ignored"
    assert record(build_id)["status"] == "QUEUED"
    assert instances(ec2_env["ec2"]) == []


# ---- capacity ----------------------------------------------------------------------------------
def test_capacity_errors_fall_back_across_types_and_subnets_in_order(aws, ec2_env):
    s1, s2 = ec2_env["subnets"]
    launcher = wiring.launcher()
    faults = Ec2Faults(launcher.ec2, fail={
        ("g5.xlarge", s1, "spot"): "InsufficientInstanceCapacity",
        ("g5.xlarge", s2, "spot"): "SpotMaxPriceTooLow",
        ("g4dn.xlarge", s1, "spot"): "MaxSpotInstanceCountExceeded",
    })
    launcher.ec2 = faults
    build_id, msg = submit(aws)
    assert launcher.handle(msg).action == "launched"
    assert [c[:2] for c in faults.calls] == [("g5.xlarge", s1), ("g5.xlarge", s2), ("g4dn.xlarge", s1),
                                             ("g4dn.xlarge", s2)]
    assert faults.calls[0][3] == f"{build_id}-1", "the first try's ClientToken is <build>-<attempt>"
    assert len({c[3] for c in faults.calls}) == 4, "each try has its own ClientToken"
    (inst,) = instances(ec2_env["ec2"])
    assert (inst["InstanceType"], inst["SubnetId"]) == ("g4dn.xlarge", s2)
    assert record(build_id)["instance"]["type"] == "g4dn.xlarge"


def test_no_capacity_anywhere_retries_later_then_fails_listing_what_was_tried(aws, ec2_env):
    launcher = wiring.launcher()
    launcher.ec2 = faults = Ec2Faults(launcher.ec2, default="InsufficientInstanceCapacity")
    launcher.queue = queue = SentMessages()
    build_id, msg = submit(aws)

    for round_ in (1, 2):
        outcome = launcher.handle(msg)
        assert outcome.action == "retry", outcome
        rec = record(build_id)
        assert rec["status"] == "QUEUED" and rec["attempt"] == 1 and rec["launch_rounds"] == round_
        assert "token_hash" not in rec
        assert queue.sent[-1] == ({"build_id": build_id, "attempt": 1}, backoff_seconds(round_))
        assert "no capacity" in rec["events"][-1]["message"]
        due = datetime.fromisoformat(rec["queued_at"].replace("Z", "+00:00"))
        assert due - datetime.now(UTC) > timedelta(seconds=backoff_seconds(round_) - 30), "the reaper waits"
    assert [d for _, d in queue.sent] == [60, 120]

    assert launcher.handle(msg).action == "failed"
    rec = record(build_id)
    assert rec["status"] == "FAILED"
    assert "no capacity after 3 launch rounds" in rec["reason"]
    for t in TYPES:
        for s in ec2_env["subnets"]:
            assert f"{t} in {s} (spot): InsufficientInstanceCapacity" in rec["reason"]
    assert len(faults.calls) == 12 and instances(ec2_env["ec2"]) == []
    assert aws.messages("NotifyQueue") == [{"build_id": build_id, "status": "FAILED"}]
    assert len(queue.sent) == 2


def test_throttling_stops_the_round_and_retries_later(aws, ec2_env):
    launcher = wiring.launcher()
    launcher.ec2 = faults = Ec2Faults(launcher.ec2, default="RequestLimitExceeded")
    launcher.queue = queue = SentMessages()
    build_id, msg = submit(aws)
    assert launcher.handle(msg).action == "retry"
    assert len(faults.calls) == 1 and len(queue.sent) == 1
    assert record(build_id)["status"] == "QUEUED"


def test_on_demand_is_the_last_resort_when_switched_on(aws, ec2_env, monkeypatch):
    monkeypatch.setenv("ON_DEMAND_FALLBACK", "on")
    wiring.reset()
    launcher = wiring.launcher()
    launcher.ec2 = faults = Ec2Faults(launcher.ec2)
    faults.fail = {(t, s, "spot"): "InsufficientInstanceCapacity" for t in TYPES for s in ec2_env["subnets"]}
    build_id, msg = submit(aws)
    assert launcher.handle(msg).action == "launched"
    assert faults.calls[-1][2] == "on-demand" and len(faults.calls) == 5
    (inst,) = instances(ec2_env["ec2"])
    assert "InstanceLifecycle" not in inst
    assert record(build_id)["instance"]["lifecycle"] == "on-demand"


def test_on_demand_stays_off_by_default(aws, ec2_env):
    launcher = wiring.launcher()
    launcher.ec2 = faults = Ec2Faults(launcher.ec2, default="InsufficientInstanceCapacity")
    launcher.queue = SentMessages()
    _, msg = submit(aws)
    launcher.handle(msg)
    assert {c[2] for c in faults.calls} == {"spot"}


# ---- permanent errors ----------------------------------------------------------------------------
def test_permanent_run_instances_error_fails_at_once(aws, ec2_env):
    launcher = wiring.launcher()
    launcher.ec2 = faults = Ec2Faults(launcher.ec2, default="UnauthorizedOperation")
    launcher.queue = queue = SentMessages()
    build_id, msg = submit(aws)
    assert launcher.handle(msg).action == "failed"
    rec = record(build_id)
    assert rec["status"] == "FAILED"
    assert "UnauthorizedOperation: injected UnauthorizedOperation" in rec["reason"]
    assert len(faults.calls) == 1 and queue.sent == []
    assert aws.messages("NotifyQueue") == [{"build_id": build_id, "status": "FAILED"}]


def test_unknown_ami_fails_at_once_with_the_aws_error(aws, ec2_env, monkeypatch):
    monkeypatch.setenv("AMI_ID", "ami-0123456789abcdef0")
    wiring.reset()
    build_id, msg = submit(aws)
    assert wiring.launcher().handle(msg).action == "failed"
    rec = record(build_id)
    assert "AMI ami-0123456789abcdef0" in rec["reason"] and "InvalidAMIID" in rec["reason"]
    assert instances(ec2_env["ec2"]) == []


def test_missing_ami_parameter_fails_with_the_parameter_name(aws, ec2_env, monkeypatch):
    monkeypatch.delenv("AMI_ID")
    monkeypatch.setenv("AMI_PARAMETER", "/voltabuild/test/no-such-ami")
    wiring.reset()
    build_id, msg = submit(aws)
    assert wiring.launcher().handle(msg).action == "failed"
    assert "/voltabuild/test/no-such-ami" in record(build_id)["reason"]


def test_the_ami_comes_from_the_ssm_parameter(aws, ec2_env, monkeypatch):
    aws.client("ssm").put_parameter(Name="/voltabuild/test/ami", Value=ec2_env["ami"], Type="String")
    monkeypatch.delenv("AMI_ID")
    monkeypatch.setenv("AMI_PARAMETER", "/voltabuild/test/ami")
    wiring.reset()
    _, msg = submit(aws)
    assert wiring.launcher().handle(msg).action == "launched"
    assert instances(ec2_env["ec2"])[0]["ImageId"] == ec2_env["ami"]


def test_a_build_that_ended_during_the_launch_gets_its_instance_terminated(aws, ec2_env, monkeypatch):
    build_id, msg = submit(aws)
    launcher = wiring.launcher()
    real_run = launcher._run

    def run_then_time_out(*a, **kw):
        inst = real_run(*a, **kw)
        wiring.transitions().move(build_id, __import__("chalicelib.builds.states").builds.states.Status.TIMED_OUT,
                                  message="reaper")
        return inst

    monkeypatch.setattr(launcher, "_run", run_then_time_out)
    assert launcher.handle(msg).action == "ignored"
    (inst,) = instances(ec2_env["ec2"])
    assert inst["State"]["Name"] in ("shutting-down", "terminated")


# ---- a launcher that dies mid-launch (issue 16) ------------------------------------------------
class Died(BaseException):
    """The Lambda dying (timeout, out of memory): nothing in the domain may catch it."""


def user_data_token(ec2, iid: str) -> str:
    raw = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
    text = script_of(base64.b64decode(raw))
    return re.search(r"^readonly TOKEN=(\S+)$", text, re.M).group(1)


def test_a_spot_price_timeout_after_run_instances_does_not_lose_the_instance(aws, ec2_env):
    from botocore.exceptions import ReadTimeoutError

    launcher = wiring.launcher()

    class SlowPrices(Ec2Faults):
        def describe_spot_price_history(self, **kw):
            raise ReadTimeoutError(endpoint_url="https://ec2.us-east-1.amazonaws.com")

    launcher.ec2 = SlowPrices(launcher.ec2)
    build_id, msg = submit(aws)
    outcome = launcher.handle(msg)
    assert outcome.action == "launched"
    (inst,) = instances(ec2_env["ec2"])
    assert record(build_id)["instance_id"] == inst["InstanceId"] == outcome.instance_id


def test_redelivery_after_a_death_between_run_instances_and_the_record_records_that_instance(
        aws, ec2_env, monkeypatch):
    build_id, msg = submit(aws)
    launcher = wiring.launcher()

    def die(*a, **kw):
        raise Died()

    monkeypatch.setattr(launcher, "_price", die)
    with pytest.raises(Died):
        launcher.handle(msg)
    (inst,) = instances(ec2_env["ec2"])
    assert record(build_id)["status"] == "LAUNCHING" and "instance_id" not in record(build_id)

    monkeypatch.undo()
    outcome = wiring.launcher().handle(msg)  # SQS delivers the message again
    assert (outcome.action, outcome.instance_id) == ("launched", inst["InstanceId"])
    assert len(instances(ec2_env["ec2"])) == 1, "no second instance"
    rec = record(build_id)
    assert rec["instance_id"] == inst["InstanceId"] and rec["instance"]["type"] == "g5.xlarge"
    # the instance it recorded still holds the token the build accepts
    assert hashlib.sha256(user_data_token(ec2_env["ec2"], inst["InstanceId"]).encode()).hexdigest() == rec["token_hash"]
    assert wiring.launcher().handle(msg).action == "ignored", "once recorded, a third delivery is stale"


def test_redelivery_after_a_death_before_run_instances_launches_with_a_fresh_token(aws, ec2_env, monkeypatch):
    build_id, msg = submit(aws)
    launcher = wiring.launcher()

    def die(*a, **kw):
        raise Died()

    monkeypatch.setattr(launcher, "_run", die)
    with pytest.raises(Died):
        launcher.handle(msg)
    old_hash = record(build_id)["token_hash"]
    assert instances(ec2_env["ec2"]) == []

    monkeypatch.undo()
    assert wiring.launcher().handle(msg).action == "launched"
    (inst,) = instances(ec2_env["ec2"])
    rec = record(build_id)
    assert rec["token_hash"] != old_hash, "the dead launcher's token is unknown: a new one is issued"
    assert hashlib.sha256(user_data_token(ec2_env["ec2"], inst["InstanceId"]).encode()).hexdigest() == rec["token_hash"]


def test_a_cancel_during_a_dead_launch_cancels_on_redelivery(aws, ec2_env, monkeypatch):
    build_id, msg = submit(aws)
    launcher = wiring.launcher()
    monkeypatch.setattr(launcher, "_run", lambda *a, **kw: (_ for _ in ()).throw(Died()))
    with pytest.raises(Died):
        launcher.handle(msg)
    wiring.builds().cancel(build_id)
    monkeypatch.undo()
    assert wiring.launcher().handle(msg).action == "cancelled"
    assert record(build_id)["status"] == "CANCELLED"
    assert instances(ec2_env["ec2"]) == []


def test_a_catalog_error_at_launch_fails_the_build_at_once_with_the_reason(aws, ec2_env, monkeypatch):
    """The version left the catalog after the build was accepted: no instance, no retry loop."""
    from chalicelib.errors import BadRequest

    build_id, msg = submit(aws)
    launcher = wiring.launcher()

    class ChangedCatalog:
        def __init__(self, real):
            self._real = real

        def __getattr__(self, name):
            return getattr(self._real, name)

        def spec(self, _framework):
            raise BadRequest("framework 'pytorch' version '2.5.1' is not in the catalog; allowed: 2.6.0")

    launcher.catalog = ChangedCatalog(launcher.catalog)
    assert launcher.handle(msg).action == "failed"
    rec = record(build_id)
    assert rec["status"] == "FAILED"
    assert rec["reason"].startswith("launch failed: framework 'pytorch' version '2.5.1' is not in the catalog")
    assert instances(ec2_env["ec2"]) == []
    assert aws.messages("NotifyQueue") == [{"build_id": build_id, "status": "FAILED"}]
    assert launcher.handle(msg).action == "ignored", "a redelivery changes nothing"
