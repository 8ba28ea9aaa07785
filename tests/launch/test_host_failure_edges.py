"""Host failures at their edges (issue 26, found by mutating chalicelib/launching/reports.py):
a report without a reason, a very long one, and a build whose instance type was never
recorded. GIVEN a build RUNNING on a host, WHEN it reports a host failure, THEN the record
and the timeline say which host failed and why, within their limits."""

from __future__ import annotations

import hashlib
import json

from test_launch_hostfailure import HOST_FAIL, TOKEN, _running_on, post, record

from chalicelib import wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.states import Phase, Status


def test_a_host_failure_without_a_reason_says_the_host_failed(api, aws):
    build_id = _running_on(aws, "p3.2xlarge")
    assert post(api, build_id, {"type": "result", "status": "FAILED", "cause": "host"}).status_code == 202
    rec = record(build_id)
    assert rec["host_failures"] == [{"attempt": 1, "instance_type": "p3.2xlarge", "reason": "the host failed"}]
    assert rec["events"][-1]["message"].startswith("host failure on p3.2xlarge: the host failed")


def test_a_long_host_failure_reason_is_cut_in_the_record_and_the_timeline(api, aws):
    build_id = _running_on(aws, "p3.2xlarge")
    reason = "".join(f"{n:04d} " for n in range(400))  # 2000 characters
    assert post(api, build_id, {**HOST_FAIL, "reason": reason}).status_code == 202
    rec = record(build_id)
    assert rec["host_failures"][0]["reason"] == reason[:500]
    why = f"host failure on p3.2xlarge: {reason}"[:1500]
    assert rec["events"][-1]["message"] == f"{why}; launching again as attempt 2 of 3"


def test_a_host_failure_on_a_build_that_never_recorded_its_instance(api, aws):
    build, _ = wiring.builds().submit(BuildRequest(framework="canary"))
    aws.messages("LaunchQueue")
    move = wiring.transitions().move
    move(build.id, Status.LAUNCHING, expect=[Status.QUEUED],
         fields={"token_hash": hashlib.sha256(TOKEN.encode()).hexdigest()})
    move(build.id, Status.RUNNING, expect=[Status.LAUNCHING], phase=Phase.PREPARING)
    assert post(api, build.id, HOST_FAIL).status_code == 202
    rec = record(build.id)
    assert rec["host_failures"][0]["instance_type"] is None
    assert rec["events"][-1]["message"].startswith("host failure on the instance: NVIDIA driver")


def test_a_host_failure_that_loses_to_a_relaunch_is_409_and_queues_nothing_more(api, aws, monkeypatch):
    """EC2 reclaimed the spot instance and the build was queued again (attempt 2) between the
    report's check and its own relaunch: the report's relaunch loses and says so."""
    build_id = _running_on(aws, "p3.2xlarge")
    reports = wiring.reports()
    real = reports.relaunch

    def reclaimed_first(old, why, **kw):
        real(old, "spot interruption", reclaimed=True)
        return real(old, why, **kw)

    monkeypatch.setattr(reports, "relaunch", reclaimed_first)
    resp = post(api, build_id, HOST_FAIL)
    assert resp.status_code == 409, resp.body
    assert json.loads(resp.body)["Message"] == f"build {build_id} moved on; the report was not applied"
    rec = record(build_id)
    assert (rec["status"], rec["attempt"]) == ("QUEUED", 2) and "host_failures" not in rec
    assert aws.messages("LaunchQueue") == [{"build_id": build_id, "attempt": 2}]
