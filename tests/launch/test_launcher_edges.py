"""Edges of the launcher that test_launch_launcher.py leaves out: what a cancel before the
launch records, that a message read from a stale copy of its build never moves it, and
the log line an operator reads for each message."""

from __future__ import annotations

import json
import logging

import pytest
from botocore.exceptions import ClientError
from test_launch_launcher import Ec2Faults, SentMessages, ec2_env, instances, record, submit  # noqa: F401

from chalicelib import wiring
from chalicelib.builds.states import Status
from chalicelib.launching.launcher import backoff_seconds


def stale_reads(monkeypatch, copy) -> None:
    """The launcher reads ``copy`` of the build (the message raced a write it does not see yet)."""
    monkeypatch.setattr(wiring.store(), "get_record", lambda _id: copy)


def stored(build_id: str) -> dict:
    """The build as the table holds it (past a stale_reads patch)."""
    store = wiring.store()
    return type(store).get_record(store, build_id).model_dump(mode="json", exclude_unset=True)


def relaunch_message(build_id: str, attempt: int = 1) -> str:
    """A launch message without the timeout: the launcher reads the build first."""
    return json.dumps({"build_id": build_id, "attempt": attempt})


# ---- a cancel before the launch ------------------------------------------------------------------
def test_a_cancel_before_the_launch_says_so_in_the_timeline_and_the_log(aws, ec2_env, caplog):  # noqa: F811
    build_id, _ = submit(aws)
    wiring.store().update_fields(build_id, {"cancel_requested": True})
    with caplog.at_level(logging.INFO, logger="voltabuild.launcher"):
        outcome = wiring.launcher().handle(relaunch_message(build_id))
    assert (outcome.action, outcome.detail) == ("cancelled", build_id)
    rec = record(build_id)
    assert rec["status"] == "CANCELLED"
    assert rec["events"][-1]["message"] == "cancelled by request before launch"
    assert f"launch cancelled: {build_id}" in caplog.messages
    assert instances(ec2_env["ec2"]) == []


def test_a_redelivered_cancel_read_from_a_stale_copy_changes_nothing(aws, ec2_env, monkeypatch, caplog):  # noqa: F811
    build_id, _ = submit(aws)
    wiring.store().update_fields(build_id, {"cancel_requested": True})
    stale = wiring.store().get_record(build_id)
    assert wiring.launcher().handle(relaunch_message(build_id)).action == "cancelled"
    before = record(build_id)
    stale_reads(monkeypatch, stale)
    with caplog.at_level(logging.INFO, logger="voltabuild.launcher"):
        outcome = wiring.launcher().handle(relaunch_message(build_id))
    assert (outcome.action, outcome.detail) == ("ignored", f"{build_id}: moved on")
    assert f"launch ignored: {build_id}: moved on" in caplog.messages
    assert stored(build_id) == before


@pytest.mark.parametrize("now", ["queued again as attempt 2", "launching attempt 1 elsewhere"])
def test_a_cancel_read_from_a_stale_copy_never_moves_the_build(aws, ec2_env, monkeypatch, now):  # noqa: F811
    """The copy says QUEUED at attempt 1 with a cancel requested; the build has moved on since
    (another attempt, or another launcher's LAUNCHING write): this message is stale."""
    build_id, _ = submit(aws)
    wiring.store().update_fields(build_id, {"cancel_requested": True})
    stale = wiring.store().get_record(build_id)
    if now.startswith("queued"):
        wiring.store().update_fields(build_id, {"attempt": 2}, expect=[Status.QUEUED])
    else:
        wiring.transitions().move(build_id, Status.LAUNCHING, expect=[Status.QUEUED], message="launching attempt 1")
    before = record(build_id)
    stale_reads(monkeypatch, stale)
    assert wiring.launcher().handle(relaunch_message(build_id)).action == "ignored"
    assert stored(build_id) == before


# ---- the delay before the next round ---------------------------------------------------------------
def test_the_delay_doubles_from_a_minute_up_to_sqs_maximum_of_900_seconds():
    """SQS refuses a DelaySeconds over 900: a later round waits exactly that long."""
    assert [backoff_seconds(r) for r in range(1, 9)] == [60, 120, 240, 480, 900, 900, 900, 900]


# ---- a round that ends without an instance ------------------------------------------------------------
def test_the_timeline_lists_every_try_of_a_round_without_capacity(aws, ec2_env):  # noqa: F811
    s1, s2 = ec2_env["subnets"]
    launcher = wiring.launcher()
    launcher.ec2 = Ec2Faults(launcher.ec2, default="InsufficientInstanceCapacity")
    launcher.queue = SentMessages()
    launcher.cfg = type(launcher.cfg)(**{**launcher.cfg.__dict__, "subnet_ids": (s1, s2)})
    build_id, msg = submit(aws)
    build = wiring.store().get_record(build_id)
    assert build.instance_types == ["g5.xlarge", "g4dn.xlarge"]
    assert launcher.handle(msg).action == "retry"
    tries = "; ".join(f"{t} in {s} (spot): InsufficientInstanceCapacity" for t in build.instance_types for s in (s1, s2))
    rec = record(build_id)
    assert rec["events"][-1]["message"] == f"no capacity ({tries}); trying again in 60 s"
    # queued again: no launch under way, no deadline running (the next launch starts both anew)
    assert rec["status"] == "QUEUED"
    assert "launch_started_at" not in rec and "deadline_at" not in rec and "token_hash" not in rec


class TakenOver(Ec2Faults):
    """RunInstances fails with ``code`` after the build moved on: the reaper gave its attempt
    to another launcher (LAUNCHING again, as attempt 2, with that launcher's token), or a
    duplicate launcher's round ended first and queued it again (QUEUED, attempt 1)."""

    def __init__(self, real, build_id: str, code: str, how: str) -> None:
        super().__init__(real, default=code)
        self.build_id, self.how = build_id, how

    def run_instances(self, **kw):
        if self.how == "attempt 2":
            wiring.store().update_fields(self.build_id, {"attempt": 2, "token_hash": "the-other-launchers"})
        elif wiring.store().get_record(self.build_id).status == Status.LAUNCHING:
            wiring.transitions().move(self.build_id, Status.QUEUED, expect=[Status.LAUNCHING], message="no capacity",
                                      remove=["token_hash"])
        return super().run_instances(**kw)


@pytest.mark.parametrize("how", ["attempt 2", "queued again"])
@pytest.mark.parametrize("code", ["InsufficientInstanceCapacity", "UnauthorizedOperation"])
def test_a_launcher_whose_attempt_moved_on_during_its_round_changes_nothing(aws, ec2_env, code, how):  # noqa: F811
    build_id, msg = submit(aws)
    launcher = wiring.launcher()
    launcher.queue = queue = SentMessages()
    launcher.ec2 = TakenOver(launcher.ec2, build_id, code, how)
    launcher.cfg = type(launcher.cfg)(**{**launcher.cfg.__dict__, "subnet_ids": ()})
    outcome = launcher.handle(msg)
    assert (outcome.action, outcome.detail) == ("ignored", f"{build_id}: moved on during the launch")
    rec = record(build_id)
    if how == "attempt 2":
        assert (rec["status"], rec["attempt"], rec["token_hash"]) == ("LAUNCHING", 2, "the-other-launchers")
    else:
        assert (rec["status"], rec["attempt"]) == ("QUEUED", 1)
    assert queue.sent == [] and aws.messages("NotifyQueue") == []


def test_a_failed_launch_keeps_a_long_aws_error_within_the_records_limits(aws, ec2_env):  # noqa: F811
    """The reason is cut to 4000 characters, its timeline entry to 2000 (a DynamoDB item is
    at most 400 KB, and the timeline holds many entries); the report token goes with the attempt."""

    class Verbose(Ec2Faults):
        def run_instances(self, **kw):
            raise ClientError({"Error": {"Code": "InvalidParameterValue", "Message": "x" * 5000}}, "RunInstances")

    launcher = wiring.launcher()
    launcher.ec2 = Verbose(launcher.ec2)
    build_id, msg = submit(aws)
    outcome = launcher.handle(msg)
    assert outcome.action == "failed"
    rec = record(build_id)
    assert rec["status"] == "FAILED" and "token_hash" not in rec
    assert rec["reason"].startswith("launch failed: RunInstances g5.xlarge in ")
    assert len(rec["reason"]) == 4000 and rec["reason"].endswith("x")
    assert rec["events"][-1]["message"] == rec["reason"][:2000]
    assert outcome.detail.startswith(f"{build_id}: launch failed: RunInstances") and len(outcome.detail) > 5000


# ---- a redelivery after the launcher died (issue 16) ----------------------------------------------------
class Died(BaseException):
    """The Lambda dying (timeout, out of memory): nothing in the domain may catch it."""


def die(*_a, **_kw):
    raise Died()


def state_of(ec2, iid: str) -> str:
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]


@pytest.mark.parametrize("market", ["spot", "on-demand"])
def test_a_resumed_launch_records_the_instance_as_the_market_it_runs_in(aws, ec2_env, monkeypatch, market):  # noqa: F811
    """The cost of a build is priced from its instance's market (issue 22): an on-demand
    fallback instance found on redelivery is on-demand, not spot."""
    monkeypatch.setenv("ON_DEMAND_FALLBACK", "on")
    wiring.reset()
    launcher = wiring.launcher()
    if market == "on-demand":
        launcher.ec2 = Ec2Faults(launcher.ec2, fail={(t, s, "spot"): "InsufficientInstanceCapacity"
                                                     for t in ("g5.xlarge", "g4dn.xlarge") for s in ec2_env["subnets"]})
    build_id, msg = submit(aws)
    monkeypatch.setattr(launcher, "_record", die)
    with pytest.raises(Died):
        launcher.handle(msg)
    monkeypatch.setattr(launcher, "_record", type(launcher)._record.__get__(launcher))
    (inst,) = instances(ec2_env["ec2"])
    outcome = launcher.handle(msg)  # SQS delivers the message again
    assert (outcome.action, outcome.instance_id) == ("launched", inst["InstanceId"])
    rec = record(build_id)
    assert rec["instance"]["lifecycle"] == market
    assert state_of(ec2_env["ec2"], inst["InstanceId"]) == "running", "a build's own instance is left running"


def test_a_cancel_that_missed_the_unrecorded_instance_terminates_it_on_redelivery(aws, ec2_env, monkeypatch):  # noqa: F811
    build_id, msg = submit(aws)
    launcher = wiring.launcher()
    monkeypatch.setattr(launcher, "_price", die)
    with pytest.raises(Died):
        launcher.handle(msg)
    monkeypatch.undo()
    (inst,) = instances(ec2_env["ec2"])
    wiring.builds().cancel(build_id)  # sees no instance to stop: the build has none recorded yet
    assert state_of(ec2_env["ec2"], inst["InstanceId"]) == "running"
    assert wiring.launcher().handle(msg).action == "launched"
    assert state_of(ec2_env["ec2"], inst["InstanceId"]) in ("shutting-down", "terminated")
    assert len(instances(ec2_env["ec2"])) == 1


@pytest.mark.parametrize("now", ["relaunched as attempt 2", "failed by the reaper"])
def test_a_resume_read_from_a_stale_copy_launches_nothing(aws, ec2_env, monkeypatch, caplog, now):  # noqa: F811
    """The copy says LAUNCHING at attempt 1 without an instance (its launcher died); the build
    has moved on since: the redelivered message must neither launch nor replace the token."""
    build_id, _ = submit(aws)
    wiring.transitions().move(build_id, Status.LAUNCHING, expect=[Status.QUEUED], message="launching attempt 1",
                              fields={"token_hash": "the-dead-launchers"})
    stale = wiring.store().get_record(build_id)
    if now.startswith("relaunched"):
        wiring.store().update_fields(build_id, {"attempt": 2, "token_hash": "attempt-2s"})
    else:
        wiring.transitions().move(build_id, Status.FAILED, expect=[Status.LAUNCHING], message="not launched")
    before = stored(build_id)
    stale_reads(monkeypatch, stale)
    with caplog.at_level(logging.INFO, logger="voltabuild.launcher"):
        outcome = wiring.launcher().handle(relaunch_message(build_id))
    assert (outcome.action, outcome.detail) == ("ignored", f"{build_id}: attempt 1 moved on")
    assert f"launch ignored: {build_id}: attempt 1 moved on" in caplog.messages
    assert instances(ec2_env["ec2"]) == []
    assert stored(build_id) == before
