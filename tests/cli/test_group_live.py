"""`voltabuild group ID --wait` / `submit --matrix --wait`: a live table of the cells,
redrawn in place on a terminal; plain lines of what changed in a pipe."""

from __future__ import annotations

import io

from voltabuild_cli.groups import GroupPlainProgress, GroupTtyProgress, live_rows, usd_text

GID = "g-0123456789abcdef0123"


def group(*states, status="RUNNING") -> dict:
    cells = []
    for i, (st, phase, usd) in enumerate(states):
        cells.append({"id": f"b-{i:020x}", "values": {"version": f"2.{5 + i}.0"}, "status": st, "phase": phase,
                      "cost": {"usd": usd, "estimated": st not in ("SUCCEEDED", "FAILED")}})
    return {"id": GID, "status": status, "cells": cells}


def test_the_terminal_table_is_redrawn_in_place():
    out = io.StringIO()
    p = GroupTtyProgress(out, width=lambda: 80)
    p.update(group(("QUEUED", None, "0"), ("RUNNING", "BUILDING", "0.0012")))
    first = out.getvalue()
    p.update(group(("SUCCEEDED", None, "0.0421"), ("FAILED", None, "0.0012"), status="FAILED"))
    second = out.getvalue()[len(first):]
    # the first drawing: the head line, the table's header and one row per cell
    assert first.startswith("\x1b[J" + f"{GID}  RUNNING  0 of 2 cells ended\n")
    assert first.count("\n") == 4
    assert "version=2.6.0  RUNNING · BUILDING  ~$0.0012" in first
    # the second goes back up over those four lines and clears them before drawing
    assert second.startswith("\x1b[4F\x1b[J" + f"{GID}  FAILED  2 of 2 cells ended\n")
    assert "version=2.5.0  SUCCEEDED" in second and "$0.04" in second and "version=2.6.0  FAILED" in second


def test_rows_are_cut_to_the_terminal_width():
    out = io.StringIO()
    GroupTtyProgress(out, width=lambda: 30).update(group(("RUNNING", "BUILDING", "1.5")))
    assert all(len(line) <= 29 for line in out.getvalue().replace("\x1b[J", "").splitlines())


def test_a_pipe_gets_a_line_per_change():
    out = io.StringIO()
    p = GroupPlainProgress(out)
    p.update(group(("QUEUED", None, "0"), ("QUEUED", None, "0")))
    p.update(group(("QUEUED", None, "0"), ("QUEUED", None, "0")))
    p.update(group(("RUNNING", "BUILDING", "0"), ("QUEUED", None, "0")))
    assert "\x1b" not in out.getvalue()
    assert out.getvalue().splitlines() == [
        "b-00000000000000000000  version=2.5.0  QUEUED", "b-00000000000000000001  version=2.6.0  QUEUED",
        "b-00000000000000000000  version=2.5.0  RUNNING BUILDING"]


def test_costs_under_a_cent_are_not_shown_as_nothing():
    from decimal import Decimal

    assert [usd_text(Decimal(x)) for x in ("0", "0.0012", "0.00001", "0.006", "1.234")] == [
        "$0.00", "$0.0012", "<$0.0001", "$0.01", "$1.23"]
    assert live_rows(group(("SUCCEEDED", None, "0.0012")))[2].split()[-2] == "$0.0012"


def test_group_wait_on_a_terminal_draws_the_table_and_exits_by_the_cells(cli, builds, fake_clock):
    r = cli("submit", "pytorch", "--python", "3.12", "--matrix", "version=2.5.1,2.6.0", "--json")
    second = __import__("json").loads(r.stdout)
    for c in second["cells"]:
        builds.track(c["id"])
    done = []

    def on_sleep(clock):
        if not done:
            done.append(1)
            for cell, to in zip(second["cells"], ("SUCCEEDED", "FAILED"), strict=True):
                for step in ("LAUNCHING", "RUNNING", to):
                    builds.move(cell["id"], step)

    waited = cli("group", second["id"], "--wait", clock=fake_clock(on_sleep), stderr_tty=True)
    assert waited.exit_code == 1  # a cell failed
    drawings = waited.stderr.split("\x1b[J")[1:]
    assert len(drawings) == 2
    assert "0 of 2 cells ended" in drawings[0] and "version=2.5.1  QUEUED" in drawings[0]
    assert "2 of 2 cells ended" in drawings[1] and "version=2.6.0  FAILED" in drawings[1]
    assert waited.stderr.split("\x1b[J")[1].endswith("\x1b[4F")  # the second drawing went back over the first
