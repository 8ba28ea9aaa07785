"""The user-data of a build instance: ``templates/host.sh`` with this build's values.

Every value is validated here (again, even when the API already did) and shell-quoted
with :func:`shlex.quote` into plain assignments at the top of the script; nothing is ever
interpolated into code. A catalog build's context (``dockerfiles/<framework>/`` with the
combination's lock, see catalog_contexts.py) comes through a presigned GET URL of the
contexts bucket, checked against its digest (issue 19); a context without a lock (the
canary's) travels inside the script as a deterministic tar.gz in base64. The whole script is
gzip-compressed as user-data (cloud-init runs gzip user-data as is). EC2 refuses user-data
over 16 KB.
"""

from __future__ import annotations

import base64
import gzip
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from chalicelib.builds.names import BUILD_ID, DIGEST, DOCKER_TAG
from chalicelib.builds.records import BuildRecord
from chalicelib.launching.catalog_contexts import (  # noqa: F401 (pack_context, strip_comments: re-exported)
    MissingLock,
    catalog_tarball,
    pack_context,
    strip_comments,
)
from chalicelib.launching.warmcache import registry_cache_tag
from chalicelib.specs.catalog import Catalog

TEMPLATE = Path(__file__).resolve().parent / "templates" / "host.sh"
USER_DATA_LIMIT = 16 * 1024

_ARG_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*$")
_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,128}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]$")
_LOG_GROUP = re.compile(r"^[A-Za-z0-9_/.#-]{1,512}$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,31}$")
_INSTANCE_TYPE = re.compile(r"^[a-z0-9-]+\.[a-z0-9-]+$")
# the stage roles of a split build (issue 23): all = one GPU instance does everything
STAGE_ROLES = ("all", "build", "test")
CANDIDATE_PREFIX = "candidate-"


def candidate_tag(build_id: str, attempt: int) -> str:
    """The tag a split build's build stage pushes its candidate under (the repositories'
    lifecycle policy expires ``candidate-`` tags that were never promoted)."""
    return f"{CANDIDATE_PREFIX}{build_id}-{int(attempt)}"


class RenderError(ValueError):
    """A value cannot go into the host script safely (or the result is too big)."""


@dataclass(frozen=True)
class HostConfig:
    """Deployment values the script needs (from Settings)."""

    api_url: str
    region: str
    stage: str
    registry: str
    log_group: str = "/voltabuild/builds"
    heartbeat_seconds: int = 60
    vcs_ref: str = "unknown"
    vcs_url: str = ""


def _check(name: str, value: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise RenderError(f"{name}: {value!r} cannot go into the host script (must match {pattern.pattern})")
    return value


def _printable(name: str, value: str, limit: int = 1024) -> str:
    if not isinstance(value, str) or _CONTROL.search(value) or len(value) > limit:
        raise RenderError(f"{name}: control characters or over {limit} characters")
    return value


def _template() -> str:
    """The template without its full-line comments (the shebang and shellcheck directives stay)."""
    lines = TEMPLATE.read_text().splitlines()
    keep = [lines[0]] + [
        line for line in lines[1:]
        if not line.lstrip().startswith("#") or line.lstrip().startswith("# shellcheck")
    ]
    return "\n".join(keep) + "\n"


def _assign(name: str, value: str | int) -> str:
    return f"readonly {name}={shlex.quote(str(value))}"


def _array(name: str, values: list[str]) -> str:
    return f"readonly -a {name}=(" + " ".join(shlex.quote(v) for v in values) + ")"


def render(record: BuildRecord, catalog: Catalog, cfg: HostConfig, *, token: str, build_date: str,
           instance_type: str | None = None, context_url: str = "", context_max_bytes: int = 0,
           context_sha256: str = "", stage_role: str = "all", candidate: str = "",
           candidate_digest: str = "", attempt: int | None = None) -> str:
    """The host script for one attempt of one build (``record`` is the stored build) on
    ``instance_type`` (default: the build's first): its family sets the driver branch the
    script installs on a host that has none. A source or extend build (issue 20) takes its
    repository, args, smoke test and source variables from chalicelib/custom/custom_builds.py;
    ``context_url`` is an uploaded context's presigned GET URL, or (with ``context_sha256``)
    a catalog context's in the contexts bucket; without one a catalog context is packed in.

    ``stage_role`` (issue 23): ``all`` (the default) runs the whole build; ``build`` runs on a
    CPU ``instance_type`` (no driver, no GPU check) and pushes the candidate under
    ``candidate`` only; ``test`` pulls ``candidate_digest``, smoke-tests it on the GPU and
    promotes the requested tags to it, then removes ``candidate``. ``attempt`` is the stage's
    own attempt (default: the build's)."""
    if stage_role not in STAGE_ROLES:
        raise RenderError(f"stage role: {stage_role!r} is not one of {', '.join(STAGE_ROLES)}")
    if stage_role != "all":
        _check("candidate tag", candidate, re.compile(r"^candidate-[A-Za-z0-9_.-]{1,100}$"))
    if stage_role == "test":
        _check("candidate digest", candidate_digest, DIGEST)
    if not cfg.api_url:
        raise RenderError("PUBLIC_API_URL is not set: the instance would have nowhere to report")
    job = _source_job(record, catalog, context_url, context_max_bytes)
    hw = catalog.hardware
    itype = instance_type or (record.instance_types or catalog.spec(record.framework).instance_types)[0]
    if stage_role == "build":
        # a CPU instance: no GPU family, no driver; any EC2 instance type name
        _check("instance type", itype, _INSTANCE_TYPE)
        driver_branch = ""
    else:
        if not hw.is_known_instance_type(itype) or hw.ami_of(itype) is None:
            raise RenderError(f"instance type {itype!r}: not in the hardware table, or no AMI boots it")
        driver_branch = _check("driver branch", hw.ami_of(itype).driver_branch, re.compile(r"^[0-9]{3}$"))
    build_id = _check("build id", record.id, BUILD_ID)
    pin = str  # a custom build's health image stays by tag; a catalog build's is pinned as its bases are
    if job is None:
        spec = catalog.spec(record.framework)
        pin = spec.pinned
        resolved = spec.resolve(record.version, record.cuda, record.python)
        args = spec.docker_build_args(resolved, hw, record.build_args)
        args.update(BUILD_DATE=build_date, VOLTABUILD_BUILD_ID=build_id, VCS_REF=cfg.vcs_ref, VCS_URL=cfg.vcs_url)
        repository, smoke, arg_pattern = spec.repository, spec.smoke_test, _ARG_NAME
        context_b64 = "" if stage_role == "test" else _catalog_context(catalog, spec, resolved, context_url)
        cuda_value, max_image_bytes = resolved.cuda, int(spec.max_image_gb * 10**9)
    else:
        args, repository, smoke, context_b64 = job.build_args, job.repository, job.smoke_test, job.context_b64
        arg_pattern, cuda_value, max_image_bytes = _USER_ARG_NAME, record.cuda, job.max_image_bytes
    arg_list = []
    for name, value in args.items():
        _check("build arg name", name, arg_pattern)
        arg_list.append(f"{name}={_printable(f'build_args.{name}', value)}")
    tags = [_check("tag", t, DOCKER_TAG) for t in record.image.tags]
    if not tags:
        raise RenderError("image.tags: a build needs at least one tag")
    cuda = _check("cuda", cuda_value, _VERSION)
    release = hw.cuda[cuda]
    health = pin(release.health_image)
    timeout = record.timeout_minutes
    config = "\n".join([
        _assign("BUILD_ID", build_id),
        _assign("ATTEMPT", record.attempt if attempt is None else int(attempt)),
        _assign("STAGE_ROLE", stage_role),
        _assign("CANDIDATE_TAG", candidate),
        _assign("CANDIDATE_DIGEST", candidate_digest),
        _assign("STAGE", _check("stage", cfg.stage, re.compile(r"^[a-z0-9-]{1,32}$"))),
        _assign("API_URL", _check("api url", cfg.api_url, _URL)),
        _assign("TOKEN", _check("token", token, _TOKEN)),
        _assign("REGION", _check("region", cfg.region, _REGION)),
        _assign("REGISTRY", _check("registry", cfg.registry, _REGISTRY)),
        _assign("REPOSITORY", _check("repository", repository, _REPOSITORY)),
        _assign("LOG_GROUP", _check("log group", cfg.log_group, _LOG_GROUP)),
        _assign("CUDA", cuda),
        _assign("MIN_DRIVER", _check("min driver", release.min_driver, re.compile(r"^[0-9]+(\.[0-9]+)*$"))),
        _assign("HEALTH_IMAGE", health),
        _assign("INSTANCE_TYPE", _check("instance type", itype, _INSTANCE_TYPE)),
        _assign("DRIVER_BRANCH", driver_branch),
        _assign("WATCHDOG_MINUTES", timeout + 5),
        _assign("MAX_IMAGE_BYTES", max_image_bytes),
        _assign("HEARTBEAT_SECONDS", int(cfg.heartbeat_seconds)),
        _array("TAGS", tags),
        _assign("CACHE_TAG", _check("cache tag", registry_cache_tag(args), DOCKER_TAG)),  # issue 22
        _array("BUILD_ARGS", arg_list),
        _array("SMOKE_TEST", [_printable("smoke_test", a) for a in smoke]),
        _assign("CONTEXT_B64", context_b64),
        *_source_config(record, context_url, context_max_bytes, context_sha256),
    ])
    fetched = (job is not None or bool(context_url)) and stage_role != "test"
    return (_template().replace("@@CONFIG@@", config).replace("@@SOURCES@@\n", _sources_part(fetched))
            .replace("@@STAGES@@\n", _stages_part(stage_role)))


STAGES_TEMPLATE = Path(__file__).resolve().parent / "templates" / "stages.sh"


def _stages_part(stage_role: str) -> str:
    """templates/stages.sh without its comments, for a split build's stage only (issue 23):
    a whole build's user-data stays as small as it was."""
    if stage_role == "all":
        return ""
    lines = [line for line in STAGES_TEMPLATE.read_text().splitlines() if not line.lstrip().startswith("#")]
    return "\n".join(lines) + "\n"


def _catalog_context(catalog: Catalog, spec, resolved, context_url: str) -> str:
    """CONTEXT_B64 of a catalog build: empty when the context comes through ``context_url``
    (the launcher found it in the manifest: a deployment's bundle holds no lock files), else
    the context packed in, and a combination without its lock is refused."""
    if context_url:
        return ""
    try:
        return base64.b64encode(catalog_tarball(catalog, spec, resolved)).decode()
    except MissingLock as e:
        raise RenderError(str(e)) from None


# ---- build your own: a user's context, a git repository, an extension ----
_USER_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_SOURCE_CHECKS = {
    "SOURCE_KIND": re.compile(r"^(catalog|context|git|extend)$"),
    "CONTEXT_URL": re.compile(r"^(https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/[A-Za-z0-9._~%/+=&?:-]{0,4000})?$"),
    "CONTEXT_SHA256": re.compile(r"^(sha256:[0-9a-f]{64})?$"),
    "CONTEXT_MAX_BYTES": re.compile(r"^[0-9]{1,15}$"),
    "UNPACK_MAX_FILES": re.compile(r"^[0-9]{1,9}$"),
    "GIT_URL": re.compile(r"^(https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/[A-Za-z0-9._~%+/-]{0,400})?$"),
    "GIT_REF": re.compile(r"^([A-Za-z0-9_][A-Za-z0-9._/+-]{0,199})?$"),
    "CONTEXT_PATH": re.compile(r"^([A-Za-z0-9_.+@/-]{0,1024})?$"),
    "DOCKERFILE": re.compile(r"^[A-Za-z0-9_.+@/-]{1,1024}$"),
    "TARGET": re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})?$"),
    "BASE_IMAGE": re.compile(r"^([A-Za-z0-9.-]+(:[0-9]{1,5})?/[a-z0-9._/-]+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"),
    "SMOKE_GPUS": re.compile(r"^[01]$"),
}
UNPACKER = Path(__file__).resolve().parent / "templates" / "unpack_context.py"
SOURCES_TEMPLATE = Path(__file__).resolve().parent / "templates" / "sources.sh"
# what host.sh itself reads of the source variables (the rest only templates/sources.sh)
_CORE_SOURCE_VARIABLES = ("DOCKERFILE", "TARGET", "SMOKE_GPUS", "GIT_URL")


def _sources_part(fetched: bool) -> str:
    """templates/sources.sh without its comments, for a build whose context is fetched or
    generated (source, extend, a catalog context through the bucket) only: an inline catalog
    context's user-data stays under 16 KB without it."""
    if not fetched:
        return ""
    lines = [line for line in SOURCES_TEMPLATE.read_text().splitlines() if not line.lstrip().startswith("#")]
    return "\n".join(lines) + "\n"


def _source_job(record: BuildRecord, catalog: Catalog, context_url: str, context_max_bytes: int):
    if not record.source:
        return None
    from chalicelib.custom.custom_builds import host_job

    try:
        return host_job(record, catalog, context_url=context_url, max_bytes=context_max_bytes)
    except ValueError as e:
        raise RenderError(str(e)) from None


def _source_config(record: BuildRecord, context_url: str, context_max_bytes: int,
                   context_sha256: str = "") -> list[str]:
    """The source variables (every build sets them all; ``..`` never passes, whatever the
    API already checked) and, for an uploaded or a catalog context fetched from the
    contexts bucket, the unpacker the script runs."""
    from chalicelib.custom.custom_builds import source_values

    values = source_values(record.source, context_url=context_url, max_bytes=context_max_bytes)
    catalog_fetch = not record.source and bool(context_url)
    if catalog_fetch:
        if not DIGEST.match(context_sha256 or ""):
            raise RenderError(f"context digest: {context_sha256!r} is not sha256:<64 hex>")
        values.update(CONTEXT_URL=context_url, CONTEXT_SHA256=context_sha256)
    elif not record.source:
        values = {k: values[k] for k in _CORE_SOURCE_VARIABLES}
    lines = []
    for name, value in values.items():
        _check(name.lower(), value, _SOURCE_CHECKS[name])
        if name in ("CONTEXT_PATH", "DOCKERFILE") and ".." in value.split("/"):
            raise RenderError(f"{name.lower()}: {value!r} leaves the context")
        lines.append(_assign(name, value))
    if record.source or catalog_fetch:
        unpacker = UNPACKER.read_text() if values["SOURCE_KIND"] == "context" or catalog_fetch else ""
        lines.append(_assign("UNPACKER", unpacker))
    return lines


def user_data(script: str) -> bytes:
    """The script as EC2 user-data: gzip-compressed (cloud-init runs it as is; so does the
    local executor), refused when over EC2's 16 KB limit."""
    data = gzip.compress(script.encode(), compresslevel=9, mtime=0)
    if len(data) > USER_DATA_LIMIT:
        raise RenderError(
            f"the host script is {len(data)} bytes compressed; EC2 user-data is limited to {USER_DATA_LIMIT}"
        )
    return data


def script_of(data: bytes) -> str:
    """The script inside user-data made by :func:`user_data` (tests, tools)."""
    return (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode()
