"""The stored build: :class:`BuildRecord`, the public :class:`Build` plus the internal
fields only the service reads. The store returns it from every read and every write;
``record.public()`` is what the API may show.

Item layout (table keyed by ``id``):
- a build: the fields below; ``created_key`` (``created_at#id``) is the sort key of every
  index, ``active`` exists only while the build is not final (the sparse index the reaper
  reads);
- ``idem#<sha256>``: an Idempotency-Key, the body's hash and the build it made;
- ``quota#active``, ``quota#key#<key>``: the string sets of active build ids (of the stage,
  of one API key); ``quota#gpuh#<key>#<day>``: GPU-hours one key booked that UTC day.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.builds.schemas import Build, NotificationInfo


def token_hash(token: str) -> str:
    """What the record keeps of a build attempt's report token (sha256, hex)."""
    return hashlib.sha256(token.encode()).hexdigest()


class HostFailure(BaseModel):
    """One attempt whose host failed (driver, GPU): its instance type is tried last."""

    model_config = ConfigDict(extra="ignore")

    attempt: int
    instance_type: str | None = None
    reason: str = ""


class DeliveryClaim(NotificationInfo):
    """The notifier's bookkeeping of one Slack message: the public part plus the claim's
    ``token`` (replaced on every write, the optimistic-concurrency check) and lease."""

    model_config = ConfigDict(extra="ignore")

    token: str = ""
    lease_until: int = 0
    updated_at: str | None = None
    retry_in_seconds: int | None = None


class BuildRecord(Build):
    """A build as stored, internal fields included. Never returned by the API as is
    (``public()`` drops what only the service may read: the token hash above all)."""

    model_config = ConfigDict(extra="ignore")

    kind: str = "build"
    created_key: str = ""
    active: str | None = None
    owner_key: str | None = None  # the API key that submitted it (its per-key quota)
    queued_at: str | None = None  # when its launch message is due (the reaper's grace)
    launch_started_at: str | None = None
    launch_rounds: int = 0  # launch rounds without capacity in this attempt
    spot_reclaims: int = 0
    instance_id: str | None = None  # the current attempt's instance, once recorded
    token_hash: str | None = None  # sha256 of the current attempt's report token
    host_failures: list[HostFailure] = Field(default_factory=list)
    ecr_digest: str | None = None  # the digest ECR's push event reported
    digest_checked: bool = False  # the reaper asked ECR about a SUCCEEDED build
    notification: DeliveryClaim | None = None  # the final outcome's Slack message
    start_notification: DeliveryClaim | None = None  # the optional "started" message

    @classmethod
    def of(cls, item: dict) -> BuildRecord:
        return cls.model_validate(item)

    def public(self) -> Build:
        return Build.model_validate(self.model_dump(include=set(Build.model_fields)))

    def delivery(self, started: bool) -> DeliveryClaim | None:
        """The bookkeeping of the "started" message or of the final one."""
        return self.start_notification if started else self.notification
