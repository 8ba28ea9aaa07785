"""The Slack message names the segment the build spent longest in (chalicelib/builds/segments.py)."""

from __future__ import annotations

from chalicelib.builds.states import Status
from chalicelib.notifications.slack_message import build_message
from tests.notify.test_message import a_build


def ev(at: str, status: str, phase: str | None = None) -> dict:
    return {"at": f"2026-11-28T{at}.000Z", "status": status, "phase": phase}


def test_the_message_names_the_longest_segment():
    # GIVEN a build that spent 1h15m of its 1h32m30s building
    events = [ev("10:00:00", "QUEUED"), ev("10:00:05", "LAUNCHING"), ev("10:02:00", "RUNNING"),
              ev("10:03:00", "RUNNING", "PREPARING"), ev("10:10:00", "RUNNING", "BUILDING"),
              ev("11:25:00", "RUNNING", "TESTING"), ev("11:28:00", "RUNNING", "PUSHING"),
              ev("11:32:30", "SUCCEEDED")]
    msg = build_message(a_build(Status.SUCCEEDED, events=events))
    # THEN the duration says so, in the blocks and in the fallback text
    assert "1h 32m 30s (on the instance 1h 30m 30s); longest: building 1h 15m 00s" in msg["text"]
    fields = [f["text"] for f in msg["blocks"][1]["fields"]]
    assert any(f.startswith("*Duration*") and "longest: building 1h 15m 00s" in f for f in fields)


def test_no_timeline_no_longest():
    assert "longest" not in build_message(a_build(Status.CANCELLED))["text"]
