"""Matrices, groups and costs in the CLI (issue 22): the --matrix option, the group table,
waiting for every cell, and the costs table."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import IO

from voltabuild_cli import render
from voltabuild_cli.clock import Clock
from voltabuild_cli.waiting import FINAL

AXES = ("version", "cuda", "python")


class MatrixError(ValueError):
    pass


def parse_matrix(values: tuple[str, ...]) -> dict[str, list[str]]:
    """``--matrix version=2.5.1,2.6.0 --matrix cuda=12.4,12.6`` -> the request's matrix."""
    out: dict[str, list[str]] = {}
    for v in values:
        key, sep, vals = v.partition("=")
        items = [x.strip() for x in vals.split(",") if x.strip()]
        if not sep or key not in AXES or not items:
            raise MatrixError(f"--matrix {v!r}: give KEY=V1,V2 with KEY one of {', '.join(AXES)}, "
                              "e.g. --matrix version=2.5.1,2.6.0")
        if key in out:
            raise MatrixError(f"--matrix {key}: given twice; list every value in one --matrix {key}=V1,V2")
        out[key] = items
    return out


def usd_text(usd: Decimal) -> str:
    """USD as the service shows it (chalicelib/costs/billing.py usd_text): cents, or a
    hundredth of a cent for an amount under half a cent, so a short build is not $0.00."""
    if usd == 0 or usd >= Decimal("0.005"):
        return f"${usd.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP)}"
    if usd < Decimal("0.00005"):
        return "<$0.0001"
    return f"${usd.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP)}"


def _cost(cell: dict) -> str:
    cost = cell.get("cost")
    if not cost:
        return "-"
    return f"{'~' if cost.get('estimated') else ''}{usd_text(Decimal(str(cost.get('usd') or 0)))}"


def group_table(group: dict) -> str:
    rows = [[c.get("id", ""), c.get("status", ""), c.get("phase") or "-", c.get("version", ""), c.get("cuda", ""),
             c.get("python", ""), _cost(c), (render.image_refs(c) or ["-"])[0]] for c in group.get("cells", [])]
    return render.table(["CELL", "STATUS", "PHASE", "VERSION", "CUDA", "PYTHON", "COST", "IMAGE"], rows)


def group_text(group: dict) -> str:
    lines = [f"{group['id']}  {group['status']}  {group.get('framework', '')}  {len(group.get('cells', []))} cells"
             + (f"  {usd_text(Decimal(group['cost_usd']))}" if group.get("cost_usd") else ""),
             group_table(group)]
    for s in group.get("skipped") or []:
        values = ", ".join(f"{k}={v}" for k, v in s.get("values", {}).items())
        lines.append(f"skipped {values}: {s.get('reason', '')}")
    return "\n".join(lines)


class GroupGaveUp(Exception):
    def __init__(self, group: dict, waited_s: float) -> None:
        super().__init__(f"gave up waiting for group {group['id']} after {waited_s:.0f}s; it is {group['status']}")
        self.group = group


def _cell_name(cell: dict) -> str:
    values = cell.get("values") or {}
    if values:
        return " ".join(f"{k}={v}" for k, v in values.items())
    return f"{cell.get('version')}/{cell.get('cuda')}/{cell.get('python')}"


def _state(cell: dict) -> str:
    return f"{cell.get('status')}{' · ' + cell['phase'] if cell.get('phase') else ''}"


def live_rows(group: dict) -> list[str]:
    """The live table: a head line (the group, its status, how many cells ended) and one
    row per cell (its matrix values, status and phase, cost, build id)."""
    cells = group.get("cells", [])
    ended = sum(1 for c in cells if c.get("status") in FINAL)
    head = f"{group['id']}  {group.get('status')}  {ended} of {len(cells)} cells ended"
    rows = [[_cell_name(c), _state(c), _cost(c), c.get("id", "")] for c in cells]
    return [head, *render.table(["CELL", "STATUS", "COST", "BUILD"], rows).splitlines()]


class GroupTtyProgress:
    """The group as a table redrawn in place (a terminal): the cursor goes back up over the
    last drawing, which is cleared, and the new one is written; rows are cut to the width."""

    def __init__(self, stream: IO[str], width: Callable[[], int] | None = None) -> None:
        self.stream = stream
        self.width = width or (lambda: shutil.get_terminal_size((100, 20)).columns)
        self.drawn = 0

    def update(self, group: dict) -> None:
        width = max(20, self.width() - 1)
        lines = [ln if len(ln) <= width else ln[: width - 1] + "…" for ln in live_rows(group)]
        up = f"\x1b[{self.drawn}F" if self.drawn else ""  # to the start of the first line drawn
        self.stream.write(up + "\x1b[J" + "\n".join(lines) + "\n")
        self.stream.flush()
        self.drawn = len(lines)

    def close(self) -> None:
        pass


class GroupPlainProgress:
    """A line each time a cell's status or phase changes (a pipe or a log file)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.seen: dict[str, tuple] = {}

    def update(self, group: dict) -> None:
        for c in group.get("cells", []):
            state = (c.get("status"), c.get("phase"))
            if self.seen.get(c["id"]) != state:
                self.seen[c["id"]] = state
                self.stream.write(f"{c['id']}  {_cell_name(c)}  {c.get('status')}"
                                  f"{' ' + c['phase'] if c.get('phase') else ''}\n")
                self.stream.flush()

    def close(self) -> None:
        pass


def wait_group(api, group_id: str, clock: Clock, progress: GroupTtyProgress | GroupPlainProgress, *,
               interval_s: float, timeout_s: float | None) -> dict:
    """Poll GET /groups/{id} until it is no longer RUNNING, showing each poll on ``progress``
    (a table redrawn in place on a terminal, plain lines of what changed in a pipe)."""
    start = clock.monotonic()
    try:
        while True:
            group = api.get_group(group_id)
            progress.update(group)
            if group.get("status") != "RUNNING":
                return group
            waited = clock.monotonic() - start
            if timeout_s is not None and waited >= timeout_s:
                raise GroupGaveUp(group, waited)
            clock.sleep(interval_s)
    finally:
        progress.close()


def costs_text(report: dict) -> str:
    rows = [[r["value"], f"${float(r['usd']):.2f}", str(r["builds"]), f"{r['billed_seconds'] / 3600:.2f}"]
            for r in report.get("rows", [])]
    head = f"costs {report['from']} to {report['to']} by {report['by']}: ${float(report['total_usd']):.2f}"
    if not rows:
        return head + "\n(no builds booked in these days)"
    return head + "\n" + render.table([report["by"].upper(), "USD", "BUILDS", "HOURS"], rows)
