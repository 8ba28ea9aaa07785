"""Split builds (issue 23) through the EC2 handlers, the reaper and cancel: no instance of
either stage outlives its build, a lost test-stage launch is launched again, and the build's
cost is the sum of both instances.

The launcher runs for real against moto; events are delivered through chalice.test.Client.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
from lifecycle_helpers import load_event

from chalicelib import wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.launching.hostscript import script_of
from infra.local import prepare_ec2

DIGEST = "sha256:" + "b" * 64


@pytest.fixture
def env(aws, monkeypatch):
    prepared = prepare_ec2(aws.session, "voltabuild-test-builder")
    for k, v in {**prepared, "PUBLIC_API_URL": "https://api.example.test/api"}.items():
        monkeypatch.setenv(k, v)
    wiring.reset()
    return aws.client("ec2")


def tick(api) -> dict:
    event = api.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, region="us-east-1",
        resources=["arn:aws:events:us-east-1:123456789012:rule/voltabuild-dev-reaper"])
    return api.lambda_.invoke("reaper", event).payload


def state(ec2, iid: str) -> str:
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]


def report(build_id: str, iid: str, ec2, body: dict) -> dict:
    attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
    tok = re.search(r"^readonly TOKEN=(\S+)$", script_of(base64.b64decode(attr["UserData"]["Value"])), re.M).group(1)
    return wiring.reports().receive(build_id, f"Bearer {tok}", json.dumps(body).encode())


def launch(aws) -> str:
    (msg,) = aws.messages("LaunchQueue")
    outcome = wiring.launcher().handle(json.dumps(msg))
    assert outcome.action == "launched", outcome
    return outcome.instance_id


def built(aws, env) -> tuple[str, str]:
    """A split canary through its build stage; (build id, the build stage's instance)."""
    build, _ = wiring.builds().submit(BuildRequest(framework="canary", split=True, instance_types=["g5.xlarge"]))
    iid = launch(aws)
    report(build.id, iid, env, {"type": "result", "status": "BUILT", "digest": DIGEST})
    return build.id, iid


def test_the_build_stage_instance_ending_after_built_is_recorded_not_a_lost_instance(aws, env, api, fire, clock):
    bid, build_iid = built(aws, env)
    # WHEN the build instance halts itself after its report (shutdown=terminate)
    env.terminate_instances(InstanceIds=[build_iid])
    assert fire("on_instance_state", load_event("ec2-state-shutting-down", **{"instance-id": build_iid})) == "not ours"
    ended = load_event("ec2-state-terminated", **{"instance-id": build_iid})
    ended["time"] = clock().strftime("%Y-%m-%dT%H:%M:%SZ")
    assert fire("on_instance_state", ended) == "stage terminated"
    # THEN the build is still RUNNING in its test stage, with the build stage's end recorded once
    rec = wiring.store().get_record(bid)
    assert rec.status == "RUNNING" and rec.stage == "test"
    assert rec.stages["build"].terminated_at is not None
    assert fire("on_instance_state", ended) == "not ours"


def test_a_build_instance_that_does_not_halt_is_an_orphan_the_test_instance_is_not(aws, env, api, clock):
    bid, build_iid = built(aws, env)
    test_iid = launch(aws)
    assert tick(api) == {"orphans_marked": 1}
    clock.advance(minutes=5)
    wiring.store().update_fields(bid, {"heartbeat_at": clock().strftime("%Y-%m-%dT%H:%M:%SZ")})
    assert tick(api) == {"orphans_terminated": 1}
    assert state(env, build_iid) == "terminated" and state(env, test_iid) == "running"


def test_a_lost_test_stage_launch_is_launched_again_by_the_reaper(aws, env, api, clock):
    bid, build_iid = built(aws, env)
    aws.messages("LaunchQueue")  # the test stage's launch message is lost
    env.terminate_instances(InstanceIds=[build_iid])
    clock.advance(minutes=5)
    assert tick(api) == {}
    clock.advance(minutes=6)
    assert tick(api) == {"relaunched": 1}
    rec = wiring.store().get_record(bid)
    assert rec.status == "QUEUED" and rec.stage == "test" and rec.stages["test"].attempts == 2
    test_iid = launch(aws)
    assert "readonly STAGE_ROLE=test" in script_of(base64.b64decode(env.describe_instance_attribute(
        InstanceId=test_iid, Attribute="userData")["UserData"]["Value"]))


def test_an_unrecorded_test_instance_of_the_current_attempt_is_not_an_orphan(aws, env, api, world):
    bid, build_iid = built(aws, env)
    env.terminate_instances(InstanceIds=[build_iid])
    rec = wiring.store().get_record(bid)
    # the launcher died after RunInstances: an instance tagged with the current attempt exists
    iid = world.run_instance(bid, rec.attempt, extra_tags={"voltabuild:build-stage": "test"})
    # THEN the reaper adopts it as the test stage's instance, never marks it an orphan
    assert tick(api) == {"adopted": 1}
    rec = wiring.store().get_record(bid)
    assert rec.instance_id == iid and rec.stages["test"].instance.id == iid
    assert state(env, iid) == "running"


def test_cancel_during_the_test_stage_stops_its_instance(aws, env, api, fire):
    bid, build_iid = built(aws, env)
    env.terminate_instances(InstanceIds=[build_iid])
    test_iid = launch(aws)
    resp = api.http.delete(f"/builds/{bid}", headers={"x-api-key": "k"})
    assert resp.status_code == 202
    assert state(env, test_iid) in ("shutting-down", "terminated")
    assert fire("on_instance_state", load_event("ec2-state-terminated", **{"instance-id": test_iid})) == "cancelled"
    assert wiring.store().get_record(bid).status == "CANCELLED"


def test_a_cancel_before_the_test_stage_launches_launches_nothing(aws, env, api):
    bid, build_iid = built(aws, env)
    assert api.http.delete(f"/builds/{bid}", headers={"x-api-key": "k"}).status_code == 202
    (msg,) = aws.messages("LaunchQueue")
    assert wiring.launcher().handle(json.dumps(msg)).action == "cancelled"
    assert wiring.store().get_record(bid).status == "CANCELLED"
    live = [i for r in env.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] == "running" and i["InstanceId"] != build_iid]
    assert live == []


def test_the_cost_of_a_split_build_is_both_instances(aws, env, fire, clock):
    bid, build_iid = built(aws, env)
    env.terminate_instances(InstanceIds=[build_iid])
    ended = load_event("ec2-state-terminated", **{"instance-id": build_iid})
    ended["time"] = clock().strftime("%Y-%m-%dT%H:%M:%SZ")
    fire("on_instance_state", ended)
    test_iid = launch(aws)
    report(bid, test_iid, env, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST})
    clock.advance(minutes=2)
    env.terminate_instances(InstanceIds=[test_iid])
    ended = load_event("ec2-state-terminated", **{"instance-id": test_iid})
    ended["time"] = clock().strftime("%Y-%m-%dT%H:%M:%SZ")
    fire("on_instance_state", ended)
    rec = wiring.store().get_record(bid)
    assert rec.stages["test"].terminated_at == rec.instance_terminated_at
    cost = wiring.costs().cost(rec.public(), clock())
    assert cost is not None and not cost.estimated
    assert len(cost.instances) == 2 and cost.usd == sum(i.usd for i in cost.instances)
    assert cost.price_per_hour == cost.instances[-1].price_per_hour, "the GPU instance is the latest"


def test_a_split_build_costs_its_build_instance_between_stages_and_each_instance_once(aws, env, fire, clock):
    # GIVEN a split build whose build stage reported BUILT (its instance not terminated yet)
    bid, build_iid = built(aws, env)
    clock.advance(minutes=3)
    between = wiring.costs().cost(wiring.store().get_record(bid).public(), clock())
    # THEN before the test stage has an instance, the build stage's instance is still costed
    assert between is not None and between.estimated and between.usd > 0
    assert len(between.instances) == 1
    # WHEN the test stage's first instance is reclaimed and a second one finishes the build
    first_test = launch(aws)
    assert fire("on_spot_interruption", load_event("ec2-spot-interruption", **{"instance-id": first_test})) == "relaunched"
    second_test = launch(aws)
    report(bid, second_test, env, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST})
    # THEN the cost holds all three instances, each once
    cost = wiring.costs().cost(wiring.store().get_record(bid).public(), clock())
    assert len({build_iid, first_test, second_test}) == 3
    assert len(cost.instances) == 3 and cost.usd == sum(i.usd for i in cost.instances)
