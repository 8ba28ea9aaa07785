"""Deployment settings: read from the environment by wiring.py only, passed into the domain."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation


def _list(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


_AMI_SOURCE = re.compile(r"^(ami-[0-9a-f]{8,17}|/[A-Za-z0-9_./-]{1,2000})$")
_FAMILY = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
# Spot prices (USD/hour) recorded when spot price history has none: rough us-east-1 figures.
DEFAULT_SPOT_PRICES = "p3.2xlarge=0.92,g4dn.xlarge=0.22,g5.xlarge=0.42,g6.xlarge=0.36"
# us-east-1 Linux on-demand list prices, USD/h: the facts and their sources are
# chalicelib/costs/billing.py ON_DEMAND_FACTS (some unconfirmed); a deployment sets its own
DEFAULT_ON_DEMAND_PRICES = "p3.2xlarge=3.06,g4dn.xlarge=0.526,g5.xlarge=1.006,g6.xlarge=0.8048"


def _prices(value: str | None) -> tuple[tuple[str, float], ...]:
    """``type=price,type=price`` -> pairs (a malformed entry is a deployment error: it raises)."""
    out = []
    for item in _list(value):
        name, _, price = item.partition("=")
        out.append((name.strip(), float(price)))
    return tuple(out)


def _ami_overrides(value: str | None) -> tuple[tuple[str, str], ...]:
    """``family=ami-…|/ssm/parameter,…`` -> pairs (a malformed entry is a deployment error: it raises)."""
    out = []
    for item in _list(value):
        family, _, source = (x.strip() for x in item.partition("="))
        if not _FAMILY.match(family) or not _AMI_SOURCE.match(source):
            raise ValueError(f"AMI_OVERRIDES: {item!r} is not FAMILY=ami-<hex> or FAMILY=/ssm/parameter/path")
        out.append((family, source))
    return tuple(out)


class ConfigurationError(RuntimeError):
    """The deployment's settings are unsafe or broken: the function refuses to serve."""


# ---- abuse, integrity and blast radius ----
MIN_CURSOR_KEY_HEX = 32  # 128 bits, as hex (scripts/deploy.sh draws 256)


def check_cursor_key(value: str) -> bytes:
    """The list-cursor signing key as bytes; a missing, short or non-hex key is refused
    (a guessable key lets anyone forge cursors)."""
    v = value.strip()
    if len(v) < MIN_CURSOR_KEY_HEX or any(c not in "0123456789abcdefABCDEF" for c in v):
        raise ConfigurationError(
            f"CURSOR_KEY must be at least {MIN_CURSOR_KEY_HEX} random hex characters "
            "(scripts/deploy.sh and the local stack draw one); refusing to start without it"
        )
    return v.encode()


@dataclass(frozen=True)
class Settings:
    stage: str = "dev"
    region: str = "us-east-1"
    table_name: str = "voltabuild-dev-builds"
    launch_queue_url: str = ""
    notify_queue_url: str = ""
    registry: str = "000000000000.dkr.ecr.us-east-1.amazonaws.com"
    api_url: str = ""
    cursor_key: str = ""  # required where cursors are signed: see check_cursor_key
    local_api_key: str = ""
    max_active_builds: int = 20
    max_attempts: int = 3
    slack_channels: tuple[str, ...] = ("default",)
    # notifications: the first of slack_channels is the default channel
    slack_parameter_prefix: str = "/voltabuild/dev/slack/"
    slack_webhook_cache_seconds: int = 300
    notify_on_start: bool = False
    notify_timeout_seconds: float = 5.0
    notify_max_attempts: int = 5
    # event-driven lifecycle: the reaper's thresholds
    launch_grace_minutes: int = 10
    stale_heartbeat_minutes: int = 15
    orphan_grace_minutes: int = 4
    digest_grace_minutes: int = 15

    # launcher and host script
    build_log_group: str = "/voltabuild/builds"
    # AMIs: each family's AMI comes from buildspecs/_hardware.yaml unless a
    # deployment overrides it: ami_overrides per family, else ami_id / ami_parameter for all
    ami_parameter: str = ""
    ami_id: str = ""
    ami_overrides: tuple[tuple[str, str], ...] = ()
    subnet_ids: tuple[str, ...] = ()
    security_group_id: str = ""
    instance_profile: str = ""
    on_demand_fallback: bool = False
    launch_max_retries: int = 5
    spot_price_table: tuple[tuple[str, float], ...] = ()
    on_demand_price_table: tuple[tuple[str, float], ...] = ()  # what an on-demand instance costs (issue 22)
    heartbeat_seconds: int = 60
    vcs_ref: str = "unknown"
    vcs_url: str = ""

    # ---- spend guards: stage ceilings and per-API-key quotas ----
    # MAX_INSTANCE_SIZES: "family=size,...", "*" for every other family (e.g. "*=2xlarge,p5=4xlarge")
    max_instance_sizes: tuple[tuple[str, str], ...] = ()
    max_price_ceiling: float | None = None
    max_timeout_minutes: int | None = None
    # every tag of this stage's builds starts with it ("dev__"); the deployment sets it for
    # every stage but prod, which shares the ECR repositories (infra/deploy.yaml)
    image_tag_prefix: str = ""
    max_active_builds_per_key: int | None = None  # None: no per-key limit (the stages set them)
    max_gpu_hours_per_key_day: float | None = None
    # ---- build your own (issue 20): the uploaded contexts bucket ----
    contexts_bucket: str = ""
    context_max_bytes: int = 2 * 1024**3
    context_upload_seconds: int = 300
    context_expiry_days: int = 7
    git_allow_loopback_http: bool = False  # the local stack only: git over http://127.0.0.1
    # ---- costs (issue 22): a submit whose worst case would cross it is refused (None: no budget) ----
    monthly_budget_usd: Decimal | None = None

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
            cursor_key=env.get("CURSOR_KEY", ""),
            local_api_key=env.get("LOCAL_API_KEY", ""),
            max_active_builds=int(env.get("MAX_ACTIVE_BUILDS", "20")),
            max_attempts=int(env.get("MAX_ATTEMPTS", "3")),
            slack_channels=_list(env.get("SLACK_CHANNELS", "default")),
            slack_parameter_prefix=env.get("SLACK_WEBHOOK_PARAMETER_PREFIX", f"/voltabuild/{stage}/slack/"),
            slack_webhook_cache_seconds=int(env.get("SLACK_WEBHOOK_CACHE_SECONDS", "300")),
            notify_on_start=env.get("NOTIFY_ON_START", "false").strip().lower() in ("1", "true", "yes", "on"),
            notify_timeout_seconds=float(env.get("NOTIFY_HTTP_TIMEOUT", "5")),
            notify_max_attempts=int(env.get("NOTIFY_MAX_ATTEMPTS", "5")),
            launch_grace_minutes=int(env.get("LAUNCH_GRACE_MINUTES", "10")),
            stale_heartbeat_minutes=int(env.get("STALE_HEARTBEAT_MINUTES", "15")),
            orphan_grace_minutes=int(env.get("ORPHAN_GRACE_MINUTES", "4")),
            digest_grace_minutes=int(env.get("DIGEST_GRACE_MINUTES", "15")),
            build_log_group=env.get("BUILD_LOG_GROUP", "/voltabuild/builds"),
            ami_parameter=env.get("AMI_PARAMETER", ""),
            ami_id=env.get("AMI_ID", ""),
            ami_overrides=_ami_overrides(env.get("AMI_OVERRIDES")),
            subnet_ids=_list(env.get("SUBNET_IDS")),
            security_group_id=env.get("SECURITY_GROUP_ID", ""),
            instance_profile=env.get("INSTANCE_PROFILE", ""),
            on_demand_fallback=env.get("ON_DEMAND_FALLBACK", "off").strip().lower() in ("1", "true", "yes", "on"),
            launch_max_retries=int(env.get("LAUNCH_MAX_RETRIES", "5")),
            spot_price_table=_prices(env.get("SPOT_PRICE_TABLE", DEFAULT_SPOT_PRICES)),
            on_demand_price_table=_prices(env.get("ON_DEMAND_PRICE_TABLE", DEFAULT_ON_DEMAND_PRICES)),
            heartbeat_seconds=int(env.get("HEARTBEAT_SECONDS", "60")),
            vcs_ref=env.get("VCS_REF") or "unknown",
            vcs_url=env.get("VCS_URL", ""),
            **_spend_from_env(env),
            contexts_bucket=env.get("CONTEXTS_BUCKET", ""),
            context_max_bytes=int(env.get("CONTEXT_MAX_BYTES", str(2 * 1024**3))),
            context_upload_seconds=int(env.get("CONTEXT_UPLOAD_SECONDS", "300")),
            context_expiry_days=int(env.get("CONTEXT_EXPIRY_DAYS", "7")),
            git_allow_loopback_http=env.get("GIT_ALLOW_LOOPBACK_HTTP", "").strip().lower() in ("1", "true"),
            monthly_budget_usd=_budget(env.get("MONTHLY_BUDGET_USD")),
        )


def _budget(value: str | None) -> Decimal | None:
    """MONTHLY_BUDGET_USD: a positive number of USD, or unset/empty for no budget."""
    if not (value or "").strip():
        return None
    try:
        budget = Decimal(value.strip())
    except InvalidOperation:
        raise ConfigurationError(f"MONTHLY_BUDGET_USD: {value!r} is not a number of USD") from None
    if not budget.is_finite() or budget <= 0:
        raise ConfigurationError(f"MONTHLY_BUDGET_USD: {value!r} must be a positive number of USD")
    return budget


def _spend_from_env(env: Mapping[str, str]) -> dict:
    """The spend settings; a malformed value is a deployment error: it raises."""
    sizes = []
    for item in _list(env.get("MAX_INSTANCE_SIZES")):
        family, _, size = item.partition("=")
        if not family.strip() or not size.strip():
            raise ConfigurationError(f"MAX_INSTANCE_SIZES: {item!r} is not family=size")
        sizes.append((family.strip(), size.strip()))
    price, timeout = env.get("MAX_PRICE_CEILING"), env.get("MAX_TIMEOUT_MINUTES")
    prefix = env.get("IMAGE_TAG_PREFIX", "")
    if prefix and not re.fullmatch(r"[a-z][a-z0-9]{0,15}__", prefix):
        raise ConfigurationError(f"IMAGE_TAG_PREFIX: {prefix!r} is not <stage>__")
    return {
        "image_tag_prefix": prefix,
        "max_instance_sizes": tuple(sizes),
        "max_price_ceiling": float(price) if price else None,
        "max_timeout_minutes": int(timeout) if timeout else None,
        "max_active_builds_per_key": int(v) if (v := env.get("MAX_ACTIVE_BUILDS_PER_KEY")) else None,
        "max_gpu_hours_per_key_day": float(v) if (v := env.get("MAX_GPU_HOURS_PER_KEY_DAY")) else None,
    }
