"""Spend guards (issue 17): the stage's ceilings on what one build may ask for, and what a
build books against its API key's daily GPU-hour quota. No I/O here: the quotas are taken
in the store's create transaction (``chalicelib/builds/store.py``)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from chalicelib.errors import BadRequest
from chalicelib.specs.catalog import Hardware

_SIZE = re.compile(r"^(?:(?P<n>[0-9]+)?xlarge|large|medium|small|micro|nano|metal(?:-[0-9]+xl)?)$")


def size_rank(size: str) -> float:
    """Orders EC2 sizes: nano < ... < large < xlarge < 2xlarge < ... < 48xlarge < metal."""
    m = _SIZE.match(size)
    if not m:
        raise ValueError(f"not an EC2 instance size: {size!r}")
    if size.endswith("xlarge") and not size.startswith("metal"):
        return float(m["n"] or 1)
    return {"large": 0.5, "medium": 0.25, "small": 0.125, "micro": 0.0625, "nano": 0.03}.get(size, math.inf)


@dataclass(frozen=True)
class Ceilings:
    """What one build may ask for in this stage. ``sizes`` maps an instance family (or
    ``*`` for every other family) to the largest size allowed; empty means no ceiling."""

    sizes: tuple[tuple[str, str], ...] = ()
    max_price: float | None = None
    max_timeout_minutes: int | None = None

    def largest_size(self, family: str) -> str | None:
        table = dict(self.sizes)
        return table.get(family, table.get("*"))

    def check(self, hw: Hardware, instance_types: list[str], max_price: float | None, timeout: int) -> None:
        over = []
        for t in instance_types:
            family, _, size = t.partition(".")
            largest = self.largest_size(family)
            if largest is not None and size_rank(size) > size_rank(largest):
                over.append(f"{t} (largest {family} size allowed: {family}.{largest})")
        if over:
            raise BadRequest(f"instance_types: over this stage's ceiling: {', '.join(over)}", field="instance_types")
        if self.max_price is not None and max_price is not None and max_price > self.max_price:
            raise BadRequest(f"max_price: {max_price} is over this stage's ceiling; allowed up to {self.max_price} "
                             "USD per hour", field="max_price")
        if self.max_timeout_minutes is not None and timeout > self.max_timeout_minutes:
            raise BadRequest(f"timeout_minutes: {timeout} is over this stage's ceiling; allowed 5 to "
                             f"{self.max_timeout_minutes}", field="timeout_minutes")


def gpu_hours(hw: Hardware, instance_types: list[str], timeout_minutes: int) -> float:
    """What a build books against its key's daily quota: its timeout on the instance type
    with the most GPUs it may get (the most it can use per attempt), rounded up to 0.01."""
    gpus = max((hw.families[t.partition(".")[0]].sizes.get(t, 1) for t in instance_types
                if t.partition(".")[0] in hw.families), default=1)
    return math.ceil(gpus * timeout_minutes / 60 * 100) / 100


@dataclass(frozen=True)
class KeyQuota:
    """One API key's limits: builds active at once, and GPU-hours booked per UTC day."""

    key_id: str
    max_active: int | None = None  # None: no limit of this kind
    max_gpu_hours_per_day: float | None = None
