"""A build's cost from its record (issue 22): the glue between the stored build and the pure
``billing`` / ``costagg`` functions. No I/O; the catalog gives each build's root volume and
the deployment's ``SPOT_PRICE_TABLE`` the prices the launcher fell back on.

A build's instances are its current ``instance``, its earlier attempts' ``past_instances``
(a spot reclaim, a host failure) and, for a split build, its build stage's instance, each
priced once.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal

from chalicelib import clock
from chalicelib.builds.schemas import Build
from chalicelib.clock import parse
from chalicelib.costs import billing, costagg
from chalicelib.custom.custom_builds import launch_spec
from chalicelib.errors import BadRequest
from chalicelib.specs.catalog import Catalog


class BuildCosts:
    def __init__(self, catalog: Catalog, price_table: Mapping[str, float], *,
                 price_ceiling: float | None = None, on_demand_table: Mapping[str, float] | None = None,
                 on_demand_fallback: bool = False) -> None:
        self.catalog = catalog
        self.price_table = dict(price_table)
        self.on_demand_table = dict(on_demand_table or {})
        self.on_demand_fallback = on_demand_fallback  # the launcher may fall back to on-demand (ON_DEMAND_FALLBACK)
        self.price_ceiling = price_ceiling
        self.watch: BudgetWatch | None = None  # the MONTHLY_BUDGET_USD alert (wiring sets it)

    def root_volume_gb(self, build: Build) -> int:
        return launch_spec(self.catalog, build).root_volume_gb

    def cost(self, build: Build, now: datetime) -> billing.Cost | None:
        """What ``build`` costs as of ``now``: every instance it ran on, earlier attempts'
        (``past_instances``, billed to when the build left each: their own termination is
        not recorded, so the terminate lag of those is not counted) and the current one
        (an estimate up to ``now`` until ``instance_terminated_at`` is recorded), and a split
        build's build-stage instance (to its recorded termination). $0 (final)
        when it never had an instance; None when an instance's price is unknown (an
        on-demand type missing from ON_DEMAND_PRICE_TABLE)."""
        first = build.stages.get("build") if build.split else None
        if build.instance is None and not build.past_instances and (first is None or first.instance is None):
            return billing.build_cost([], now)
        try:
            volume = self.root_volume_gb(build)
        except BadRequest:  # its framework left the catalog: the root volume is unknown
            return None
        usages, seen = [], set()

        def add(info: dict, end: datetime | None) -> None:
            if info.get("id") not in seen:
                seen.add(info.get("id"))
                usages.append(self._usage(info, volume, end))

        for past in build.past_instances:
            add(past.model_dump(), parse(past.left_at) if past.left_at else None)
        # a split build (issue 23): its build stage's instance, once the test stage has its own
        if first is not None and first.instance is not None and (
                build.instance is None or first.instance.id != build.instance.id):
            add(first.instance.model_dump(), parse(first.terminated_at) if first.terminated_at else None)
        if build.instance is not None:
            terminated = parse(build.instance_terminated_at) if build.instance_terminated_at else None
            add(build.instance.model_dump(), terminated)
        return None if any(u is None for u in usages) else billing.build_cost(usages, now)

    def _usage(self, info: dict, volume: int, end: datetime | None) -> billing.InstanceUsage | None:
        return billing.usage_from_instance(info, root_volume_gb=volume, price_table=self.price_table,
                                           terminated_at=end, on_demand_table=self.on_demand_table)

    def booked(self, booking: costagg.Booking) -> None:
        """A final cost was just booked (``Lifecycle._note_terminated``): the budget alert
        may be due (``BudgetWatch``)."""
        if self.watch is not None:
            self.watch.booked(booking.day)

    def with_cost(self, build: Build, now: datetime) -> Build:
        return build.model_copy(update={"cost": self.cost(build, now)})

    @staticmethod
    def booking(build: Build, owner_key: str | None, cost: billing.Cost, at: datetime) -> costagg.Booking:
        return costagg.Booking(cost=cost, framework=build.framework, key_id=owner_key or "local",
                               group_id=build.group_id, day=costagg.booking_day(at))

    def worst_cases(self, builds: Sequence[Build]) -> list[billing.CellWorstCase]:
        """Each planned build's worst case (max price x timeout x attempts, with its volume);
        a split build's build stage is a case of its own (its CPU types, the same limits)."""
        on_demand = self.on_demand_table if self.on_demand_fallback else None
        out = []
        for b in builds:
            stage_types = [b.instance_types]
            if b.split and b.stages.get("build") is not None and b.stages["build"].instance_types:
                stage_types.insert(0, b.stages["build"].instance_types)
            out += [billing.cell_worst_case(
                instance_types=types, max_price=b.max_price, timeout_minutes=b.timeout_minutes,
                attempts=b.max_attempts, root_volume_gb=self.root_volume_gb(b), price_table=self.price_table,
                price_ceiling=self.price_ceiling, on_demand_table=on_demand) for types in stage_types]
        return out


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
        at = clock.now()
        booked = self.aggregates.spent_this_month(costagg.booking_day(at))
        active_worst = []
        for b in self.active():
            try:
                active_worst += self.costs.worst_cases([b])
            except BadRequest:  # submitted before the budget was set, on an unpriced type: not bounded
                continue
        return billing.check_budget(self.costs.worst_cases(builds), budget_usd=self.budget_usd,
                                    spent_usd=spent_with_active(booked, active_worst, at), at=at)


class BudgetWatch:
    """The MONTHLY_BUDGET_USD alert: once the month's booked costs reach 80% of the budget
    (``costagg.BUDGET_ALERT_FRACTION``), a Slack message, once per month and stage. Every
    booking past the line asks for it (``notify(month)``: a notify-queue message) until the
    month's alert is recorded; the notifier claims it with one conditional write, so however
    many bookings race, one message goes out. Cost: one read of the month's day aggregates
    per booking (at most 31 items), one more while the alert is due."""

    def __init__(self, aggregates: costagg.CostAggregates, budget_usd: Decimal, *,
                 notify: Callable[[str], None], alerted: Callable[[str], bool]) -> None:
        self.aggregates = aggregates
        self.budget_usd = budget_usd
        self.fraction = costagg.BUDGET_ALERT_FRACTION
        self.notify = notify
        self.alerted = alerted

    def spent(self, day: date) -> Decimal:
        return self.aggregates.spent_this_month(day)

    def due(self, day: date) -> Decimal | None:
        """The month's spend when the alert is due, else None."""
        spent = self.spent(day)
        return spent if costagg.budget_alert_due(self.budget_usd, spent) else None

    def booked(self, day: date) -> bool:
        """After a booking on ``day``: ask for the month's alert if it is due and not yet sent."""
        month = f"{day:%Y-%m}"
        if self.due(day) is None or self.alerted(month):
            return False
        self.notify(month)
        return True


def month_end(month: str) -> date:
    """The last day of ``month`` (``YYYY-MM``), or today when that month is this one."""
    year, mon = (int(x) for x in month.split("-"))
    last = date(year, mon, calendar.monthrange(year, mon)[1])
    return min(last, clock.now().date())
