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
