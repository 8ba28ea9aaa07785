"""Matrices, groups and costs in the CLI (issue 22): the --matrix option, the group table,
waiting for every cell, and the costs table."""

from __future__ import annotations

from typing import IO

from voltabuild_cli import render
from voltabuild_cli.clock import Clock

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


def _cost(cell: dict) -> str:
    cost = cell.get("cost")
    if not cost:
        return "-"
    usd = float(cost.get("usd") or 0)
    return f"{'~' if cost.get('estimated') else ''}${usd:.2f}"


def group_table(group: dict) -> str:
    rows = [[c.get("id", ""), c.get("status", ""), c.get("phase") or "-", c.get("version", ""), c.get("cuda", ""),
             c.get("python", ""), _cost(c), (render.image_refs(c) or ["-"])[0]] for c in group.get("cells", [])]
    return render.table(["CELL", "STATUS", "PHASE", "VERSION", "CUDA", "PYTHON", "COST", "IMAGE"], rows)


def group_text(group: dict) -> str:
    lines = [f"{group['id']}  {group['status']}  {group.get('framework', '')}  {len(group.get('cells', []))} cells"
             + (f"  ${float(group['cost_usd']):.2f}" if group.get("cost_usd") else ""),
             group_table(group)]
    for s in group.get("skipped") or []:
        values = ", ".join(f"{k}={v}" for k, v in s.get("values", {}).items())
        lines.append(f"skipped {values}: {s.get('reason', '')}")
    return "\n".join(lines)


class GroupGaveUp(Exception):
    def __init__(self, group: dict, waited_s: float) -> None:
        super().__init__(f"gave up waiting for group {group['id']} after {waited_s:.0f}s; it is {group['status']}")
        self.group = group


def wait_group(api, group_id: str, clock: Clock, out: IO[str], *, interval_s: float,
               timeout_s: float | None) -> dict:
    """Poll GET /groups/{id} until it is no longer RUNNING; a line on ``out`` per cell whose
    status or phase changed (plain lines, fit for a pipe or a terminal)."""
    start = clock.monotonic()
    seen: dict[str, tuple] = {}
    while True:
        group = api.get_group(group_id)
        for c in group.get("cells", []):
            state = (c.get("status"), c.get("phase"))
            if seen.get(c["id"]) != state:
                seen[c["id"]] = state
                out.write(f"{c['id']}  {c.get('version')}/{c.get('cuda')}/{c.get('python')}  "
                          f"{c.get('status')}{' ' + c['phase'] if c.get('phase') else ''}\n")
                out.flush()
        if group.get("status") != "RUNNING":
            return group
        waited = clock.monotonic() - start
        if timeout_s is not None and waited >= timeout_s:
            raise GroupGaveUp(group, waited)
        clock.sleep(interval_s)


def costs_text(report: dict) -> str:
    rows = [[r["value"], f"${float(r['usd']):.2f}", str(r["builds"]), f"{r['billed_seconds'] / 3600:.2f}"]
            for r in report.get("rows", [])]
    head = f"costs {report['from']} to {report['to']} by {report['by']}: ${float(report['total_usd']):.2f}"
    if not rows:
        return head + "\n(no builds booked in these days)"
    return head + "\n" + render.table([report["by"].upper(), "USD", "BUILDS", "HOURS"], rows)
