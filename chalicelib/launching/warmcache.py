"""Caches a build reuses.

- :class:`TtlCache`: a small time-limited cache for what a warm Lambda may reuse between
  invocations (an AMI's id and root device, a spot price): short-lived facts, so each entry
  expires after ``ttl_seconds`` and the next use asks AWS again. Failures are never cached
  (the lookup raises, nothing is stored).
- :func:`registry_cache_tag`: which BuildKit registry cache (``<repository>:<tag>``) a build
  reads and writes (issue 22), chosen so that builds on the same base share one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

T = TypeVar("T")


class TtlCache:
    def __init__(self, ttl_seconds: float, *, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 256) -> None:
        self.ttl = ttl_seconds
        self._clock = clock
        self._max = max_entries
        self._items: dict[Hashable, tuple[float, object]] = {}

    def get(self, key: Hashable, load: Callable[[], T], *, keep: Callable[[T], bool] = lambda _: True) -> T:
        """The cached value for ``key`` while it is fresh; else ``load()``, kept when ``keep``
        says so (a fallback answer can be used once without being remembered)."""
        now = self._clock()
        hit = self._items.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]  # type: ignore[return-value]
        value = load()
        if keep(value):
            if len(self._items) >= self._max:
                self._items = {k: v for k, v in self._items.items() if now - v[0] < self.ttl}
            if len(self._items) < self._max:
                self._items[key] = (now, value)
        return value

    def clear(self) -> None:
        self._items.clear()


# ---- the registry build cache (issue 22) -----------------------------------------------
CACHE_TAG_PREFIX = "buildcache"  # reserved for the catalog (specs/catalog.py, custom/sources.py); ECR's
# lifecycle rule expires tags with this prefix (infra/resources.yaml, custom/custom_builds.py)


def base_of(build_args: Mapping[str, str]) -> dict[str, str]:
    """What a build starts FROM: its ``*_IMAGE`` build arguments (the catalog's Dockerfiles
    take every base as one: ``BASE_IMAGE``, ``DEVEL_IMAGE``, ...), with their values."""
    return {k: v for k, v in sorted(build_args.items()) if k.endswith("_IMAGE")}


def registry_cache_tag(build_args: Mapping[str, str]) -> str:
    """The tag of the registry cache a build reads (``--cache-from``) and writes
    (``--cache-to ... mode=max``) in its own repository: one per *base*.

    A registry cache ref holds ONE cache manifest; its last writer replaces it. With one ref
    per repository, a matrix's cells on CUDA 12.4 and 12.6 overwrote each other's cache and
    each found layers of the other base, useless to it. Keyed by the base, the cells that
    share it (a version axis over one CUDA/Python) read and refresh one cache, whose layers
    up to where they differ (the base, apt, Python) they all reuse — whichever wrote last,
    since those layers are in every writer's cache — and a cell on another base keeps its
    own. A build with no ``*_IMAGE`` argument uses the plain ``buildcache``."""
    base = base_of(build_args)
    if not base:
        return CACHE_TAG_PREFIX
    key = "\n".join(f"{k}={v}" for k, v in base.items()).encode()
    return f"{CACHE_TAG_PREFIX}-{hashlib.sha256(key).hexdigest()[:16]}"
