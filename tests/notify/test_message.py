"""The Slack message itself: what a reader of the channel sees for each outcome."""

from __future__ import annotations

import json

import pytest

from chalicelib.builds.schemas import Build
from chalicelib.builds.states import Status
from chalicelib.clock import parse
from chalicelib.costs import billing
from chalicelib.notifications.slack_message import build_message, format_duration

API = "https://api.example.test/api"
REPO = "123456789012.dkr.ecr.us-east-1.amazonaws.com/voltabuild/pytorch"
DIGEST = "sha256:" + "0f" * 32


def a_build(status: Status, **over) -> Build:
    data = {
        "id": "b-0123456789abcdef0123",
        "status": status,
        "framework": "pytorch",
        "version": "2.5.1",
        "cuda": "12.4",
        "python": "3.11",
        "build_args": {},
        "instance_types": ["g5.xlarge"],
        "timeout_minutes": 180,
        "notify": {"slack": True},
        "image": {"repository": REPO, "tags": ["2.5.1-cu12.4-py3.11", "latest", "nightly"]},
        "instance": {"id": "i-0abc", "type": "g5.xlarge", "az": "us-east-1b", "lifecycle": "spot",
                     "price": 0.36, "launched_at": "2026-11-28T10:02:00.000Z"},
        "created_at": "2026-11-28T10:00:00.000Z",
        "updated_at": "2026-11-28T11:32:30.000Z",
        "finished_at": "2026-11-28T11:32:30.000Z",
    }
    if status == Status.SUCCEEDED:
        data["image"]["digest"] = DIGEST
    data.update(over)
    build = Build.model_validate(data)
    if "cost" not in over:  # as the notifier prices it (BuildCosts.cost): up to now, not yet terminated
        build = build.model_copy(update={"cost": _cost(build)})
    return build


def _cost(build: Build) -> billing.Cost | None:
    inst = build.instance
    if inst is None:
        return billing.build_cost([], parse(build.updated_at))
    if inst.price is None:
        return None  # BuildCosts: no price known
    usage = billing.InstanceUsage(launched_at=parse(inst.launched_at), price_per_hour=str(inst.price),
                                  source="spot-history", lifecycle=inst.lifecycle, root_volume_gb=0)
    return billing.build_cost([usage], parse(build.finished_at or build.updated_at))


def everything(msg: dict) -> str:
    """All the text a reader could see: the fallback and every block."""
    return msg["text"] + "\n" + json.dumps(msg["blocks"], ensure_ascii=False)


def test_success_message_has_every_field_a_reader_needs():
    # GIVEN a pytorch build that succeeded after 1h32m30s, 1h30m30s of it on a $0.36/h spot g5.xlarge
    msg = build_message(a_build(Status.SUCCEEDED), api_url=API)
    text = everything(msg)

    # THEN the outcome is unmistakable, in the header and the fallback
    assert msg["blocks"][0]["type"] == "header"
    assert msg["blocks"][0]["text"]["text"].startswith(":white_check_mark:")
    assert msg["text"].startswith(":white_check_mark: pytorch 2.5.1 build succeeded")
    # the toolchain
    for needle in ("pytorch 2.5.1", "CUDA 12.4", "Python 3.11"):
        assert needle in text
    # every image reference: one per tag and the digest
    for ref in (f"{REPO}:2.5.1-cu12.4-py3.11", f"{REPO}:latest", f"{REPO}:nightly", f"{REPO}@{DIGEST}"):
        assert ref in msg["text"] and ref in json.dumps(msg["blocks"])
    # duration, instance and an estimated cost: 0.36 $/h x 5430 s = $0.543
    assert "1h 32m 30s" in text and "on the instance 1h 30m 30s" in text
    assert "g5.xlarge (spot, us-east-1b)" in text
    assert "~$0.54" in text
    # where to see more
    assert "voltabuild status b-0123456789abcdef0123" in text
    assert f"{API}/builds/b-0123456789abcdef0123" in text
    assert "Reason" not in text


def test_failure_message_shows_the_reason_and_the_last_log_lines():
    reason = ("smoke test failed: torch.cuda.is_available() returned False\n"
              "+ python -c 'import torch; assert torch.cuda.is_available()'\n"
              "AssertionError\n"
              "exit status 1")
    msg = build_message(a_build(Status.FAILED, reason=reason), api_url=API)
    text = everything(msg)

    assert msg["text"].startswith(":x: pytorch 2.5.1 build failed")
    assert "smoke test failed: torch.cuda.is_available() returned False" in msg["text"]
    log_block = [b for b in msg["blocks"] if "Last log lines" in b.get("text", {}).get("text", "")]
    assert len(log_block) == 1
    assert "AssertionError\nexit status 1```" in log_block[0]["text"]["text"]
    assert "exit status 1" in msg["text"]
    assert "not pushed" in text  # no image to show for a failed build
    assert f"{REPO}:latest" not in text


@pytest.mark.parametrize("status, emoji, word", [
    (Status.TIMED_OUT, ":alarm_clock:", "timed out"),
    (Status.CANCELLED, ":no_entry_sign:", "was cancelled"),
])
def test_other_endings_have_their_own_cue(status, emoji, word):
    msg = build_message(a_build(status, reason="deadline of 180 minutes passed"), api_url=API)
    assert msg["blocks"][0]["text"]["text"] == f"{emoji} pytorch 2.5.1 build {word}"
    assert "deadline of 180 minutes passed" in everything(msg)


def test_a_build_cancelled_before_launch_cost_nothing():
    msg = build_message(a_build(Status.CANCELLED, instance=None, finished_at="2026-11-28T10:00:05.000Z"),
                        api_url=API)
    text = everything(msg)
    assert "$0.00 (no instance was launched)" in text
    assert "none launched" in text
    assert "5s" in text


def test_the_message_shows_the_cost_the_api_computed():
    # GIVEN a build whose cost (BuildCosts.cost, as GET /builds/{id} shows it) is 10 s billed as 60
    short = a_build(Status.FAILED, finished_at="2026-11-28T10:02:10.000Z")
    assert short.cost.billed_seconds == 60 and short.cost.estimated
    # THEN the message says that figure, that it is an estimate, and how it was reached
    text = everything(build_message(short))
    assert f"{short.cost.display} (spot: $0.36/h × 1m 00s billed, an estimate until the instance is terminated)" \
        in text
    assert short.cost.display == "~$0.01"  # 0.36 x 60 / 3600 = $0.006, to the cent
    # once terminated the figure is final
    final = a_build(Status.SUCCEEDED, cost=short.cost.model_copy(update={"estimated": False}))
    assert "$0.01 (spot: $0.36/h × 1m 00s billed)" in everything(build_message(final))

    unpriced = a_build(Status.SUCCEEDED, instance={"id": "i-1", "type": "g5.xlarge", "lifecycle": "on-demand"})
    assert unpriced.cost is None
    assert "unknown (no price recorded for this instance)" in everything(build_message(unpriced))


def test_huge_log_tails_are_cut_from_the_top_to_fit_slack_limits():
    lines = [f"line {i:05d} " + "x" * 80 for i in range(2000)]
    msg = build_message(a_build(Status.FAILED, reason="build failed\n" + "\n".join(lines)), api_url=API)
    for block in msg["blocks"]:
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= 150
        if "text" in block and block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000
    blob = json.dumps(msg["blocks"])
    assert "line 01999" in blob  # the end of the log is what matters
    assert "line 00000" not in blob
    assert "earlier lines cut" in blob


def test_user_text_cannot_inject_slack_markup():
    msg = build_message(a_build(Status.FAILED, reason="bad <!channel> & <https://evil.test|click>"), api_url=API)
    blob = json.dumps(msg["blocks"])
    assert "<!channel>" not in blob
    assert "&lt;!channel&gt; &amp; &lt;https://evil.test|click&gt;" in blob



@pytest.mark.parametrize("ping", ["<!channel>", "<!here>", "<!everyone>", "<@U0123ABC>", "<#C0123|general>",
                                  "<https://evil.test|click here>"])
def test_the_plain_text_fallback_is_escaped_like_the_blocks(ping):
    # GIVEN a failed build whose reason and log tail (text the build controls) hold Slack markup
    build = a_build(Status.FAILED, reason=f"step failed {ping}\nlog line {ping}\nexit status 1")
    # WHEN the message is built
    msg = build_message(build, api_url=API)
    # THEN neither the blocks nor the fallback `text` (what notifications show) carry it live
    assert ping not in msg["text"] and ping not in json.dumps(msg["blocks"])
    escaped = ping.replace("<", "&lt;").replace(">", "&gt;")
    assert f"reason: step failed {escaped}" in msg["text"]
    assert f"log line {escaped}" in msg["text"]
    # the service's own link is still a link
    assert f"{API}/builds/{build.id}" in msg["text"]

def test_without_an_api_url_the_cli_command_is_still_there():
    msg = build_message(a_build(Status.SUCCEEDED), api_url="")
    assert "voltabuild status b-0123456789abcdef0123" in msg["text"]
    assert "/builds/" not in msg["text"]


def test_started_message():
    msg = build_message(a_build(Status.RUNNING, finished_at=None), api_url=API, started=True)
    assert msg["text"].startswith(":rocket: pytorch 2.5.1 build started")
    assert "g5.xlarge (spot, us-east-1b)" in msg["text"]
    assert "*Cost*" not in json.dumps(msg["blocks"])


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.6, "1m 00s"), (61, "1m 01s"), (5400, "1h 30m 00s"),
                                           (None, "unknown")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT, Status.CANCELLED])
def test_blocks_are_valid_block_kit(status):
    """slack_sdk's own Block Kit models accept every block (types, lengths, field counts)."""
    from slack_sdk.models.blocks import Block

    reason = "failed\n" + "\n".join("log line " + "z" * 120 for _ in range(400))
    msg = build_message(a_build(status, reason=reason), api_url=API)
    for raw in msg["blocks"]:
        block = Block.parse(raw)
        block.validate_json()
        assert block.to_dict() == raw
