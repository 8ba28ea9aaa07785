"""The cloud's events a build answers to, parsed at the edge into typed read-only
wrappers (EventBridge's JSON never reaches the domain): EC2 state changes, spot
interruption warnings and ECR pushes. What they do to a build is lifecycle.py's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chalicelib.errors import VoltabuildError


class MalformedEvent(VoltabuildError):
    """An event that does not have the shape AWS documents: logged and dropped."""


def _detail(event: dict[str, Any], detail_type: str) -> dict[str, Any]:
    if not isinstance(event, dict) or event.get("detail-type") != detail_type:
        got = event.get("detail-type") if isinstance(event, dict) else type(event).__name__
        raise MalformedEvent(f"detail-type: expected {detail_type!r}, got {got!r}")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise MalformedEvent("detail: missing or not an object")
    return detail


def _str(detail: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = detail.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"detail.{key}: missing or not a string")
    return value


@dataclass(frozen=True)
class InstanceStateChange:
    """``EC2 Instance State-change Notification``."""

    instance_id: str
    state: str
    time: str = ""  # EventBridge's time of the change (when a final build's instance went)

    DETAIL_TYPE = "EC2 Instance State-change Notification"
    STATES = ("pending", "running", "stopping", "stopped", "shutting-down", "terminated")

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> InstanceStateChange:
        d = _detail(event, cls.DETAIL_TYPE)
        state = _str(d, "state")
        if state not in cls.STATES:
            raise MalformedEvent(f"detail.state: {state!r} is not one of {', '.join(cls.STATES)}")
        when = event.get("time")
        return cls(instance_id=_str(d, "instance-id"), state=state, time=when if isinstance(when, str) else "")


@dataclass(frozen=True)
class SpotInterruption:
    """``EC2 Spot Instance Interruption Warning`` (two minutes before the instance goes)."""

    instance_id: str
    action: str

    DETAIL_TYPE = "EC2 Spot Instance Interruption Warning"

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> SpotInterruption:
        d = _detail(event, cls.DETAIL_TYPE)
        return cls(instance_id=_str(d, "instance-id"), action=_str(d, "instance-action"))


@dataclass(frozen=True)
class ImagePushed:
    """``ECR Image Action``. ``repository`` is ``<account>.dkr.ecr.<region>.amazonaws.com/<name>``,
    the form builds record in ``image.repository``."""

    repository: str
    tag: str | None
    digest: str
    action: str
    result: str
    name: str = ""  # the repository name alone

    DETAIL_TYPE = "ECR Image Action"

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> ImagePushed:
        d = _detail(event, cls.DETAIL_TYPE)
        account, region = event.get("account"), event.get("region")
        if not isinstance(account, str) or not isinstance(region, str):
            raise MalformedEvent("account, region: missing")
        name = _str(d, "repository-name")
        return cls(
            name=name,
            repository=f"{account}.dkr.ecr.{region}.amazonaws.com/{name}",
            tag=_str(d, "image-tag", required=False),
            digest=_str(d, "image-digest"),
            action=_str(d, "action-type"),
            result=_str(d, "result"),
        )

    @property
    def successful_push(self) -> bool:
        return self.action == "PUSH" and self.result == "SUCCESS" and bool(self.tag)
