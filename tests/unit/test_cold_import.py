"""What a Lambda cold start imports (issue 21). Every function imports app.py, so app.py and
chalicelib.wiring import nothing but Chalice, boto3 and the wiring; each handler loads the
models and parsers it uses when it first runs. These tests import the app in a fresh
interpreter and look at sys.modules: no timing (that is `make bench`'s job)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("pydantic", "yaml", "slack_sdk", "asyncio", "chalicelib.builds.schemas", "chalicelib.specs.catalog",
         "chalicelib.builds.store", "chalicelib.notifications.notify")

_PROBE = """
import json, sys
import app
from chalicelib import wiring
before = sorted(m for m in {heavy!r} if m in sys.modules)
wiring.client = lambda service: None
getattr(wiring, {factory!r})()
after = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"before": before, "after": after, "handlers": sorted(app.app.handler_map)}}))
"""


def _probe(factory: str) -> dict:
    env = {"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1", "VOLTABUILD_STAGE": "dev",
           "CURSOR_KEY": "0" * 64, "BUILDS_TABLE": "t",
           "LAUNCH_QUEUE_URL": "http://127.0.0.1:1/000000000000/voltabuild-dev-launch",
           "NOTIFY_QUEUE_URL": "http://127.0.0.1:1/000000000000/voltabuild-dev-notify"}
    out = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY, factory=factory)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("factory", ["builds", "notifier"])
def test_importing_the_app_loads_no_models_no_yaml_and_no_slack(factory):
    # WHEN a cold start imports the app (any function: they share app.py)
    got = _probe(factory)
    # THEN none of the heavy modules is loaded yet, and every handler is registered
    assert got["before"] == []
    assert {"launcher", "notify_consumer", "on_instance_state", "reaper", "submit_build"} <= set(got["handlers"])
    # AND the function's first use loads what it needs: the API its models, not Slack's SDK;
    # the notifier the Slack SDK
    assert "pydantic" in got["after"] and "chalicelib.builds.store" in got["after"]
    if factory == "builds":
        assert "slack_sdk" not in got["after"] and "asyncio" not in got["after"]
    else:
        assert "chalicelib.notifications.notify" in got["after"]


_CLOCK_PROBE = """
import importlib, json, pkgutil
from datetime import UTC, datetime

import chalicelib
from chalicelib import clock

real = clock.now
fake = lambda: datetime(2020, 1, 1, tzinfo=UTC)  # noqa: E731
clock.now = fake  # a test's fake clock, in force when the modules are first imported
names = [m.name for m in pkgutil.walk_packages(chalicelib.__path__, "chalicelib.")]
modules = [importlib.import_module(n) for n in names]
clock.now = real
print(json.dumps(sorted(f"{m.__name__}.{k}" for m in modules for k, v in vars(m).items() if v is fake)))
"""


def test_no_module_keeps_the_clock_it_found_at_import():
    # GIVEN every module first imported while the clock is a stand-in (the handlers import
    # their modules when they first run, so that may be in the middle of a test's fake time)
    env = {"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1", "VOLTABUILD_STAGE": "dev"}
    out = subprocess.run([sys.executable, "-c", _CLOCK_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    # THEN none kept that clock: each asks chalicelib.clock when it needs the time (a module
    # holding `now` from `from chalicelib.clock import now` stamped builds with a stale time)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
