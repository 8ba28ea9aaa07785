"""Per-day cost aggregates (chalicelib/costs/costagg.py) against in-process moto: the ADDs ride in
the transaction of a conditional final write, so after any interleaving of final events —
duplicates and late ones included — the aggregates equal the sum of the builds' costs."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.costs.billing import InstanceUsage, Lifecycle, PriceSource, build_cost
from chalicelib.costs.costagg import (
    MAX_DAYS,
    Booking,
    CostAggregates,
    Dimension,
    booking_day,
    budget_alert_due,
    item_id,
    parse_query,
    update_items,
)
from chalicelib.errors import BadRequest

DAY0 = date(2026, 11, 28)


@pytest.fixture(scope="module")
def ddb():
    from moto import mock_aws

    with mock_aws():
        yield boto3.client("dynamodb", region_name="us-east-1")


def new_table(ddb) -> str:
    name = f"costs-{uuid.uuid4().hex[:12]}"
    ddb.create_table(TableName=name, AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                     KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
    return name


def finish(ddb, table: str, build_id: str, booking: Booking) -> bool:
    """A final transition as the store would write it: RUNNING -> SUCCEEDED, conditional,
    with the aggregates' ADDs in the same transaction. False when it lost (already final)."""
    try:
        ddb.transact_write_items(TransactItems=[{"Update": {
            "TableName": table, "Key": {"id": {"S": build_id}},
            "UpdateExpression": "SET #s = :final", "ConditionExpression": "#s = :running",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":final": {"S": "SUCCEEDED"}, ":running": {"S": "RUNNING"}},
        }}, *update_items(table, booking)])
        return True
    except ClientError as e:
        assert e.response["Error"]["Code"] == "TransactionCanceledException"
        return False


def cost_of(seconds: int, price: str, gb: int):
    start = datetime(2026, 11, 28, tzinfo=UTC)
    return build_cost([InstanceUsage(launched_at=start, terminated_at=start + timedelta(seconds=seconds),
                                     price_per_hour=Decimal(price), source=PriceSource.SPOT_HISTORY,
                                     lifecycle=Lifecycle.SPOT, root_volume_gb=gb)], now=start)


builds = st.lists(st.tuples(
    st.sampled_from(["pytorch", "tensorflow", "canary"]), st.sampled_from(["k1", "k2"]),
    st.sampled_from([None, "g-a", "g-b"]), st.integers(0, 4),
    st.integers(0, 20000), st.decimals(min_value=0, max_value=20, places=4), st.integers(0, 300),
), min_size=1, max_size=6)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(builds, st.randoms(use_true_random=False), st.integers(0, 5))
def test_aggregates_equal_the_sum_of_the_builds_after_any_interleaving(ddb, spec, rnd, redeliveries):
    # GIVEN running builds and their final events, some delivered twice, in a random order
    table = new_table(ddb)
    bookings = {}
    for i, (fw, key, group, day, seconds, price, gb) in enumerate(spec):
        bid = f"b-{i:020x}"
        ddb.put_item(TableName=table, Item={"id": {"S": bid}, "status": {"S": "RUNNING"}})
        bookings[bid] = Booking(cost_of(seconds, str(price), gb), fw, key, group, DAY0 + timedelta(days=day))
    events = list(bookings) + [rnd.choice(list(bookings)) for _ in range(redeliveries)]
    rnd.shuffle(events)
    # WHEN each event tries the final transition
    wins = [bid for bid in events if finish(ddb, table, bid, bookings[bid])]
    # THEN each build won once, and every dimension's aggregate is the sum of its builds
    assert sorted(wins) == sorted(bookings)
    agg = CostAggregates(ddb, table)
    for by, value_of in [(Dimension.FRAMEWORK, lambda b: b.framework), (Dimension.KEY, lambda b: b.key_id),
                         (Dimension.GROUP, lambda b: b.group_id), (Dimension.DAY, lambda b: b.day.isoformat())]:
        expected: dict[str, list] = defaultdict(lambda: [Decimal(0), 0, 0])
        for b in bookings.values():
            if value_of(b) is not None:
                row = expected[value_of(b)]
                row[0] += b.cost.usd
                row[1] += 1
                row[2] += b.cost.billed_seconds
        report = agg.read(DAY0, DAY0 + timedelta(days=4), by)
        assert {r.value: [r.usd, r.builds, r.billed_seconds] for r in report.rows} == dict(expected)
    assert agg.read(DAY0, DAY0 + timedelta(days=4), Dimension.DAY).total_usd == sum(
        (b.cost.usd for b in bookings.values()), Decimal(0))


def test_a_range_reads_one_item_per_day_and_rows_are_ordered(ddb):
    table = new_table(ddb)
    for i, (fw, usd_seconds, day) in enumerate([("pytorch", 3600, 0), ("canary", 60, 0), ("pytorch", 7200, 2)]):
        ddb.put_item(TableName=table, Item={"id": {"S": f"b{i}"}, "status": {"S": "RUNNING"}})
        assert finish(ddb, table, f"b{i}", Booking(cost_of(usd_seconds, "1", 0), fw, "k", None,
                                                  DAY0 + timedelta(days=day)))
    calls = []
    agg = CostAggregates(ddb, table)
    real = ddb.batch_get_item
    agg._db = type("Spy", (), {"batch_get_item": lambda self, **kw: calls.append(kw) or real(**kw)})()
    report = agg.read(DAY0, DAY0 + timedelta(days=1), Dimension.FRAMEWORK)
    assert [(r.value, r.usd, r.builds) for r in report.rows] == [("pytorch", Decimal(1), 1),
                                                                ("canary", Decimal("0.016667"), 1)]
    assert [k["id"]["S"] for k in calls[0]["RequestItems"][table]["Keys"]] == [
        item_id(DAY0, Dimension.FRAMEWORK), item_id(DAY0 + timedelta(days=1), Dimension.FRAMEWORK)]
    days = agg.read(DAY0, DAY0 + timedelta(days=2), Dimension.DAY)
    assert [(r.value, r.usd) for r in days.rows] == [("2026-11-28", Decimal("1.016667")), ("2026-11-30", Decimal(2))]


def test_the_query_is_checked_and_defaults_to_this_month_by_framework():
    today = date(2026, 12, 2)
    assert parse_query(None, None, None, today) == (date(2026, 12, 1), today, Dimension.FRAMEWORK)
    assert parse_query("2026-11-01", "2026-11-30", "group", today)[2] is Dimension.GROUP
    for args, text in [(("2026-11-01", None, "os"), "by: 'os' is not one of framework, key, group, day"),
                       (("20261101", None, None), "from: '20261101' is not a date as YYYY-MM-DD"),
                       (("2026-12-02", "2026-12-01", None), "is after"),
                       (("2024-01-01", "2026-12-01", None), f"at most {MAX_DAYS}")]:
        with pytest.raises(BadRequest, match=text):
            parse_query(*args, today)
    assert booking_day(datetime(2026, 12, 1, 23, 59, tzinfo=UTC)) == date(2026, 12, 1)


def test_the_month_so_far_is_what_the_budget_counts_and_the_alert_fires_once_at_80_percent(ddb):
    table = new_table(ddb)
    for i, day in enumerate([date(2026, 11, 30), date(2026, 12, 1), date(2026, 12, 2)]):
        ddb.put_item(TableName=table, Item={"id": {"S": f"b{i}"}, "status": {"S": "RUNNING"}})
        assert finish(ddb, table, f"b{i}", Booking(cost_of(3600, "2", 0), "pytorch", "k", None, day))
    assert CostAggregates(ddb, table).spent_this_month(date(2026, 12, 2)) == Decimal(4)
    assert budget_alert_due(Decimal(5), Decimal(4)) is True  # 80% exactly
    assert budget_alert_due(Decimal(5), Decimal("4.5")) is True  # past it: still due (sent once a month)
    assert budget_alert_due(Decimal(5), Decimal("3.99")) is False
    assert budget_alert_due(None, Decimal(10**6)) is False
