"""What builds cost (issue 22): the cost on GET /builds/{id}, booked once into the per-day
aggregates with the EC2 "terminated" write, GET /costs, and the MONTHLY_BUDGET_USD refusal."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

from lifecycle_helpers import load_event

from chalicelib import clock
from chalicelib.builds.states import Status


def state_event(iid: str, state: str) -> dict:
    return load_event(f"ec2-state-{state}", **{"instance-id": iid})


def get(api, path):
    resp = api.http.get(path)
    return resp.status_code, json.loads(resp.body)


def finish(world, fire, bid: str, iid: str, seconds: int, to: Status = Status.SUCCEEDED) -> dict:
    """Move a launched build to ``to`` and deliver its instance's termination ``seconds`` after launch."""
    fire("on_instance_state", state_event(iid, "running"))
    world.wiring.transitions().move(bid, to, expect=[Status.RUNNING], message="done")
    launched = clock.parse(world.store.get_record(bid).instance.launched_at)
    event = state_event(iid, "terminated")
    event["time"] = clock.iso(launched + timedelta(seconds=seconds)).replace(".000Z", "Z")
    assert fire("on_instance_state", event) == "final"
    return event


def test_a_build_costs_an_estimate_until_terminated_then_its_cost_is_booked_once(world, fire, api):
    bid = world.submit()
    status, build = get(api, f"/builds/{bid}")
    assert build["cost"]["usd"] == "0" and build["cost"]["estimated"] is False  # never launched: $0
    iid = world.launch(bid)  # g5.xlarge spot at 0.5 USD/h (not the table's 0.42: spot price history)
    build = get(api, f"/builds/{bid}")[1]
    assert build["cost"]["estimated"] is True and build["cost"]["source"] == "spot-history"
    assert build["cost"]["billed_seconds"] == 60  # the minimum
    event = finish(world, fire, bid, iid, seconds=3600)
    build = get(api, f"/builds/{bid}")[1]
    cost = build["cost"]
    assert cost["estimated"] is False and cost["billed_seconds"] == 3600
    # an hour at 0.5 plus 30 GB of gp3 for an hour of a month
    days = 31 if clock.parse(build["instance"]["launched_at"]).month in (1, 3, 5, 7, 8, 10, 12) else 30
    volume = (Decimal("0.08") * 30 * 3600 / (days * 86400)).quantize(Decimal("0.000001"))
    assert Decimal(cost["usd"]) == Decimal("0.5") + volume
    status, report = get(api, "/costs?by=framework")
    assert status == 200
    assert report["rows"] == [{"value": "canary", "usd": cost["usd"], "builds": 1, "billed_seconds": 3600}]
    # the event again (EventBridge delivers at least once): nothing more is booked
    assert fire("on_instance_state", event) == "final"
    assert get(api, "/costs?by=framework")[1]["rows"][0]["builds"] == 1


def test_the_aggregates_equal_the_sum_of_the_builds_costs(world, fire, api):
    outcomes = [(Status.SUCCEEDED, 61), (Status.FAILED, 59), (Status.SUCCEEDED, 1800), (Status.CANCELLED, 7201)]
    ids = []
    for to, seconds in outcomes:
        bid = world.submit()
        finish(world, fire, bid, world.launch(bid), seconds=seconds, to=to)
        ids.append(bid)
    costs = [get(api, f"/builds/{b}")[1]["cost"] for b in ids]
    assert all(not c["estimated"] for c in costs)
    total = sum(Decimal(c["usd"]) for c in costs)
    for by in ("framework", "day", "key"):
        report = get(api, f"/costs?by={by}")[1]
        assert Decimal(report["total_usd"]) == total, by
        assert sum(r["builds"] for r in report["rows"]) == 4
        assert sum(r["billed_seconds"] for r in report["rows"]) == 61 + 60 + 1800 + 7201
    assert get(api, "/costs?by=key")[1]["rows"][0]["value"] == "local"


def test_costs_query_errors_are_400s(api, aws):
    status, err = get(api, "/costs?by=colour")
    assert status == 400 and "framework" in err["Message"]
    assert get(api, "/costs?from=2026-13-01")[0] == 400
    assert get(api, "/costs?sort=usd")[0] == 400
    status, report = get(api, "/costs?from=2026-11-01&to=2026-11-30&by=day")
    assert status == 200 and report["rows"] == [] and report["total_usd"] == "0"


def test_a_submit_over_the_monthly_budget_is_a_429_naming_it(world, api, monkeypatch):
    monkeypatch.setenv("MONTHLY_BUDGET_USD", "1")
    world.wiring.reset()
    world.wiring.settings()  # cached before chalice applies the stage's environment
    # canary: 15 minutes on p3.2xlarge (0.92 USD/h in the table) x 3 attempts = ~0.69 USD worst case
    body = {"framework": "canary"}
    key = {"Content-Type": "application/json", "Idempotency-Key": "budget-1"}
    resp = api.http.post("/builds", headers=key, body=json.dumps(body))
    assert resp.status_code == 202
    first = json.loads(resp.body)["id"]
    # a retry of the same submit gets its build back: it is not counted twice
    resp = api.http.post("/builds", headers=key, body=json.dumps(body))
    assert resp.status_code == 200 and json.loads(resp.body)["id"] == first
    # the first is still active: its worst case counts, and a second would cross 1 USD
    resp = api.http.post("/builds", headers={"Content-Type": "application/json"}, body=json.dumps(body))
    err = json.loads(resp.body)
    assert resp.status_code == 429
    assert "MONTHLY_BUDGET_USD $1.00" in err["Message"] and "$0.30 of" in err["Message"] and "is left" in err["Message"]
    # a matrix is checked for every cell before anything is written
    matrix = {"framework": "pytorch", "timeout_minutes": 5, "max_price": 0.01,
              "matrix": {"version": ["2.5.1", "2.6.0"], "cuda": ["12.4", "11.8"]}}
    resp = api.http.post("/builds", headers={"Content-Type": "application/json"}, body=json.dumps(matrix))
    assert resp.status_code == 202, resp.body
    matrix["max_price"] = 1.0
    resp = api.http.post("/builds", headers={"Content-Type": "application/json"}, body=json.dumps(matrix))
    assert resp.status_code == 429 and "these 4 builds" in json.loads(resp.body)["Message"]
    assert len([i for i in world.aws.items() if i.get("kind") == "build"]) == 5


def test_an_earlier_attempts_instance_is_counted_in_the_cost(world, fire, api):
    # GIVEN a build whose first instance spot reclaimed, then built on a second one
    bid = world.submit()
    first = world.launch(bid)
    fire("on_instance_state", state_event(first, "running"))
    assert fire("on_spot_interruption", load_event("ec2-spot-interruption", **{"instance-id": first})) == "relaunched"
    record = world.store.get_record(bid)
    assert [p.id for p in record.past_instances] == [first] and record.past_instances[0].left_at
    second = world.launch(bid)
    finish(world, fire, bid, second, seconds=600)
    # THEN its cost is both instances': the first to when the build left it, the second to its termination
    cost = get(api, f"/builds/{bid}")[1]["cost"]
    assert cost["estimated"] is False and len(cost["instances"]) == 2
    assert cost["instances"][0]["billed_seconds"] == 60  # the minimum: it left at once
    assert cost["instances"][1]["billed_seconds"] == 600
    assert Decimal(cost["usd"]) == sum(Decimal(i["usd"]) for i in cost["instances"])
    assert cost["billed_seconds"] == 660
    # and that is what was booked
    assert get(api, "/costs?by=framework")[1]["rows"][0]["usd"] == cost["usd"]


def test_an_on_demand_instance_is_priced_from_the_on_demand_table(world, fire, api):
    bid = world.submit()
    iid = world.launch(bid)
    # the launcher fell back to on-demand: it records no price
    world.store.update_fields(bid, {"instance.lifecycle": "on-demand", "instance.price": None},
                              expect=[Status.LAUNCHING])
    finish(world, fire, bid, iid, seconds=3600)
    cost = get(api, f"/builds/{bid}")[1]["cost"]
    assert cost["source"] == "on-demand" and cost["lifecycle"] == "on-demand"
    assert Decimal(cost["price_per_hour"]) == Decimal("1.006")  # g5.xlarge, ON_DEMAND_PRICE_TABLE's default
    assert Decimal(cost["instances"][0]["compute_usd"]) == Decimal("1.006")


def lost(world, fire, bid: str, iid: str, seconds: int) -> dict:
    """EC2 says the running build's instance is terminated ``seconds`` after launch (no
    result came): the event that ends the build also records its termination and cost."""
    fire("on_instance_state", state_event(iid, "running"))
    world.ec2.terminate_instances(InstanceIds=[iid])
    launched = clock.parse(world.store.get_record(bid).instance.launched_at)
    event = state_event(iid, "terminated")
    event["time"] = clock.iso(launched + timedelta(seconds=seconds)).replace(".000Z", "Z")
    return event


def test_a_lost_build_is_failed_and_its_cost_booked_in_one_write_once(world, fire, api, aws_calls):
    bid = world.submit()
    event = lost(world, fire, bid, world.launch(bid), seconds=1200)
    aws_calls.take()
    assert fire("on_instance_state", event) == "failed"
    writes = [c for c in aws_calls.take() if c.startswith("dynamodb.") and c != "dynamodb.Query"]
    assert writes == ["dynamodb.TransactWriteItems"]  # the move, the termination and the booking together
    build = get(api, f"/builds/{bid}")[1]
    assert build["status"] == "FAILED" and build["reason"].startswith("instance lost")
    assert build["cost"]["estimated"] is False and build["cost"]["billed_seconds"] == 1200
    assert build["segments"]["terminate_lag"] >= 0
    rows = get(api, "/costs?by=framework")[1]["rows"]
    assert rows == [{"value": "canary", "usd": build["cost"]["usd"], "builds": 1, "billed_seconds": 1200}]
    # the event again, and a late "shutting-down": nothing more is booked, nothing changes
    assert fire("on_instance_state", event) == "final"
    assert fire("on_instance_state", state_event(build["instance"]["id"], "shutting-down")) in ("final", "ignored")
    assert get(api, "/costs?by=framework")[1]["rows"] == rows
    assert get(api, f"/builds/{bid}")[1]["cost"] == build["cost"]


def test_a_cancelled_build_whose_instance_ended_is_booked_once_with_its_cancel(world, fire, api):
    bid = world.submit()
    iid = world.launch(bid)
    event = lost(world, fire, bid, iid, seconds=300)
    world.store.update_fields(bid, {"cancel_requested": True}, expect=[Status.RUNNING])
    assert fire("on_instance_state", event) == "cancelled"
    build = get(api, f"/builds/{bid}")[1]
    assert build["status"] == "CANCELLED" and build["cost"]["billed_seconds"] == 300
    assert build["instance_terminated_at"]
    assert fire("on_instance_state", event) == "final"
    assert get(api, "/costs?by=framework")[1]["rows"][0]["builds"] == 1


def test_a_lost_build_with_no_price_known_records_its_termination_and_books_nothing(world, fire, api):
    bid = world.submit()
    iid = world.launch(bid)
    world.store.update_fields(bid, {"instance.lifecycle": "on-demand", "instance.price": None,
                                    "instance.type": "x9.unpriced"}, expect=[Status.LAUNCHING])
    assert fire("on_instance_state", lost(world, fire, bid, iid, seconds=600)) == "failed"
    build = get(api, f"/builds/{bid}")[1]
    assert build["status"] == "FAILED" and build["instance_terminated_at"]
    assert get(api, "/costs?by=framework")[1]["rows"] == []
