"""A build's cost from its record (issue 22): the glue between the stored build and the pure
``billing`` / ``costagg`` functions. No I/O; the catalog gives each build's root volume and
the deployment's ``SPOT_PRICE_TABLE`` the prices the launcher fell back on.

Only the current attempt's instance is recorded on a build (``instance``): an earlier
attempt's instance (a spot reclaim, a relaunch) is not priced — the cost of a relaunched
build is a lower bound until the record keeps every attempt's instance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal

from chalicelib.builds.schemas import Build
from chalicelib.clock import now, parse
from chalicelib.costs import billing, costagg
from chalicelib.custom.custom_builds import launch_spec
from chalicelib.errors import BadRequest
from chalicelib.specs.catalog import Catalog


class BuildCosts:
    def __init__(self, catalog: Catalog, price_table: Mapping[str, float], *,
                 price_ceiling: float | None = None) -> None:
        self.catalog = catalog
        self.price_table = dict(price_table)
        self.price_ceiling = price_ceiling

    def root_volume_gb(self, build: Build) -> int:
        return launch_spec(self.catalog, build).root_volume_gb

    def cost(self, build: Build, now: datetime) -> billing.Cost | None:
        """What ``build`` costs as of ``now``: $0 (final) when it never had an instance; an
        estimate up to ``now`` until ``instance_terminated_at`` is recorded; None when its
        instance's price is unknown (an on-demand instance: no on-demand table yet)."""
        if build.instance is None:
            return billing.build_cost([], now)
        try:
            volume = self.root_volume_gb(build)
        except BadRequest:  # its framework left the catalog: the root volume is unknown
            return None
        terminated = parse(build.instance_terminated_at) if build.instance_terminated_at else None
        usage = billing.usage_from_instance(build.instance.model_dump(), root_volume_gb=volume,
                                            price_table=self.price_table, terminated_at=terminated)
        if usage is None:
            return None
        usages = [usage]
        # a split build (issue 23): its build stage's instance too, when the current one is the test stage's
        first = build.stages.get("build") if build.split else None
        if first is not None and first.instance is not None and first.instance.id != build.instance.id:
            ended = parse(first.terminated_at) if first.terminated_at else None
            earlier = billing.usage_from_instance(first.instance.model_dump(), root_volume_gb=volume,
                                                  price_table=self.price_table, terminated_at=ended)
            if earlier is None:
                return None
            usages.insert(0, earlier)
        return billing.build_cost(usages, now)

    def with_cost(self, build: Build, now: datetime) -> Build:
        return build.model_copy(update={"cost": self.cost(build, now)})

    @staticmethod
    def booking(build: Build, owner_key: str | None, cost: billing.Cost, at: datetime) -> costagg.Booking:
        return costagg.Booking(cost=cost, framework=build.framework, key_id=owner_key or "local",
                               group_id=build.group_id, day=costagg.booking_day(at))

    def worst_cases(self, builds: Sequence[Build]) -> list[billing.CellWorstCase]:
        """Each planned build's worst case (max price x timeout x attempts, with its volume)."""
        return [billing.cell_worst_case(
            instance_types=b.instance_types, max_price=b.max_price, timeout_minutes=b.timeout_minutes,
            attempts=b.max_attempts, root_volume_gb=self.root_volume_gb(b), price_table=self.price_table,
            price_ceiling=self.price_ceiling) for b in builds]


def spent_with_active(booked: Decimal, active_worst: Sequence[billing.CellWorstCase], at: datetime) -> Decimal:
    """What the budget counts as spent: final costs booked this month plus the worst case of
    every build still active (its cost is booked only once its instance is terminated)."""
    return booked + sum((billing.worst_case_usd(c, at) for c in active_worst), Decimal(0))


class Budget:
    """The stage's MONTHLY_BUDGET_USD as a submit check: refuses (429, ``billing.BudgetExceeded``)
    builds whose worst case would cross what is left this month. Reads one aggregate item per
    day of the month so far and the active builds (at most the stage's active-build quota)."""

    def __init__(self, costs: BuildCosts, aggregates: costagg.CostAggregates,
                 active: Callable[[], Iterable[Build]], budget_usd: Decimal) -> None:
        self.costs = costs
        self.aggregates = aggregates
        self.active = active
        self.budget_usd = budget_usd

    def __call__(self, builds: Sequence[Build]) -> Decimal:
        at = now()
        booked = self.aggregates.spent_this_month(costagg.booking_day(at))
        active_worst = []
        for b in self.active():
            try:
                active_worst += self.costs.worst_cases([b])
            except BadRequest:  # submitted before the budget was set, on an unpriced type: not bounded
                continue
        return billing.check_budget(self.costs.worst_cases(builds), budget_usd=self.budget_usd,
                                    spent_usd=spent_with_active(booked, active_worst, at), at=at)
