"""The launch consumer's AWS calls (issue 21: at most 3 on a warm Lambda): a new build's
message lets the LAUNCHING write come first (no read), and a warm launcher reuses the AMI's
root device and the spot price for a few minutes. The two writes around RunInstances stay."""

from __future__ import annotations

import base64
import json

import pytest
from test_launch_launcher import ec2_env, instances, record, submit  # noqa: F401 (ec2_env: a fixture)

from chalicelib import clock, wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.states import Status
from chalicelib.launching.hostscript import script_of
from chalicelib.launching.warmcache import TtlCache


class Calls:
    def __init__(self) -> None:
        self.calls: list[str] = []
        # s3 too: the catalog context's presigned GET (issue 19) is signed locally, no call
        for name in ("dynamodb", "sqs", "ec2", "ssm", "s3"):
            wiring.client(name).meta.events.register("before-call", self._on)

    def _on(self, model, **_):
        self.calls.append(model.name)

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


@pytest.fixture
def calls(aws, ec2_env):  # noqa: F811
    return Calls()


def test_a_warm_launcher_makes_three_calls_the_writes_around_run_instances(aws, calls):
    # GIVEN two new builds' messages
    first, m1 = submit(aws)
    second, _ = wiring.builds().submit(BuildRequest(framework="pytorch", instance_types=["g5.xlarge"]))
    m2 = aws.messages("LaunchQueue")[-1]
    assert m2["build_id"] == second.id
    calls.take()
    # WHEN a cold launcher takes the first: it looks the AMI's root device and the price up
    assert wiring.launcher().handle(json.dumps(m1)).action == "launched"
    assert calls.take() == ["UpdateItem", "DescribeImages", "RunInstances", "DescribeSpotPriceHistory", "UpdateItem"]
    # THEN the warm one takes the second with the two writes and RunInstances only
    assert wiring.launcher().handle(json.dumps(m2)).action == "launched"
    assert calls.take() == ["UpdateItem", "RunInstances", "UpdateItem"]
    # AND their user-data links the catalog context (with its lock) instead of carrying it
    data = base64.b64decode(aws.client("ec2").describe_instance_attribute(
        InstanceId=record(second.id)["instance_id"], Attribute="userData")["UserData"]["Value"])
    script = script_of(data)
    assert "readonly CONTEXT_URL=" in script and "/catalog/sha256/" in script and "readonly CONTEXT_B64=''" in script
    for bid in (first, second.id):
        rec = record(bid)
        assert rec["status"] == "LAUNCHING" and rec["instance_id"] and rec["instance"]["price"] is not None
        # the deadline is the build's timeout from the launch, as when the build was read first
        assert (clock.parse(rec["deadline_at"]) - clock.parse(rec["launch_started_at"])).total_seconds() == \
            rec["timeout_minutes"] * 60


def test_a_duplicate_message_is_one_failed_write_and_launches_nothing(aws, calls, ec2_env):  # noqa: F811
    bid, msg = submit(aws)
    assert wiring.launcher().handle(json.dumps(msg)).action == "launched"
    calls.take()
    outcome = wiring.launcher().handle(json.dumps(msg))
    assert outcome.action == "ignored" and "stale or duplicate" in outcome.detail
    assert calls.take() == ["UpdateItem"]  # the failed condition returned the build: no read
    assert len(instances(ec2_env["ec2"])) == 1


def test_a_cancel_requested_while_queued_wins_over_the_write_first_launch(aws, ec2_env):  # noqa: F811
    bid, msg = submit(aws)
    wiring.store().update_fields(bid, {"cancel_requested": True})
    assert wiring.launcher().handle(json.dumps(msg)).action != "launched"
    assert record(bid)["status"] == "CANCELLED"
    assert instances(ec2_env["ec2"]) == []


def test_a_launcher_that_died_after_the_write_is_resumed_by_the_redelivered_message(aws, ec2_env):  # noqa: F811
    bid, msg = submit(aws)
    # GIVEN the LAUNCHING write made, and the launcher gone before RunInstances
    wiring.transitions().move(bid, Status.LAUNCHING,
                              fields={"launch_started_at": clock.now_iso(), "token_hash": "x"})
    # WHEN the message comes back THEN the attempt is launched, once
    assert wiring.launcher().handle(json.dumps(msg)).action == "launched"
    assert len(instances(ec2_env["ec2"])) == 1 and record(bid)["instance_id"]


def test_the_warm_cache_forgets_after_its_ttl_and_never_keeps_what_it_is_told_not_to():
    now = [0.0]
    cache = TtlCache(300, clock=lambda: now[0])
    loads = []

    def load(v):
        def f():
            loads.append(v)
            return v
        return f

    assert cache.get("k", load(1)) == 1
    now[0] = 299
    assert cache.get("k", load(2)) == 1
    now[0] = 300
    assert cache.get("k", load(3)) == 3
    assert cache.get("none", load(None), keep=lambda v: v is not None) is None
    assert cache.get("none", load(4), keep=lambda v: v is not None) == 4
    assert loads == [1, 3, None, 4]


def test_a_spot_price_that_could_not_be_read_is_asked_again_and_a_read_one_is_reused(aws, ec2_env):  # noqa: F811
    from botocore.exceptions import ClientError

    launcher = wiring.launcher()
    real, asked = launcher.ec2, []

    class Flaky:
        def describe_spot_price_history(self, **kw):
            asked.append(kw["InstanceTypes"])
            if len(asked) == 1:
                raise ClientError({"Error": {"Code": "RequestLimitExceeded", "Message": "slow down"}},
                                  "DescribeSpotPriceHistory")
            return real.describe_spot_price_history(**kw)

    launcher.ec2 = Flaky()
    assert launcher._price("g5.xlarge", None) == launcher.cfg.price_table.get("g5.xlarge")  # the table's
    price = launcher._price("g5.xlarge", None)
    assert isinstance(price, float)
    assert launcher._price("g5.xlarge", None) == price
    assert len(asked) == 2
