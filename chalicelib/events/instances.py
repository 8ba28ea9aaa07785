"""EC2 helpers for the lifecycle: the instances voltabuild launched, found by their tags,
terminated idempotently, and marked in two phases before an orphan is terminated.

Every instance the launcher starts carries ``voltabuild:build-id``, ``voltabuild:stage``
and ``voltabuild:attempt``. Only instances of this deployment's stage are ever touched,
and an instance tagged ``voltabuild:keep`` is never terminated as an orphan.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

TAG_BUILD = "voltabuild:build-id"
TAG_STAGE = "voltabuild:stage"
TAG_ATTEMPT = "voltabuild:attempt"
TAG_BUILD_STAGE = "voltabuild:build-stage"  # a split build's stage, build or test (issue 23)
TAG_ORPHAN = "voltabuild:orphan-seen-at"
TAG_KEEP = "voltabuild:keep"

ALIVE = ("pending", "running")
# an instance id that does not exist (any more) is already as terminated as it gets
_GONE = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}
SPOT_RECLAIMED = "Server.SpotInstanceTermination"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaggedInstance:
    id: str
    state: str
    tags: dict[str, str] = field(default_factory=dict)
    state_reason: str | None = None
    type: str | None = None
    az: str | None = None
    lifecycle: str = "on-demand"
    launched_at: str | None = None

    @property
    def build_id(self) -> str | None:
        return self.tags.get(TAG_BUILD)

    @property
    def attempt(self) -> int | None:
        value = self.tags.get(TAG_ATTEMPT, "")
        return int(value) if value.isdigit() else None

    @property
    def keep(self) -> bool:
        return TAG_KEEP in self.tags

    @property
    def orphan_seen_at(self) -> str | None:
        return self.tags.get(TAG_ORPHAN)

    @classmethod
    def from_api(cls, data: dict) -> TaggedInstance:
        return cls(
            id=data["InstanceId"],
            state=data.get("State", {}).get("Name", "unknown"),
            tags={t["Key"]: t["Value"] for t in data.get("Tags", [])},
            state_reason=(data.get("StateReason") or {}).get("Code"),
            type=data.get("InstanceType"),
            az=(data.get("Placement") or {}).get("AvailabilityZone"),
            lifecycle="spot" if data.get("InstanceLifecycle") == "spot" else "on-demand",
            launched_at=data["LaunchTime"].isoformat() if hasattr(data.get("LaunchTime"), "isoformat") else None,
        )


class Instances:
    """The EC2 side of a stage's builds. Takes a boto3 EC2 client."""

    def __init__(self, ec2, stage: str) -> None:
        self._ec2 = ec2
        self.stage = stage

    def terminate(self, instance_ids: Iterable[str]) -> None:
        """Terminate instances; ids that no longer exist are ignored (idempotent)."""
        ids = sorted({i for i in instance_ids if i})
        if not ids:
            return
        try:
            self._ec2.terminate_instances(InstanceIds=ids)
        except ClientError as e:
            if e.response["Error"]["Code"] not in _GONE:
                raise
            if len(ids) > 1:  # one bad id fails the whole call: retry the others one by one
                for one in ids:
                    self.terminate([one])
            else:
                log.info("instance %s is gone already", ids[0])

    def describe(self, instance_id: str) -> TaggedInstance | None:
        """One instance, whatever its state (terminated ones stay visible for a while)."""
        try:
            resp = self._ec2.describe_instances(InstanceIds=[instance_id])
        except ClientError as e:
            if e.response["Error"]["Code"] in _GONE:
                return None
            raise
        for res in resp.get("Reservations", []):
            for inst in res.get("Instances", []):
                return TaggedInstance.from_api(inst)
        return None

    def alive(self) -> Iterator[TaggedInstance]:
        """Every pending or running instance of this stage tagged with a build id
        (one paged DescribeInstances)."""
        paginator = self._ec2.get_paginator("describe_instances")
        pages = paginator.paginate(Filters=[
            {"Name": "tag-key", "Values": [TAG_BUILD]},
            {"Name": f"tag:{TAG_STAGE}", "Values": [self.stage]},
            {"Name": "instance-state-name", "Values": list(ALIVE)},
        ])
        for page in pages:
            for res in page.get("Reservations", []):
                for inst in res.get("Instances", []):
                    yield TaggedInstance.from_api(inst)

    def mark_orphan(self, instance_id: str, seen_at: str) -> None:
        self._ec2.create_tags(Resources=[instance_id], Tags=[{"Key": TAG_ORPHAN, "Value": seen_at}])

    def unmark_orphan(self, instance_id: str) -> None:
        self._ec2.delete_tags(Resources=[instance_id], Tags=[{"Key": TAG_ORPHAN}])
