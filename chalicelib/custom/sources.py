"""What a "build your own" request may say (issue 20): the request models of a build's
``source`` (an uploaded context or a git repository) and of a catalog image's ``extend``,
and the validators every value passes before it is stored or goes near a host script.

Each rule says what is allowed in its message. Grammar comes from the owners of each
format, not from guesses:
- pip requirements: PEP 508 as parsed by ``packaging.requirements`` (pip's own parser);
  direct references (``name @ URL``) are refused: a build installs from its index only;
- Debian package names: Debian Policy 5.6.1 ("at least two characters, lower case letters,
  digits, plus, minus and periods, starting with an alphanumeric character");
- image repositories: the OCI distribution spec's path components, under ``voltabuild/``;
- tags: the Docker tag grammar (``catalog.DOCKER_TAG``);
- git: https URLs only (no credentials, query or fragment), refs as ``git check-ref-format``
  allows them minus anything that starts with ``-`` (an option) or holds ``..``.
"""

from __future__ import annotations

import re
from typing import Annotated

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from chalicelib.builds.names import DIGEST

NAMESPACE = "voltabuild/"
# OCI distribution spec path component, lower case; at most 4 components under voltabuild/
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT}){{0,3}}$")
# a relative path inside a context: plain components, no "." or ".." component, no leading /
_PATH_PART = r"[A-Za-z0-9_+@-][A-Za-z0-9._+@-]{0,127}|\.[A-Za-z0-9_+@-][A-Za-z0-9._+@-]{0,126}"
REL_PATH = re.compile(rf"^(?:{_PATH_PART})(?:/(?:{_PATH_PART})){{0,15}}$")
TARGET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
GIT_URL = re.compile(r"^(https|http)://([A-Za-z0-9.-]{1,253})(:[0-9]{1,5})?(/[A-Za-z0-9._~%+/-]{0,400})$")
GIT_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/+-]{0,199}$")
BUILD_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
ENV_NAME = BUILD_ARG_NAME
# printable ASCII: no control characters, no newline (values become one argv word or one ENV line)
PRINTABLE = re.compile(r"^[\x20-\x7e]*$")
ENV_VALUE = re.compile(r"^[A-Za-z0-9 ._/:@,=+%-]{0,1024}$")
DEBIAN_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
DEBIAN_VERSION = re.compile(r"^[0-9][A-Za-z0-9.+~:-]{0,127}$")
# tags no request may set: the registry build cache and the executor's per-attempt names
RESERVED_TAG = re.compile(r"^(buildcache.*|build-b-[0-9a-f]{20}-[0-9]+)$")
MAX_BUILD_ARGS_BYTES = 8192  # the user-data carries them (EC2 limit 16 KB, compressed)


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"{value[:80]!r} is not {what}")
    return value


def check_rel_path(value: str, what: str = "a relative path") -> str:
    if len(value) > 1024 or not REL_PATH.match(value):
        raise ValueError(f"{value[:80]!r} is not {what}: plain names separated by /, no leading /, "
                         "no '.' or '..' component, letters, digits and ._+@- only")
    return value


def check_git_url(value: str) -> str:
    m = GIT_URL.match(value)
    if not m or "@" in value.split("//", 1)[1].split("/", 1)[0]:
        raise ValueError(f"{value[:120]!r} is not an https repository URL (https://host/path, no credentials, "
                         "query or fragment)")
    return value


def check_git_ref(value: str) -> str:
    bad = (".." in value or "//" in value or value.endswith((".lock", "/", ".")) or "@{" in value)
    if bad or not GIT_REF.match(value):
        raise ValueError(f"{value[:80]!r} is not a git ref: a branch, tag or commit (letters, digits and "
                         "._/+- , not starting with - or ., no '..')")
    return value


def check_pip(value: str) -> str:
    if len(value) > 200 or not PRINTABLE.match(value):
        raise ValueError(f"{value[:80]!r}: a pip requirement is at most 200 printable characters")
    try:
        req = Requirement(value)
    except InvalidRequirement as e:
        raise ValueError(f"{value[:80]!r} is not a pip requirement (PEP 508, e.g. transformers==4.46.0): {e}") from None
    if req.url:
        raise ValueError(f"{value[:80]!r}: direct URL requirements are not allowed; name a package from the index")
    return value


def check_apt(value: str) -> str:
    name, sep, version = value.partition("=")
    if len(name) > 128 or not DEBIAN_PACKAGE.match(name) or (sep and not DEBIAN_VERSION.match(version)):
        raise ValueError(f"{value[:80]!r} is not a Debian package name (Debian Policy 5.6.1: lower case letters, "
                         "digits, + - . , at least 2 characters, starting alphanumeric), optionally =VERSION")
    return value


def check_smoke_test(argv: list[str]) -> list[str]:
    if not argv or len(argv) > 32:
        raise ValueError("smoke_test is an argv list of 1 to 32 words, e.g. [\"nvidia-smi\"]")
    for word in argv:
        if not word or len(word) > 512 or not PRINTABLE.match(word):
            raise ValueError(f"smoke_test: {word[:80]!r}: each word 1 to 512 printable characters")
    if argv[0].startswith("-"):
        raise ValueError("smoke_test: the first word is the program, not an option")
    return argv


def check_user_build_args(args: dict[str, str]) -> dict[str, str]:
    """A user's Dockerfile build args: free-form, but sized and printable (each goes to the
    builder as one ``--build-arg NAME=VALUE`` argument, never through a shell)."""
    total = 0
    for name, value in args.items():
        if not BUILD_ARG_NAME.match(name):
            raise ValueError(f"build_args: {name[:80]!r} is not a build arg name ([A-Za-z_][A-Za-z0-9_]{{0,63}})")
        if not PRINTABLE.match(value):
            raise ValueError(f"build_args.{name}: only printable ASCII (no newline or control characters)")
        total += len(name) + len(value) + 1
    if total > MAX_BUILD_ARGS_BYTES:
        raise ValueError(f"build_args: {total} bytes in all; the limit is {MAX_BUILD_ARGS_BYTES}")
    return args


def repository_name(value: str) -> str:
    """``team/app`` or ``voltabuild/team/app`` -> ``voltabuild/team/app``; anything else is a ValueError."""
    name = value[len(NAMESPACE):] if value.startswith(NAMESPACE) else value
    if len(value) > 200 or not REPOSITORY.match(name):
        raise ValueError(f"repository: {value[:80]!r} is not a repository name inside voltabuild/ (lower case "
                         "letters, digits, ._- separators, up to 4 /-separated parts, e.g. voltabuild/team/app)")
    return NAMESPACE + name


def check_user_tags(tags: list[str]) -> list[str]:
    for t in tags:
        if RESERVED_TAG.match(t):
            raise ValueError(f"tags: {t!r} is reserved (buildcache* is the registry build cache, build-b-* the "
                             "builders' own names)")
    return tags


RelPath = Annotated[str, StringConstraints(max_length=1024)]


class Source(BaseModel):
    """``source`` of ``POST /builds``: exactly one of ``context`` (an uploaded tarball) or
    ``git`` (an https repository)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    context: str | None = Field(None, description="sha256:<hex> of a context uploaded through POST /contexts")
    git: str | None = Field(None, description="https URL of a git repository")
    ref: str | None = Field(None, description="git only: branch, tag or commit (default: the default branch)")
    path: RelPath | None = Field(None, description="git only: the context's folder inside the repository")
    dockerfile: RelPath = Field("Dockerfile", description="the Dockerfile, relative to the context")
    target: str | None = Field(None, description="the Dockerfile stage to build (docker build --target)")

    @field_validator("context")
    @classmethod
    def _context(cls, v: str | None) -> str | None:
        return v if v is None else _check(DIGEST, v, "a context digest (sha256: and 64 hex digits)")

    @field_validator("git")
    @classmethod
    def _git(cls, v: str | None) -> str | None:
        return v if v is None else check_git_url(v)

    @field_validator("ref")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        return v if v is None else check_git_ref(v)

    @field_validator("path", "dockerfile")
    @classmethod
    def _paths(cls, v: str | None) -> str | None:
        return v if v is None else check_rel_path(v)

    @field_validator("target")
    @classmethod
    def _target(cls, v: str | None) -> str | None:
        return v if v is None else _check(TARGET, v, "a stage name ([A-Za-z0-9][A-Za-z0-9_.-]{0,63})")

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        if (self.context is None) == (self.git is None):
            raise ValueError("source: give exactly one of context (sha256:… from POST /contexts) or git (https URL)")
        if self.context is not None and (self.ref is not None or self.path is not None):
            raise ValueError("source: ref and path belong to a git source")
        return self

    @property
    def kind(self) -> str:
        return "context" if self.context is not None else "git"


class Extend(BaseModel):
    """``extend`` of ``POST /builds``: packages and environment on top of a catalog image."""

    model_config = ConfigDict(extra="forbid", strict=True)

    pip: list[str] = Field(default_factory=list, max_length=50, description="PEP 508 requirements")
    apt: list[str] = Field(default_factory=list, max_length=50, description="Debian package names")
    env: dict[str, str] = Field(default_factory=dict, max_length=32, description="ENV NAME=value lines")

    @field_validator("pip")
    @classmethod
    def _pip(cls, v: list[str]) -> list[str]:
        return [check_pip(x) for x in v]

    @field_validator("apt")
    @classmethod
    def _apt(cls, v: list[str]) -> list[str]:
        return [check_apt(x) for x in v]

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            _check(ENV_NAME, name, "an environment variable name ([A-Za-z_][A-Za-z0-9_]{0,63})")
            if not ENV_VALUE.match(value):
                raise ValueError(f"env.{name}: up to 1024 of letters, digits, space and ._/:@,=+%- "
                                 "(no quotes, $ or backslash)")
        return v

    @model_validator(mode="after")
    def _something(self) -> Extend:
        if not (self.pip or self.apt or self.env):
            raise ValueError("extend: name at least one of pip, apt or env")
        return self
