"""The progress shown while waiting: one rewritten line on a terminal, plain lines in a pipe."""

from __future__ import annotations

import io

from voltabuild_cli.clock import human_duration
from voltabuild_cli.waiting import PlainProgress, Snapshot, TtyProgress

BUILD = {"id": "b-0123456789abcdef0123", "status": "RUNNING", "phase": "BUILDING"}


def test_tty_line_is_rewritten_in_place_and_cut_to_the_terminal_width():
    out = io.StringIO()
    p = TtyProgress(out, width=lambda: 80)
    p.update(Snapshot(BUILD, 192, "Step 7/12 : RUN python setup.py install " + "x" * 100))
    p.update(Snapshot({**BUILD, "phase": "TESTING"}, 200, None))
    p.close()
    frames = out.getvalue().split("\r\x1b[K")[1:]
    assert len(frames) == 2 and out.getvalue().endswith("\n")
    assert frames[0].startswith("b-0123456789abcdef0123  RUNNING · BUILDING  3m12s  Step 7/12")
    assert len(frames[0]) == 79 and frames[0].endswith("…")
    assert "TESTING  3m20s" in frames[1]


def test_plain_progress_prints_only_changes():
    out = io.StringIO()
    p = PlainProgress(out)
    p.update(Snapshot({**BUILD, "status": "QUEUED", "phase": None}, 1, "accepted"))
    p.update(Snapshot({**BUILD, "status": "QUEUED", "phase": None}, 6, "accepted"))
    p.update(Snapshot(BUILD, 11, "docker build"))
    p.update(Snapshot({**BUILD, "cancel_requested": True}, 16, "docker build"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0] == "b-0123456789abcdef0123  QUEUED  1s  accepted"
    assert lines[2].endswith("cancel requested  docker build")


def test_human_duration():
    assert [human_duration(s) for s in (0, 59, 60, 187, 3600, 3723)] == ["0s", "59s", "1m00s", "3m07s", "1h00m", "1h02m"]
