"""Deployment settings: read from the environment by app.py only, passed into the domain."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


def _list(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


@dataclass(frozen=True)
class Settings:
    stage: str = "dev"
    region: str = "us-east-1"
    table_name: str = "voltabuild-dev-builds"
    launch_queue_url: str = ""
    notify_queue_url: str = ""
    registry: str = "000000000000.dkr.ecr.us-east-1.amazonaws.com"
    api_url: str = ""
    cursor_key: str = "voltabuild-dev-cursor-key"
    local_api_key: str = ""
    max_active_builds: int = 20
    max_attempts: int = 3
    slack_channels: tuple[str, ...] = ("default",)
    # notifications (issue 8): the first of slack_channels is the default channel
    slack_parameter_prefix: str = "/voltabuild/dev/slack/"
    slack_webhook_cache_seconds: int = 300
    notify_on_start: bool = False
    notify_timeout_seconds: float = 5.0
    notify_max_attempts: int = 5

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        stage = env.get("VOLTABUILD_STAGE", "dev")
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(
            stage=stage,
            region=region,
            table_name=env.get("BUILDS_TABLE", f"voltabuild-{stage}-builds"),
            launch_queue_url=env.get("LAUNCH_QUEUE_URL", ""),
            notify_queue_url=env.get("NOTIFY_QUEUE_URL", ""),
            registry=env.get("IMAGE_REGISTRY", f"000000000000.dkr.ecr.{region}.amazonaws.com"),
            api_url=env.get("PUBLIC_API_URL", "").rstrip("/"),
            cursor_key=env.get("CURSOR_KEY", f"voltabuild-{stage}-cursor-key"),
            local_api_key=env.get("LOCAL_API_KEY", ""),
            max_active_builds=int(env.get("MAX_ACTIVE_BUILDS", "20")),
            max_attempts=int(env.get("MAX_ATTEMPTS", "3")),
            slack_channels=_list(env.get("SLACK_CHANNELS", "default")),
            slack_parameter_prefix=env.get("SLACK_WEBHOOK_PARAMETER_PREFIX", f"/voltabuild/{stage}/slack/"),
            slack_webhook_cache_seconds=int(env.get("SLACK_WEBHOOK_CACHE_SECONDS", "300")),
            notify_on_start=env.get("NOTIFY_ON_START", "false").strip().lower() in ("1", "true", "yes", "on"),
            notify_timeout_seconds=float(env.get("NOTIFY_HTTP_TIMEOUT", "5")),
            notify_max_attempts=int(env.get("NOTIFY_MAX_ATTEMPTS", "5")),
        )
