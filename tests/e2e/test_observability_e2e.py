"""Logs and metrics of a real local build (issue 24): the API's and the worker's JSON log
lines carry the build id, their EMF lines hold to the EMF specification, and no secret —
the build's token, the Slack webhook URL, the API key — is in any log."""

from __future__ import annotations

import base64
import gzip
import json
import re

import pytest

from voltabuild_local.emf import events, problems

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def built(stack):
    """A succeeded canary build and every line the stack's processes logged by then: the
    session's earlier tests made one already (no second build then), else one is made."""
    done = stack.get("/builds?status=SUCCEEDED&framework=canary&limit=1").json()["builds"]
    if done:
        build = stack.get(f"/builds/{done[0]['id']}").json()
    else:
        resp = stack.post({"framework": "canary", "tags": ["observed"]})
        assert resp.status_code == 202, resp.text
        build = stack.wait_final(resp.json()["id"])
    assert build["status"] == "SUCCEEDED", build.get("reason")
    assert stack.slack_messages(build["id"])  # the notifier ran: its lines are in the logs
    logs = {p.name: p.read_text(errors="replace") for p in sorted(stack.stack.log_dir.glob("*.log"))}
    return build, logs


def json_lines(logs: dict[str, str]) -> list[dict]:
    out = []
    for text in logs.values():
        for line in text.splitlines():
            if line.startswith("{") and '"level"' in line:
                out.append(json.loads(line))  # a log line that starts as JSON must be JSON
    return out


def test_the_builds_log_lines_are_json_and_each_one_about_it_carries_its_id(built):
    build, logs = built
    lines = json_lines(logs)
    about = [x for x in lines if build["id"] in x["message"]]
    assert about, "no log line mentions the build"
    assert all(x.get("build_id") == build["id"] for x in about), [x for x in about if x.get("build_id") != build["id"]]
    tagged = [x for x in lines if x.get("build_id") == build["id"]]
    # followed across functions: the launcher that started it and the notifier that reported it
    assert {"launcher", "notify"} <= {x["function"] for x in tagged}
    assert all(x["request_id"] and x["timestamp"] and x["level"] for x in tagged)


def test_the_builds_metrics_are_valid_emf_from_submission_to_slack(built):
    build, logs = built
    emf = [e for text in logs.values() for e in events(text.splitlines())]
    assert emf and [p for e in emf for p in problems(e)] == []
    ours = [e for e in emf if e.get("build_id") == build["id"]]
    assert any("BuildsSubmitted" in e and e["Framework"] == "canary" for e in ours)
    assert [e["Outcome"] for e in ours if "BuildsFinished" in e] == ["SUCCEEDED"]
    assert {e["Segment"] for e in ours if "BuildSegmentSeconds" in e} >= {"queued", "building", "pushing", "total"}
    assert [e["Outcome"] for e in ours if "SlackDeliveries" in e] == ["sent"]
    assert any("ReaperRuns" in e for e in emf)


def test_no_secret_is_in_any_log(stack, built):
    build, logs = built
    session = stack.stack_session()
    raw = session.client("ec2").describe_instance_attribute(
        InstanceId=build["instance"]["id"], Attribute="userData")["UserData"]["Value"]
    token = re.search(r"^readonly TOKEN=(\S+)$", gzip.decompress(base64.b64decode(raw)).decode(), re.M).group(1)
    webhook = session.client("ssm").get_parameter(Name="/voltabuild/dev/slack/default",
                                                  WithDecryption=True)["Parameter"]["Value"]
    secrets = {"the build token": token, "the Slack webhook URL": webhook,
               "the API key": stack.env["VOLTABUILD_API_KEY"]}
    assert len(token) >= 20 and webhook.startswith("http")
    build_log = stack.get(f"/builds/{build['id']}/logs").text  # the instance's own log, as the API serves it
    for name, text in {**logs, "GET /builds/{id}/logs": build_log}.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} is in {name}"
