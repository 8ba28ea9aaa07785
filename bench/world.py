"""What every benchmark needs: the app's environment on an emulated AWS (moto in-process,
or a moto server over HTTP), build items seeded in bulk, a Slack stand-in, an API client.

Nothing here reaches beyond loopback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REGION = "us-east-1"
ACCOUNT = "123456789012"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
TOKEN = "bench-token-" + "x" * 32  # the per-attempt token the benchmarks' instance reports carry

BASE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
    "IMAGE_REGISTRY": REGISTRY,
    # the benchmarks hold thousands of active builds; the quota is not what they measure
    "MAX_ACTIVE_BUILDS": "100000",
    "PUBLIC_API_URL": "https://api.bench.invalid/api",
}


def base_environment() -> None:
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(var, None)
    os.environ.update(BASE_ENV)


# ---- a Slack stand-in ------------------------------------------------------------------
class SlackSink:
    """Answers every POST with Slack's ``ok``; counts them."""

    def __init__(self) -> None:
        sink = self
        self.posts = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 — http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sink.posts += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/services/bench"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---- the deployment's EC2 side ---------------------------------------------------------
@contextlib.contextmanager
def moto_in_process(*, slack_url: str | None = None) -> Iterator[dict[str, str]]:
    """moto's in-process AWS with voltabuild's resources (infra/resources.yaml), the app's
    environment pointing at them and every lazy object of chalicelib.wiring reset."""
    from chalicelib import wiring
    from infra.local import emulated_aws, prepare_ec2

    def prepare(session) -> dict[str, str]:
        if slack_url:
            session.client("ssm").put_parameter(Name="/voltabuild/dev/slack/default", Value=slack_url,
                                                Type="SecureString", Overwrite=True)
        return prepare_ec2(session, "voltabuild-bench-builder")

    base_environment()
    with emulated_aws(REGION, prepare=prepare) as (_session, resources):
        wiring.settings()  # cached now: chalice.test.Client's stage variables cannot change it
        yield resources


def api_client():
    """chalice.test.Client on the real app, stage dev."""
    from chalice.test import Client

    import app as app_module

    return Client(app_module.app, stage_name="dev", project_dir=str(ROOT))


# ---- build items in bulk ---------------------------------------------------------------
def planned_build(framework: str = "canary"):
    """A Build exactly as POST /builds would plan it (ids, defaults, tags, timeline)."""
    from chalicelib import wiring
    from chalicelib.builds.schemas import BuildRequest

    return wiring.builds().plan(BuildRequest(framework=framework))


def build_item(build, *, active: bool, extra: dict | None = None) -> dict:
    """The DynamoDB item of ``build`` as ``BuildStore.create`` writes it (the public record
    plus ``kind`` and ``created_key``, and ``active`` only while not final), with ``extra``
    attributes set as later writes would leave them."""
    from chalicelib.builds.store import to_av

    record = build.model_dump(mode="json")
    record.update(kind="build", created_key=f"{build.created_at}#{build.id}")
    if active:
        record["active"] = "1"
    record.update(extra or {})
    return {k: to_av(v) for k, v in record.items()}


def _iso(dt) -> str:
    from chalicelib.clock import iso

    return iso(dt)


def finished_item(i: int) -> dict:
    """The ``i``-th newest finished build, as the system leaves it: SUCCEEDED (digest
    recorded by the ECR push event, Slack message sent), FAILED or CANCELLED; no ``active``."""
    from chalicelib.builds.states import Status
    from chalicelib.clock import now

    build = planned_build()
    # a busy service: one build ending every 2 minutes, the newest 20 minutes ago
    end = now() - timedelta(minutes=20 + 2 * i)
    created, finished = _iso(end - timedelta(minutes=12)), _iso(end)
    status = (Status.SUCCEEDED, Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)[i % 4]
    digest = "sha256:" + hashlib.sha256(build.id.encode()).hexdigest()
    image = {**build.image.model_dump(mode="json"), "digest": digest if status == Status.SUCCEEDED else None}
    events = [e.model_dump(mode="json") for e in build.events]
    for e in events:
        e["at"] = created
    events.append({"at": finished, "status": status.value, "phase": None, "message": "benchmark history"})
    extra = {"status": status.value, "created_at": created, "updated_at": finished, "finished_at": finished,
             "created_key": f"{created}#{build.id}", "image": image, "events": events}
    extra["notification"] = {"status": "sent", "channel": "default"}
    if status == Status.SUCCEEDED:
        extra["ecr_digest"] = digest
    elif status == Status.FAILED:
        extra["reason"] = "benchmark history: the build failed"
    return build_item(build, active=False, extra=extra)


def running_item(instance_id: str | None = None) -> tuple[str, dict]:
    """A healthy RUNNING build (fresh heartbeat, deadline ahead), or a fresh QUEUED one when
    ``instance_id`` is None. Returns (build id, item)."""
    from chalicelib.builds.records import token_hash
    from chalicelib.builds.states import Status
    from chalicelib.clock import now

    build = planned_build()
    t = now()
    if instance_id is None:
        return build.id, build_item(build, active=True, extra={"queued_at": _iso(t)})
    extra = {
        "status": Status.RUNNING.value, "phase": "BUILDING", "instance_id": instance_id,
        "instance": {"id": instance_id, "type": "g5.xlarge", "az": "us-east-1a", "lifecycle": "spot",
                     "price": 0.42, "launched_at": _iso(t - timedelta(minutes=5))},
        "heartbeat_at": _iso(t), "deadline_at": _iso(t + timedelta(hours=2)),
        "token_hash": token_hash(TOKEN),
    }
    return build.id, build_item(build, active=True, extra=extra)


def batch_write(ddb, table: str, items: list[dict]) -> None:
    """BatchWriteItem, 25 a call, unprocessed items written again."""
    for i in range(0, len(items), 25):
        request = {table: [{"PutRequest": {"Item": it}} for it in items[i:i + 25]]}
        while request:
            request = ddb.batch_write_item(RequestItems=request).get("UnprocessedItems") or None


def add_quota_holders(ddb, table: str, build_ids: list[str]) -> None:
    """Seeded active builds hold a quota slot, as store.create would have given them."""
    from chalicelib.builds.store import QUOTA_ID

    for i in range(0, len(build_ids), 1000):
        ddb.update_item(TableName=table, Key={"id": {"S": QUOTA_ID}}, UpdateExpression="ADD ids :me",
                        ExpressionAttributeValues={":me": {"SS": build_ids[i:i + 1000]}})


def load_event(name: str, **detail) -> dict:
    event = json.loads((ROOT / "tests" / "events" / f"{name}.json").read_text())
    iid = detail.get("instance-id")
    if iid:
        event["resources"] = [r.rsplit("/", 1)[0] + "/" + iid for r in event["resources"]]
    event["detail"].update(detail)
    return event
