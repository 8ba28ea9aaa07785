"""The buildspec catalog: what may be built and how.

One YAML per framework under ``buildspecs/`` plus ``_hardware.yaml`` (GPU families and
CUDA releases). Everything is loaded into frozen pydantic models; a broken file fails at
load with an error naming the file and the field.

Over 300 lines: the hardware table's models and the buildspecs' validate one another at
load. The natural split (the hardware table into a module of its own, the buildspecs
here) waits for the move into sub-packages (docs/layout.md).
"""

from __future__ import annotations

import hashlib
import re
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from chalicelib.builds.names import DIGEST_PATTERN, DOCKER_TAG
from chalicelib.errors import BadRequest, CatalogError
from chalicelib.specs import catalog_compiled

COMMON_CONTEXT = "dockerfiles/common"  # under the catalog's root: see Catalog.common_context_dir

_HERE = Path(__file__).resolve().parent.parent  # chalicelib/
# A deployment package carries the catalog inside chalicelib/_bundle (see `make package`);
# a checkout reads it from the repository root.
_BUNDLE = _HERE / "_bundle"
ROOT = _BUNDLE if (_BUNDLE / "buildspecs").is_dir() else _HERE.parent

_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,31}$")
# an image by name and tag, no digest (``nvidia/cuda:12.6.3-base-ubuntu22.04``, ``host:5000/a/b:1``)
IMAGE_TAG = r"^(?:[a-z0-9.-]+(?::[0-9]{1,5})?/)?[a-z0-9]+(?:[._/-][a-z0-9]+)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
_ARG_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
# what each tag-template field can hold, for telling a canonical tag when a request sends one
_PLACEHOLDERS = {"version": r"[0-9][0-9A-Za-z.+]*", "cuda": r"[0-9][0-9.]*", "python": r"[0-9][0-9.]*",
                 "cuda_nodot": r"[0-9]+", "python_nodot": r"[0-9]+", "cuda_full": r"[0-9][0-9.]*",
                 "framework": r"[a-z][a-z0-9-]*"}


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _cc(value: str) -> tuple[int, int]:
    major, _, minor = value.partition(".")
    return int(major), int(minor or 0)


def cc_str(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


class AmiPath(_Frozen):
    """Where a family's host comes from: an SSM public parameter holding the AMI id, and the
    NVIDIA driver branch the host runs (brought by the AMI, or installed by the host script)."""

    parameter: str = Field(pattern=r"^/aws/service/[A-Za-z0-9_./-]+$")
    driver_branch: str = Field(pattern=r"^[0-9]{3}$")
    driver: Literal["preinstalled", "install"]
    description: str = ""

    def describe(self) -> dict:
        return {"parameter": self.parameter, "driver_branch": self.driver_branch, "driver": self.driver,
                "description": self.description}


class GpuFamily(_Frozen):
    gpu: str
    compute_capability: str = Field(pattern=r"^[0-9]+\.[0-9]$")
    # a key of Hardware.amis; None (with no_ami saying why) for a family nothing can boot
    ami: str | None = None
    no_ami: str | None = None
    gpu_memory_gib: int = Field(gt=0)
    sizes: dict[str, int] = Field(min_length=1)

    @property
    def cc(self) -> tuple[int, int]:
        return _cc(self.compute_capability)

    @property
    def example(self) -> str:
        """The first (smallest) size: what a message suggests."""
        return next(iter(self.sizes))

    def describe(self) -> dict:
        return {"gpu": self.gpu, "compute_capability": self.compute_capability,
                "gpu_memory_gib": self.gpu_memory_gib, "sizes": dict(self.sizes)}


class CudaRelease(_Frozen):
    full: str
    # the cuDNN and OS parts of this release's nvidia/cuda tags (see _hardware.yaml)
    cudnn: str = Field("cudnn", pattern=r"^cudnn[0-9]*$")
    os: str = Field("ubuntu22.04", pattern=r"^[a-z]+[0-9.]+$")
    min_compute_capability: str = Field(pattern=r"^[0-9]+\.[0-9]$")
    # newest architecture the release's nvcc compiles; None: no compiler (the canary's "none")
    max_compute_capability: str | None = Field(None, pattern=r"^[0-9]+\.[0-9]$")
    min_driver: str = Field(pattern=r"^[0-9]+(\.[0-9]+)*$")

    @property
    def min_cc(self) -> tuple[int, int]:
        return _cc(self.min_compute_capability)

    @property
    def max_cc(self) -> tuple[int, int] | None:
        return _cc(self.max_compute_capability) if self.max_compute_capability else None

    @model_validator(mode="after")
    def _ordered(self) -> CudaRelease:
        if self.max_cc is not None and self.max_cc < self.min_cc:
            raise ValueError(f"max_compute_capability {self.max_compute_capability} is below "
                             f"min_compute_capability {self.min_compute_capability}")
        return self

    @property
    def min_branch(self) -> int:
        """The driver branch (major version) of ``min_driver``."""
        return int(self.min_driver.split(".", 1)[0])

    @property
    def health_image(self) -> str:
        """The image the host runs ``nvidia-smi`` in before building ("" for no CUDA)."""
        return "" if self.full == "none" else f"nvidia/cuda:{self.full}-base-{self.os}"

    def describe(self) -> dict:
        return {"full": self.full, "min_compute_capability": self.min_compute_capability,
                "max_compute_capability": self.max_compute_capability, "min_driver": self.min_driver}


_CPU_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")


class BuildTypes(_Frozen):
    """A split build's CPU instance types (issue 23), by build mode: ``source`` for a build
    that compiles the framework (BUILD_MODE=source: many cores), ``default`` for the rest
    (downloads and unpacking: a small box). Any EC2 type without a GPU."""

    default: list[str] = Field(min_length=1, max_length=10)
    source: list[str] | None = Field(None, min_length=1, max_length=10)

    @model_validator(mode="after")
    def _names(self) -> BuildTypes:
        bad = [t for t in [*self.default, *(self.source or [])] if not _CPU_TYPE.match(t)]
        if bad:
            raise ValueError(f"build_instance_types: {bad} are not EC2 instance type names")
        return self


class StageMinutes(_Frozen):
    """How long a build of one mode keeps a GPU instance busy without its GPU (building and
    pushing: what the build stage would take over) and with it (the GPU check and smoke test:
    what the test stage keeps), in minutes. Estimates, each with its source in the buildspec."""

    build: float = Field(gt=0, le=24 * 60)
    test: float = Field(gt=0, le=24 * 60)


class SplitEstimates(_Frozen):
    """``split: auto``'s figures by build mode (issue 23): ``default`` for wheel builds,
    ``source`` for BUILD_MODE=source (a source build splits under auto whatever they say)."""

    default: StageMinutes | None = None
    source: StageMinutes | None = None


class Hardware(_Frozen):
    # the split build's CPU stage (issue 23): the SSM public parameter of its AMI. No GPU, so no
    # driver: stock Ubuntu 22.04, on which the host script installs docker and the AWS CLI
    cpu_ami: str = Field("/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id",
                         pattern=r"^/aws/service/[A-Za-z0-9_./-]+$")
    amis: dict[str, AmiPath] = Field(min_length=1)
    families: dict[str, GpuFamily] = Field(min_length=1)
    cuda: dict[str, CudaRelease] = Field(min_length=1)

    @model_validator(mode="after")
    def _sizes_named_for_family(self) -> Hardware:
        for name, fam in self.families.items():
            if "." in name:
                raise ValueError(f"families.{name}: a family name has no dot")
            bad = [t for t in fam.sizes if self.family_of(t) != name]
            if bad:
                raise ValueError(f"families.{name}.sizes: {bad} do not start with {name + '.'!r}")
            few = [t for t, n in fam.sizes.items() if n < 1]
            if few:
                raise ValueError(f"families.{name}.sizes: {few} need a GPU count of 1 or more")
            if fam.ami is None and not fam.no_ami:
                raise ValueError(f"families.{name}: name its ami (one of {sorted(self.amis)}) or say in "
                                 "no_ami why none works")
            if fam.ami is not None and fam.ami not in self.amis:
                raise ValueError(f"families.{name}.ami: {fam.ami!r} is not one of amis: {sorted(self.amis)}")
        return self

    def family_of(self, instance_type: str) -> str:
        return instance_type.split(".", 1)[0]

    def is_known_instance_type(self, instance_type: str) -> bool:
        fam = self.families.get(self.family_of(instance_type))
        return fam is not None and instance_type in fam.sizes

    def family(self, instance_type: str) -> GpuFamily:
        return self.families[self.family_of(instance_type)]

    def ami_of(self, instance_type: str) -> AmiPath | None:
        """The AMI path of ``instance_type``'s family (None: no AMI boots it)."""
        fam = self.family(instance_type)
        return self.amis[fam.ami] if fam.ami else None

    def bootable(self, instance_type: str) -> bool:
        return self.family(instance_type).ami is not None

    def _family_runs(self, fam: GpuFamily, cuda: str) -> bool:
        release = self.cuda[cuda]
        if fam.cc < release.min_cc:
            return False
        # the family's driver branch must run the release natively (see min_driver)
        return fam.ami is None or int(self.amis[fam.ami].driver_branch) >= release.min_branch

    def runs(self, instance_type: str, cuda: str) -> bool:
        """True when an image built for ``cuda`` can run on ``instance_type``'s GPU and driver.

        A release runs on every GPU of at least its ``min_compute_capability``; newer GPUs
        than its nvcc knows run its PTX through the driver's JIT (see chalicelib/specs/gpu.py).
        The family's driver branch must be at least the release's ``min_driver`` branch.
        """
        return self._family_runs(self.family(instance_type), cuda)

    def families_for(self, cuda: str) -> list[str]:
        """The bootable instance families whose GPU runs ``cuda``, in _hardware.yaml order."""
        return [name for name, fam in self.families.items() if fam.ami and self._family_runs(fam, cuda)]

    def describe(self) -> dict:
        families = {}
        for name, fam in self.families.items():
            ami = {"name": fam.ami, **self.amis[fam.ami].describe()} if fam.ami else None
            families[name] = {**fam.describe(), "ami": ami, **({"no_ami": fam.no_ami} if fam.no_ami else {})}
        return {"families": families, "cuda": {c: r.describe() for c, r in self.cuda.items()}}


class AllowedImage(_Frozen):
    """One base image a request may choose (issue 17): pinned by the digest recorded with
    its source and the date read, or, where no digest could be confirmed, marked so."""

    image: str = Field(pattern=r"^[a-z0-9][a-z0-9._/:-]{0,254}$")
    digest: str | None = Field(None, pattern=DIGEST_PATTERN)
    source: str = Field(min_length=1)
    unconfirmed: str | None = None

    @model_validator(mode="after")
    def _pinned_or_says_why(self) -> AllowedImage:
        if not self.digest and not self.unconfirmed:
            raise ValueError(f"{self.image}: record its digest, or say in `unconfirmed` why none is recorded")
        return self

    @property
    def reference(self) -> str:
        """What the build pulls: ``image@digest`` where a digest is recorded."""
        return f"{self.image}@{self.digest}" if self.digest else self.image


class BaseDigest(_Frozen):
    """What a base image's tag pointed to when ``make lock`` asked its registry
    (buildspecs/facts/base-digests.yaml, written by scripts/base_digests.py)."""

    digest: str = Field(pattern=DIGEST_PATTERN)
    source: str = Field(pattern=r"^https?://[^\s]+$")  # the manifest URL that answered
    recorded: date  # the day it was first read (a re-run that reads the same digest keeps it)


class BaseDigests(_Frozen):
    digests: dict[Annotated[str, StringConstraints(pattern=IMAGE_TAG)], BaseDigest] = {}


def without_digest(reference: str) -> str:
    """``name:tag`` of ``name:tag@sha256:...`` (what the facts files list)."""
    return reference.partition("@")[0]


class BuildArgSpec(_Frozen):
    pattern: str
    default: str
    help: str = ""
    # for an argument that chooses a base image: the only values allowed (issue 17)
    images: list[AllowedImage] | None = None
    # False for an argument that does not change what is built (parallelism, a sleep): a
    # non-default value of any other makes the build a variant, with tags of its own
    variant: bool = True

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        if not (v.startswith("^") and v.endswith("$")):
            raise ValueError("must be anchored with ^ and $")
        re.compile(v)
        return v

    @model_validator(mode="after")
    def _default_matches(self) -> BuildArgSpec:
        if not re.fullmatch(self.pattern, self.default):
            raise ValueError(f"default {self.default!r} does not match its own pattern {self.pattern}")
        if self.images is not None and self.default not in self.image_names:
            raise ValueError(f"default {self.default!r} is not one of its allowed images {self.image_names}")
        return self

    @property
    def image_names(self) -> list[str]:
        return [i.image for i in self.images or ()]

    def reference(self, value: str) -> str:
        """The value passed to the build: an allowed image becomes its pinned reference."""
        for i in self.images or ():
            if i.image == value:
                return i.reference
        return value


class VersionSpec(_Frozen):
    version: str = Field(pattern=_VERSION.pattern)
    cuda: list[str] = Field(min_length=1)
    python: list[str] = Field(min_length=1)
    args: dict[str, str] = {}
    # why this version is out of its framework's support window (still buildable)
    deprecated: str | None = None
    # set by the loader from buildspecs/facts/releases.yaml: when PyPI first served it
    released: date | None = None


class Timeouts(_Frozen):
    default: int = Field(gt=0)
    max: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Timeouts:
        if self.default > self.max:
            raise ValueError("default timeout exceeds max")
        return self


class Defaults(_Frozen):
    version: str
    cuda: str
    python: str


class Resolved(_Frozen):
    """One concrete version combination of a framework."""

    framework: str
    version: str
    cuda: str
    python: str

    def fields(self, hardware: Hardware) -> dict[str, str]:
        return {
            "framework": self.framework,
            "version": self.version,
            "cuda": self.cuda,
            "python": self.python,
            "cuda_nodot": self.cuda.replace(".", ""),
            "python_nodot": self.python.replace(".", ""),
            "cuda_full": hardware.cuda[self.cuda].full,
            "cudnn": hardware.cuda[self.cuda].cudnn,
            "cuda_os": hardware.cuda[self.cuda].os,
        }


class BuildSpec(_Frozen):
    framework: str = Field(pattern=r"^[a-z][a-z0-9-]{1,31}$")
    description: str
    dockerfile: str
    repository: str = Field(pattern=r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*$")
    deprecated: str | None = None
    defaults: Defaults
    versions: list[VersionSpec] = Field(min_length=1)
    fixed_args: dict[str, str] = {}
    build_args: dict[str, BuildArgSpec] = {}
    tags: list[str] = Field(min_length=1)
    latest: bool = False
    instance_types: list[str] = Field(min_length=1)
    root_volume_gb: int = Field(ge=8, le=16384)
    # the size budget: the host script fails a build whose image is bigger, compressed (GB = 1e9 bytes)
    max_image_gb: float = Field(gt=0, le=1000)
    timeout_minutes: Timeouts
    smoke_test: list[str] = Field(min_length=1)
    # split builds (issue 23): the CPU types of the build stage, and whether a request that
    # does not say splits (true, false, or auto: source builds, BUILD_MODE=source, do, and so
    # does a build whose split_estimate_minutes say its GPU would idle longer than it tests)
    build_instance_types: BuildTypes | None = None
    split: bool | Literal["auto"] = False
    # auto also splits a build whose GPU-idle minutes (build and push) exceed its test minutes
    split_estimate_minutes: SplitEstimates | None = None
    # set by the loader
    source_hash: str = ""
    # name:tag -> digest, from buildspecs/facts/base-digests.yaml: the bases pinned by digest
    base_digests: dict[str, str] = {}

    @model_validator(mode="after")
    def _consistent(self) -> BuildSpec:
        names = [*self.fixed_args, *self.build_args, *(a for v in self.versions for a in v.args)]
        bad = [n for n in names if not _ARG_NAME.match(n)]
        if bad:
            raise ValueError(f"build arg names must be UPPER_SNAKE_CASE: {bad}")
        free_images = [n for n, a in self.build_args.items() if n.endswith("IMAGE") and a.images is None]
        if free_images:
            raise ValueError(f"build args that choose an image need an `images` allow-list: {free_images}")
        if self.max_image_gb * 2 > self.root_volume_gb:
            raise ValueError(f"max_image_gb {self.max_image_gb} needs a root_volume_gb of at least twice that "
                             f"(the build keeps the image and a compressed copy to measure); it is {self.root_volume_gb}")
        clash = set(self.fixed_args) & set(self.build_args)
        if clash:
            raise ValueError(f"build_args may not override fixed_args: {sorted(clash)}")
        try:
            self.version(self.defaults.version).cuda.index(self.defaults.cuda)
            self.version(self.defaults.version).python.index(self.defaults.python)
        except (KeyError, ValueError):
            raise ValueError(
                f"defaults {self.defaults.model_dump()} are not one of the declared versions"
            ) from None
        return self

    def gpu_idle_exceeds_test(self, source: bool) -> bool:
        """``split: auto`` for a build of this mode: True when its estimated minutes of building
        and pushing (a GPU instance idle) exceed its minutes of testing. No estimate: False."""
        estimates = self.split_estimate_minutes
        minutes = estimates and (estimates.source if source else estimates.default)
        return bool(minutes) and minutes.build > minutes.test

    def split_types(self, requested: bool | str | None, build_args: dict[str, str]) -> list[str]:
        """The CPU instance types of the build stage when this build splits (issue 23), else
        []. ``requested`` is the request's ``split`` (None: the buildspec's). Raises
        BadRequest when a split is asked of a framework without build_instance_types."""
        split = self.split if requested is None else requested
        source = build_args.get("BUILD_MODE") == "source"
        if split == "auto":
            split = self.build_instance_types is not None and (source or self.gpu_idle_exceeds_test(source))
        if not split:
            return []
        if self.build_instance_types is None:
            raise BadRequest(f"split: {self.framework} has no build_instance_types; it builds on the GPU instance "
                             "only (send split: false)", field="split")
        types = self.build_instance_types
        return list(types.source if source and types.source else types.default)

    def version(self, version: str) -> VersionSpec:
        for v in self.versions:
            if v.version == version:
                return v
        raise KeyError(version)

    def combinations(self) -> list[Resolved]:
        return [
            Resolved(framework=self.framework, version=v.version, cuda=c, python=p)
            for v in self.versions
            for c in v.cuda
            for p in v.python
        ]

    def resolve(self, version: str | None, cuda: str | None, python: str | None) -> Resolved:
        """Fill what the request left out with defaults; refuse what is not declared.

        A version given alone takes that version's first CUDA and Python.
        """
        if version is None:
            vspec = self.version(self.defaults.version)
            use_defaults = True
        else:
            try:
                vspec = self.version(version)
            except KeyError:
                known = ", ".join(v.version for v in self.versions)
                raise BadRequest(
                    f"version: {self.framework} {version} is not in the catalog; supported versions: {known}",
                    field="version",
                ) from None
            use_defaults = version == self.defaults.version
        cuda = cuda or (self.defaults.cuda if use_defaults else vspec.cuda[0])
        python = python or (self.defaults.python if use_defaults else vspec.python[0])
        if cuda not in vspec.cuda:
            raise BadRequest(
                f"cuda: {self.framework} {vspec.version} is built for CUDA {', '.join(vspec.cuda)}, not {cuda!r}",
                field="cuda",
            )
        if python not in vspec.python:
            raise BadRequest(
                f"python: {self.framework} {vspec.version} is built for Python {', '.join(vspec.python)}, not {python!r}",
                field="python",
            )
        return Resolved(framework=self.framework, version=vspec.version, cuda=cuda, python=python)

    def is_default(self, r: Resolved) -> bool:
        d = self.defaults
        return (r.version, r.cuda, r.python) == (d.version, d.cuda, d.python)

    def variant_suffix(self, build_args: dict[str, str] | None) -> str:
        """``-v<hash>`` of the non-default build args that change what is built, or "" for
        the default build: a variant never wears the tags of the default build (issue 17)."""
        changed = sorted((k, v) for k, v in (build_args or {}).items()
                         if k in self.build_args and self.build_args[k].variant and v != self.build_args[k].default)
        if not changed:
            return ""
        return "-v" + hashlib.sha256("\n".join(f"{k}={v}" for k, v in changed).encode()).hexdigest()[:10]

    @cached_property
    def _canonical(self) -> re.Pattern:
        """What this spec's tag templates can produce for any version (the reserved forms)."""
        alts = []
        for template in self.tags:
            rx = re.escape(template)
            for name, pat in _PLACEHOLDERS.items():
                rx = rx.replace(re.escape("{" + name + "}"), pat)
            alts.append(rx + r"(?:-v[0-9a-f]{10})?")
        return re.compile("^(?:" + "|".join(alts) + ")$")

    def reserved(self, tag: str) -> bool:
        """A tag only the catalog gives: ``latest``, ``buildcache*``, ``candidate-*`` (a split
        build's candidate, which the lifecycle policy expires), the canonical forms."""
        return (tag == "latest" or tag.startswith(("buildcache", "candidate-"))
                or bool(self._canonical.match(tag)))

    def tags_for(self, r: Resolved, hardware: Hardware, extra: list[str] = (),
                 build_args: dict[str, str] | None = None) -> list[str]:
        """The build's tags: the canonical ones (with the variant suffix), ``latest`` for the
        default build of the default combination, then the request's own. A requested tag
        the catalog reserves and this build does not produce is a 400."""
        fields = r.fields(hardware)
        suffix = self.variant_suffix(build_args)
        tags = [t.format(**fields) + suffix for t in self.tags]
        if self.latest and self.is_default(r) and not suffix:
            tags.append("latest")
        for t in extra:
            if t in tags:
                continue
            if self.reserved(t):
                raise BadRequest(
                    f"tags: {t!r} is reserved (latest, buildcache*, candidate-* and the canonical version tags belong "
                    f"to the builds that produce them); this build's own tags are {', '.join(tags)}",
                    field="tags",
                )
            tags.append(t)
        return tags

    def check_build_args(self, given: dict[str, str]) -> dict[str, str]:
        """Validate a request's build args; return them merged over the defaults."""
        out = {name: spec.default for name, spec in self.build_args.items()}
        for name, value in given.items():
            spec = self.build_args.get(name)
            if spec is None:
                allowed = ", ".join(sorted(self.build_args)) or "none"
                raise BadRequest(
                    f"build_args.{name}: not allowed for {self.framework}; allowed: {allowed}",
                    field=f"build_args.{name}",
                )
            if not isinstance(value, str) or not re.fullmatch(spec.pattern, value):
                raise BadRequest(
                    f"build_args.{name}: {value!r} does not match {spec.pattern}",
                    field=f"build_args.{name}",
                )
            if spec.images is not None and value not in spec.image_names:
                raise BadRequest(
                    f"build_args.{name}: {value!r} is not an allowed image; allowed: {', '.join(spec.image_names)}",
                    field=f"build_args.{name}",
                )
            out[name] = value
        return out

    def docker_build_args(
        self, r: Resolved, hardware: Hardware, build_args: dict[str, str] | None = None
    ) -> dict[str, str]:
        """Every ``--build-arg`` for one combination: fixed, version-specific, then requested.
        A fixed (or version) ``*_IMAGE`` whose digest base-digests.yaml records is pinned: ``name:tag@digest``
        (the tag for readers, the digest is what is pulled); one without stays by tag."""
        fields = r.fields(hardware)
        args = {k: v.format(**fields) for k, v in self.fixed_args.items()}
        args.update(self.version(r.version).args)
        args = {k: self.pinned(v) if k.endswith("_IMAGE") else v for k, v in args.items()}
        args.update({k: self.build_args[k].reference(v) for k, v in self.check_build_args(build_args or {}).items()})
        args["VOLTABUILD_BUILDSPEC_HASH"] = self.source_hash
        return args

    def pinned(self, reference: str) -> str:
        """``reference@digest`` where base-digests.yaml records its digest, else ``reference``."""
        digest = self.base_digests.get(reference)
        return f"{reference}@{digest}" if digest and "@" not in reference else reference


class Catalog(_Frozen):
    frameworks: dict[str, BuildSpec]
    hardware: Hardware
    root: Path

    def spec(self, framework: str) -> BuildSpec:
        try:
            return self.frameworks[framework]
        except KeyError:
            known = ", ".join(sorted(self.frameworks))
            raise BadRequest(
                f"framework: unknown framework {framework!r}; known frameworks: {known}",
                field="framework",
            ) from None

    def context_dir(self, spec: BuildSpec) -> Path:
        return self.root / spec.dockerfile

    @property
    def common_context_dir(self) -> Path:
        """Files every build context gets unless it has its own: the GPU images' entrypoint."""
        return self.root / COMMON_CONTEXT

    @cached_property
    def summary(self) -> dict:
        return {"frameworks": [describe(s, self.hardware) for s in self.frameworks.values()],
                "hardware": self.hardware.describe()}


def describe(spec: BuildSpec, hardware: Hardware) -> dict:
    """The public view of one buildspec, as ``GET /frameworks`` shows it."""
    return {
        "framework": spec.framework,
        "description": spec.description,
        "repository": spec.repository,
        "deprecated": spec.deprecated,
        "defaults": spec.defaults.model_dump(),
        "versions": [
            {
                "version": v.version,
                "cuda": v.cuda,
                "python": v.python,
                "instance_families": {c: hardware.families_for(c) for c in v.cuda},
                "released": v.released.isoformat() if v.released else None,
                "newest": v.version == newest_version(spec),
                "deprecated": v.deprecated,
            }
            for v in spec.versions
        ],
        "build_args": {k: {"pattern": a.pattern, "default": a.default, "help": a.help,
                           **({"allowed": a.image_names} if a.images is not None else {})}
                       for k, a in spec.build_args.items()},
        "instance_types": spec.instance_types,
        "timeout_minutes": spec.timeout_minutes.model_dump(),
        "tags": spec.tags,
    }


def newest_version(spec: BuildSpec) -> str:
    """The newest version the buildspec offers (by release date, then by version order)."""
    def key(v: VersionSpec) -> tuple:
        nums = tuple(int(p) if p.isdigit() else -1 for p in re.split(r"[.+-]", v.version))
        return (v.released or date.min, nums)
    return max(spec.versions, key=key).version


def _release_dates(path: Path) -> dict[str, dict[str, date]]:
    """framework -> version -> release date, from buildspecs/facts/releases.yaml (if present)."""
    if not path.is_file():
        return {}
    data = _load_yaml(path).get("frameworks") or {}
    out: dict[str, dict[str, date]] = {}
    for framework, facts in data.items():
        for version, fact in ((facts or {}).get("versions") or {}).items():
            released = (fact or {}).get("released")
            if not isinstance(released, date):
                raise CatalogError(f"{path}: frameworks.{framework}.versions.{version}.released: not a date")
            out.setdefault(framework, {})[str(version)] = released
    return out


def _base_digests(path: Path) -> dict[str, str]:
    """name:tag -> digest, from buildspecs/facts/base-digests.yaml (if present); a digest that is
    not ``sha256:`` and 64 hex digits, or an entry without its source and date, fails the load."""
    if not path.is_file():
        return {}
    try:
        facts = BaseDigests.model_validate(_load_yaml(path))
    except ValidationError as e:
        raise _fail(path, e) from None
    return {name: entry.digest for name, entry in facts.digests.items()}


def _load_yaml(path: Path) -> dict:
    compiled, data = catalog_compiled.parsed(path)  # a deployment's precompiled copy, if current
    if not compiled:
        import yaml  # only where the catalog was not compiled (a checkout): not in the Lambda

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise CatalogError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: expected a mapping at the top level")
    return data


def _fail(path: Path, e: ValidationError) -> CatalogError:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    return CatalogError(f"{path}: " + "; ".join(parts))


def load_catalog(root: Path | str | None = None) -> Catalog:
    root = Path(root) if root else ROOT
    spec_dir = root / "buildspecs"
    hw_path = spec_dir / "_hardware.yaml"
    try:
        hardware = Hardware.model_validate(_load_yaml(hw_path))
    except ValidationError as e:
        raise _fail(hw_path, e) from None
    released = _release_dates(spec_dir / "facts" / "releases.yaml")
    digests = _base_digests(spec_dir / "facts" / "base-digests.yaml")
    frameworks: dict[str, BuildSpec] = {}
    for path in sorted(spec_dir.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        raw = path.read_bytes()
        data = _load_yaml(path)
        data["source_hash"] = hashlib.sha256(raw).hexdigest()[:16]
        data["base_digests"] = digests
        dates = released.get(str(data.get("framework")), {})
        for v in data.get("versions") or []:
            if isinstance(v, dict) and "released" not in v and str(v.get("version")) in dates:
                v["released"] = dates[str(v.get("version"))]
        try:
            spec = BuildSpec.model_validate(data)
        except ValidationError as e:
            raise _fail(path, e) from None
        if spec.framework != path.stem:
            raise CatalogError(f"{path}: framework: {spec.framework!r} must match the file name {path.stem!r}")
        _check_against_hardware(path, spec, hardware)
        if not (root / spec.dockerfile / "Dockerfile").is_file():
            raise CatalogError(f"{path}: dockerfile: {spec.dockerfile}/Dockerfile does not exist")
        frameworks[spec.framework] = spec
    if not frameworks:
        raise CatalogError(f"{spec_dir}: no buildspecs found")
    return Catalog(frameworks=frameworks, hardware=hardware, root=root)


def _check_against_hardware(path: Path, spec: BuildSpec, hw: Hardware) -> None:
    for v in spec.versions:
        unknown = [c for c in v.cuda if c not in hw.cuda]
        if unknown:
            raise CatalogError(f"{path}: versions.{v.version}.cuda: {unknown} not in _hardware.yaml cuda")
    bad = [t for t in spec.instance_types if not hw.is_known_instance_type(t)]
    if bad:
        raise CatalogError(f"{path}: instance_types: {bad} not in _hardware.yaml families")
    unbootable = [t for t in spec.instance_types if not hw.bootable(t)]
    if unbootable:
        why = "; ".join(f"{t}: {hw.family(t).no_ami}" for t in unbootable)
        raise CatalogError(f"{path}: instance_types: no AMI boots {why}")
    d = spec.defaults
    first = spec.instance_types[0]
    if not hw.runs(first, d.cuda):
        fam = hw.family(first)
        raise CatalogError(
            f"{path}: defaults.cuda: CUDA {d.cuda} cannot run on the first default instance type "
            f"{first} ({fam.gpu}, compute capability {fam.compute_capability}; CUDA {d.cuda} needs "
            f"{hw.cuda[d.cuda].min_compute_capability} or newer); defaults must stay on a CUDA that "
            f"{first} runs"
        )
    # A combination that none of the default instance types runs would make every request
    # for it that names no instance_types a 400: a broken buildspec, not a user error.
    for v in spec.versions:
        for c in v.cuda:
            if not any(hw.runs(t, c) for t in spec.instance_types):
                raise CatalogError(
                    f"{path}: versions.{v.version}.cuda: CUDA {c} runs on none of instance_types "
                    f"{spec.instance_types}; add one of the families that run it: "
                    f"{', '.join(hw.families_for(c))}"
                )
    for r in spec.combinations():
        for t in spec.tags_for(r, hw):
            if not DOCKER_TAG.match(t):
                raise CatalogError(f"{path}: tags: {t!r} (for {r.version}/{r.cuda}/{r.python}) is not a Docker tag")
