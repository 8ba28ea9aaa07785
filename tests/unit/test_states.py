"""The transition table, checked for every pair of states."""

from __future__ import annotations

import itertools

import pytest

from chalicelib.builds.states import ACTIVE, FINAL, TRANSITIONS, Phase, Status, allowed, phase_forward, sources_for

EXPECTED = {
    ("QUEUED", "LAUNCHING"), ("QUEUED", "FAILED"), ("QUEUED", "CANCELLED"), ("QUEUED", "TIMED_OUT"),
    ("LAUNCHING", "RUNNING"), ("LAUNCHING", "QUEUED"), ("LAUNCHING", "FAILED"), ("LAUNCHING", "CANCELLED"),
    ("LAUNCHING", "TIMED_OUT"),
    ("RUNNING", "RUNNING"), ("RUNNING", "QUEUED"), ("RUNNING", "SUCCEEDED"), ("RUNNING", "FAILED"),
    ("RUNNING", "CANCELLED"), ("RUNNING", "TIMED_OUT"),
}


def test_status_strings_are_exactly_the_documented_ones():
    assert [s.value for s in Status] == [
        "QUEUED", "LAUNCHING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"]
    assert [p.value for p in Phase] == ["PREPARING", "BUILDING", "TESTING", "PUSHING"]


@pytest.mark.parametrize("src,dst", list(itertools.product(Status, Status)))
def test_every_pair(src, dst):
    assert allowed(src, dst) == ((src.value, dst.value) in EXPECTED)


def test_final_states_never_move_and_every_active_state_can_end():
    assert FINAL == {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT}
    for s in FINAL:
        assert TRANSITIONS[s] == frozenset()
    for s in ACTIVE:
        assert {Status.FAILED, Status.CANCELLED, Status.TIMED_OUT} <= TRANSITIONS[s]


def test_sources_for_inverts_the_table():
    for dst in Status:
        assert sources_for(dst) == {s for s in Status if allowed(s, dst)}


def test_phases_only_move_forward():
    assert phase_forward(None, Phase.PREPARING)
    assert phase_forward(Phase.BUILDING, Phase.BUILDING)
    assert phase_forward(Phase.BUILDING, Phase.PUSHING)
    assert not phase_forward(Phase.TESTING, Phase.BUILDING)
