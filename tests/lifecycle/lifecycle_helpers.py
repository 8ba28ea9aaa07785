"""Helpers for the lifecycle tests (a uniquely named module, so no other conftest shadows it): builds launched the way the launcher leaves them (an
instance started in moto with voltabuild's tags, the build LAUNCHING with its instance
fields), AWS-shaped events from tests/events/, and a clock the tests move."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path

EVENTS = Path(__file__).resolve().parent.parent / "events"


def load_event(name: str, **detail) -> dict:
    event = json.loads((EVENTS / f"{name}.json").read_text())
    event = copy.deepcopy(event)
    iid = detail.get("instance-id")
    if iid:
        event["resources"] = [r.rsplit("/", 1)[0] + "/" + iid for r in event["resources"]]
    event["detail"].update(detail)
    return event


class FakeClock:
    def __init__(self, start) -> None:
        self.at = start

    def __call__(self):
        return self.at

    def advance(self, **delta) -> None:
        self.at += timedelta(**delta)


class World:
    """The app's real objects over the ``aws`` mock, plus what the launcher would do."""

    def __init__(self, aws) -> None:
        from chalicelib import wiring

        self.aws = aws
        self.wiring = wiring
        self.ec2 = aws.client("ec2")

    @property
    def store(self):
        return self.wiring.store()

    def submit(self, **request) -> str:
        from chalicelib.builds.schemas import BuildRequest

        build, _ = self.wiring.builds().submit(BuildRequest(framework="canary", **request))
        return build.id

    def run_instance(self, build_id: str, attempt: int, *, stage: str = "dev", extra_tags: dict | None = None) -> str:
        tags = {"voltabuild:build-id": build_id, "voltabuild:stage": stage, "voltabuild:attempt": str(attempt),
                **(extra_tags or {})}
        resp = self.ec2.run_instances(
            ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="g5.xlarge",
            InstanceMarketOptions={"MarketType": "spot"},
            TagSpecifications=[{"ResourceType": "instance",
                                "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )
        return resp["Instances"][0]["InstanceId"]

    def launch(self, build_id: str, *, timeout_minutes: int = 15, attempt: int | None = None) -> str | None:
        """What the launcher does for a launch message: QUEUED -> LAUNCHING with an instance
        (or, for a split build's test stage, an instance on the RUNNING build, issue 23).
        Returns the instance id, or None when the build was not QUEUED (message ignored)."""
        from chalicelib import clock
        from chalicelib.builds.states import Status
        from chalicelib.builds.store import at_attempt, in_stage, without_instance
        from chalicelib.errors import InvalidTransition

        record = self.store.get_record(build_id)
        test_stage = (record.status == Status.RUNNING and record.split and record.stage == "test"
                      and not record.instance_id)
        if (record.status != Status.QUEUED and not test_stage) or record.cancel_requested:
            return None
        if attempt is not None and attempt != record.attempt:
            return None  # a stale launch message
        attempt = record.attempt
        stage = record.stage if record.split else None
        iid = self.run_instance(build_id, attempt, extra_tags={"voltabuild:build-stage": stage} if stage else None)
        now = clock.now()
        info = {"id": iid, "type": "g5.xlarge", "az": "us-east-1a", "lifecycle": "spot", "price": 0.5,
                "launched_at": clock.iso(now)}
        fields = {"instance_id": iid, "instance": info,
                  "deadline_at": clock.iso(now + timedelta(minutes=timeout_minutes)),
                  **({f"stages.{stage}.instance": info} if stage else {})}
        try:
            if test_stage:
                self.store.update_fields(build_id, fields, expect=[Status.RUNNING],
                                         extra_condition=at_attempt(attempt) & in_stage("test") & without_instance())
            else:
                self.wiring.transitions().move(
                    build_id, Status.LAUNCHING, expect=[Status.QUEUED], message=f"launched {iid}",
                    fields=fields, extra_condition=at_attempt(attempt),
                )
        except InvalidTransition:
            self.ec2.terminate_instances(InstanceIds=[iid])
            return None
        return iid

    def state(self, instance_id: str) -> str:
        resp = self.ec2.describe_instances(InstanceIds=[instance_id])
        return resp["Reservations"][0]["Instances"][0]["State"]["Name"]

    def tags(self, instance_id: str) -> dict[str, str]:
        resp = self.ec2.describe_instances(InstanceIds=[instance_id])
        return {t["Key"]: t["Value"] for t in resp["Reservations"][0]["Instances"][0].get("Tags", [])}

    def get(self, build_id: str) -> dict:
        """The stored build as plain data (the fields the item holds)."""
        return self.store.get_record(build_id).model_dump(mode="json", exclude_unset=True)

    def final_notifications(self) -> list[dict]:
        return [m for m in self.aws.messages("NotifyQueue") if m.get("status") in
                ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")]


class CallLog:
    """The AWS API calls the app's clients make, as ``service.Operation`` (botocore's
    ``before-call`` event: one per call, SDK retries not counted)."""

    SERVICES = ("dynamodb", "sqs", "ec2", "logs", "ecr", "ssm")

    def __init__(self) -> None:
        from chalicelib import wiring

        self.calls: list[str] = []
        for name in self.SERVICES:
            wiring.client(name).meta.events.register("before-call", self._on_call)

    def _on_call(self, model, **_kwargs) -> None:
        self.calls.append(f"{model.service_model.service_name}.{model.name}")

    def take(self) -> list[str]:
        """The calls since the last take."""
        calls, self.calls = self.calls, []
        return calls


class Died(BaseException):
    """A Lambda dying between two AWS calls (a BaseException: no domain code catches it)."""


class Crasher:
    """Makes one handler invocation die before its ``n``-th AWS call (botocore's
    ``before-call`` event on the app's clients)."""

    def __init__(self) -> None:
        self.armed: int | None = None
        self.count = 0
        self._attached: set[int] = set()

    def _attach(self) -> None:
        from chalicelib import wiring

        for name in CallLog.SERVICES:
            client = wiring.client(name)
            if id(client) not in self._attached:
                client.meta.events.register("before-call", self._on_call)
                self._attached.add(id(client))

    def _on_call(self, **_kwargs) -> None:
        if self.armed is None:
            return
        self.count += 1
        if self.count == self.armed:
            self.armed = None
            raise Died(f"died before AWS call {self.count}")

    def during(self, n: int, fn) -> bool:
        """Run ``fn`` dying before its ``n``-th AWS call; True if it died."""
        self._attach()
        self.armed, self.count = n, 0
        try:
            fn()
        except Died:
            return True
        finally:
            self.armed = None
        return False
