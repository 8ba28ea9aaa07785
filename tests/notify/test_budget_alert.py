"""The MONTHLY_BUDGET_USD alert: one Slack message when the month's booked costs reach 80% of
the budget — once per month and stage, however many bookings find it due."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from chalicelib import clock, wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.states import Phase, Status
from chalicelib.notifications.notify_events import NotifyEvent

from .test_consumer import DEFAULT_HOOK, invoke

EVENTS = Path(__file__).resolve().parent.parent / "events"


@pytest.fixture
def budget(monkeypatch, slack):
    monkeypatch.setenv("MONTHLY_BUDGET_USD", "1")
    wiring.reset()
    wiring.settings()  # cached before chalice applies the stage's environment


def submit() -> str:
    build, _ = wiring.builds().submit(BuildRequest(framework="canary", max_price=0.01, notify=False))
    return build.id


def cost(api, build_id: str, n: int, seconds: int) -> None:
    """End ``build_id`` on a 0.5 USD/h spot instance terminated ``seconds`` after launch (the
    EC2 event through the app's handler, which books the cost)."""
    iid = f"i-{n:017x}"
    t = wiring.transitions()
    created = wiring.store().get_record(build_id).created_at
    t.move(build_id, Status.LAUNCHING, fields={
        "instance": {"id": iid, "type": "g5.xlarge", "lifecycle": "spot", "price": 0.5, "launched_at": created},
        "instance_id": iid})
    t.move(build_id, Status.RUNNING, phase=Phase.PREPARING)
    t.move(build_id, Status.SUCCEEDED, message="done")
    event = json.loads((EVENTS / "ec2-state-terminated.json").read_text())
    event["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{iid}"]
    event["detail"]["instance-id"] = iid
    launched = clock.parse(created).replace(microsecond=0)
    event["time"] = clock.iso(launched + timedelta(seconds=seconds)).replace(".000Z", "Z")
    assert api.lambda_.invoke("on_instance_state", event).payload["outcome"] == "final"


def budget_events(aws) -> list[dict]:
    return [b for b in aws.messages("NotifyQueue") if b.get("event") == "budget"]


def test_the_alert_goes_out_once_when_80_percent_is_spent(api, aws, budget, sink):
    month = f"{clock.now():%Y-%m}"
    # GIVEN a month with a budget of $1 and four builds (each could cost under a cent: max_price)
    builds = [submit() for _ in range(4)]
    # a build that cost ~$0.50 asks for no alert
    cost(api, builds[0], 1, 3600)
    assert budget_events(aws) == []
    # WHEN a second build takes the month past $0.80, and a third lands while the alert is due
    cost(api, builds[1], 2, 3600)
    cost(api, builds[2], 3, 60)
    asked = budget_events(aws)
    assert asked == [{"event": "budget", "month": month, "attempt": 1}] * 2
    # THEN the notifier sends one alert, however many times it is asked
    invoke(api, *asked)
    [msg] = sink.posted(DEFAULT_HOOK)
    spent = wiring.cost_aggregates().spent_this_month(clock.now().date())
    assert spent > Decimal("1")
    assert msg["blocks"][0]["text"]["text"].startswith(f":money_with_wings: {(spent * 100).quantize(Decimal(1))}% "
                                                       "of this month's build budget is spent on stage dev")
    assert "MONTHLY_BUDGET_USD $1.00" in msg["text"] and f"in {month}" in msg["text"]
    # and a later booking the same month does not ask again
    cost(api, builds[3], 4, 60)
    assert budget_events(aws) == []
    assert len(sink.received) == 1


def test_an_alert_asked_below_the_line_sends_nothing(api, aws, budget, sink):
    # a message that says the month is due when its bookings are not (a forged or stale one)
    cost(api, submit(), 1, 600)
    invoke(api, NotifyEvent(event="budget", month=f"{clock.now():%Y-%m}").body())
    assert sink.received == []


def test_without_a_budget_nothing_is_asked(api, aws, slack, sink):
    cost(api, submit(), 1, 3 * 3600)
    assert budget_events(aws) == []
