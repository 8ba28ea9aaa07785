"""What a build costs (issue 22): EC2 per-second billing and its root volume, as data and
pure functions. No I/O here: the launcher records each instance's price and where it came
from, the lifecycle handlers its termination; this module turns that into a ``Cost``.

Rules (facts with a source, read 2026-12-02):
- EC2 Linux instances launched On-Demand, Reserved or Spot are billed per second with a
  minimum of 60 seconds per instance; list and spot prices are quoted per hour.
  Source: "Announcing Amazon EC2 per second billing", AWS What's New, 2017-10-02,
  https://aws.amazon.com/about-aws/whats-new/2017/10/announcing-amazon-ec2-per-second-billing/
- EBS volumes are billed per second with a minimum of 60 seconds (same announcement); the
  list price is per GB-month, a GB-month being one GB provisioned for the whole calendar
  month (a 31-day month has 744 hours). Source: AWS Knowledge Center "Understand charges
  for Amazon EBS volumes", as quoted on yohei-a.hatenablog.jp (2020-12-17).
- gp3 storage in us-east-1: 0.08 USD per GB-month — UNCONFIRMED: not read on
  aws.amazon.com/ebs/pricing (not reachable here); the figure is the one quoted in
  gitlab-org/ci-cd/docker-machine MR 45 ("gp3 ... .08 * 50 GB-month"). Re-check before
  relying on it.

Rounding (ours): an instance's running time is whole seconds, a started second counting
whole (ceil), and never less than the 60 s minimum; the root volume is billed for the same
seconds. Amounts are Decimals kept to a millionth of a dollar (ROUND_HALF_UP per instance,
so sums and aggregates add exactly); cents appear only in ``Cost.display``.

The billed time is launch to *terminated* (the EC2 "terminated" state, not the build's
final transition): the terminate lag is billed, so it is counted. Until the instance is
terminated the cost is an estimate up to ``now`` (``estimated: true``).
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.clock import parse
from chalicelib.errors import BadRequest, QuotaExceeded

MINIMUM_SECONDS = 60
USD_QUANTUM = Decimal("0.000001")
CENT = Decimal("0.01")


class Fact(BaseModel):
    model_config = ConfigDict(frozen=True)

    value: Decimal | int
    unit: str
    source: str
    read: str
    confirmed: bool


BILLING_FACTS: dict[str, Fact] = {
    "ec2_minimum_seconds": Fact(
        value=MINIMUM_SECONDS, unit="seconds per instance launch",
        source="https://aws.amazon.com/about-aws/whats-new/2017/10/announcing-amazon-ec2-per-second-billing/",
        read="2026-12-02", confirmed=True),
    "ebs_minimum_seconds": Fact(
        value=MINIMUM_SECONDS, unit="seconds per volume",
        source="https://aws.amazon.com/about-aws/whats-new/2017/10/announcing-amazon-ec2-per-second-billing/",
        read="2026-12-02", confirmed=True),
    "gp3_usd_per_gb_month_us_east_1": Fact(
        value=Decimal("0.08"), unit="USD per GB-month",
        source="aws.amazon.com/ebs/pricing (not reachable here); figure as quoted in "
               "gitlab-org/ci-cd/docker-machine merge request 45",
        read="2026-12-02", confirmed=False),
}
GP3_USD_PER_GB_MONTH = Decimal(BILLING_FACTS["gp3_usd_per_gb_month_us_east_1"].value)

# us-east-1 Linux on-demand list prices (USD per hour): settings.DEFAULT_ON_DEMAND_PRICES, the
# ON_DEMAND_PRICE_TABLE a deployment does not override. aws.amazon.com/ec2/pricing/on-demand
# was not reachable here: none is confirmed at the source.
ON_DEMAND_FACTS: dict[str, Fact] = {
    "p3.2xlarge": Fact(value=Decimal("3.06"), unit="USD per hour, us-east-1, Linux, on-demand",
                       source="this repository's README (Costs), from AWS's us-east-1 list prices as of 2025",
                       read="2026-12-02", confirmed=False),
    "g5.xlarge": Fact(value=Decimal("1.006"), unit="USD per hour, us-east-1, Linux, on-demand",
                      source="factualminds.com, 'Amazon EC2 On-Demand Pricing ... (2026)', 2026-06-17, quoting "
                             "the us-east-1 rate card", read="2026-12-02", confirmed=False),
    "g4dn.xlarge": Fact(value=Decimal("0.526"), unit="USD per hour, us-east-1, Linux, on-demand",
                        source="not read from a source here: the commonly quoted list price; re-check",
                        read="2026-12-02", confirmed=False),
    "g6.xlarge": Fact(value=Decimal("0.8048"), unit="USD per hour, us-east-1, Linux, on-demand",
                      source="not read from a source here: the commonly quoted list price; re-check",
                      read="2026-12-02", confirmed=False),
}


class PriceSource(StrEnum):
    """Where an instance's hourly price came from (the launcher's ``_price`` order)."""

    SPOT_HISTORY = "spot-history"
    CONFIGURED_TABLE = "configured-table"  # SPOT_PRICE_TABLE (settings.DEFAULT_SPOT_PRICES)
    ON_DEMAND = "on-demand"


class Lifecycle(StrEnum):
    SPOT = "spot"
    ON_DEMAND = "on-demand"


class InstanceUsage(BaseModel):
    """One instance a build ran on (an attempt, a relaunch, later a split build's stage)."""

    model_config = ConfigDict(frozen=True)

    launched_at: datetime
    terminated_at: datetime | None = None
    price_per_hour: Decimal = Field(ge=0)
    source: PriceSource
    lifecycle: Lifecycle
    root_volume_gb: int = Field(ge=0)
    volume_usd_per_gb_month: Decimal = Field(GP3_USD_PER_GB_MONTH, ge=0)


class InstanceCost(BaseModel):
    model_config = ConfigDict(frozen=True)

    price_per_hour: Decimal
    source: PriceSource
    lifecycle: Lifecycle
    billed_seconds: int
    compute_usd: Decimal
    volume_usd: Decimal
    usd: Decimal
    estimated: bool


class Cost(BaseModel):
    """What a build costs: the sum of its instances. Price, source and lifecycle are the
    latest instance's (None when it never launched)."""

    model_config = ConfigDict(frozen=True)

    price_per_hour: Decimal | None = None
    source: PriceSource | None = None
    lifecycle: Lifecycle | None = None
    billed_seconds: int = 0
    usd: Decimal = Decimal(0)
    estimated: bool = False
    instances: list[InstanceCost] = Field(default_factory=list)

    @property
    def display(self) -> str:
        """USD for people, e.g. ``$1.23``; ``~`` marks an estimate (see :func:`usd_text`)."""
        return f"{'~' if self.estimated else ''}{usd_text(self.usd)}"


SUB_CENT = Decimal("0.0001")


def usd_text(usd: Decimal) -> str:
    """USD rounded to cents (half up), e.g. ``$1.23``; an amount under half a cent, where
    cents would say ``$0.00`` for a build that did cost something, to a hundredth of a cent
    (``$0.0012``; ``<$0.0001`` below that). $0 is ``$0.00``. Every place that shows a cost
    (the Slack messages, the CLI) shows it through this, so they all say the same."""
    if usd == 0 or usd >= CENT / 2:
        return f"${usd.quantize(CENT, rounding=ROUND_HALF_UP)}"
    if usd < SUB_CENT / 2:
        return "<$0.0001"
    return f"${usd.quantize(SUB_CENT, rounding=ROUND_HALF_UP)}"


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def billed_seconds(launched_at: datetime, end: datetime) -> int:
    """Whole seconds from launch to ``end`` (a started second counts), at least 60."""
    elapsed = (_utc(end) - _utc(launched_at)).total_seconds()
    return max(MINIMUM_SECONDS, math.ceil(elapsed)) if elapsed > 0 else MINIMUM_SECONDS


def seconds_in_month(at: datetime) -> int:
    at = _utc(at)
    return calendar.monthrange(at.year, at.month)[1] * 86400


def instance_cost(usage: InstanceUsage, now: datetime) -> InstanceCost:
    end = usage.terminated_at if usage.terminated_at is not None else now
    seconds = billed_seconds(usage.launched_at, end)
    compute = (usage.price_per_hour * seconds / 3600).quantize(USD_QUANTUM, rounding=ROUND_HALF_UP)
    volume = (usage.volume_usd_per_gb_month * usage.root_volume_gb * seconds
              / seconds_in_month(usage.launched_at)).quantize(USD_QUANTUM, rounding=ROUND_HALF_UP)
    return InstanceCost(price_per_hour=usage.price_per_hour, source=usage.source, lifecycle=usage.lifecycle,
                        billed_seconds=seconds, compute_usd=compute, volume_usd=volume, usd=compute + volume,
                        estimated=usage.terminated_at is None)


def build_cost(instances: Sequence[InstanceUsage], now: datetime) -> Cost:
    """A build's cost: its instances summed, in launch order. Never launched: $0, final."""
    if not instances:
        return Cost()
    parts = [instance_cost(u, now) for u in sorted(instances, key=lambda u: _utc(u.launched_at))]
    last = parts[-1]
    return Cost(price_per_hour=last.price_per_hour, source=last.source, lifecycle=last.lifecycle,
                billed_seconds=sum(p.billed_seconds for p in parts), usd=sum((p.usd for p in parts), Decimal(0)),
                estimated=any(p.estimated for p in parts), instances=parts)


def usage_from_instance(info: Mapping, *, root_volume_gb: int, price_table: Mapping[str, float],
                        terminated_at: datetime | None,
                        on_demand_table: Mapping[str, float] | None = None) -> InstanceUsage | None:
    """An ``InstanceUsage`` from a build record's ``instance`` (``schemas.InstanceInfo`` as
    the launcher records it) and the build's root volume (the buildspec's ``root_volume_gb``).

    The launcher records a spot instance's price from spot price history, else from the
    configured table (``SPOT_PRICE_TABLE``), without saying which: a recorded
    ``price_source`` wins; otherwise a price equal to the table's counts as the table's.
    A spot instance with no price recorded takes the table's as ``configured-table``. An
    on-demand instance (the launcher records no price for it) takes ``on_demand_table``'s
    (``ON_DEMAND_PRICE_TABLE``) as ``on-demand``. None when no price is known (an on-demand
    type missing from that table: the spot table would understate it), or no ``launched_at``
    — the caller says the cost is unknown.
    """
    lifecycle = Lifecycle(info.get("lifecycle") or Lifecycle.SPOT)
    itype = info.get("type", "")
    table = price_table.get(itype)
    price, source = info.get("price"), info.get("price_source")
    if lifecycle is Lifecycle.ON_DEMAND and source is None:
        price = (on_demand_table or {}).get(itype)
        if price is None:
            return None
        source = PriceSource.ON_DEMAND
    elif price is None:
        if table is None:
            return None
        price, source = table, PriceSource.CONFIGURED_TABLE
    elif source is None:
        source = PriceSource.CONFIGURED_TABLE if table is not None and float(price) == float(table) \
            else PriceSource.SPOT_HISTORY
    launched = info.get("launched_at")
    if not launched:
        return None
    return InstanceUsage(launched_at=parse(launched), terminated_at=terminated_at,
                         price_per_hour=Decimal(str(price)), source=PriceSource(source), lifecycle=lifecycle,
                         root_volume_gb=root_volume_gb)


# ---- the stage budget (MONTHLY_BUDGET_USD) --------------------------------------------

class CellWorstCase(BaseModel):
    """What one cell (a build) could cost at most: its dearest instance type's price for
    its whole timeout, on every attempt, with its root volume."""

    model_config = ConfigDict(frozen=True)

    max_price_per_hour: Decimal = Field(ge=0)
    timeout_minutes: int = Field(ge=1)
    attempts: int = Field(ge=1)
    root_volume_gb: int = Field(ge=0)


def worst_case_usd(cell: CellWorstCase, at: datetime) -> Decimal:
    seconds = max(MINIMUM_SECONDS, cell.timeout_minutes * 60)
    compute = cell.max_price_per_hour * seconds / 3600
    volume = GP3_USD_PER_GB_MONTH * cell.root_volume_gb * seconds / seconds_in_month(at)
    return ((compute + volume) * cell.attempts).quantize(USD_QUANTUM, rounding=ROUND_HALF_UP)


def cell_worst_case(*, instance_types: Sequence[str], max_price: float | None, timeout_minutes: int,
                    attempts: int, root_volume_gb: int, price_table: Mapping[str, float],
                    price_ceiling: float | None, on_demand_table: Mapping[str, float] | None = None) -> CellWorstCase:
    """A planned build's worst case: its ``max_price`` when it set one (a spot instance never
    costs more), else the dearest of its instance types in the configured table, else the
    stage's ``MAX_PRICE_CEILING``. A type priced nowhere is a 400: nothing bounds its cost.
    ``on_demand_table`` (the stage falls back to on-demand, ON_DEMAND_FALLBACK): an on-demand
    instance ignores ``max_price``, so the dearest on-demand price of its types counts too."""
    if on_demand_table is not None:
        spot = cell_worst_case(instance_types=instance_types, max_price=max_price, timeout_minutes=timeout_minutes,
                               attempts=attempts, root_volume_gb=root_volume_gb, price_table=price_table,
                               price_ceiling=price_ceiling)
        unpriced = [t for t in instance_types if t not in on_demand_table]
        if unpriced:
            raise BadRequest(f"instance_types: {', '.join(unpriced)} has no on-demand price (ON_DEMAND_PRICE_TABLE) "
                             "and this stage falls back to on-demand under a monthly budget; choose priced types",
                             field="instance_types")
        dearest = max(Decimal(str(on_demand_table[t])) for t in instance_types)
        return spot.model_copy(update={"max_price_per_hour": max(spot.max_price_per_hour, dearest)})
    if max_price is not None:
        price = max_price
    else:
        known = [price_table[t] for t in instance_types if t in price_table]
        unknown = [t for t in instance_types if t not in price_table]
        if unknown and price_ceiling is None:
            raise BadRequest(f"max_price: {', '.join(unknown)} has no configured price and this stage has a monthly "
                             "budget; send max_price (USD per hour) to bound what the build may cost",
                             field="max_price")
        price = max(known + ([price_ceiling] if unknown else []))
    return CellWorstCase(max_price_per_hour=Decimal(str(price)), timeout_minutes=timeout_minutes, attempts=attempts,
                         root_volume_gb=root_volume_gb)


class BudgetExceeded(QuotaExceeded):
    """A submit whose worst case would cross the stage's monthly budget (a 429)."""


def check_budget(cells: Sequence[CellWorstCase], *, budget_usd: Decimal | None, spent_usd: Decimal,
                 at: datetime) -> Decimal:
    """Refuse (429) a submit whose cells' worst case would cross ``budget_usd`` given
    ``spent_usd`` this month (final costs plus the worst case booked by active builds, as
    the caller counts them). Returns the worst case. ``budget_usd`` None: no budget."""
    worst = sum((worst_case_usd(c, at) for c in cells), Decimal(0))
    if budget_usd is None:
        return worst
    left = max(Decimal(0), budget_usd - spent_usd)
    if worst > left:
        what = "this build" if len(cells) == 1 else f"these {len(cells)} builds"
        raise BudgetExceeded(
            f"monthly budget: {what} could cost up to ${worst.quantize(CENT, rounding=ROUND_UP)} "
            f"(max price x timeout x attempts); ${left.quantize(CENT, rounding=ROUND_DOWN)} of this stage's "
            f"MONTHLY_BUDGET_USD ${budget_usd.quantize(CENT)} is left for {at:%Y-%m}; lower timeout_minutes or "
            "max_price, build fewer cells, or wait for next month")
    return worst

