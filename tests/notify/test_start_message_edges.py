"""The "started" message at the edges of the first move to RUNNING: a heartbeat (a move
that records no timeline entry) right after it must not look like a second start."""

from __future__ import annotations

from chalicelib import wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.states import Phase, Status


def test_a_heartbeat_right_after_the_first_move_to_running_asks_for_no_second_start(aws, monkeypatch):
    # GIVEN NOTIFY_ON_START and a launching build
    monkeypatch.setenv("NOTIFY_ON_START", "true")
    wiring.reset()
    build, _ = wiring.builds().submit(BuildRequest(framework="canary"))
    t = wiring.transitions()
    t.move(build.id, Status.LAUNCHING, expect=[Status.QUEUED])
    aws.messages("NotifyQueue")
    # WHEN it starts and its very next write is a heartbeat (no timeline entry)
    t.move(build.id, Status.RUNNING, expect=[Status.LAUNCHING], phase=Phase.PREPARING)
    t.move(build.id, Status.RUNNING, expect=[Status.RUNNING], record_event=False, fields={"heartbeat_at": "x"})
    t.move(build.id, Status.RUNNING, expect=[Status.RUNNING], record_event=False, fields={"heartbeat_at": "y"})
    # THEN exactly one start message was asked for
    assert [m.get("event") for m in aws.messages("NotifyQueue")] == ["started"]
