"""Request and record models: the API's contract, also used for the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, computed_field, model_validator

from chalicelib.builds.names import DOCKER_TAG
from chalicelib.builds.segments import segment_durations
from chalicelib.builds.states import Phase, Status
from chalicelib.costs.billing import Cost
from chalicelib.custom.sources import Extend, Source, check_smoke_test

DockerTag = Annotated[
    str,
    StringConstraints(pattern=DOCKER_TAG.pattern),
    Field(description="Docker tag grammar: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"),
]
InstanceType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$", max_length=32)]
ShortStr = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,31}$")]
ArgName = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]
# a user's Dockerfile may name its args in any case (issue 20); the catalog's are UPPER_SNAKE
AnyArgName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
ChannelName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


class NotifyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    slack: bool = Field(True, description="send a Slack message when the build ends")
    channel: ChannelName | None = Field(
        None, description="a channel name the deployment configured (never a webhook URL)"
    )
    cells: bool = Field(False, description=(
        "a matrix only: also one message per cell as it ends (by default a matrix sends one message, for the "
        "whole group, when its last cell ends)"))


class BuildRequest(BaseModel):
    """Body of ``POST /builds``. Omitted fields take the buildspec's defaults. Strict:
    a number sent as a string, or 0 for false, is refused as the schema says."""

    model_config = ConfigDict(extra="forbid", strict=True)

    framework: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,31}$")] | None = Field(
        None, description="a framework from GET /frameworks (a catalog build, or the image `extend` starts from)"
    )
    version: ShortStr | None = None
    cuda: ShortStr | None = None
    python: ShortStr | None = None
    tags: list[DockerTag] = Field(default_factory=list, max_length=10, description="extra image tags")
    build_args: dict[AnyArgName, Annotated[str, StringConstraints(max_length=256)]] = Field(
        default_factory=dict, max_length=32
    )
    instance_types: list[InstanceType] | None = Field(None, min_length=1, max_length=10)
    # >= 0.0001: the launcher sends it to EC2 with 4 decimals, and DynamoDB numbers underflow below 1e-130
    max_price: float | None = Field(None, ge=0.0001, le=100, description="spot price cap, USD per hour")
    timeout_minutes: int | None = Field(None, ge=5)
    notify: bool | NotifyOptions = True
    split: bool | Literal["auto"] | None = Field(None, description=(
        "build on a CPU spot instance, then test on the GPU one (issue 23): true, false, or auto (source builds, "
        "BUILD_MODE=source, split); default: the buildspec's `split`"))
    # ---- build your own (issue 20): chalicelib/custom/sources.py ----
    source: Source | None = Field(None, description="a user's Dockerfile: an uploaded context or a git repository")
    extend: Extend | None = Field(None, description="pip/apt packages and env on top of the catalog image")
    repository: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        None, description="source and extend builds: the image repository inside voltabuild/ (default voltabuild/custom)")
    smoke_test: list[str] | None = Field(
        None, description="source builds: argv run in the built image on the GPU (default [\"nvidia-smi\"])")

    @model_validator(mode="after")
    def _one_source(self) -> BuildRequest:
        if (self.framework is None) == (self.source is None):
            raise ValueError("framework: Field required: give exactly one of framework (a catalog build, "
                             "optionally with extend) or source (context or git)")
        if self.extend is not None and self.framework is None:
            raise ValueError("extend: needs the framework (and version) of the catalog image it starts from")
        if self.source is None and self.extend is None and (self.repository or self.smoke_test):
            raise ValueError("repository and smoke_test belong to source and extend builds")
        if self.smoke_test is not None:
            if self.source is None:
                raise ValueError("smoke_test: only a source build sets it (an extension runs its framework's test)")
            check_smoke_test(self.smoke_test)
        return self


class ImageInfo(BaseModel):
    repository: str
    tags: list[str]
    digest: str | None = None
    compressed_size_bytes: int | None = Field(None, description="the pushed image's compressed size (its layers)")
    base_image_digest: str | None = Field(None, description="the digest of the base image the build started from")


class InstanceInfo(BaseModel):
    id: str
    type: str
    az: str | None = None
    lifecycle: str = "spot"
    price: float | None = Field(None, description="USD per hour at launch")
    launched_at: str | None = None


class PastInstance(InstanceInfo):
    """An earlier attempt's instance (a spot reclaim, a host failure): kept for its cost."""

    left_at: str | None = Field(None, description="when the build left it for another attempt (its own "
                                                   "termination is not recorded: no event finds the build then)")


class TimelineEvent(BaseModel):
    at: str
    status: Status
    phase: Phase | None = None
    message: str = ""
    stage: Literal["build", "test"] | None = Field(None, description="a split build's stage (issue 23)")
    instance_id: str | None = Field(None, description="the instance the stage runs on, once known")


class StageInfo(BaseModel):
    """One stage of a split build (issue 23): its instance types, its current (or last)
    instance, how many attempts it took, and when its instance was terminated."""

    model_config = ConfigDict(extra="ignore")

    instance_types: list[str] = Field(default_factory=list)
    instance: InstanceInfo | None = None
    attempts: int = 0
    terminated_at: str | None = None


class NotificationInfo(BaseModel):
    """How the Slack message about the outcome went (never the webhook URL)."""

    model_config = ConfigDict(extra="ignore")

    status: str = Field(description="sending, sent, retrying, failed or skipped")
    channel: str | None = None
    attempts: int | None = None
    error: str | None = Field(None, description=(
        "why the last try failed, a type: webhook_missing, webhook_invalid, ssm_error, http_status, "
        "timeout, connection or request_rejected"))
    error_status: int | None = Field(None, description="the webhook's HTTP status, for http_status")
    error_code: str | None = Field(None, description="Slack's error code (no_service, invalid_token, ...)")
    reason: str | None = None
    sent_at: str | None = None


class Build(BaseModel):
    """A build as the API returns it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: Status
    phase: Phase | None = None
    framework: str
    version: str
    cuda: str
    python: str
    build_args: dict[str, str]
    instance_types: list[str]
    max_price: float | None = None
    timeout_minutes: int
    notify: NotifyOptions
    image: ImageInfo
    instance: InstanceInfo | None = None
    past_instances: list[PastInstance] = Field(default_factory=list, description=(
        "earlier attempts' instances (issue 22), each counted in the cost"))
    attempt: int = 1
    max_attempts: int = 3
    reason: str | None = None
    warnings: list[str] = Field(default_factory=list)
    cancel_requested: bool = False
    created_at: str
    updated_at: str
    finished_at: str | None = None
    deadline_at: str | None = None
    heartbeat_at: str | None = None
    events: list[TimelineEvent] = Field(default_factory=list)
    notification: NotificationInfo | None = None
    source: dict | None = Field(None, description="source and extend builds: what was built from (issue 20)")
    instance_terminated_at: str | None = Field(None, description="when EC2 reported the instance terminated")
    group_id: str | None = Field(None, description="the matrix group this build is a cell of (issue 22)")
    split: bool = Field(False, description="built on a CPU instance, tested on a GPU one (issue 23)")
    stage: Literal["build", "test"] | None = Field(None, description="a split build's current stage")
    stages: dict[str, StageInfo] = Field(default_factory=dict, description="a split build's two stages")
    candidate_digest: str | None = Field(None, description="the digest the build stage pushed, tested on the GPU")
    candidate_tag: str | None = Field(None, description="the tag the build stage pushed it under (removed on promotion)")
    cost: Cost | None = Field(None, description=(
        "what the build costs (issue 22): USD, billed seconds, price per hour and its source; estimated until "
        "the instance is terminated; null when no price is known (GET /builds/{id} and GET /groups/{id} only)"))

    @computed_field(description=(  # type: ignore[prop-decorator]
        "seconds spent in each segment that happened (queued, launching, booting, preparing, building, "
        "testing, pushing, terminate_lag), from the timeline; the current one is not counted"))
    @property
    def segments(self) -> dict[str, float]:
        return segment_durations(self)


class BuildList(BaseModel):
    builds: list[Build]
    next: str | None = Field(None, description="opaque cursor for the next page, or null")


class ErrorBody(BaseModel):
    Code: str
    Message: str
