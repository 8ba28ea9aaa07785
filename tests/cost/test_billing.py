"""What a build costs (chalicelib/costs/billing.py): per-second billing with a 60 s minimum, the
root volume prorated, estimates until terminated, relaunches summed, the stage budget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib.api.http import status_of
from chalicelib.costs.billing import (
    BILLING_FACTS,
    BudgetExceeded,
    CellWorstCase,
    Cost,
    InstanceUsage,
    Lifecycle,
    PriceSource,
    build_cost,
    cell_worst_case,
    check_budget,
    instance_cost,
    usage_from_instance,
)
from chalicelib.errors import BadRequest

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
FAST = settings(max_examples=60, deadline=None)


def usage(seconds: float | None, price: str = "0.9", gb: int = 0, start: datetime = T0) -> InstanceUsage:
    return InstanceUsage(launched_at=start, terminated_at=None if seconds is None else start + timedelta(seconds=seconds),
                         price_per_hour=Decimal(price), source=PriceSource.SPOT_HISTORY, lifecycle=Lifecycle.SPOT,
                         root_volume_gb=gb)


prices = st.decimals(min_value=Decimal("0"), max_value=Decimal("100"), places=4)
durations = st.floats(min_value=-120, max_value=3 * 86400, allow_nan=False)


def test_an_hour_at_the_hourly_price_costs_that_price():
    cost = build_cost([usage(3600, "0.92")], now=T0 + timedelta(days=9))
    assert cost.billed_seconds == 3600
    assert cost.usd == Decimal("0.92")
    assert cost.estimated is False
    assert cost.display == "$0.92"
    assert (cost.price_per_hour, cost.source, cost.lifecycle) == (Decimal("0.92"), "spot-history", "spot")


def test_a_short_run_is_billed_the_60_second_minimum_and_a_started_second_counts():
    assert instance_cost(usage(5), T0).billed_seconds == 60
    assert instance_cost(usage(60.2), T0).billed_seconds == 61
    assert instance_cost(usage(3600, "3.6"), T0).compute_usd == Decimal("3.6")
    assert instance_cost(usage(10, "3.6"), T0).compute_usd == Decimal("0.06")  # 60 s of $3.60/h


def test_the_root_volume_is_prorated_over_the_calendar_month():
    # December has 31 days: 200 GB for a whole day is 200/31 GB-months at $0.08
    cost = instance_cost(usage(86400, "0", gb=200), T0)
    assert cost.volume_usd == (Decimal("0.08") * 200 / 31).quantize(Decimal("0.000001"))
    assert cost.usd == cost.volume_usd


def test_a_running_instance_is_an_estimate_up_to_now():
    cost = build_cost([usage(None, "1.8")], now=T0 + timedelta(minutes=30))
    assert cost.estimated is True
    assert cost.billed_seconds == 1800
    assert cost.usd == Decimal("0.9")
    assert cost.display == "~$0.90"


def test_a_build_never_launched_costs_nothing_and_is_final():
    cost = build_cost([], now=T0)
    assert cost == Cost()
    assert (cost.usd, cost.billed_seconds, cost.estimated, cost.source) == (Decimal(0), 0, False, None)


def test_relaunches_are_summed_and_the_latest_instance_names_the_price():
    first = usage(600, "0.5")
    second = InstanceUsage(launched_at=T0 + timedelta(hours=1), terminated_at=T0 + timedelta(hours=2),
                           price_per_hour=Decimal("1.2"), source=PriceSource.CONFIGURED_TABLE,
                           lifecycle=Lifecycle.ON_DEMAND, root_volume_gb=0)
    cost = build_cost([second, first], now=T0 + timedelta(days=1))
    assert cost.billed_seconds == 600 + 3600
    assert cost.usd == Decimal("0.083333") + Decimal("1.2")  # each instance kept to a millionth
    assert (cost.price_per_hour, cost.source, cost.lifecycle) == (Decimal("1.2"), "configured-table", "on-demand")
    assert [p.price_per_hour for p in cost.instances] == [Decimal("0.5"), Decimal("1.2")]


def test_facts_carry_a_source_and_say_when_unconfirmed():
    assert BILLING_FACTS["ec2_minimum_seconds"].source.startswith("https://aws.amazon.com/")
    assert BILLING_FACTS["gp3_usd_per_gb_month_us_east_1"].confirmed is False
    assert all(f.read == "2026-12-02" for f in BILLING_FACTS.values())


@FAST
@given(durations, prices, st.integers(0, 2000))
def test_never_negative_and_never_under_the_minimum(seconds, price, gb):
    cost = instance_cost(usage(seconds, str(price), gb), T0)
    assert cost.billed_seconds >= 60
    assert cost.usd >= 0
    assert cost.compute_usd >= (price * 60 / 3600).quantize(Decimal("0.000001")) - Decimal("0.000001")


@FAST
@given(durations, st.floats(min_value=0, max_value=86400, allow_nan=False), prices, st.integers(0, 2000))
def test_monotonic_in_time(seconds, more, price, gb):
    shorter = instance_cost(usage(seconds, str(price), gb), T0)
    longer = instance_cost(usage(seconds + more, str(price), gb), T0)
    assert longer.billed_seconds >= shorter.billed_seconds
    assert longer.usd >= shorter.usd


@FAST
@given(durations, prices, prices)
def test_monotonic_in_price(seconds, a, b):
    low, high = sorted((a, b))
    assert instance_cost(usage(seconds, str(low)), T0).usd <= instance_cost(usage(seconds, str(high)), T0).usd


@FAST
@given(st.lists(st.tuples(st.integers(0, 86400), st.one_of(st.none(), st.integers(-60, 86400)), prices,
                          st.integers(0, 500)), max_size=5))
def test_a_build_costs_the_sum_of_its_instances(parts):
    now = T0 + timedelta(days=3)
    usages = [usage(None if d is None else d, str(p), gb, start=T0 + timedelta(seconds=s)) for s, d, p, gb in parts]
    total = build_cost(usages, now)
    alone = [build_cost([u], now) for u in usages]
    assert total.usd == sum((c.usd for c in alone), Decimal(0))
    assert total.billed_seconds == sum(c.billed_seconds for c in alone)
    assert total.estimated == any(c.estimated for c in alone)
    assert (total.usd == 0) == all(c.usd == 0 for c in alone)


# ---- the stage budget -------------------------------------------------------------------

def cell(price="2", minutes=60, attempts=3, gb=0) -> CellWorstCase:
    return CellWorstCase(max_price_per_hour=Decimal(price), timeout_minutes=minutes, attempts=attempts,
                         root_volume_gb=gb)


def test_the_worst_case_is_max_price_times_timeout_times_attempts_for_each_cell():
    worst = check_budget([cell(), cell()], budget_usd=Decimal(100), spent_usd=Decimal(80), at=T0)
    assert worst == Decimal(12)


def test_a_submit_that_would_cross_the_budget_is_a_429_naming_the_budget_and_what_is_left():
    with pytest.raises(BudgetExceeded) as e:
        check_budget([cell(), cell()], budget_usd=Decimal(100), spent_usd=Decimal("89.5"), at=T0)
    msg = e.value.message
    assert "these 2 builds could cost up to $12.00" in msg
    assert "$10.50 of this stage's MONTHLY_BUDGET_USD $100.00 is left for 2026-12" in msg
    assert status_of(e.value) == 429


def test_no_budget_refuses_nothing_and_an_overspent_budget_leaves_zero():
    assert check_budget([cell()], budget_usd=None, spent_usd=Decimal(10**6), at=T0) == Decimal(6)
    with pytest.raises(BudgetExceeded, match=r"\$0\.00 of this stage's"):
        check_budget([cell(price="0.0001", minutes=5, attempts=1)], budget_usd=Decimal(1), spent_usd=Decimal(5),
                     at=T0)


# ---- from what the launcher records today ----------------------------------------------

def test_usage_from_the_recorded_instance_tells_the_price_source_apart():
    table = {"g5.xlarge": 0.42}
    spot = {"id": "i-1", "type": "g5.xlarge", "lifecycle": "spot", "price": 0.3871, "launched_at": "2026-12-01T12:00:00.000Z"}
    u = usage_from_instance(spot, root_volume_gb=200, price_table=table, terminated_at=T0 + timedelta(hours=1))
    assert (u.price_per_hour, u.source, u.lifecycle, u.launched_at) == (Decimal("0.3871"), "spot-history", "spot", T0)
    assert build_cost([u], now=T0).billed_seconds == 3600
    from_table = usage_from_instance({**spot, "price": 0.42}, root_volume_gb=200, price_table=table, terminated_at=None)
    assert from_table.source == "configured-table"
    unpriced = usage_from_instance({**spot, "price": None}, root_volume_gb=30, price_table=table, terminated_at=None)
    assert (unpriced.price_per_hour, unpriced.source) == (Decimal("0.42"), "configured-table")
    on_demand = {**spot, "lifecycle": "on-demand", "price": None}
    assert usage_from_instance(on_demand, root_volume_gb=30, price_table=table, terminated_at=None) is None
    priced = usage_from_instance(on_demand, root_volume_gb=30, price_table=table, terminated_at=None,
                                 on_demand_table={"g5.xlarge": 1.006})
    assert (priced.price_per_hour, priced.source, priced.lifecycle) == (Decimal("1.006"), "on-demand", "on-demand")
    assert usage_from_instance(on_demand, root_volume_gb=30, price_table=table, terminated_at=None,
                               on_demand_table={"g6.xlarge": 0.8}) is None  # not the spot table's: it understates
    recorded = usage_from_instance({**on_demand, "price": 1.006, "price_source": "on-demand"}, root_volume_gb=30,
                                   price_table=table, terminated_at=None)
    assert (recorded.source, recorded.lifecycle) == ("on-demand", "on-demand")
    assert usage_from_instance({**spot, "type": "p5.48xlarge", "price": None}, root_volume_gb=30, price_table=table,
                               terminated_at=None) is None


def test_a_cells_worst_case_price_is_its_max_price_else_the_dearest_known_type_else_the_ceiling():
    table = {"g5.xlarge": 0.42, "g6.xlarge": 0.36}
    kw = dict(timeout_minutes=120, attempts=3, root_volume_gb=0, price_table=table)
    assert cell_worst_case(instance_types=["g5.xlarge"], max_price=0.3, price_ceiling=None, **kw).max_price_per_hour \
        == Decimal("0.3")
    assert cell_worst_case(instance_types=["g6.xlarge", "g5.xlarge"], max_price=None, price_ceiling=None,
                           **kw).max_price_per_hour == Decimal("0.42")
    assert cell_worst_case(instance_types=["g6.xlarge", "p4d.24xlarge"], max_price=None, price_ceiling=15.0,
                           **kw).max_price_per_hour == Decimal("15.0")
    with pytest.raises(BadRequest, match="p4d.24xlarge has no configured price"):
        cell_worst_case(instance_types=["p4d.24xlarge"], max_price=None, price_ceiling=None, **kw)
    one = cell_worst_case(instance_types=["g5.xlarge"], max_price=None, price_ceiling=None, **kw)
    with pytest.raises(BudgetExceeded, match=r"this build could cost up to \$2\.52"):
        check_budget([one], budget_usd=Decimal(2), spent_usd=Decimal(0), at=T0)


def test_with_on_demand_fallback_a_cells_worst_case_is_the_dearer_of_spot_and_on_demand():
    # an on-demand instance ignores max_price: a stage that falls back to on-demand must count it
    spot_table, on_demand = {"g5.xlarge": 0.42, "g6.xlarge": 0.36}, {"g5.xlarge": 1.006, "g6.xlarge": 0.8048}
    kw = dict(timeout_minutes=120, attempts=3, root_volume_gb=0, price_table=spot_table, price_ceiling=None)
    assert cell_worst_case(instance_types=["g6.xlarge", "g5.xlarge"], max_price=0.3, on_demand_table=on_demand,
                           **kw).max_price_per_hour == Decimal("1.006")
    assert cell_worst_case(instance_types=["g6.xlarge"], max_price=2.0, on_demand_table=on_demand,
                           **kw).max_price_per_hour == Decimal("2.0")  # a dearer max_price still bounds spot
    with pytest.raises(BadRequest, match="g4dn.xlarge has no on-demand price"):
        cell_worst_case(instance_types=["g4dn.xlarge"], max_price=0.3, on_demand_table=on_demand, **kw)


def test_a_split_builds_worst_case_counts_its_build_stage_too(aws):
    from chalicelib import wiring
    from chalicelib.builds.schemas import BuildRequest
    from chalicelib.costs.build_costs import BuildCosts
    from chalicelib.specs.catalog import load_catalog

    costs = BuildCosts(load_catalog(), {"p3.2xlarge": 3.0, "m7i.xlarge": 0.2, "c7i.xlarge": 0.18, "m6i.xlarge": 0.19})
    whole = wiring.builds().plan(BuildRequest(framework="pytorch", instance_types=["p3.2xlarge"]))
    split = wiring.builds().plan(BuildRequest(framework="pytorch", instance_types=["p3.2xlarge"], split=True))
    assert [c.max_price_per_hour for c in costs.worst_cases([whole])] == [Decimal("3.0")]
    assert [c.max_price_per_hour for c in costs.worst_cases([split])] == [Decimal("0.2"), Decimal("3.0")]


def test_the_on_demand_default_table_is_the_facts():
    from chalicelib.costs.billing import ON_DEMAND_FACTS
    from chalicelib.settings import DEFAULT_ON_DEMAND_PRICES, _prices

    assert {k: Decimal(str(v)) for k, v in _prices(DEFAULT_ON_DEMAND_PRICES)} == {
        k: f.value for k, f in ON_DEMAND_FACTS.items()}
    assert all(f.source and f.read for f in ON_DEMAND_FACTS.values())


def test_usd_text_shows_what_a_short_build_costs():
    from chalicelib.costs.billing import usd_text

    assert [usd_text(Decimal(x)) for x in ("0", "0.001667", "0.00004", "0.005", "0.92", "12.345")] == [
        "$0.00", "$0.0017", "<$0.0001", "$0.01", "$0.92", "$12.35"]
