"""`voltabuild wait` and `submit --wait` against the real API; the clock is injected, so
nothing here really sleeps: a test moves the build on between two polls instead."""

from __future__ import annotations

import json

import requests


def test_wait_on_a_cancelled_build_returns_at_once_with_1(cli, builds):
    b = builds.submit()
    builds.move(b["id"], "CANCELLED", message="cancelled by request")
    r = cli("wait", b["id"])
    assert r.exit_code == 1
    assert r.clock.sleeps == []  # never waited
    assert f"{b['id']}  CANCELLED" in r.stdout


def test_wait_on_a_succeeded_build_exits_0_and_shows_the_image(cli, builds):
    b = builds.submit()
    builds.move(b["id"], "LAUNCHING")
    builds.move(b["id"], "RUNNING", phase="PUSHING")
    builds.move(b["id"], "SUCCEEDED", message="pushed")
    r = cli("wait", b["id"], "--json")
    assert r.exit_code == 0 and r.clock.sleeps == []
    assert json.loads(r.stdout)["status"] == "SUCCEEDED"
    human = cli("wait", b["id"])
    assert "SUCCEEDED" in human.stdout and "voltabuild/canary:1.0" in human.stdout


def test_wait_follows_a_build_to_the_end_with_plain_progress(cli, builds, fake_clock):
    b = builds.submit()
    steps = [
        lambda: builds.move(b["id"], "LAUNCHING", message="launched i-0abc on g5.xlarge"),
        lambda: builds.move(b["id"], "RUNNING", phase="PREPARING"),
        lambda: None,  # a poll that sees nothing new: no new progress line
        lambda: builds.move(b["id"], "RUNNING", phase="BUILDING", message="docker build"),
        lambda: builds.move(b["id"], "FAILED", message="smoke test failed", fields={"reason": "smoke test: no GPU"}),
    ]
    clock = fake_clock(on_sleep=lambda c: steps.pop(0)())
    r = cli("wait", b["id"], clock=clock)
    assert r.exit_code == 1  # the build failed
    assert len(clock.sleeps) == 5 and set(clock.sleeps) == {5.0}
    progress = r.stderr.splitlines()
    assert [ln.split("  ")[1] for ln in progress] == [
        "QUEUED", "LAUNCHING", "RUNNING · PREPARING", "RUNNING · BUILDING", "FAILED"]
    assert "launched i-0abc on g5.xlarge" in progress[1]  # the latest line shown with the state
    assert f"{b['id']}  FAILED" in r.stdout and "reason: smoke test: no GPU" in r.stdout


def test_wait_on_a_terminal_rewrites_one_line_and_ticks_the_elapsed_time(cli, builds, fake_clock):
    b = builds.submit()

    def act(clock):  # the launcher at 5 s, a cancel at 10 s
        if clock.t == 5:
            builds.move(b["id"], "LAUNCHING", message="launched i-0abc")
        elif clock.t == 10:
            builds.move(b["id"], "CANCELLED")

    r = cli("wait", b["id"], clock=fake_clock(on_sleep=act), stderr_tty=True)
    assert r.exit_code == 1
    assert set(r.clock.sleeps) == {1.0} and len(r.clock.sleeps) == 10  # redrawn each second, polled each 5
    frames = r.stderr.split("\r\x1b[K")[1:]
    assert len(frames) == 13 and r.stderr.count("\n") == 1 and r.stderr.endswith("\n")
    seconds = [int(f.split("  ")[2].rstrip("s")) for f in frames[:-1]]
    assert seconds == sorted(seconds) and seconds[-1] - seconds[0] == 10  # the elapsed time moves
    assert [f.split("  ")[1] for f in (frames[0], frames[6], frames[12])] == ["QUEUED", "LAUNCHING", "CANCELLED"]
    assert "launched i-0abc" in frames[6]


class Outage(requests.Session):
    """The network between the CLI and the API, which a test can cut."""

    down = False

    def request(self, method, url, **kw):
        if Outage.down:
            raise requests.ConnectionError("Connection refused")
        return super().request(method, url, **kw)


def test_wait_rides_out_a_short_outage(cli, builds, fake_clock):
    b = builds.submit()

    def act(clock):
        Outage.down = 5 <= clock.t < 30
        if clock.t >= 30 and not Outage.down and "done" not in b:
            b["done"] = builds.move(b["id"], "FAILED", message="boom")

    Outage.down = False
    r = cli("wait", b["id"], clock=fake_clock(on_sleep=act), session_factory=Outage)
    assert r.exit_code == 1, r.stderr  # the build's outcome, not 5
    assert "API unreachable for" in r.stderr and r.stderr.splitlines()[-1].split("  ")[1] == "FAILED"


def test_wait_gives_up_on_a_long_outage_with_5(cli, builds, fake_clock):
    b = builds.submit()

    def act(clock):
        Outage.down = clock.t >= 5

    Outage.down = False
    r = cli("wait", b["id"], clock=fake_clock(on_sleep=act), session_factory=Outage)
    Outage.down = False
    assert r.exit_code == 5
    assert 300 <= sum(r.clock.sleeps) < 320 and "make up" in r.stderr


def test_wait_gives_up_after_timeout_with_3(cli, builds):
    b = builds.submit()
    r = cli("wait", b["id"], "--timeout", "1m", "--json")
    assert r.exit_code == 3
    assert sum(r.clock.sleeps) == 60
    assert "gave up after 1m00s" in r.stderr and "still QUEUED" in r.stderr
    assert json.loads(r.stdout)["status"] == "QUEUED"  # the build as last seen, for scripts


def test_submit_wait_times_out_and_leaves_the_build_running(cli, builds, live_api):
    r = cli("submit", "canary", "--wait", "--wait-timeout", "10s")
    assert r.exit_code == 3
    assert sum(r.clock.sleeps) == 10
    build_id = r.stderr.split("submitted ", 1)[1].split(":", 1)[0]
    builds.track(build_id)
    assert cli("status", build_id, "--json").exit_code == 0


def test_submit_wait_to_success(cli, builds, fake_clock):
    def finish_newest(clock):  # plays launcher and instance for the build the CLI just made
        import requests

        newest = requests.get(f"{builds.api.url}/builds", params={"limit": 1},
                              headers={"x-api-key": builds.api.api_key}).json()["builds"][0]
        builds.track(newest["id"])
        builds.move(newest["id"], "LAUNCHING")
        builds.move(newest["id"], "RUNNING", phase="TESTING")
        builds.move(newest["id"], "SUCCEEDED")

    r = cli("submit", "canary", "--wait", "--json", clock=fake_clock(on_sleep=finish_newest))
    assert r.exit_code == 0, r.stderr
    final = json.loads(r.stdout)
    assert final["status"] == "SUCCEEDED" and final["id"] == builds.made[-1]
    assert r.clock.sleeps == [5.0]
    assert "submitted " + final["id"] in r.stderr


def test_ctrl_c_while_waiting_exits_130_and_says_the_build_goes_on(cli, builds, fake_clock):
    b = builds.submit()

    def interrupt(clock):
        raise KeyboardInterrupt

    r = cli("wait", b["id"], clock=fake_clock(on_sleep=interrupt))
    assert r.exit_code == 130
    assert f"build {b['id']} goes on" in r.stderr


def test_bad_timeout_is_a_usage_error(cli):
    r = cli("wait", "b-00000000000000000000", "--timeout", "soon")
    assert r.exit_code == 2 and "90s" in r.stderr
