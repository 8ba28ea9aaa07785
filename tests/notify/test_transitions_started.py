"""The optional "build started" message is opt-in: a Transitions made without
notify_on_start queues nothing when a build starts (NOTIFY_ON_START unset must not post a
Slack message for every build), and one made with it queues exactly one."""

from __future__ import annotations

import pytest

from chalicelib import wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.states import Phase, Status
from chalicelib.builds.transitions import Transitions

from .conftest import RecordingQueue


@pytest.mark.parametrize("kwargs,started", [({}, 0), ({"notify_on_start": True}, 1)])
def test_a_started_message_is_queued_only_when_asked(aws, kwargs, started):
    build, _ = wiring.builds().submit(BuildRequest(framework="canary"))
    queue = RecordingQueue()
    t = Transitions(wiring.store(), queue, **kwargs)
    t.move(build.id, Status.LAUNCHING, fields={"instance_id": "i-0123456789abcdef0"})
    t.move(build.id, Status.RUNNING, phase=Phase.PREPARING)
    t.move(build.id, Status.RUNNING, phase=Phase.BUILDING)  # a phase change is not a start
    assert [body["event"] for body, _ in queue.sent].count("started") == started
