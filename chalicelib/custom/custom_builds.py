"""Builds of a user's own Dockerfile or of a catalog image extended (issue 20).

``plan`` turns a validated request (``schemas.BuildRequest`` with ``source`` or ``extend``)
into a QUEUED :class:`Build`, checking what needs the deployment (the context was
uploaded, git over plain http only on the local stack, the GPU table, the stage's
ceilings); ``host_job`` gives the host script what differs from a catalog build.

The record keeps what was asked in ``source``:
- ``{"kind": "context", "context": "sha256:…", "dockerfile", "target", "smoke_test"}``
- ``{"kind": "git", "git": URL, "ref", "path", "dockerfile", "target", "smoke_test"}``
- ``{"kind": "extend", "base": "<registry>/<catalog repo>:<tag>", "pip", "apt", "env"}``

An extension builds ``FROM`` the catalog image's canonical tag for the resolved version
(with this stage's tag prefix). That image must have been built already: the instance
pulls it first and fails the build with "build <framework> <version> first" if it is not
there (no build is started on the user's behalf).
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile
from dataclasses import dataclass, field
from types import SimpleNamespace

from botocore.exceptions import ClientError

from chalicelib.builds.records import BuildRecord
from chalicelib.builds.schemas import Build, BuildRequest, ImageInfo, NotifyOptions, TimelineEvent
from chalicelib.builds.states import Status
from chalicelib.clock import now_iso
from chalicelib.custom.sources import check_user_build_args, check_user_tags, repository_name
from chalicelib.errors import BadRequest
from chalicelib.specs import gpu

CUSTOM_FRAMEWORK = "custom"
DEFAULT_REPOSITORY = "voltabuild/custom"
# the GPU instances a user's Dockerfile is tested on unless the request names its own
DEFAULT_INSTANCE_TYPES = ("g4dn.xlarge", "g5.xlarge", "g6.xlarge")
DEFAULT_SMOKE_TEST = ("nvidia-smi",)
TIMEOUT_DEFAULT, TIMEOUT_MAX = 60, 360
ROOT_VOLUME_GB = 100
# the size budget of a user's own image (the catalog's rule: at most half the root volume,
# which holds the image and the compressed copy measured before the push)
MAX_IMAGE_GB = ROOT_VOLUME_GB / 2
# an extension may grow its catalog image by half, within the same rule
EXTEND_GROWTH = 1.5
UNPACK_MAX_FILES = 100_000
# the catalog images' user (ARG NB_UID in dockerfiles/*/Dockerfile), who owns their Python
# environment: an extension installs apt packages as root, then is that user again
CATALOG_UID = 1000
# catalog images without pip or apt (busybox): an extension of one sets environment variables only
NO_PACKAGE_MANAGER = frozenset({"canary"})


def _bad(field_name: str, message: str) -> BadRequest:
    return BadRequest(f"{field_name}: {message}", field=field_name)


def plan(service, req: BuildRequest, build_id: str, contexts=None) -> Build:
    """The Build for a source or extend request (``service`` is the BuildService: its
    catalog, settings and ceilings). Raises BadRequest with what is allowed."""
    catalog, settings = service.catalog, service.settings
    hw = catalog.hardware
    try:
        repository = repository_name(req.repository or DEFAULT_REPOSITORY)
        tags = check_user_tags(list(req.tags))
    except ValueError as e:
        raise BadRequest(str(e)) from None
    catalog_repos = {s.repository for s in catalog.frameworks.values()}
    if repository in catalog_repos:
        raise _bad("repository", f"{repository} belongs to the catalog's builds; name one of your own, "
                   f"e.g. {repository}-custom or voltabuild/<team>/<image>")
    warnings: list[str] = []
    if req.source is not None:
        src = req.source
        cuda = req.cuda or "none"
        if cuda not in hw.cuda:
            raise _bad("cuda", f"{cuda!r} is not in the GPU table; one of {', '.join(sorted(hw.cuda))}")
        if req.version is not None or req.python is not None:
            raise _bad("version", "version and python belong to catalog builds")
        try:
            build_args = check_user_build_args(dict(req.build_args))
        except ValueError as e:
            raise BadRequest(str(e), field="build_args") from None
        if src.git is not None and src.git.startswith("http://") and not _loopback_allowed(settings, src.git):
            raise _bad("source.git", "only https:// repository URLs are allowed")
        if src.context is not None:
            if contexts is None:
                raise _bad("source.context", "uploaded contexts are not configured in this deployment")
            contexts.require(src.context)
        source = {"kind": src.kind, "dockerfile": src.dockerfile, "target": src.target,
                  "smoke_test": list(req.smoke_test or DEFAULT_SMOKE_TEST)}
        if src.kind == "context":
            source["context"] = src.context
        else:
            source.update(git=src.git, ref=src.ref, path=src.path)
        framework, version, python = CUSTOM_FRAMEWORK, "custom", "none"
        placement = gpu.place(hw, SimpleNamespace(framework="your image", instance_types=list(DEFAULT_INSTANCE_TYPES)),
                              cuda, req.instance_types, {})
        limit_default, limit_max = TIMEOUT_DEFAULT, TIMEOUT_MAX
    else:
        spec = catalog.spec(req.framework)
        resolved = spec.resolve(req.version, req.cuda, req.python)
        if spec.framework in NO_PACKAGE_MANAGER and (req.extend.pip or req.extend.apt):
            raise _bad("extend", f"the {spec.framework} image is busybox, with no pip or apt: extend it with "
                       "extend.env only (extend.pip and extend.apt are for the framework images)")
        if req.build_args:
            raise _bad("build_args", "an extension takes no build args (its catalog image is built already); "
                       "set environment variables with extend.env")
        base_tag = settings.image_tag_prefix + spec.tags_for(resolved, hw, [], {})[0]
        source = {"kind": "extend", "base": f"{settings.registry}/{spec.repository}:{base_tag}",
                  "pip": list(req.extend.pip), "apt": list(req.extend.apt), "env": dict(req.extend.env)}
        framework, version, cuda, python = spec.framework, resolved.version, resolved.cuda, resolved.python
        build_args = {}
        placement = gpu.place(hw, spec, cuda, req.instance_types, {})
        limit_default, limit_max = spec.timeout_minutes.default, spec.timeout_minutes.max
    warnings += placement.warnings
    timeout = req.timeout_minutes if req.timeout_minutes is not None else limit_default
    if timeout > limit_max:
        raise _bad("timeout_minutes", f"{timeout} is over the limit; allowed 5 to {limit_max}")
    service.ceilings.check(hw, placement.instance_types, req.max_price, timeout)
    notify = req.notify if isinstance(req.notify, NotifyOptions) else NotifyOptions(slack=req.notify)
    if notify.channel and notify.channel not in settings.slack_channels:
        raise _bad("notify.channel", f"{notify.channel!r} is not configured; configured channels: "
                   f"{', '.join(settings.slack_channels) or 'none'}")
    from chalicelib.builds.builds import stage_tags

    now = now_iso()
    return Build(
        id=build_id, status=Status.QUEUED, framework=framework, version=version, cuda=cuda, python=python,
        build_args=build_args, instance_types=placement.instance_types, max_price=req.max_price,
        timeout_minutes=timeout, notify=notify,
        image=ImageInfo(repository=f"{settings.registry}/{repository}",
                        tags=stage_tags(settings.image_tag_prefix, tags or [build_id])),
        max_attempts=settings.max_attempts, warnings=warnings, created_at=now, updated_at=now,
        events=[TimelineEvent(at=now, status=Status.QUEUED, message=f"accepted ({source['kind']} build)")],
        source=source,
    )


def _loopback_allowed(settings, url: str) -> bool:
    """Plain http git only on the local stack, and only to this machine (GIT_ALLOW_LOOPBACK_HTTP)."""
    return bool(getattr(settings, "git_allow_loopback_http", False)) and url.startswith("http://127.0.0.1:")


# ---- the host script's part -------------------------------------------------------------
def extend_dockerfile(source: dict) -> str:
    """The generated Dockerfile of an extension. Every user value goes in as a JSON (exec
    form) argument or a validated ENV value: no shell ever parses it."""
    lines = ["# generated by voltabuild for an extension (issue 20)", "ARG BASE_IMAGE", "FROM ${BASE_IMAGE}"]
    if source.get("apt"):
        script = ("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
                  "\"$@\" && rm -rf /var/lib/apt/lists/*")
        lines += ["USER 0", "RUN " + json.dumps(["/bin/sh", "-c", script, "apt-install", *source["apt"]]),
                  f"USER {CATALOG_UID}"]
    if source.get("pip"):
        lines.append("RUN " + json.dumps(["python3", "-m", "pip", "install", "--no-cache-dir", *source["pip"]]))
    for name, value in (source.get("env") or {}).items():
        lines.append(f'ENV {name}="{value}"')
    return "\n".join(lines) + "\n"


def pack_files(files: dict[str, str]) -> str:
    """A deterministic tar.gz of ``{name: text}``, base64 on one line (the host script's CONTEXT_B64)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode()


@dataclass(frozen=True)
class HostJob:
    """What the host script needs that differs between a catalog build and the others."""

    repository: str
    smoke_test: list[str]
    context_b64: str
    build_args: dict[str, str]
    values: dict[str, str] = field(default_factory=dict)  # the source variables (SOURCE_KIND, ...)
    max_image_bytes: int = int(MAX_IMAGE_GB * 10**9)  # the size budget (issue 19's measure step)


SOURCE_VARIABLES = ("SOURCE_KIND", "CONTEXT_URL", "CONTEXT_SHA256", "CONTEXT_MAX_BYTES", "UNPACK_MAX_FILES",
                    "GIT_URL", "GIT_REF", "CONTEXT_PATH", "DOCKERFILE", "TARGET", "BASE_IMAGE", "SMOKE_GPUS")


def source_values(source: dict | None, *, context_url: str = "", max_bytes: int = 0) -> dict[str, str]:
    """Every source variable of the host script (all set, for ``set -u``)."""
    v = dict.fromkeys(SOURCE_VARIABLES, "")
    v.update(SOURCE_KIND="catalog", DOCKERFILE="Dockerfile", SMOKE_GPUS="0", UNPACK_MAX_FILES=str(UNPACK_MAX_FILES),
             CONTEXT_MAX_BYTES=str(max_bytes))
    if not source:
        return v
    kind = source["kind"]
    v["SOURCE_KIND"] = kind
    if kind == "extend":
        v["BASE_IMAGE"] = source["base"]
        return v
    v.update(DOCKERFILE=source.get("dockerfile") or "Dockerfile", TARGET=source.get("target") or "", SMOKE_GPUS="1")
    if kind == "context":
        v.update(CONTEXT_SHA256=source["context"], CONTEXT_URL=context_url)
    else:
        v.update(GIT_URL=source["git"], GIT_REF=source.get("ref") or "HEAD", CONTEXT_PATH=source.get("path") or "")
    return v


def host_job(record: BuildRecord, catalog, *, context_url: str = "", max_bytes: int = 0) -> HostJob:
    """The host script's values for a source or extend build (``record.source`` set)."""
    source = record.source
    repository = record.image.repository.split("/", 1)[1]
    values = source_values(source, context_url=context_url, max_bytes=max_bytes)
    if source["kind"] == "extend":
        spec = catalog.spec(record.framework)
        budget = min(spec.max_image_gb * EXTEND_GROWTH, spec.root_volume_gb / 2)
        return HostJob(repository, list(spec.smoke_test), pack_files({"Dockerfile": extend_dockerfile(source)}),
                       {"BASE_IMAGE": source["base"]}, values, int(budget * 10**9))
    if source["kind"] == "context" and not context_url:
        raise ValueError("a context build needs the context's download URL")
    return HostJob(repository, list(source["smoke_test"]), "", dict(record.build_args), values)


def launch_spec(catalog, record: BuildRecord):
    """What the launcher needs of a build's spec (its root volume): the catalog's for a
    catalog or extend build, a fixed one for a user's own Dockerfile."""
    if (record.source or {}).get("kind") in ("context", "git"):
        return SimpleNamespace(framework=CUSTOM_FRAMEWORK, root_volume_gb=ROOT_VOLUME_GB)
    return catalog.spec(record.framework)


# ---- at launch: what the launcher does for a source or extend build -----------------------
# the same rules as the catalog repositories' (infra/resources.yaml; tests hold them equal)
ECR_LIFECYCLE_POLICY = json.dumps({"rules": [
    {"rulePriority": 1, "description": "registry build cache: drop cache manifests not refreshed for 30 days",
     "selection": {"tagStatus": "tagged", "tagPrefixList": ["buildcache"], "countType": "sinceImagePushed",
                   "countUnit": "days", "countNumber": 30},
     "action": {"type": "expire"}},
    {"rulePriority": 2, "description": "split builds' candidates never promoted (their test stage failed) after 3 days",
     "selection": {"tagStatus": "tagged", "tagPrefixList": ["candidate-"], "countType": "sinceImagePushed",
                   "countUnit": "days", "countNumber": 3},
     "action": {"type": "expire"}},
    {"rulePriority": 3, "description": "untagged images (replaced tags, superseded cache) after 7 days",
     "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 7},
     "action": {"type": "expire"}}]})


class SourceError(ValueError):
    """A source build cannot launch (its context expired, its repository cannot be made)."""


class Repositories:
    """A build's own image repository under voltabuild/, made before its first push (ECR
    refuses a push to a repository that does not exist). Takes a boto3 ECR client."""

    def __init__(self, ecr) -> None:
        self.ecr = ecr

    def ensure(self, name: str) -> bool:
        """Create ``name`` with scan on push, AES256 and the catalog's lifecycle rules if it
        is not there. Returns True when it was created now."""
        try:
            self.ecr.create_repository(repositoryName=name, imageTagMutability="MUTABLE",
                                       imageScanningConfiguration={"scanOnPush": True},
                                       encryptionConfiguration={"encryptionType": "AES256"})
        except self.ecr.exceptions.RepositoryAlreadyExistsException:
            return False
        except ClientError as e:
            err = e.response.get("Error", {})
            raise SourceError(f"could not create the repository {name}: {err.get('Code')}: "
                              f"{err.get('Message', '')}") from None
        self.ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=ECR_LIFECYCLE_POLICY)
        return True


def prepare_source(record: BuildRecord, contexts, repositories) -> dict:
    """The launcher's part of a source or extend build: its own repository exists, and an
    uploaded context (still there) has a presigned GET URL for the whole attempt. Returns
    the extra keyword arguments of ``hostscript.render``."""
    source = record.source
    if not source:
        return {}
    if repositories is not None:
        repositories.ensure(record.image.repository.split("/", 1)[1])
    if source["kind"] != "context":
        return {}
    if contexts is None:
        raise SourceError("uploaded contexts are not configured in this deployment")
    try:
        contexts.require(source["context"])
    except BadRequest as e:
        raise SourceError(e.message) from None
    # valid through boot, the build and a margin: the instance downloads it first thing
    url = contexts.download_url(source["context"], (record.timeout_minutes + 60) * 60)
    return {"context_url": url, "context_max_bytes": contexts.max_bytes}
