"""The local worker: runs the app's non-HTTP handlers against the emulated AWS.

- every ``@app.on_sqs_message`` handler gets the messages of its queue, as Lambda would;
- every ``@app.schedule`` handler runs every ``--reaper-seconds``;
- every ``@app.on_cw_event`` handler gets the EventBridge events that match its pattern;
- the executor plays each EC2 instance the launcher started in moto: it runs that
  instance's own user-data on this machine (``VOLTABUILD_LOCAL=1``: only the cloud-only
  steps are skipped) and turns what actually happened into the events AWS would send
  (instance running, image pushed, instance terminated). It plays only instances the
  launcher recorded on their build: anything else that appears in moto (a hand-made or
  hostile ``RunInstances``) is terminated without its user-data ever running here.
  A split build (issue 23) is two instances, played one after the other like any others:
  the build stage's user-data pushes the candidate to the local registry and reports
  BUILT; the test stage's pulls it by digest, smoke-tests it and promotes the tags.

Handlers are discovered from ``app.event_sources``: nothing here names them.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from voltabuild_local.registry import digest_of

log = logging.getLogger("voltabuild.worker")
ACCOUNT = "123456789012"


class LambdaContext:
    def __init__(self, name: str) -> None:
        self.function_name = name
        self.aws_request_id = str(uuid.uuid4())
        self.memory_limit_in_mb = 512
        self._deadline = time.monotonic() + 300

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def matches(pattern: Any, event: Any) -> bool:
    """EventBridge matching for the pattern forms the app uses: nested objects, lists of
    allowed values (a list-valued field matches when any element is allowed)."""
    if isinstance(pattern, dict):
        if not isinstance(event, dict):
            return False
        return all(k in event and matches(v, event[k]) for k, v in pattern.items())
    if isinstance(pattern, list):
        values = event if isinstance(event, list) else [event]
        return any(v in pattern for v in values)
    return pattern == event


def ec2_state_event(region: str, instance_id: str, state: str) -> dict:
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2", "account": ACCOUNT, "time": _now(), "region": region,
        "resources": [f"arn:aws:ec2:{region}:{ACCOUNT}:instance/{instance_id}"],
        "detail": {"instance-id": instance_id, "state": state},
    }


def ecr_push_event(region: str, repository: str, tag: str, digest: str) -> dict:
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "ECR Image Action",
        "source": "aws.ecr", "account": ACCOUNT, "time": _now(), "region": region, "resources": [],
        "detail": {"result": "SUCCESS", "repository-name": repository, "image-digest": digest,
                   "action-type": "PUSH", "image-tag": tag},
    }


class Dispatcher:
    """Finds the app's event handlers and calls them with Lambda-shaped events."""

    def __init__(self, app_module, session) -> None:
        from chalice.app import CloudWatchEventConfig, ScheduledEventConfig, SQSEventConfig

        self.module = app_module
        self.sqs = session.client("sqs")
        self.region = session.region_name
        sources = app_module.app.event_sources
        self.queues = [s for s in sources if isinstance(s, SQSEventConfig)]
        self.cw = [s for s in sources if isinstance(s, CloudWatchEventConfig)]
        self.schedules = [s for s in sources if isinstance(s, ScheduledEventConfig)]
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()

    def _call(self, name: str, event: dict) -> bool:
        handler = getattr(self.module, name)
        try:
            with self._lock:  # one invocation at a time, like one Lambda container
                handler(event, LambdaContext(name))
            return True
        except Exception:  # noqa: BLE001 — a supervisor: log the handler's bug, keep serving
            log.exception("handler %s failed on %s", name, json.dumps(event)[:500])
            return False

    def _queue_url(self, cfg) -> str:
        name = cfg.queue or cfg.queue_arn.rsplit(":", 1)[-1]
        if name not in self._urls:
            self._urls[name] = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
        return self._urls[name]

    def poll_queues(self) -> int:
        handled = 0
        for cfg in self.queues:
            url = self._queue_url(cfg)
            resp = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=min(cfg.batch_size, 10),
                                            AttributeNames=["All"])
            msgs = resp.get("Messages", [])
            if not msgs:
                continue
            name = url.rsplit("/", 1)[-1]
            event = {"Records": [{
                "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                "attributes": m.get("Attributes", {}), "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs", "eventSourceARN": f"arn:aws:sqs:{self.region}:{ACCOUNT}:{name}",
                "awsRegion": self.region,
            } for m in msgs]}
            if self._call(cfg.name, event):
                for m in msgs:
                    self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            handled += len(msgs)
        return handled

    def emit(self, event: dict) -> None:
        log.info("event %s %s", event["detail-type"], json.dumps(event["detail"]))
        for cfg in self.cw:
            if matches(cfg.event_pattern, event):
                self._call(cfg.name, event)

    def run_schedules(self) -> None:
        for cfg in self.schedules:
            self._call(cfg.name, {
                "version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event",
                "source": "aws.events", "account": ACCOUNT, "time": _now(), "region": self.region,
                "resources": [f"arn:aws:events:{self.region}:{ACCOUNT}:rule/{cfg.name}"], "detail": {},
            })


def detect_builder() -> str | None:
    """docker where a Docker engine answers, else buildah (as root), else None."""
    if shutil.which("docker"):
        ok = subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
        if ok:
            return "docker"
    if shutil.which("buildah") and os.geteuid() == 0:
        return "buildah"
    return None


class Executor:
    """Plays the EC2 instances: runs each one's user-data as the instance would."""

    def __init__(self, session, dispatcher: Dispatcher, state_dir: Path, builder: str | None,
                 registry: str, parallel: int = 2, record_wait_s: float = 30.0) -> None:
        self.ec2 = session.client("ec2")
        self.dispatcher = dispatcher
        self.dir = state_dir / "instances"
        self.builder = builder
        self.registry = registry
        self.push_lock = state_dir / "registry-push.lock"
        self.record_wait_s = record_wait_s
        self.pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="instance")
        self.seen: set[str] = set()
        self.procs: set[subprocess.Popen] = set()

    def stop_all(self) -> None:
        """The worker is stopping: every instance it plays goes away with it."""
        for proc in list(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.pool.shutdown(wait=True, cancel_futures=True)

    def scan(self) -> None:
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": "tag-key", "Values": ["voltabuild:build-id"]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ])
        for page in pages:
            for res in page["Reservations"]:
                for inst in res["Instances"]:
                    iid = inst["InstanceId"]
                    if iid not in self.seen:
                        self.seen.add(iid)
                        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                        self.pool.submit(self._play, iid, tags)

    def _state(self, iid: str) -> str:
        resp = self.ec2.describe_instances(InstanceIds=[iid])
        return resp["Reservations"][0]["Instances"][0]["State"]["Name"]

    def _user_data(self, iid: str) -> bytes:
        attr = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
        raw = base64.b64decode(attr.get("UserData", {}).get("Value", ""))
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw

    def _play(self, iid: str, tags: dict[str, str]) -> None:
        try:
            self._run_instance(iid, tags)
        except Exception:  # noqa: BLE001 — a supervisor: a crash here must still end the instance
            log.exception("executor failed on %s", iid)
        finally:
            self._terminate(iid)

    def _recorded(self, iid: str, build_id: str):
        """The build record once the launcher has recorded ``iid`` on it (it does so right
        after RunInstances), or None when it never does within ``record_wait_s``."""
        from chalicelib import wiring
        from chalicelib.errors import BuildNotFound

        deadline = time.monotonic() + self.record_wait_s
        while True:
            try:
                record = wiring.store().get_record(build_id)
            except BuildNotFound:
                record = None
            if record is not None and record.instance_id == iid:
                return record
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)

    def _run_instance(self, iid: str, tags: dict[str, str]) -> None:
        build_id = tags.get("voltabuild:build-id", "")
        record = self._recorded(iid, build_id)
        if record is None:
            log.warning("%s is not recorded on build %r by the launcher: not running its user-data", iid, build_id,
                        extra={"build_id": build_id})
            return
        workdir = self.dir / iid
        workdir.mkdir(parents=True, exist_ok=True)
        script = workdir / "user-data"
        script.write_bytes(self._user_data(iid))
        self.dispatcher.emit(ec2_state_event(self.dispatcher.region, iid, "running"))
        if self.builder is None:
            log.error("%s: neither a Docker engine nor buildah (as root) is available; the build cannot run", iid)
            return
        repo = record.image.repository.split("/", 1)[1]
        before = {t: self._digest(repo, t) for t in record.image.tags}
        # the venv's bin first: the script's `aws` (CloudWatch Logs) is the AWS CLI installed there
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "PATH": path, "VOLTABUILD_LOCAL": "1", "VOLTABUILD_BUILDER": self.builder,
               "VOLTABUILD_WORKDIR": str(workdir), "VOLTABUILD_PUSH_LOCK": str(self.push_lock)}
        with open(workdir / "console.log", "wb") as out:
            proc = subprocess.Popen(["bash", str(script)], cwd=workdir, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            self.procs.add(proc)
            while proc.poll() is None:
                time.sleep(1)
                if self._state(iid) in ("shutting-down", "terminated", "stopping", "stopped"):
                    log.info("%s was terminated while its script ran: stopping it", iid)
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
        self.procs.discard(proc)
        log.info("%s: user-data exited with %s", iid, proc.returncode)
        for tag, old in before.items():
            new = self._digest(repo, tag)
            if new and new != old:
                self.dispatcher.emit(ecr_push_event(self.dispatcher.region, repo, tag, new))

    def _digest(self, repo: str, tag: str) -> str | None:
        return digest_of(self.registry, repo, tag)

    def _terminate(self, iid: str) -> None:
        if self._state(iid) != "terminated":
            self.ec2.terminate_instances(InstanceIds=[iid])
            self.dispatcher.emit(ec2_state_event(self.dispatcher.region, iid, "shutting-down"))
        self.dispatcher.emit(ec2_state_event(self.dispatcher.region, iid, "terminated"))


def main() -> None:
    ap = argparse.ArgumentParser(description="voltabuild local worker")
    ap.add_argument("--reaper-seconds", type=float, default=20.0)
    ap.add_argument("--poll-seconds", type=float, default=0.3)
    ap.add_argument("--parallel", type=int, default=max(2, 2 * (os.cpu_count() or 1)),
                    help="instances played at once (default: two per CPU)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    import app as app_module

    session = boto3.session.Session()
    state_dir = Path(os.environ.get("VOLTABUILD_LOCAL_STATE", ".voltabuild"))
    dispatcher = Dispatcher(app_module, session)
    builder = detect_builder()
    log.info("builder: %s; handlers: queues=%s events=%s schedules=%s", builder,
             [c.name for c in dispatcher.queues], [c.name for c in dispatcher.cw],
             [c.name for c in dispatcher.schedules])
    executor = Executor(session, dispatcher, state_dir, builder, os.environ["IMAGE_REGISTRY"],
                        parallel=max(1, args.parallel))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    next_reap = time.monotonic() + args.reaper_seconds
    while not stop.is_set():
        busy = dispatcher.poll_queues()
        executor.scan()
        if time.monotonic() >= next_reap:
            dispatcher.run_schedules()
            next_reap = time.monotonic() + args.reaper_seconds
        if not busy:
            stop.wait(args.poll_seconds)
    executor.stop_all()


if __name__ == "__main__":
    main()
