"""`voltabuild submit --matrix`, `voltabuild group` and `voltabuild costs` (issue 22), against the
real API over HTTP (the shared live_api stack)."""

from __future__ import annotations

import json
import re

GROUP_ID = re.compile(r"g-[0-9a-f]{20}")
MATRIX = ("submit", "pytorch", "--python", "3.11", "--matrix", "version=2.5.1,2.6.0", "--matrix", "cuda=12.4,11.8")


def finish_cells(builds, group: dict, outcomes: list[str]) -> None:
    for cell, to in zip(group["cells"], outcomes, strict=True):
        for step in ("LAUNCHING", "RUNNING", to):
            builds.move(cell["id"], step)


def test_submit_a_matrix_shows_the_group_and_its_cells(cli, builds):
    r = cli(*MATRIX)
    assert r.exit_code == 0, r.stderr
    group_id = GROUP_ID.search(r.stdout).group(0)
    shown = cli("group", group_id, "--json")
    group = json.loads(shown.stdout)
    for c in group["cells"]:
        builds.track(c["id"])
    assert f"{group_id}  RUNNING  pytorch  4 cells" in r.stdout
    assert all(c["id"] in r.stdout for c in group["cells"]) and "2.6.0" in r.stdout and "11.8" in r.stdout
    assert f"voltabuild group {group_id} --wait" in r.stderr
    text = cli("group", group_id)
    assert text.exit_code == 0 and text.stdout.count("QUEUED") == 4


def test_wait_exits_0_only_when_every_cell_succeeded(cli, builds, fake_clock):
    r = cli(*MATRIX, "--json")
    group = json.loads(r.stdout)
    for c in group["cells"]:
        builds.track(c["id"])
    finish_cells(builds, group, ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "FAILED"])
    waited = cli("group", group["id"], "--wait")
    assert waited.exit_code == 1 and "FAILED" in waited.stdout.splitlines()[0]

    r = cli("submit", "pytorch", "--python", "3.12", "--matrix", "version=2.5.1,2.6.0", "--json")
    second = json.loads(r.stdout)
    for c in second["cells"]:
        builds.track(c["id"])
    done = []

    def on_sleep(clock):  # the cells end while the CLI waits
        if not done:
            done.append(1)
            finish_cells(builds, second, ["SUCCEEDED", "SUCCEEDED"])

    waited = cli("group", second["id"], "--wait", clock=fake_clock(on_sleep))
    assert waited.exit_code == 0, waited.stderr
    assert waited.stdout.startswith(f"{second['id']}  SUCCEEDED")
    assert waited.stderr.count("SUCCEEDED") == 2  # one progress line per cell change


def test_bad_matrix_flags_and_refused_cells(cli, builds):
    r = cli("submit", "pytorch", "--matrix", "colour=red")
    assert r.exit_code == 2 and "KEY one of version, cuda, python" in r.stderr
    r = cli("submit", "pytorch", "--matrix", "version=2.5.1,2.6.0", "--matrix", "cuda=12.1")
    assert r.exit_code == 2 and "cuda: 12.1" in r.stderr and "skip_invalid" in r.stderr
    assert cli("group", "g-0123456789abcdef0123").exit_code == 2


def test_costs_prints_the_table(cli):
    r = cli("costs", "--by", "day", "--from", "2026-11-01", "--to", "2026-11-30")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("costs 2026-11-01 to 2026-11-30 by day: $0.00")
    r = cli("costs", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["by"] == "framework"
