"""Helpers for the CLI tests: they drive `voltabuild` against the real API served over HTTP
by the shared ``live_api`` fixture (tests/conftest.py: moto server + ``chalice local``)."""

from __future__ import annotations

import pytest
import requests


# ---- helpers for the CLI tests ----------------------------------------------------
class FakeClock:
    """Monotonic time that moves only when the CLI sleeps; ``on_sleep`` lets a test act
    between two polls (move a build on, press Ctrl-C)."""

    def __init__(self, on_sleep=None) -> None:
        from datetime import UTC, datetime

        self.t = 0.0
        self.start = datetime.now(UTC)
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def monotonic(self) -> float:
        return self.t

    def now(self):
        from datetime import timedelta

        return self.start + timedelta(seconds=self.t)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        if self.on_sleep:
            self.on_sleep(self)


class Builds:
    """Direct access to the builds table behind the live API (to move builds on, as the
    launcher and the instance would) plus cleanup, so the quota of active builds never
    fills up across the session."""

    def __init__(self, api) -> None:
        from chalicelib.builds.store import BuildStore

        ddb = api.session().client("dynamodb")
        table = next(t for t in ddb.list_tables()["TableNames"] if t.endswith("-builds"))
        self.store = BuildStore(ddb, table, cursor_key=b"unused", max_active=50)
        self.api = api
        self.made: list[str] = []

    def submit(self, **body) -> dict:
        resp = requests.post(self.api.url + "/builds", json={"framework": "canary", **body},
                             headers={"x-api-key": self.api.api_key}, timeout=10)
        assert resp.status_code == 202, resp.text
        self.made.append(resp.json()["id"])
        return resp.json()

    def move(self, build_id: str, to: str, **kw) -> dict:
        from chalicelib.builds.states import Phase, Status

        if "phase" in kw and isinstance(kw["phase"], str):
            kw["phase"] = Phase(kw["phase"])
        item = self.store.move(build_id, Status(to), **kw)
        if Status(to).final:
            self.store.release_slot(build_id)
        return item

    def track(self, build_id: str) -> None:
        self.made.append(build_id)

    def cleanup(self) -> None:
        from chalicelib.builds.states import Status
        from chalicelib.errors import InvalidTransition

        for build_id in self.made:
            try:
                self.store.move(build_id, Status.CANCELLED, message="test cleanup")
            except InvalidTransition:
                pass
            self.store.release_slot(build_id)


@pytest.fixture
def builds(live_api):
    b = Builds(live_api)
    yield b
    b.cleanup()


@pytest.fixture
def cli(live_api, tmp_path):
    """Run ``voltabuild ARGS`` through click's runner against the live API, with an
    isolated home and working directory (no config file, no local.env) and a fake clock."""
    from click.testing import CliRunner
    from voltabuild_cli.main import Runtime
    from voltabuild_cli.main import cli as group

    def run(*args, env=None, clock=None, url=None, key=None, stderr_tty=False, session_factory=None):
        base = {
            "VOLTABUILD_API_URL": url if url is not None else live_api.url,
            "VOLTABUILD_API_KEY": key if key is not None else live_api.api_key,
            "VOLTABUILD_CONFIG": None,
            "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        }
        base.update(env or {})
        rt = Runtime(clock=clock or FakeClock(), cwd=tmp_path, home=tmp_path, stderr_tty=stderr_tty)
        if session_factory is not None:
            rt.session_factory = session_factory
        result = CliRunner().invoke(group, list(args), env=base, obj=rt, catch_exceptions=False,
                                   prog_name="voltabuild")
        result.clock = rt.clock
        return result

    return run


@pytest.fixture
def fake_clock():
    """The FakeClock class, to build one with an ``on_sleep`` hook."""
    return FakeClock
