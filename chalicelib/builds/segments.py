"""Where a build's time went: the duration of each segment, from its timeline (pure, no I/O).

A build's timeline (``events``) has one entry per state change: QUEUED when accepted,
LAUNCHING when the launcher calls EC2, RUNNING (no phase) when EC2 says the instance runs,
RUNNING with a phase for each of the instance's phase reports, then the final state. The
time between two entries belongs to the segment the earlier one started:

    QUEUED -> queued            LAUNCHING -> launching      RUNNING -> booting
    RUNNING/PREPARING -> preparing, BUILDING -> building, TESTING -> testing, PUSHING -> pushing

and ``terminate_lag`` runs from the final entry to ``instance_terminated_at`` (recorded by
the EC2 'terminated' handler). A build that went back to the queue (spot interruption)
adds each attempt's time to the same segments. Only segments that happened are returned:
a build cancelled while queued has just ``queued``; one whose instance reported before EC2's
'running' event arrived has no ``booting`` (its boot is in ``launching``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

SEGMENTS = ("queued", "launching", "booting", "preparing", "building", "testing", "pushing", "terminate_lag")
_FINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"})
_BY_STATUS = {"QUEUED": "queued", "LAUNCHING": "launching", "RUNNING": "booting"}


def _get(obj: Any, name: str) -> Any:
    """A field of a record: a store item (dict) or a model (attributes)."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _str(value: Any) -> str | None:
    """An enum member's value, or the string itself."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _segment(status: str | None, phase: str | None) -> str | None:
    if status == "RUNNING" and phase:
        return phase.lower()
    return _BY_STATUS.get(status or "")


def segment_durations(record: Any, now: datetime | None = None) -> dict[str, float]:
    """Seconds spent in each segment (see the module doc), in segment order, rounded to
    milliseconds; only the segments that happened. ``now`` (timezone-aware) also counts
    the segment a build that is not final is in at the moment; without it only closed
    segments count. Out-of-order or unreadable timestamps add nothing."""
    marks: list[tuple[datetime, str | None]] = []
    for ev in _get(record, "events") or []:
        at = _time(_get(ev, "at"))
        if at is None:
            continue
        status = _str(_get(ev, "status"))
        marks.append((at, None if status in _FINAL else _segment(status, _str(_get(ev, "phase")))))
    out: dict[str, float] = {}

    def add(name: str, start: datetime, end: datetime) -> None:
        secs = (end - start).total_seconds()
        if secs >= 0:
            out[name] = out.get(name, 0.0) + secs

    for (start, name), (end, _) in zip(marks, marks[1:], strict=False):
        if name is not None:
            add(name, start, end)
    if marks and marks[-1][1] is not None and now is not None:
        add(marks[-1][1], marks[-1][0], now)
    if marks and marks[-1][1] is None:  # final: from there to the instance's end
        terminated = _time(_get(record, "instance_terminated_at"))
        if terminated is not None:
            add("terminate_lag", marks[-1][0], terminated)
    return {k: round(out[k], 3) for k in SEGMENTS if k in out}


def longest_segment(record: Any) -> tuple[str, float] | None:
    """The segment the build spent longest in, and its seconds; None when none closed."""
    durations = segment_durations(record)
    if not durations:
        return None
    name = max(durations, key=lambda k: durations[k])
    return name, durations[name]


def _clock(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s" if m else f"{sec}s"


def longest_note(record: Any) -> str:
    """``"; longest: building 30m 00s"`` for a message that already gives the total, or ""."""
    found = longest_segment(record)
    if found is None:
        return ""
    return f"; longest: {found[0].replace('_', ' ')} {_clock(found[1])}"
