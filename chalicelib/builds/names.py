"""The grammar of the names the service hands out and accepts, defined once: build ids,
Docker tags and content digests."""

from __future__ import annotations

import re

from chalicelib.errors import BuildNotFound

# a build id: "b-" and 20 hex digits (builds.new_build_id draws them)
BUILD_ID = re.compile(r"^b-[0-9a-f]{20}$")
# Docker's tag grammar
DOCKER_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# a content digest as registries (and the build's context) name one: sha256 only
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
DIGEST = re.compile(DIGEST_PATTERN)


def check_build_id(build_id: str) -> str:
    """``build_id`` if it has the shape of one, else BuildNotFound (no read needed)."""
    if not BUILD_ID.match(build_id or ""):
        raise BuildNotFound(f"no build with id {build_id!r} (build ids look like b-0123456789abcdef0123)")
    return build_id
