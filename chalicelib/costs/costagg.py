"""Per-day cost aggregates (issue 22): what ``GET /costs?from=&to=&by=`` reads.

The final booking of a build's cost adds it, in the same DynamoDB transaction as the write
that books it, to one item per *day* and *dimension*:

    id = "cost#<YYYY-MM-DD>#<dimension>"      dimension: framework | key | group | day
    "usd#<value>"  += cost.usd   (N)          value: the framework, the API key id, the
    "builds#<value>" += 1        (N)          group id, or "all" for the day dimension
    "seconds#<value>" += billed seconds (N)

``ADD`` is atomic and only works on top-level attributes, so each value gets its own
attributes in the day's item rather than an item of its own: a reader then answers
``from/to/by`` with one GetItem per day (BatchGetItem, 100 at a time) — its cost grows with
the days asked for, never with the number of builds, and nothing is scanned. An item holds
~50 bytes per value; DynamoDB's 400 KB item limit leaves room for thousands of groups a day.

Exactly once: the ADDs go in the same transaction as a conditional write on the build
(its final transition, or ``attribute_not_exists(cost_booked)`` when the cost is booked
once the instance is terminated): a redelivered event fails the condition and adds nothing.
The day is the UTC day the cost is booked. Amounts are the Decimals of ``billing.Cost``
(a millionth of a dollar), which DynamoDB adds exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from chalicelib.clock import iso
from chalicelib.costs.billing import Cost
from chalicelib.errors import BadRequest

PREFIX = "cost#"
MAX_DAYS = 366  # one request reads at most a year of days (4 BatchGetItem calls)
BATCH = 100  # BatchGetItem's limit


class Dimension(StrEnum):
    FRAMEWORK = "framework"
    KEY = "key"
    GROUP = "group"
    DAY = "day"


DAY_VALUE = "all"


def item_id(day: date, dimension: Dimension) -> str:
    return f"{PREFIX}{day.isoformat()}#{dimension.value}"


@dataclass(frozen=True)
class Booking:
    """What one build adds: its cost, and the values of its dimensions."""

    cost: Cost
    framework: str
    key_id: str
    group_id: str | None
    day: date

    def values(self) -> dict[Dimension, str]:
        out = {Dimension.FRAMEWORK: self.framework, Dimension.KEY: self.key_id, Dimension.DAY: DAY_VALUE}
        if self.group_id:
            out[Dimension.GROUP] = self.group_id
        return out


def update_items(table: str, booking: Booking) -> list[dict]:
    """The TransactWriteItems ``Update`` actions that add ``booking`` to its days'
    aggregates: put them in the transaction that books the build's cost (see the module doc)."""
    items = []
    for dimension, value in booking.values().items():
        items.append({"Update": {
            "TableName": table,
            "Key": {"id": {"S": item_id(booking.day, dimension)}},
            "UpdateExpression": "ADD #usd :usd, #builds :one, #seconds :seconds",
            "ExpressionAttributeNames": {"#usd": f"usd#{value}", "#builds": f"builds#{value}",
                                         "#seconds": f"seconds#{value}"},
            "ExpressionAttributeValues": {":usd": {"N": str(booking.cost.usd)}, ":one": {"N": "1"},
                                          ":seconds": {"N": str(booking.cost.billed_seconds)}},
        }})
    return items


@dataclass(frozen=True)
class CostRow:
    value: str  # the framework, key id, group id, or the day (by=day)
    usd: Decimal
    builds: int
    billed_seconds: int


@dataclass(frozen=True)
class CostReport:
    start: date
    end: date
    by: Dimension
    rows: list[CostRow]

    @property
    def total_usd(self) -> Decimal:
        return sum((r.usd for r in self.rows), Decimal(0))


def parse_query(start: str | None, end: str | None, by: str | None, today: date) -> tuple[date, date, Dimension]:
    """``from``/``to`` (YYYY-MM-DD, inclusive; default: this month so far) and ``by``
    (default framework); a bad value is a 400 that says what is allowed."""
    try:
        dim = Dimension(by or Dimension.FRAMEWORK.value)
    except ValueError:
        raise BadRequest(f"by: {by!r} is not one of {', '.join(d.value for d in Dimension)}", field="by") from None
    days = []
    for name, value, default in (("from", start, today.replace(day=1)), ("to", end, today)):
        try:
            if value is not None and len(value) != 10:
                raise ValueError(value)
            days.append(date.fromisoformat(value) if value is not None else default)
        except ValueError:
            raise BadRequest(f"{name}: {value!r} is not a date as YYYY-MM-DD", field=name) from None
    first, last = days
    if first > last:
        raise BadRequest(f"from: {first} is after to: {last}", field="from")
    if (last - first).days + 1 > MAX_DAYS:
        raise BadRequest(f"from/to: {(last - first).days + 1} days; at most {MAX_DAYS} in one request", field="from")
    return first, last, dim


class CostAggregates:
    """Reads the per-day aggregates (the writes are ``update_items`` in a transaction)."""

    def __init__(self, client, table: str) -> None:
        self._db = client
        self._table = table

    def read(self, start: date, end: date, by: Dimension) -> CostReport:
        days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
        if len(days) > MAX_DAYS:
            raise BadRequest(f"from/to: at most {MAX_DAYS} days in one request", field="from")
        items = self._get([item_id(d, by) for d in days])
        totals: dict[str, list] = {}
        for day in days:
            item = items.get(item_id(day, by))
            if item is None:
                continue
            for attr, av in item.items():
                kind, _, value = attr.partition("#")
                if kind not in ("usd", "builds", "seconds") or not value:
                    continue
                row = totals.setdefault(day.isoformat() if by is Dimension.DAY else value,
                                        [Decimal(0), 0, 0])
                n = Decimal(av["N"])
                if kind == "usd":
                    row[0] += n
                elif kind == "builds":
                    row[1] += int(n)
                else:
                    row[2] += int(n)
        rows = [CostRow(v, t[0], t[1], t[2]) for v, t in totals.items()]
        rows.sort(key=(lambda r: r.value) if by is Dimension.DAY else (lambda r: (-r.usd, r.value)))
        return CostReport(start, end, by, rows)

    def spent_this_month(self, today: date) -> Decimal:
        """What the builds booked from the 1st of ``today``'s month to ``today`` cost (UTC):
        the budget's ``spent_usd``, one item per day."""
        return self.read(today.replace(day=1), today, Dimension.DAY).total_usd

    def _get(self, ids: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for i in range(0, len(ids), BATCH):
            request = {self._table: {"Keys": [{"id": {"S": x}} for x in ids[i:i + BATCH]], "ConsistentRead": True}}
            while request:
                resp = self._db.batch_get_item(RequestItems=request)
                for item in resp.get("Responses", {}).get(self._table, []):
                    out[item["id"]["S"]] = item
                request = resp.get("UnprocessedKeys") or {}
        return out


def booking_day(at: datetime) -> date:
    """The UTC day a cost booked at ``at`` counts for."""
    return date.fromisoformat(iso(at)[:10])


BUDGET_ALERT_FRACTION = Decimal("0.8")


def budget_alert_due(budget_usd: Decimal | None, spent: Decimal) -> bool:
    """Whether the month's booked ``spent`` has reached 80% of the budget (the Slack alert;
    the notifier sends it once per month, however many bookings find it due)."""
    return bool(budget_usd) and spent >= budget_usd * BUDGET_ALERT_FRACTION


def cost_report(aggregates: CostAggregates, query: dict[str, str], today: date | None = None) -> dict:
    """``GET /costs?from=&to=&by=`` as the API answers it (amounts as decimal strings, exact)."""
    start, end, by = parse_query(query.get("from"), query.get("to"), query.get("by"),
                                 today or booking_day(datetime.now(UTC)))
    report = aggregates.read(start, end, by)
    return {"from": start.isoformat(), "to": end.isoformat(), "by": by.value, "total_usd": str(report.total_usd),
            "rows": [{"value": r.value, "usd": str(r.usd), "builds": r.builds, "billed_seconds": r.billed_seconds}
                     for r in report.rows]}
