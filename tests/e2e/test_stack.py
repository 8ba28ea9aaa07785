"""`make up` twice is harmless; `make down` stops exactly what `make up` started."""

from __future__ import annotations

import os
import subprocess
import sys

import requests

from voltabuild_local.stack import Stack, _alive


def test_up_twice_is_harmless_and_down_stops_exactly_what_up_started(tmp_path):
    # GIVEN a process of someone else's that must survive
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stack = Stack(state_dir=tmp_path, services=("moto", "api"), quiet=True)
    try:
        first = stack.up()
        pids = {name: p["pid"] for name, p in first["processes"].items()}
        assert set(pids) == {"moto", "api"}
        env = stack.env
        assert requests.get(env["VOLTABUILD_API_URL"] + "/health", timeout=5).status_code == 200
        # WHEN up runs again THEN nothing new starts
        again = stack.up()
        assert {n: p["pid"] for n, p in again["processes"].items()} == pids
        # AND local.env tells clients where everything is
        written = dict(line.split("=", 1) for line in stack.env_file.read_text().splitlines() if "=" in line
                       and not line.startswith("#"))
        assert written["VOLTABUILD_API_URL"] == env["VOLTABUILD_API_URL"]
        assert written["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        assert written["VOLTABUILD_API_KEY"]
    finally:
        stopped = stack.down()
    # THEN down stopped both, removed its state, and left the bystander alone
    assert sorted(stopped) == ["api", "moto"]
    assert not any(_alive(pid) for pid in pids.values())
    assert not stack.env_file.exists()
    assert _alive(bystander.pid)
    bystander.kill()
    bystander.wait()
    assert stack.down() == []  # down twice is harmless too
    assert os.path.isdir(tmp_path)
