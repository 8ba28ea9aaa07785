"""`voltabuild logs` and the log line in `wait`'s progress.

The logs route reads CloudWatch Logs. Its paging is exercised here against a small
loopback server speaking the route's contract (``{"lines": [{"at","message"}], "next":
cursor}``, the cursor returned even when nothing new came, as CloudWatch's forward token
is; or null, the older draft of the contract), because moto does not make CloudWatch
tokens move the way a growing stream does. The live API is used where it can be.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import requests

BID = "b-0123456789abcdef0123"


class FakeLogApi:
    """The build and logs routes of the API, with a log that grows between polls."""

    def __init__(self, *, page_size: int = 2, null_next_at_end: bool = False, logs_route: bool = True) -> None:
        self.lines: list[str] = []
        self.status = "RUNNING"
        self.page_size = page_size
        self.null_next_at_end = null_next_at_end
        self.logs_route = logs_route
        self.requests: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                u = urlparse(self.path)
                api.requests.append(self.path)
                if u.path == f"/builds/{BID}":
                    return self._send(200, {"id": BID, "status": api.status, "phase": None,
                                            "created_at": "2026-01-01T00:00:00.000Z",
                                            "finished_at": "2026-01-01T00:10:00.000Z"})
                if u.path == f"/builds/{BID}/logs" and api.logs_route:
                    q = parse_qs(u.query)
                    start = int(q.get("next", ["f/0"])[0].split("/")[1])
                    chunk = api.lines[start:start + api.page_size]
                    end = start + len(chunk)
                    nxt = f"f/{end}"
                    if api.null_next_at_end and end == len(api.lines):
                        nxt = None
                    return self._send(200, {"build_id": BID, "lines": [
                        {"at": f"2026-01-01T00:00:{i:02d}.000Z", "message": m}
                        for i, m in enumerate(chunk, start)], "next": nxt})
                return self._send(403, {"message": "Missing Authentication Token"})

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api():
    made = []

    def make(**kw):
        api = FakeLogApi(**kw)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


@pytest.mark.parametrize("null_next_at_end", [False, True])
def test_logs_prints_every_page_once(cli, fake_api, null_next_at_end):
    api = fake_api(null_next_at_end=null_next_at_end)
    api.lines = [f"step {i}" for i in range(5)]
    r = cli("logs", BID, url=api.url)
    assert r.exit_code == 0
    assert [ln.split("  ", 1)[1] for ln in r.stdout.splitlines()] == [f"step {i}" for i in range(5)]
    assert r.stdout.splitlines()[0].startswith("00:00:00")


@pytest.mark.parametrize("null_next_at_end", [False, True])
def test_logs_follow_shows_new_lines_once_until_the_build_ends(cli, fake_api, null_next_at_end, fake_clock):
    api = fake_api(null_next_at_end=null_next_at_end)
    api.lines = ["preparing host"]
    growth = [["building", "layer 1/3"], [], ["layer 2/3", "layer 3/3", "smoke test ok"]]

    def grow(clock):
        if growth:
            api.lines.extend(growth.pop(0))
        if not growth:
            api.status = "SUCCEEDED"
            api.lines.append("pushed")

    r = cli("logs", BID, "--follow", "--json", url=api.url, clock=fake_clock(on_sleep=grow))
    assert r.exit_code == 0, r.stderr
    got = [json.loads(ln)["message"] for ln in r.stdout.splitlines()]
    assert got == ["preparing host", "building", "layer 1/3", "layer 2/3", "layer 3/3", "smoke test ok", "pushed"]


def test_logs_without_a_logs_route_says_so(cli, fake_api):
    api = fake_api(logs_route=False)
    r = cli("logs", BID, url=api.url)
    assert r.exit_code == 1
    assert "does not serve build logs" in r.stderr and f"voltabuild status {BID}" in r.stderr


def test_wait_shows_the_latest_log_line_on_a_terminal(cli, fake_api, fake_clock):
    api = fake_api()
    api.lines = ["Step 1/4 : FROM busybox", "Step 2/4 : COPY entrypoint.sh"]

    def finish(clock):
        api.lines.append("Step 3/4 : RUN --check")
        api.status = "SUCCEEDED"

    r = cli("wait", BID, url=api.url, clock=fake_clock(on_sleep=finish), stderr_tty=True)
    assert r.exit_code == 0
    frames = r.stderr.split("\r\x1b[K")[1:]
    assert frames[0].rstrip().endswith("Step 2/4 : COPY entrypoint.sh")
    assert frames[-1].rstrip().endswith("Step 3/4 : RUN --check") and "SUCCEEDED" in frames[-1]


def test_wait_without_a_logs_route_still_waits(cli, fake_api):
    api = fake_api(logs_route=False)
    api.status = "FAILED"
    r = cli("wait", BID, url=api.url)
    assert r.exit_code == 1 and "FAILED" in r.stdout


# ---- the live API -----------------------------------------------------------------
def test_logs_of_an_unknown_build_is_a_usage_error(cli):
    r = cli("logs", "b-00000000000000000000")
    assert r.exit_code == 2 and "no build with id" in r.stderr


def test_logs_from_cloudwatch_through_the_live_api(cli, builds, live_api):
    b = builds.submit()
    probe = requests.get(f"{live_api.url}/builds/{b['id']}/logs", headers={"x-api-key": live_api.api_key})
    if probe.status_code == 403 and probe.json().get("message") == "Missing Authentication Token":
        pytest.skip("the API has no GET /builds/{id}/logs route yet")
    logs = live_api.session().client("logs")
    group = "/voltabuild/builds"
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    logs.create_log_stream(logGroupName=group, logStreamName=b["id"])
    import time

    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=group, logStreamName=b["id"],
                        logEvents=[{"timestamp": now + i, "message": f"line {i}"} for i in range(3)])
    r = cli("logs", b["id"], "--json")
    assert r.exit_code == 0, r.stderr
    assert [json.loads(ln)["message"] for ln in r.stdout.splitlines()] == ["line 0", "line 1", "line 2"]


@pytest.mark.parametrize("status, says", [
    ("FAILED", "is FAILED and has no log"),
    ("RUNNING", "no log lines for " + BID + " yet (it is RUNNING)"),
])
def test_logs_with_no_lines_says_whether_more_can_come(cli, fake_api, status, says):
    # GIVEN a build whose instance shipped nothing
    api = fake_api()
    api.status = status
    # WHEN its log is asked for
    r = cli("logs", BID, url=api.url)
    # THEN a final build says plainly that none will come; a running one that they may
    assert r.exit_code == 0 and r.stdout == ""
    assert says in r.stderr
    assert ("yet" in r.stderr) == (status == "RUNNING")
