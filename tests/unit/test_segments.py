"""Where a build's time goes: segment durations from its timeline (chalicelib/builds/segments.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chalicelib.builds.schemas import Build, TimelineEvent
from chalicelib.builds.segments import SEGMENTS, longest_segment, segment_durations
from chalicelib.builds.states import Phase, Status

T0 = datetime(2026, 12, 2, 7, 0, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ev(seconds: float, status: str, phase: str | None = None) -> dict:
    return {"at": at(seconds), "status": status, "phase": phase, "message": ""}


HAPPY = [
    ev(0, "QUEUED"), ev(2, "LAUNCHING"), ev(32, "RUNNING"), ev(92, "RUNNING", "PREPARING"),
    ev(152, "RUNNING", "BUILDING"), ev(1952, "RUNNING", "TESTING"), ev(2012, "RUNNING", "PUSHING"),
    ev(2072.5, "SUCCEEDED"),
]


def test_every_segment_of_a_finished_build_with_its_terminate_lag():
    # GIVEN a build that went through every state and whose instance was terminated 20 s after
    record = {"events": HAPPY, "status": "SUCCEEDED", "instance_terminated_at": at(2092.5)}
    # THEN each segment is the time between the entry that started it and the next one
    assert segment_durations(record) == {
        "queued": 2.0, "launching": 30.0, "booting": 60.0, "preparing": 60.0, "building": 1800.0,
        "testing": 60.0, "pushing": 60.5, "terminate_lag": 20.0,
    }
    assert list(segment_durations(record)) == [s for s in SEGMENTS]
    assert longest_segment(record) == ("building", 1800.0)


def test_only_segments_that_happened():
    # a build cancelled while queued
    assert segment_durations({"events": [ev(0, "QUEUED"), ev(5, "CANCELLED")]}) == {"queued": 5.0}
    # the instance reported before EC2's running event: no booting, the boot is in launching
    events = [ev(0, "QUEUED"), ev(1, "LAUNCHING"), ev(61, "RUNNING", "PREPARING"), ev(71, "FAILED")]
    assert segment_durations({"events": events}) == {"queued": 1.0, "launching": 60.0, "preparing": 10.0}
    # no timeline, no termination time: nothing
    assert segment_durations({}) == {}
    assert longest_segment({}) is None


def test_a_relaunched_build_adds_each_attempts_time_to_the_same_segments():
    events = [
        ev(0, "QUEUED"), ev(10, "LAUNCHING"), ev(20, "RUNNING"), ev(30, "RUNNING", "BUILDING"),
        ev(100, "QUEUED"),  # spot interruption
        ev(105, "LAUNCHING"), ev(125, "RUNNING"), ev(130, "RUNNING", "BUILDING"), ev(200, "SUCCEEDED"),
    ]
    assert segment_durations({"events": events}) == {
        "queued": 15.0, "launching": 30.0, "booting": 15.0, "building": 140.0,
    }


def test_an_active_build_counts_its_current_segment_only_when_given_now():
    events = HAPPY[:5]  # building since 152 s
    assert "building" not in segment_durations({"events": events})
    assert segment_durations({"events": events}, now=T0 + timedelta(seconds=200))["building"] == 48.0
    # a terminated time on an active build is no terminate lag
    assert "terminate_lag" not in segment_durations({"events": events, "instance_terminated_at": at(300)})


def test_bad_or_out_of_order_timestamps_add_nothing():
    events = [ev(0, "QUEUED"), {"at": "yesterday", "status": "LAUNCHING"}, ev(10, "LAUNCHING"),
              ev(5, "RUNNING"), ev(20, "FAILED")]
    assert segment_durations({"events": events, "instance_terminated_at": at(15)}) == {
        "queued": 10.0, "booting": 15.0}


def test_the_same_from_a_model_as_from_a_store_item():
    events = [TimelineEvent(at=e["at"], status=Status(e["status"]), phase=Phase(e["phase"]) if e["phase"] else None)
              for e in HAPPY]
    build = Build.model_validate({
        "id": "b1", "status": "SUCCEEDED", "framework": "canary", "version": "1", "cuda": "12.4", "python": "3.11",
        "build_args": {}, "instance_types": ["g5.xlarge"], "timeout_minutes": 60, "notify": {},
        "image": {"repository": "r", "tags": ["t"]}, "created_at": at(0), "updated_at": at(2072.5),
        "events": [e.model_dump(mode="json") for e in events], "instance_terminated_at": at(2080),
    })
    assert segment_durations(build) == {**segment_durations({"events": HAPPY}), "terminate_lag": 7.5}
    # the API's copy carries them
    assert build.model_dump(mode="json")["segments"]["building"] == 1800.0
