"""AWS API calls per operation, counted with botocore's ``before-call`` event on every client
the app uses (one event per API call: a paginator's pages count one each, SDK retries of
the same call do not), against moto in-process.

Each operation runs through the app's real entry points (chalice.test.Client: HTTP routes,
SQS consumers, EventBridge handlers, the schedule) on realistic state, two or three times on
fresh subjects; the table shows the warm count (a warm Lambda's: cached lookups such as the
Slack webhook's SSM parameter are not read again) and any cold first call that differed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bench import world
from chalicelib.builds.records import BuildRecord, token_hash

# s3: a catalog build's context is a presigned GET (issue 19), signed locally: counted to show it
SERVICES = ("dynamodb", "sqs", "ec2", "ssm", "logs", "ecr", "s3")


class CallCounter:
    """Records ``service.Operation`` for every API call made by chalicelib.wiring's clients."""

    def __init__(self) -> None:
        self._calls: list[str] | None = None

    def attach(self) -> None:
        from chalicelib import wiring

        for name in SERVICES:
            wiring.client(name).meta.events.register("before-call", self._on_call)

    def _on_call(self, model, **_kwargs) -> None:
        if self._calls is not None:
            self._calls.append(f"{model.service_model.service_name}.{model.name}")

    @contextlib.contextmanager
    def measure(self) -> Iterator[list[str]]:
        self._calls = calls = []
        try:
            yield calls
        finally:
            self._calls = None


@dataclass
class Measured:
    name: str
    handler: str
    target: int | None  # the most calls allowed; None: informational
    runs: list[list[str]] = field(default_factory=list)
    outcome: str = ""

    @property
    def calls(self) -> list[str]:
        return self.runs[-1]

    @property
    def count(self) -> int:
        return len(self.calls)

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.count <= self.target

    def as_dict(self) -> dict:
        counts = [len(r) for r in self.runs]
        return {
            "operation": self.name, "handler": self.handler, "calls": self.count,
            "breakdown": dict(Counter(self.calls)), "sequence": self.calls, "runs": counts,
            "target": None if self.target is None else f"<= {self.target}", "met": self.met,
            "outcome": self.outcome,
        }


class Bench:
    def __init__(self, api, counter: CallCounter, resources: dict[str, str]) -> None:
        from chalicelib import wiring

        self.api = api
        self.counter = counter
        self.resources = resources
        self.wiring = wiring
        self.results: dict[str, Measured] = {}

    def run(self, name: str, handler: str, target: int | None, fn: Callable[[], object],
            after: Callable[[], object] | None = None) -> str:
        """Count the calls of ``fn``; ``after`` (not counted) reads what it did."""
        m = self.results.setdefault(name, Measured(name, handler, target))
        with self.counter.measure() as calls:
            result = fn()
        m.runs.append(list(calls))
        m.outcome = str(after() if after else result)
        return m.outcome

    # ---- the entry points -------------------------------------------------------------
    def http(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        kw = {"headers": {"Content-Type": "application/json", **(headers or {})}}
        if body is not None:
            kw["body"] = json.dumps(body)
        resp = getattr(self.api.http, method.lower())(path, **kw)
        return resp.status_code, (json.loads(resp.body) if resp.body else None)

    def sqs(self, handler: str, queue: str, body: dict) -> str:
        event = self.api.events.generate_sqs_event(message_bodies=[json.dumps(body)],
                                                   queue_name=f"voltabuild-dev-{queue}")
        self.api.lambda_.invoke(handler, event)
        return "consumed"

    def event(self, handler: str, event: dict) -> str:
        return self.api.lambda_.invoke(handler, event).payload.get("outcome", "?")

    def record(self, build_id: str) -> BuildRecord:
        return self.wiring.store().get_record(build_id)

    def give_token(self, build_id: str) -> None:
        """The launcher's token is only in the user-data: put a known one's hash in its place."""
        self.wiring.store().update_fields(build_id, {"token_hash": token_hash(world.TOKEN)})


def _expect(status: int, got: tuple[int, dict | None], what: str) -> dict:
    if got[0] != status:
        raise RuntimeError(f"{what}: expected HTTP {status}, got {got[0]}: {got[1]}")
    return got[1] or {}


def operations(b: Bench) -> None:
    """Every route and handler of the app, on builds that move through a whole life."""
    ids: list[str] = []

    def submit() -> str:
        body = _expect(202, b.http("POST", "/builds", {"framework": "canary"}), "submit")
        ids.append(body["id"])
        return body["status"]

    for _ in range(4):
        b.run("submit (POST /builds)", "submit_build", 2, submit)
    for bid in ids[:3]:
        b.run("get (GET /builds/{id})", "get_build", 1,
              lambda bid=bid: _expect(200, b.http("GET", f"/builds/{bid}"), "get")["status"])
    for _ in range(3):
        b.run("list page (GET /builds)", "list_builds", 1,
              lambda: f"{len(_expect(200, b.http('GET', '/builds?limit=20'), 'list')['builds'])} builds")
    for path, view in (("/health", "health"), ("/frameworks", "frameworks"), ("/openapi.json", "openapi")):
        b.run(f"GET {path}", view, 0, lambda path=path: _expect(200, b.http("GET", path), path) and "200")

    # launch consumer: QUEUED -> LAUNCHING with a spot instance; the message is the one submit
    # sent (a new build's carries its timeout: the launcher writes before it reads)
    for bid in ids[:3]:
        msg = {"build_id": bid, "attempt": 1, "timeout_minutes": b.record(bid).timeout_minutes}
        b.run("launch consumer (SQS launch queue)", "launcher", 3,
              lambda msg=msg: b.sqs("launcher", "launch", msg),
              after=lambda bid=bid: b.record(bid).status.value)
    a, c, d = ids[:3]
    # EC2 running: LAUNCHING -> RUNNING
    for bid in (a, c, d):
        iid = b.record(bid).instance_id
        b.run("EC2 state change: running", "on_instance_state", 2,
              lambda iid=iid: b.event("on_instance_state", world.load_event("ec2-state-running", **{"instance-id": iid})))
    for bid in (a, c, d):
        b.give_token(bid)
    auth = {"Authorization": f"Bearer {world.TOKEN}"}
    # the instance's reports
    for bid, phase in ((a, "BUILDING"), (c, "BUILDING"), (a, "TESTING")):
        b.run("report: phase (POST /builds/{id}/events)", "report_event", 2,
              lambda bid=bid, phase=phase: _expect(202, b.http("POST", f"/builds/{bid}/events",
                                                            {"type": "phase", "phase": phase}, auth), "phase")["phase"])
    for bid in (a, c):
        b.run("report: heartbeat (POST /builds/{id}/events)", "report_event", 2,
              lambda bid=bid: _expect(202, b.http("POST", f"/builds/{bid}/events", {"type": "heartbeat"}, auth),
                                      "heartbeat")["status"])
    digest = "sha256:" + hashlib.sha256(a.encode()).hexdigest()
    b.run("report: result SUCCEEDED (POST /builds/{id}/events)", "report_event", 2,
          lambda: _expect(202, b.http("POST", f"/builds/{a}/events",
                                      {"type": "result", "status": "SUCCEEDED", "digest": digest}, auth),
                          "result")["status"])
    # the instance of the build that succeeded terminates itself: its time is recorded (terminate lag)
    iid = b.record(a).instance_id
    b.wiring.client("ec2").terminate_instances(InstanceIds=[iid])
    b.run("EC2 state change: terminated (build final)", "on_instance_state", 2,
          lambda: b.event("on_instance_state", world.load_event("ec2-state-terminated", **{"instance-id": iid})),
          after=lambda: "terminate lag " + str(b.wiring.store().get(a).segments.get("terminate_lag")))
    b.run("logs page (GET /builds/{id}/logs)", "build_logs", None,
          lambda: f"{len(_expect(200, b.http('GET', f'/builds/{a}/logs'), 'logs')['lines'])} lines")
    # ECR push of the image build `a` reported
    rec = b.record(a)
    registry, _, repo = rec.image.repository.partition("/")
    for tag in rec.image.tags[:2]:
        event = world.load_event("ecr-image-push", **{"repository-name": repo, "image-tag": tag, "image-digest": digest})
        event["account"], event["region"] = registry.split(".")[0], world.REGION
        b.run("ECR image push", "on_image_pushed", 2, lambda event=event: b.event("on_image_pushed", event))
    # spot interruption: RUNNING -> QUEUED as attempt 2, launch message sent
    iid = b.record(c).instance_id
    # (3: its index copy, its relaunch, the launch message; as when issue 21 was filed)
    b.run("EC2 spot interruption warning", "on_spot_interruption", 3,
          lambda: b.event("on_spot_interruption", world.load_event("ec2-spot-interruption", **{"instance-id": iid})))
    # terminated under a running build: FAILED with the log's last lines (the stream the host
    # wrote), its termination and cost in the same write. 5: the index copy, why EC2 ended it,
    # the log's tail, the write, the notification (5 when issue 21 was filed, before costs)
    iid = b.record(d).instance_id
    logs, group = b.wiring.client("logs"), b.wiring.settings().build_log_group
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=d)
    logs.put_log_events(logGroupName=group, logStreamName=d, logEvents=[
        {"timestamp": int(time.time() * 1000), "message": f"step {i}/40"} for i in range(40)])
    b.wiring.client("ec2").terminate_instances(InstanceIds=[iid])
    b.run("EC2 state change: terminated", "on_instance_state", 5,
          lambda: b.event("on_instance_state", world.load_event("ec2-state-terminated", **{"instance-id": iid})))
    # cancel a queued build
    b.run("cancel (DELETE /builds/{id})", "cancel_build", None,
          lambda: _expect(200, b.http("DELETE", f"/builds/{ids[3]}"), "cancel")["status"])
    # notify consumer: the final states of a, d and ids[3] (the first read of the webhook is cold)
    for bid in (a, d, ids[3]):
        status = b.record(bid).status.value
        b.run("notify consumer (SQS notify queue)", "notify_consumer", 3,
              lambda bid=bid, status=status: b.sqs("notify_consumer", "notify", {"build_id": bid, "status": status}),
              after=lambda bid=bid: "slack message " + getattr(b.record(bid).notification, "status", "?"))


def reaper_ticks(b: Bench, on_progress: Callable[[str], None], many: int = 10_000) -> list[dict]:
    """Reaper ticks with 10 and 1,000 healthy active builds, 0, 100 and ``many`` finished."""
    ddb = b.wiring.client("dynamodb")
    ec2 = b.wiring.client("ec2")
    table = b.resources["BuildsTable"]
    out: list[dict] = []
    active: list[str] = []
    finished = 0

    def add_active(n: int) -> None:
        items, ids = [], []
        for i in range(n):
            iid = None
            if i % 2 == 0:  # half RUNNING on a live, tagged instance; half freshly QUEUED
                iid = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="g5.xlarge",
                                        InstanceMarketOptions={"MarketType": "spot"})["Instances"][0]["InstanceId"]
            bid, item = world.running_item(iid)
            if iid:
                ec2.create_tags(Resources=[iid], Tags=[
                    {"Key": "voltabuild:build-id", "Value": bid}, {"Key": "voltabuild:stage", "Value": "dev"},
                    {"Key": "voltabuild:attempt", "Value": "1"}])
            items.append(item)
            ids.append(bid)
        world.batch_write(ddb, table, items)
        world.add_quota_holders(ddb, table, ids)
        active.extend(ids)

    def add_finished(n: int) -> None:
        nonlocal finished
        world.batch_write(ddb, table, [world.finished_item(finished + i) for i in range(n)])
        finished += n

    scheduled = b.api.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event", detail={},
                                               resources=[], region=world.REGION)

    def tick() -> None:
        b.api.lambda_.invoke("reaper", scheduled)  # settle: what the seeding left to do (nothing, normally)
        name = f"reaper tick: {len(active):,} active, {finished:,} finished"
        t = time.perf_counter()
        outcome = b.run(name, "reaper", None, lambda: json.dumps(b.api.lambda_.invoke("reaper", scheduled).payload))
        m = b.results[name]
        on_progress(f"{name}: {m.count} calls ({time.perf_counter() - t:.1f} s)")
        out.append({"active": len(active), "finished": finished, "calls": m.count,
                    "breakdown": dict(Counter(m.calls)), "outcome": outcome})

    add_active(10)
    tick()
    add_finished(100)
    tick()
    add_finished(many - 100)
    tick()
    add_active(990)
    tick()
    return out
