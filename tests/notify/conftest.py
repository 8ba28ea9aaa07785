"""Fixtures for the Slack notification tests: a scripted webhook sink on loopback, the
webhook URLs in moto SSM, builds moved to each final state, and a Notifier with
recorded (not real) sleeps."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chalicelib.queues import Queue


@dataclass
class Reply:
    """One scripted answer. ``hang`` seconds: the sink waits, then drops the connection
    without answering and posts nothing (Slack's gateway stuck; the client times out)."""

    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0


@dataclass
class Received:
    path: str
    payload: dict
    reply: Reply

    @property
    def posted(self) -> bool:
        return self.reply.status == 200 and not self.reply.hang


class Sink:
    """An incoming-webhook stand-in: answers POSTs from a script (then 200 "ok")."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 — http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                payload = json.loads(self.rfile.read(length) or b"{}")
                with sink._lock:
                    reply = sink.script.popleft() if sink.script else Reply()
                    sink.received.append(Received(self.path, payload, reply))
                if reply.hang:
                    time.sleep(reply.hang)
                    self.close_connection = True
                    return
                data = reply.body.encode()
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def then(self, *replies: Reply) -> Sink:
        self.script.extend(replies)
        return self

    def posted(self, path: str | None = None) -> list[dict]:
        """The messages Slack would have shown (answered 200), optionally for one hook."""
        return [r.payload for r in self.received if r.posted and (path is None or r.path == path)]

    def __enter__(self) -> Sink:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink():
    with Sink() as s:
        yield s


class RecordingQueue(Queue):
    """The notify queue, keeping what was sent (with its delay) for the test to replay."""

    def __init__(self) -> None:
        super().__init__(None, "recording")
        self.sent: list[tuple[dict, int]] = []

    def send(self, body: dict, *, delay_seconds: int = 0) -> None:
        self.sent.append((body, delay_seconds))


@pytest.fixture
def slack(aws, sink, monkeypatch):
    """SLACK_CHANNELS=default,alerts with their webhooks (sink URLs) in SSM SecureStrings;
    PUBLIC_API_URL set. Returns the hook URLs by channel."""
    from chalicelib import wiring

    hooks = {ch: f"{sink.url}/hooks/T000/B000/{ch}-s3cr3t-token" for ch in ("default", "alerts")}
    ssm = aws.client("ssm")
    for ch, url in hooks.items():
        ssm.put_parameter(Name=f"/voltabuild/dev/slack/{ch}", Value=url, Type="SecureString", Overwrite=True)
    monkeypatch.setenv("SLACK_CHANNELS", "default,alerts")
    monkeypatch.setenv("PUBLIC_API_URL", "https://api.example.test/api/")
    wiring.reset()
    return hooks


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def notifier_factory(aws, slack, sleeps):
    """A Notifier like wiring's, with a short HTTP timeout, recorded sleeps and a
    recording queue, so retries take no wall-clock time beyond the sink's own."""
    from chalicelib import wiring
    from chalicelib.notifications.notify import Notifier
    from chalicelib.notifications.slack_delivery import SlackSender
    from chalicelib.notifications.webhooks import WebhookDirectory

    def make(**kw):
        s = wiring.settings()
        queue = kw.pop("queue", None) or RecordingQueue()
        sender = SlackSender(timeout=kw.pop("timeout", 0.5), max_retries=kw.pop("max_retries", 2),
                             max_inline_wait=kw.pop("max_inline_wait", 10.0), sleep=sleeps.append)
        webhooks = kw.pop("webhooks", None) or WebhookDirectory(wiring.client("ssm"), s.slack_parameter_prefix)
        opts = dict(api_url=s.api_url, channels=s.slack_channels, max_attempts=3, retry_base_seconds=30)
        opts.update(kw)
        return Notifier(wiring.store(), queue, webhooks, sender, **opts)

    return make


@pytest.fixture
def make_build(aws):
    """Submit a canary build and move it to a final state the way the lifecycle does.
    Returns the build id; the notify queue holds the final event."""
    from chalicelib import wiring
    from chalicelib.builds.schemas import BuildRequest
    from chalicelib.builds.states import Phase, Status

    def make(final: Status = Status.SUCCEEDED, *, notify=True, reason: str | None = None,
             launched: bool = True) -> str:
        build, _ = wiring.builds().submit(BuildRequest(framework="canary", notify=notify, tags=["nightly"]))
        t = wiring.transitions()
        if launched:
            t.move(build.id, Status.LAUNCHING, fields={
                "instance": {"id": "i-0123456789abcdef0", "type": "g5.xlarge", "az": "us-east-1a",
                             "lifecycle": "spot", "price": 0.4, "launched_at": build.created_at},
                "instance_id": "i-0123456789abcdef0",
            })
            t.move(build.id, Status.RUNNING, phase=Phase.PREPARING)
        fields = {}
        if final == Status.SUCCEEDED:
            fields["image"] = {"repository": build.image.repository, "tags": build.image.tags,
                               "digest": "sha256:" + "ab" * 32}
        if reason:
            fields["reason"] = reason
        t.move(build.id, final, fields=fields, message=f"build {final.value.lower()}")
        return build.id

    return make


@pytest.fixture
def make_group(aws):
    """Submit a matrix (pytorch 2.5.1 and 2.6.0 on CUDA 12.4, Python 3.11, by default) and
    return its group id and cell ids; ``finish(cell_id, status)`` moves a cell to its end
    the way the lifecycle does (the notify queue then holds its final event)."""
    from chalicelib import wiring
    from chalicelib.builds.matrix import MatrixRequest
    from chalicelib.builds.states import Phase, Status

    def make(notify=True, versions=("2.5.1", "2.6.0")) -> tuple[str, list[str]]:
        req = MatrixRequest.model_validate({"framework": "pytorch", "cuda": "12.4", "python": "3.11", "notify": notify,
                                            "matrix": {"version": list(versions)}})
        group, created = wiring.groups().submit(req, idempotency_key=None, api_key_id="local")
        assert created
        return group.id, [c.id for c in group.cells]

    def finish(build_id: str, final: Status = Status.SUCCEEDED, reason: str | None = None,
               terminated_after: int | None = None) -> None:
        t = wiring.transitions()
        build = wiring.store().get_record(build_id)
        iid = "i-" + build_id[2:19]
        t.move(build_id, Status.LAUNCHING, fields={
            "instance": {"id": iid, "type": "g5.xlarge", "az": "us-east-1a", "lifecycle": "spot", "price": 0.4,
                         "launched_at": build.created_at},
            "instance_id": iid,
        })
        t.move(build_id, Status.RUNNING, phase=Phase.PREPARING)
        fields = {"reason": reason} if reason else {}
        if final == Status.SUCCEEDED:
            fields["image"] = {"repository": build.image.repository, "tags": build.image.tags,
                               "digest": "sha256:" + "cd" * 32}
        t.move(build_id, final, fields=fields, message=f"build {final.value.lower()}")
        if terminated_after is not None:  # EC2 said the instance terminated: the cost is final
            from datetime import timedelta

            from chalicelib import clock
            at = clock.iso(clock.parse(build.created_at) + timedelta(seconds=terminated_after))
            wiring.store().update_fields(build_id, {"instance_terminated_at": at}, expect=[final])

    make.finish = finish
    return make
