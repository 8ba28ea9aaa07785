"""NOTIFY_ON_START: the move out of LAUNCHING — whichever comes first, EC2's 'running'
event or the instance's first report — asks for one "started" message; later phases,
heartbeats and a disabled setting ask for none."""

from __future__ import annotations

import pytest

from chalicelib import wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.states import Phase, Status


@pytest.fixture
def launching(aws, monkeypatch):
    def make(enabled: bool) -> str:
        monkeypatch.setenv("NOTIFY_ON_START", "true" if enabled else "false")
        wiring.reset()
        build, _ = wiring.builds().submit(BuildRequest(framework="canary"))
        wiring.transitions().move(build.id, Status.LAUNCHING, expect=[Status.QUEUED])
        aws.messages("NotifyQueue")
        return build.id
    return make


def test_the_first_move_to_running_asks_for_one_start_message(aws, launching):
    build_id = launching(True)
    t = wiring.transitions()
    t.move(build_id, Status.RUNNING, expect=[Status.LAUNCHING, Status.RUNNING], phase=Phase.PREPARING)
    t.move(build_id, Status.RUNNING, expect=[Status.RUNNING], phase=Phase.BUILDING)
    t.move(build_id, Status.RUNNING, expect=[Status.RUNNING], record_event=False, fields={"heartbeat_at": "x"})
    assert aws.messages("NotifyQueue") == [
        {"build_id": build_id, "event": "started", "attempt": 1}]


def test_no_start_message_unless_enabled(aws, launching):
    build_id = launching(False)
    wiring.transitions().move(build_id, Status.RUNNING, expect=[Status.LAUNCHING])
    assert aws.messages("NotifyQueue") == []


def test_the_instances_first_report_is_such_a_move(api, aws, launching):
    import hashlib
    import json

    build_id = launching(True)
    token = "t" * 43
    wiring.store().update_fields(build_id, {"token_hash": hashlib.sha256(token.encode()).hexdigest()})
    resp = api.http.post(f"/builds/{build_id}/events", body=json.dumps({"type": "phase", "phase": "PREPARING"}),
                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    assert resp.status_code == 202, resp.body
    assert [m["event"] for m in aws.messages("NotifyQueue")] == ["started"]
