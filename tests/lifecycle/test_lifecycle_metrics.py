"""The lifecycle's metrics (chalicelib/metrics.py), emitted once per thing that happened —
EventBridge's duplicates and lost races add nothing — and valid EMF."""

from __future__ import annotations

import json

from lifecycle_helpers import load_event

from chalicelib.builds.states import Status
from voltabuild_local.emf import events, problems


def state_event(iid: str, state: str) -> dict:
    return load_event(f"ec2-state-{state}", **{"instance-id": iid})


def spot_event(iid: str) -> dict:
    return load_event("ec2-spot-interruption", **{"instance-id": iid})


def emitted(capsys, name: str) -> list[dict]:
    got = list(events(capsys.readouterr().out.splitlines()))
    assert [p for e in got for p in problems(e)] == []
    return [e for e in got if name in e] if name else got


def running_build(world, fire) -> tuple[str, str]:
    bid = world.submit()
    iid = world.launch(bid)
    fire("on_instance_state", state_event(iid, "running"))
    return bid, iid


def test_a_finished_build_counts_its_outcome_and_later_its_terminate_lag_and_cost_once(world, fire, api, capsys):
    bid, iid = running_build(world, fire)
    capsys.readouterr()
    world.wiring.transitions().move(bid, Status.SUCCEEDED, expect=[Status.RUNNING], message="pushed")
    got = emitted(capsys, "")
    assert [(e["Outcome"], e["build_id"]) for e in got if "BuildsFinished" in e] == [("SUCCEEDED", bid)]
    assert {e["Segment"] for e in got if "BuildSegmentSeconds" in e} == {"queued", "launching", "booting", "total"}
    assert not [e for e in got if "BuildCostUSD" in e]  # an estimate until the instance is gone
    # WHEN EC2 says the instance terminated, twice
    event = state_event(iid, "terminated")
    event["time"] = "2999-01-01T00:00:20Z"
    assert fire("on_instance_state", event) == "final"
    assert fire("on_instance_state", event) == "final"
    # THEN one terminate lag and one cost, for this build: the cost GET /builds/{id} shows
    got = emitted(capsys, "")
    lags = [e for e in got if "BuildSegmentSeconds" in e]
    assert [(e["Segment"], e["build_id"]) for e in lags] == [("terminate_lag", bid)]
    assert lags[0]["BuildSegmentSeconds"] > 0
    [cost] = [(e["BuildCostUSD"], e["Framework"], e["build_id"]) for e in got if "BuildCostUSD" in e]
    shown = json.loads(api.http.get(f"/builds/{bid}").body)["cost"]
    assert shown["estimated"] is False
    assert cost == (float(shown["usd"]), "canary", bid)


def test_spot_interruptions_and_relaunches_are_counted_only_for_the_winning_event(world, fire, capsys):
    bid, iid = running_build(world, fire)
    capsys.readouterr()
    assert fire("on_spot_interruption", spot_event(iid)) == "relaunched"
    assert fire("on_spot_interruption", spot_event(iid)) == "not ours"  # a duplicate
    [event] = emitted(capsys, "Relaunches")
    assert (event["Relaunches"], event["SpotInterruptions"], event["build_id"]) == (1, 1, bid)
    assert event["function"] == "spot_interruption"


def test_the_last_reclaim_fails_the_build_and_still_counts_the_interruption(world, fire, capsys):
    bid = world.submit()
    for _ in range(3):  # MAX_ATTEMPTS defaults to 3
        iid = world.launch(bid)
        fire("on_instance_state", state_event(iid, "running"))
        fire("on_spot_interruption", spot_event(iid))
    assert world.get(bid)["status"] == "FAILED"
    got = emitted(capsys, "")
    assert sum(e.get("SpotInterruptions", 0) for e in got) == 3
    assert sum(e.get("Relaunches", 0) for e in got) == 2
    assert [e["Outcome"] for e in got if "BuildsFinished" in e] == ["FAILED"]


def test_an_instance_lost_mid_build_is_a_host_failure(world, fire, capsys):
    bid, iid = running_build(world, fire)
    world.ec2.terminate_instances(InstanceIds=[iid])
    capsys.readouterr()
    assert fire("on_instance_state", state_event(iid, "shutting-down")) == "failed"
    assert fire("on_instance_state", state_event(iid, "terminated")) == "final"
    [event] = emitted(capsys, "HostFailures")
    assert (event["Cause"], event["build_id"]) == ("instance-lost", bid)
