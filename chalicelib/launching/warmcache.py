"""A small time-limited cache for what a warm Lambda may reuse between invocations (an
AMI's id and root device, a spot price): short-lived facts, so each entry expires after
``ttl_seconds`` and the next use asks AWS again. Failures are never cached (the lookup
raises, nothing is stored)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
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
