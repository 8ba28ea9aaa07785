"""A small, deterministic simulation of one build's life through the real handlers, with a
crash injectable before any AWS call of any handler invocation (issue 16).

The world is moto (in-process) plus:
- SQS: the launch and notify queues are drained and each message is handed to its consumer
  (the ``launcher`` and ``notify_consumer`` Lambdas, through chalice.test.Client); a
  consumer that dies leaves its message to be delivered again;
- EventBridge: EC2 ``running``/``terminated`` and ECR push events are made from what moto
  shows (new instances, terminated ones, pushed tags) and delivered to the app's handlers;
  a handler that dies gets the event again (async invocations are retried);
- the instance: a host that follows a script (its reports, with the token from its own
  user-data and its instance id, retried once on a 5xx like curl), pushes to moto ECR,
  reports, then shuts itself down; its trap reports FAILED when the instance is terminated
  under it;
- a user: ``DELETE /builds/{id}`` (retried once if the API died);
- the schedule: a reaper tick whenever nothing else is left to do, with the clock moved on.

A crash is a :class:`Died` raised from botocore's ``before-call`` event on the N-th AWS
call of the chosen handler invocation: the Lambda dies there, before that call. It is a
``BaseException``, so no domain code can swallow it.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from lifecycle_helpers import load_event

from chalicelib.launching.hostscript import script_of

SERVICES = ("dynamodb", "sqs", "ec2", "logs", "ecr", "ssm")
ALIVE = ("pending", "running")


class Died(BaseException):
    """The Lambda dying between two AWS calls."""


@dataclass
class Invocation:
    """One handler invocation and the AWS calls it made (``service.Operation``)."""

    handler: str
    calls: list[str] = field(default_factory=list)
    crashed_at: int | None = None  # 1-based: the call it died before


class CallHook:
    """botocore ``before-call`` on every client the app uses: records each invocation's
    calls and raises :class:`Died` before call ``at`` of invocation ``invocation``."""

    def __init__(self) -> None:
        self.current: Invocation | None = None
        self.log: list[Invocation] = []
        self.crash: tuple[int, int] | None = None  # (invocation index, call number)
        self._attached: set[int] = set()

    def attach(self) -> None:
        from chalicelib import wiring

        for name in SERVICES:
            client = wiring.client(name)
            if id(client) not in self._attached:
                client.meta.events.register("before-call", self._on_call)
                self._attached.add(id(client))

    def _on_call(self, model, **_kwargs) -> None:
        inv = self.current
        if inv is None:
            return
        inv.calls.append(f"{model.service_model.service_name}.{model.name}")
        if self.crash == (len(self.log) - 1, len(inv.calls)):
            self.crash = None
            inv.crashed_at = len(inv.calls)
            raise Died(f"{inv.handler} died before call {len(inv.calls)} ({inv.calls[-1]})")

    def invoke(self, handler: str, fn: Callable[[], object]) -> tuple[bool, object]:
        """Run one handler invocation; returns (died, result)."""
        self.attach()
        self.current = inv = Invocation(handler)
        self.log.append(inv)
        try:
            return False, fn()
        except Died:
            return True, None
        finally:
            self.current = None


@dataclass
class HostScript:
    """What the instance does, one step a turn: ``phases`` reported in order, then (when
    ``result`` is set) the push and the result; ``hang_after`` stops it silently after that
    many phases (a hung host: the instance stays up, the reports stop)."""

    phases: tuple[str, ...] = ("PREPARING", "BUILDING", "TESTING", "PUSHING")
    result: str | None = "SUCCEEDED"
    hang_after: int | None = None


class Host:
    """The host script on one instance."""

    def __init__(self, world: Sim, iid: str, script: HostScript) -> None:
        self.world = world
        self.iid = iid
        self.script = script
        self.step = 0
        self.done = False
        self.token = world.user_data_token(iid)
        # a split build's stage (issue 23): the build stage pushes a candidate and reports
        # BUILT; the test stage promotes the requested tags to it and reports SUCCEEDED
        self.stage = world.stage_of(iid)
        if self.stage == "build":
            self.script = HostScript(phases=("PREPARING", "BUILDING", "PUSHING"), result="BUILT",
                                     hang_after=script.hang_after)
        elif self.stage == "test":
            self.script = HostScript(phases=("PREPARING", "TESTING", "PUSHING"), result=script.result,
                                     hang_after=script.hang_after)

    def turn(self) -> bool:
        """One step; False when there was nothing to do."""
        if self.done:
            return False
        w = self.world
        if w.seen_state.get(self.iid) not in ALIVE:  # terminated under it: its trap reports FAILED
            self.done = True
            if self.iid in w.interrupted:
                return True  # ... unless IMDS shows a spot interruption: the service retries
            w.report(self.token, self.iid, {"type": "result", "status": "FAILED",
                                            "reason": "interrupted by SIGTERM"})
            return True
        phases = self.script.phases
        if self.script.hang_after is not None and self.step >= self.script.hang_after:
            return False
        if self.step < len(phases):
            if phases[self.step] == "PUSHING" and self.script.result in ("SUCCEEDED", "BUILT"):
                w.push_image(self.iid, candidate=self.script.result == "BUILT", promote=self.stage == "test")
            w.report(self.token, self.iid, {"type": "phase", "phase": phases[self.step],
                                            "message": phases[self.step].lower(),
                                            **({"stage": self.stage} if self.stage else {})})
            self.step += 1
            return True
        self.done = True
        if self.script.result == "SUCCEEDED":
            ok = w.report(self.token, self.iid, {"type": "result", "status": "SUCCEEDED", "digest": w.digest,
                                                 "message": "pushed"})
            if not ok:  # the script dies: its trap reports a failure
                w.report(self.token, self.iid, {"type": "result", "status": "FAILED",
                                                "reason": "the image was pushed but the result could not be reported"})
        elif self.script.result == "BUILT":
            w.report(self.token, self.iid, {"type": "result", "status": "BUILT", "digest": w.digest})
        elif self.script.result == "FAILED":
            w.report(self.token, self.iid, {"type": "result", "status": "FAILED", "reason": "the build failed"})
        w.shutdown(self.iid)
        return True


class Sim:
    """One build's world; see the module doc."""

    def __init__(self, aws, api, sink, clock, hook: CallHook, *, script: HostScript,
                 cancel_after_phases: int | None = None, timeout_minutes: int | None = None,
                 interrupt_after_phases: int | None = None, split: bool = False,
                 interrupt_stage: str | None = None) -> None:
        from chalicelib import wiring

        self.split = split  # a split build (issue 23): two instances, build then test
        self.interrupt_stage = interrupt_stage  # the stage whose (first) instance spot reclaims

        self.aws = aws
        self.api = api
        self.sink = sink
        self.clock = clock
        self.hook = hook
        self.wiring = wiring
        self.ec2 = aws.client("ec2")  # the world's own clients: never counted, never crashed
        self.ecr = aws.client("ecr")
        self.script = script
        self.cancel_after_phases = cancel_after_phases
        self.cancel_done = False
        self.timeout_minutes = timeout_minutes
        self.interrupt_after_phases = interrupt_after_phases
        self.interrupted: set[str] = set()  # instances EC2 reclaimed (spot): not the system's doing
        self.hosts: dict[str, Host] = {}
        self.events: list[tuple[str, dict]] = []
        self.seen_state: dict[str, str] = {}
        self.self_terminated: set[str] = set()
        self.violations: list[str] = []
        self.build_id = ""
        self.digest = ""
        self.manifest = ""
        self.pushed = False

    # ---- the build ---------------------------------------------------------------------
    def submit(self) -> str:
        from chalicelib.builds.schemas import BuildRequest

        extra = {"timeout_minutes": self.timeout_minutes} if self.timeout_minutes else {}
        if self.split:
            extra["split"] = True
        build, _ = self.wiring.builds().submit(BuildRequest(framework="canary", tags=["nightly"], **extra))
        self.build_id = build.id
        return build.id

    def record(self) -> dict:
        """The stored build as plain data (the fields the item holds)."""
        return self.wiring.store().get_record(self.build_id).model_dump(mode="json", exclude_unset=True)

    # ---- the instance side -------------------------------------------------------------
    def instances(self) -> list[dict]:
        resp = self.ec2.describe_instances(Filters=[{"Name": "tag:voltabuild:build-id", "Values": [self.build_id]}])
        return [i for r in resp["Reservations"] for i in r["Instances"]]

    def instance_state(self, iid: str) -> str:
        resp = self.ec2.describe_instances(InstanceIds=[iid])
        return resp["Reservations"][0]["Instances"][0]["State"]["Name"]

    def user_data_token(self, iid: str) -> str:
        raw = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
        return re.search(r"^readonly TOKEN=(\S+)$", script_of(base64.b64decode(raw)), re.M).group(1)

    def report(self, token: str, iid: str, body: dict) -> bool:
        """POST a report as curl does (one retry when the API died); True on a 2xx."""
        for _ in range(2):
            died, resp = self.hook.invoke("report_event", lambda: self.api.http.post(
                f"/builds/{self.build_id}/events", body=json.dumps({**body, "instance_id": iid}),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}))
            if not died:
                return 200 <= resp.status_code < 300
        return False

    def stage_of(self, iid: str) -> str | None:
        inst = self.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}.get("voltabuild:build-stage")

    def push_image(self, iid: str = "", *, candidate: bool = False, promote: bool = False) -> None:
        """Push the image: under the requested tags, or (a split build's build stage) under
        its candidate tag only; ``promote``: the test stage puts the candidate's manifest
        under the requested tags (the same digest)."""
        image = self.record()["image"]
        name = image["repository"].split("/", 1)[1]
        tags = image["tags"]
        if candidate:
            tags = [f"candidate-{self.build_id}-{self._tag_attempt(iid)}"]
        manifest = self.manifest if promote else json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                               "config": {"digest": "sha256:" + "c" * 64, "size": 1,
                                          "mediaType": "application/vnd.docker.container.image.v1+json"},
                               "layers": [], "annotations": {"build": self.build_id}})
        self.manifest = manifest
        for tag in tags:
            out = self.ecr.put_image(repositoryName=name, imageManifest=manifest, imageTag=tag)
            self.digest = out["image"]["imageId"]["imageDigest"]
        self.events.append(("on_image_pushed", load_event(
            "ecr-image-push", **{"repository-name": name, "image-tag": tags[0], "image-digest": self.digest})))
        self.pushed = not candidate

    def shutdown(self, iid: str) -> None:
        self.self_terminated.add(iid)
        self.ec2.terminate_instances(InstanceIds=[iid])

    # ---- EventBridge, SQS, the user, the schedule ---------------------------------------
    def _watch_instances(self) -> None:
        """Turn what moto shows into EC2 events (and start a host on each new instance)."""
        for inst in self.instances():
            iid, state = inst["InstanceId"], inst["State"]["Name"]
            before = self.seen_state.get(iid)
            if state == before:
                continue
            self.seen_state[iid] = state
            if state == "running" and before in (None, "pending"):
                self.events.append(("on_instance_state", load_event("ec2-state-running", **{"instance-id": iid})))
                self.hosts[iid] = Host(self, iid, self.script)
            elif state in ("shutting-down", "terminated") and before in (None, *ALIVE):
                self._check_termination(iid)
                self.events.append(("on_instance_state", load_event("ec2-state-terminated", **{"instance-id": iid})))

    def _check_termination(self, iid: str) -> None:
        """The system may terminate an instance only once its build is final, cancelled, or
        no longer on it (a relaunch, an orphan)."""
        if iid in self.self_terminated or iid in self.interrupted:
            return
        rec = self.record()
        current = rec.get("instance_id") == iid or (
            not rec.get("instance_id") and self._tag_attempt(iid) == int(rec.get("attempt", 1)))
        if current and rec["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT") \
                and not rec.get("cancel_requested"):
            self.violations.append(f"{iid} terminated while its build was {rec['status']}")

    def _tag_attempt(self, iid: str) -> int | None:
        inst = self.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        return int(tags["voltabuild:attempt"]) if tags.get("voltabuild:attempt", "").isdigit() else None

    def _drain(self, logical: str) -> list[dict]:
        return self.aws.messages(logical)

    def _consume(self, handler: str, queue: str, logical: str) -> bool:
        did = False
        for body in self._drain(logical):
            event = self.api.events.generate_sqs_event(message_bodies=[json.dumps(body)], queue_name=queue)
            died, _ = self.hook.invoke(handler, lambda event=event: self.api.lambda_.invoke(handler, event))
            if died:  # the message was not deleted: SQS delivers it again
                self.aws.client("sqs").send_message(QueueUrl=self.aws.resources[logical], MessageBody=json.dumps(body))
            did = True
        return did

    def _fire_events(self) -> bool:
        did = bool(self.events)
        events, self.events = self.events, []
        for handler, event in events:
            for _ in range(3):  # EventBridge retries a failed async invocation
                died, _ = self.hook.invoke(handler, lambda h=handler, e=event: self.api.lambda_.invoke(h, e))
                if not died:
                    break
        return did

    def _user(self) -> bool:
        if self.cancel_after_phases is None or self.cancel_done:
            return False
        host = next(iter(self.hosts.values()), None)
        if host is None or host.step < self.cancel_after_phases:
            return False
        self.cancel_done = True
        for _ in range(2):  # a 502 from a dead Lambda: the user runs the command again
            died, _ = self.hook.invoke("cancel_build", lambda: self.api.http.delete(f"/builds/{self.build_id}"))
            if not died:
                break
        return True

    def _spot(self) -> bool:
        """EC2 reclaims the first instance once its host reported ``interrupt_after_phases``
        phases: the two-minute warning, then the instance goes."""
        if self.interrupt_after_phases is None or self.interrupted:
            return False
        host = next((h for h in self.hosts.values() if h.stage == self.interrupt_stage), None)
        if host is None or host.step < self.interrupt_after_phases:
            return False
        self.interrupted.add(host.iid)
        self.events.append(("on_spot_interruption",
                            load_event("ec2-spot-interruption", **{"instance-id": host.iid})))
        self.ec2.terminate_instances(InstanceIds=[host.iid])
        return True

    def tick(self) -> None:
        scheduled = self.api.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event", detail={},
                                                      resources=[], region="us-east-1")
        self.hook.invoke("reaper", lambda: self.api.lambda_.invoke("reaper", scheduled))

    def settled(self) -> bool:
        rec = self.record()
        final = rec["status"] in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
        alive = [i for i in self.instances() if i["State"]["Name"] in ALIVE]
        return final and not alive and "notification" in rec and not self.events

    def run(self, max_turns: int = 80) -> bool:
        """Turns until the build is final, every instance gone and its message handled;
        False if that did not happen within ``max_turns``."""
        self.hook.attach()
        self._consume("launcher", "voltabuild-dev-launch", "LaunchQueue")
        idle = 0
        for _ in range(max_turns):
            did = self._consume("launcher", "voltabuild-dev-launch", "LaunchQueue")
            self._watch_instances()
            did = self._fire_events() or did
            did = self._user() or did
            did = self._spot() or did
            for host in list(self.hosts.values()):
                did = host.turn() or did
            self._watch_instances()
            did = self._consume("notify_consumer", "voltabuild-dev-notify", "NotifyQueue") or did
            if did:
                idle = 0
                continue
            if self.settled() and idle >= 1:
                return True
            idle += 1
            self.clock.advance(minutes=6)
            self.tick()
        return False

    def slack_messages(self) -> list[dict]:
        return [p for p in self.sink.posted() if self.build_id in json.dumps(p)]
