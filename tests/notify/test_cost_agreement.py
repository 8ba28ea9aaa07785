"""One cost per build: the Slack message, the ``BuildCostUSD`` metric line and
``GET /builds/{id}`` say the same figure, because all three call ``BuildCosts.cost``
(chalicelib/costs/build_costs.py). Before, the message billed launch to finish with a 60 s
minimum and the metric without one, so a short canary build read $0.02 in Slack and $0.001
on the dashboard."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from chalicelib import clock, wiring
from chalicelib.builds.states import Status
from chalicelib.costs.billing import usd_text
from voltabuild_local.emf import events, problems

from .test_consumer import DEFAULT_HOOK, final_event, invoke

EVENTS = Path(__file__).resolve().parent.parent / "events"
INSTANCE = "i-0123456789abcdef0"  # make_build's


def terminated(at) -> dict:
    event = json.loads((EVENTS / "ec2-state-terminated.json").read_text())
    event["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{INSTANCE}"]
    event["detail"]["instance-id"] = INSTANCE
    event["time"] = clock.iso(at).replace(".000Z", "Z")
    return event


def api_cost(api, build_id: str) -> dict:
    resp = api.http.get(f"/builds/{build_id}")
    assert resp.status_code == 200
    return json.loads(resp.body)["cost"]


def test_the_slack_message_the_metric_line_and_the_api_show_the_same_cost(api, aws, slack, sink, make_build,
                                                                         capsys):
    # GIVEN a build that failed, and its instance terminated 20 s after launch (billed as 60 s)
    build_id = make_build(Status.FAILED, reason="boom")
    ev = final_event(aws)
    launched = clock.parse(wiring.store().get_record(build_id).instance.launched_at)
    capsys.readouterr()
    outcome = api.lambda_.invoke("on_instance_state", terminated(launched.replace(microsecond=0)
                                                                 + timedelta(seconds=21))).payload["outcome"]
    assert outcome == "final"
    lines = list(events(capsys.readouterr().out.splitlines()))
    assert [p for e in lines for p in problems(e)] == []
    # WHEN the final message goes out
    invoke(api, ev.body())

    # THEN the API's cost is final, at the 60 s minimum, and the metric counted exactly it
    cost = api_cost(api, build_id)
    assert cost["estimated"] is False and cost["billed_seconds"] == 60
    usd = Decimal(cost["usd"])
    assert usd > Decimal("0.0066")  # 0.4 $/h x 60 s, plus the root volume
    assert [(e["BuildCostUSD"], e["build_id"]) for e in lines if "BuildCostUSD" in e] == [(float(usd), build_id)]
    # and the message says that figure, billed the same way, not as an estimate
    [msg] = sink.posted(DEFAULT_HOOK)
    shown = f"{usd_text(usd)} (spot: $0.4/h × 1m 00s billed)"
    assert shown in msg["text"]
    assert shown in json.dumps(msg["blocks"], ensure_ascii=False)
    assert "estimate" not in msg["text"]


def test_a_message_sent_before_the_instance_is_gone_says_its_cost_is_an_estimate(api, aws, slack, sink,
                                                                                 make_build):
    # GIVEN a build that succeeded; EC2 has not said its instance terminated yet
    build_id = make_build(Status.SUCCEEDED)
    invoke(api, final_event(aws).body())
    [msg] = sink.posted(DEFAULT_HOOK)
    # THEN the message's cost is marked an estimate, as the API marks it
    assert api_cost(api, build_id)["estimated"] is True
    assert "~$" in msg["text"] and "an estimate until the instance is terminated" in msg["text"]
