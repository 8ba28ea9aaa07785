"""Build states, phases and the one table of allowed transitions (pure, no I/O)."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "QUEUED"
    LAUNCHING = "LAUNCHING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def final(self) -> bool:
        return self in FINAL


class Phase(StrEnum):
    PREPARING = "PREPARING"
    BUILDING = "BUILDING"
    TESTING = "TESTING"
    PUSHING = "PUSHING"


FINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT})
ACTIVE = frozenset(Status) - FINAL

_ENDINGS = {Status.FAILED, Status.CANCELLED, Status.TIMED_OUT}

# from -> the states it may move to. A spot interruption (or a launch retried by the
# reaper) sends LAUNCHING/RUNNING back to QUEUED; RUNNING -> RUNNING is a phase change.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.LAUNCHING, *_ENDINGS}),
    Status.LAUNCHING: frozenset({Status.RUNNING, Status.QUEUED, *_ENDINGS}),
    Status.RUNNING: frozenset({Status.RUNNING, Status.QUEUED, Status.SUCCEEDED, *_ENDINGS}),
    Status.SUCCEEDED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
    Status.TIMED_OUT: frozenset(),
}

PHASE_ORDER = {p: i for i, p in enumerate(Phase)}


def allowed(src: Status, dst: Status) -> bool:
    return dst in TRANSITIONS[src]


def sources_for(dst: Status) -> frozenset[Status]:
    """Every state from which ``dst`` may be reached."""
    return frozenset(s for s, targets in TRANSITIONS.items() if dst in targets)


def phase_forward(current: Phase | None, new: Phase) -> bool:
    """Phases only move forward (or repeat, for heartbeats)."""
    return current is None or PHASE_ORDER[new] >= PHASE_ORDER[current]
