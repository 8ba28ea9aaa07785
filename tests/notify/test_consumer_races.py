"""Duplicate notify messages racing each other: exactly one Slack message.

The claim on a build's notification is a conditional write; only an emulator that applies
writes to one item whole can show that it has one winner. In-process moto is not atomic
across threads, so this module runs on the serialized moto server (``serial_aws``), and
every fixture built on ``aws`` (the Slack parameters, the builds, the Notifier) follows.
"""

from __future__ import annotations

import threading

import pytest

from chalicelib import wiring
from chalicelib.builds.states import Status
from chalicelib.notifications.notify_events import NotifyEvent

from .conftest import Reply


@pytest.fixture
def aws(serial_aws):
    return serial_aws


def test_concurrent_duplicates_send_one_message(aws, slack, sink, make_build, notifier_factory):
    # GIVEN a failed build whose one notify message is delivered four times at once
    build_id = make_build(Status.FAILED, reason="boom")
    bodies = aws.messages("NotifyQueue")
    assert len(bodies) == 1, bodies
    ev = NotifyEvent.model_validate(bodies[0])
    sink.then(Reply(hang=0.2, status=200))  # keep the first sender busy while the duplicates arrive
    sink.then(Reply())
    notifier = notifier_factory(timeout=2.0)
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def handle() -> None:
        barrier.wait()
        outcomes.append(notifier.handle(ev))

    # WHEN four workers handle it concurrently
    threads = [threading.Thread(target=handle) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # THEN one won the claim (its first try hung up, its retry got through); the rest sent nothing
    assert sorted(outcomes) == ["duplicate", "duplicate", "duplicate", "sent"]
    assert len(sink.received) == 2 and len(sink.posted()) == 1
    assert wiring.store().get_record(build_id).notification.status == "sent"


def test_two_cells_ending_together_send_one_group_message(aws, slack, sink, make_group, notifier_factory):
    # GIVEN a 2-cell matrix whose two cells ended at once, each with its final message
    group_id, cells = make_group()
    for cell in cells:
        make_group.finish(cell)
    events = [NotifyEvent.model_validate(b) for b in aws.messages("NotifyQueue")]
    assert sorted(e.build_id for e in events) == sorted(cells)
    sink.then(Reply(hang=0.2, status=200))  # keep the winner's first post busy while the other claims
    sink.then(Reply())
    notifier = notifier_factory(timeout=2.0, costs=wiring.costs())
    outcomes: list[str] = []
    barrier = threading.Barrier(len(events))

    def handle(ev: NotifyEvent) -> None:
        barrier.wait()
        outcomes.append(notifier.handle(ev))

    # WHEN two workers handle them concurrently (each finds the group complete)
    threads = [threading.Thread(target=handle, args=(ev,)) for ev in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # THEN exactly one won the group's claim and posted; the other sent nothing
    assert sorted(outcomes) == ["duplicate", "sent"]
    assert len(sink.posted()) == 1
    assert sink.posted()[0]["blocks"][0]["text"]["text"].startswith(":white_check_mark: pytorch matrix succeeded")
    assert wiring.store().get_group(group_id)["notification"]["status"] == "sent"
    assert all(wiring.store().get_record(c).notification.status == "skipped" for c in cells)


def test_budget_alerts_asked_at_once_send_one_message(aws, slack, sink, notifier_factory):
    # GIVEN a month whose booked costs ($0.90) are past 80% of its $1 budget
    from datetime import UTC, datetime
    from decimal import Decimal

    from chalicelib.costs import costagg
    from chalicelib.costs.billing import Cost
    from chalicelib.costs.build_costs import BudgetWatch

    today = datetime.now(UTC).date()
    booking = costagg.Booking(cost=Cost(usd=Decimal("0.9"), billed_seconds=3600), framework="canary",
                              key_id="local", group_id=None, day=today)
    aws.client("dynamodb").transact_write_items(
        TransactItems=costagg.update_items(wiring.settings().table_name, booking))
    watch = BudgetWatch(wiring.cost_aggregates(), Decimal(1), notify=lambda month: None, alerted=lambda month: False)
    sink.then(Reply(hang=0.2, status=200))
    sink.then(Reply())
    notifier = notifier_factory(timeout=2.0, budget=watch)
    ev = NotifyEvent(event="budget", month=f"{today:%Y-%m}")
    outcomes: list[str] = []
    barrier = threading.Barrier(3)

    def handle() -> None:
        barrier.wait()
        outcomes.append(notifier.handle(ev))

    # WHEN three workers handle the request for the month's alert concurrently
    threads = [threading.Thread(target=handle) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # THEN one claimed it and posted
    assert sorted(outcomes) == ["duplicate", "duplicate", "sent"]
    [msg] = sink.posted()
    assert msg["blocks"][0]["text"]["text"].startswith(":money_with_wings: 90% of this month's build budget")
    assert wiring.store().get_notice(f"budget-alert#{today:%Y-%m}")["status"] == "sent"
