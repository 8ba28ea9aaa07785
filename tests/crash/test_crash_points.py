"""Every crash point recovers (issue 16).

Each scenario is run once cleanly through the real handlers (see harness.py), recording
every handler invocation and its AWS calls. Then, for every invocation and every pair of
consecutive AWS calls in it, the scenario runs again with the Lambda dying between the two
(before the second): SQS delivers again, events arrive, the host retries, the reaper ticks.
Every run must end with the build in the scenario's final state, no instance left running,
no instance of a live build terminated by the system, and exactly one Slack message.

The crash points come from the recorded call sequences: a new AWS call in any handler is a
new crash point without editing this file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import HostScript, Sim


@dataclass(frozen=True)
class Scenario:
    script: HostScript
    expect: str
    cancel_after_phases: int | None = None
    timeout_minutes: int | None = None
    interrupt_after_phases: int | None = None
    split: bool = False  # a split build (issue 23): a CPU build stage, then the GPU test stage
    interrupt_stage: str | None = None


SCENARIOS = {
    # launcher, EC2 running event, reports, ECR push event, result, EC2 terminated event, notify
    "succeeds": Scenario(HostScript(), "SUCCEEDED"),
    # ... plus the cancel route, the host's trap reporting after the terminate
    "cancelled": Scenario(HostScript(), "CANCELLED", cancel_after_phases=1),
    # spot reclaims the first instance: the interruption warning, a relaunch, attempt 2 succeeds
    "interrupted": Scenario(HostScript(), "SUCCEEDED", interrupt_after_phases=2),
    # the host hangs after its first phase: the reaper's stale-heartbeat path
    "hangs": Scenario(HostScript(hang_after=1), "FAILED", timeout_minutes=60),
    # ... and one that hangs until its deadline: TIMED_OUT
    "times out": Scenario(HostScript(hang_after=1), "TIMED_OUT"),
    # a split build (issue 23): BUILT launches the test stage; the tested digest ships
    "split": Scenario(HostScript(), "SUCCEEDED", split=True),
    # ... whose test stage spot reclaims: the test stage alone runs again
    "split, test interrupted": Scenario(HostScript(), "SUCCEEDED", split=True, interrupt_after_phases=1,
                                        interrupt_stage="test"),
}
# handlers every crash point must come from, between them (the suite fails if one of them
# stops making two consecutive AWS calls: then it is no longer covered)
HANDLERS = {"launcher", "report_event", "on_instance_state", "on_spot_interruption", "on_image_pushed",
            "notify_consumer", "cancel_build", "reaper"}


def run(env, scenario: Scenario, crash: tuple[int, int] | None = None) -> Sim:
    env.fresh()
    sim = Sim(env.aws, env.api, env.sink, env.clock, env.hook, script=scenario.script,
              cancel_after_phases=scenario.cancel_after_phases, timeout_minutes=scenario.timeout_minutes,
              interrupt_after_phases=scenario.interrupt_after_phases, split=scenario.split,
              interrupt_stage=scenario.interrupt_stage)
    sim.submit()
    env.hook.crash = crash
    sim.settled_in_time = sim.run()
    return sim


def problems(sim: Sim, scenario: Scenario) -> list[str]:
    rec = sim.record()
    out = list(sim.violations)
    if not sim.settled_in_time:
        out.append(f"did not settle (status {rec['status']}, notification {rec.get('notification')})")
    if rec["status"] != scenario.expect:
        out.append(f"ended {rec['status']} ({rec.get('reason', '')[:120]!r}), expected {scenario.expect}")
    alive = [i["InstanceId"] for i in sim.instances() if i["State"]["Name"] in ("pending", "running")]
    if alive:
        out.append(f"instances still running: {alive}")
    n = len(sim.slack_messages())
    if n != 1:
        out.append(f"{n} Slack messages")
    if scenario.expect == "SUCCEEDED" and rec.get("image", {}).get("digest") != sim.digest:
        out.append(f"digest {rec.get('image', {}).get('digest')} recorded, {sim.digest} pushed")
    return out


def crash_points(sim: Sim) -> list[tuple[int, int, str, tuple]]:
    """(invocation, call number, what, key) for every second call of a consecutive pair.
    ``key`` (the handler and its calls up to the crash) names the code path: an idle
    reaper tick or a report seen again in a later invocation or scenario is the same point."""
    return [(j, k, f"{inv.handler} #{j}: before call {k} {inv.calls[k - 1]} (after {inv.calls[k - 2]})",
             (inv.handler, tuple(inv.calls[:k])))
            for j, inv in enumerate(sim.hook.log) for k in range(2, len(inv.calls) + 1)]


RESULTS: dict[str, dict] = {}  # scenario -> counts (read by bench/)
SEEN: set[tuple] = set()  # crash points already covered by an earlier scenario
COVERED: set[str] = set()  # handlers with a crash point
WARM: set[bool] = set()  # split or not: the instance types whose lookups a warm launcher caches


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_crash_point_recovers(crash_env, name):
    scenario = SCENARIOS[name]
    if scenario.split not in WARM:  # cached lookups (the Slack webhook, a type's spot price) are
        run(crash_env, scenario)     # read once per warm Lambda: a split build's CPU type too
        WARM.add(scenario.split)
    clean = run(crash_env, scenario)
    COVERED.update(key[0] for _, _, _, key in crash_points(clean))
    assert problems(clean, scenario) == [], "the scenario itself must end well"
    points = []
    for j, k, what, key in crash_points(clean):
        if key not in SEEN:
            SEEN.add(key)
            points.append((j, k, what))
    # (a scenario may add no new point: "times out" takes the stale-heartbeat path's calls)

    failures, crashed = [], 0
    for j, k, what in points:
        sim = run(crash_env, scenario, crash=(j, k))
        died = [inv for inv in sim.hook.log if inv.crashed_at]
        if not died:
            failures.append(f"{what}: the crash point was not reached")
            continue
        crashed += 1
        found = problems(sim, scenario)
        if found:
            failures.append(f"{what}: " + "; ".join(found))
    RESULTS[name] = {"crash_points": len(points), "recovered": crashed - len(failures)}
    print(f"{name}: {len(points)} crash points, {crashed - len(failures)} recovered")
    if os.environ.get("VOLTABUILD_CRASH_REPORT"):  # `make bench` collects the counts (bench/crash.py)
        Path(os.environ["VOLTABUILD_CRASH_REPORT"]).write_text(json.dumps(RESULTS))
    assert failures == [], "\n".join(failures)


def test_the_crash_points_cover_every_handler(crash_env):
    if set(RESULTS) != set(SCENARIOS):  # run on its own: record the scenarios' calls here
        for scenario in SCENARIOS.values():
            COVERED.update(key[0] for _, _, _, key in crash_points(run(crash_env, scenario)))
    assert HANDLERS <= COVERED, f"not covered: {sorted(HANDLERS - COVERED)}"
