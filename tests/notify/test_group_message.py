"""A matrix sends ONE Slack message, for the whole group, when its last cell ends: a table
of the cells (outcome, duration, cost), and which cells failed. A message per cell only
when the request asks (``"notify": {"cells": true}``)."""

from __future__ import annotations

import json

from chalicelib import wiring
from chalicelib.builds.states import Status
from chalicelib.notifications.notify_events import NotifyEvent

from .conftest import RecordingQueue, Reply

DEFAULT_HOOK = "/hooks/T000/B000/default-s3cr3t-token"


def final_events(aws) -> list[NotifyEvent]:
    return [NotifyEvent.model_validate(b) for b in aws.messages("NotifyQueue")]


def table(msg: dict) -> list[list[str]]:
    [block] = [b for b in msg["blocks"] if b["type"] == "table"]
    assert all(c["type"] == "raw_text" for row in block["rows"] for c in row)
    return [[c["text"] for c in row] for row in block["rows"]]


def test_a_group_sends_one_message_when_its_last_cell_ends(aws, slack, sink, make_group, notifier_factory):
    # GIVEN a 2-cell matrix whose first cell has ended
    group_id, (first, second) = make_group()
    notifier = notifier_factory(costs=wiring.costs())
    make_group.finish(first, terminated_after=3600)
    [ev] = final_events(aws)
    # WHEN its final message is handled: nothing is sent yet, but its quota slot is back
    assert notifier.handle(ev) == "waiting"
    assert sink.received == []
    assert first not in wiring.store().slot_holders() and second in wiring.store().slot_holders()
    assert wiring.store().get_record(first).notification.status == "skipped"
    # WHEN the last cell ends
    make_group.finish(second, terminated_after=90)
    [ev] = final_events(aws)
    assert notifier.handle(ev) == "sent"
    # THEN one message, about the group, with a row per cell
    [msg] = sink.posted(DEFAULT_HOOK)
    assert msg["blocks"][0]["text"]["text"] == ":white_check_mark: pytorch matrix succeeded: 2 of 2 cells succeeded"
    rows = table(msg)
    assert rows[0] == ["cell", "outcome", "duration", "cost"]
    assert [r[:2] for r in rows[1:]] == [["version=2.5.1", "succeeded"], ["version=2.6.0", "succeeded"]]
    # each cell's cost is the one GET /builds/{id} shows (final: both instances are terminated)
    for row, cell in zip(rows[1:], (first, second), strict=True):
        cost = wiring.builds().get(cell).cost
        assert not cost.estimated and row[3] == cost.display
    assert [r[3] for r in rows[1:]] == ["$0.42", "$0.01"]  # 0.4 $/h for an hour + its 200 GB of gp3; 90 s
    assert f"voltabuild group {group_id}" in msg["text"] and f"/groups/{group_id}" in msg["text"]
    # and the group records it; a duplicate of either cell's message sends nothing more
    assert wiring.store().get_group(group_id)["notification"]["status"] == "sent"
    assert notifier.handle(ev) == "duplicate"
    assert len(sink.received) == 1


def test_a_failing_cell_makes_the_group_failed_and_the_message_says_which(aws, slack, sink, make_group,
                                                                           notifier_factory):
    group_id, (good, bad) = make_group()
    make_group.finish(good)
    make_group.finish(bad, Status.FAILED, reason="build failed: exit status 2\nmake: *** [all] Error 2")
    notifier = notifier_factory(costs=wiring.costs())
    outcomes = [notifier.handle(ev) for ev in final_events(aws)]
    # both cells were final when the first message was handled: it sent; the second found it sent
    assert outcomes == ["sent", "duplicate"]
    [msg] = sink.posted(DEFAULT_HOOK)
    assert wiring.groups().get(group_id).status == Status.FAILED
    assert msg["blocks"][0]["text"]["text"] == ":x: pytorch matrix failed: 1 of 2 cells succeeded"
    failed = json.dumps(msg["blocks"])
    assert "Failed cells" in failed and f"`version=2.6.0` failed (`{bad}`): build failed: exit status 2" in failed
    assert f"failed: version=2.6.0 ({bad}): build failed: exit status 2" in msg["text"]
    assert [r[1] for r in table(msg)[1:]] == ["succeeded", "failed"]


def test_cells_true_asks_for_a_message_per_cell_as_well(aws, slack, sink, make_group, notifier_factory):
    group_id, cells = make_group(notify={"cells": True})
    notifier = notifier_factory(costs=wiring.costs())
    for cell in cells:
        make_group.finish(cell)
    assert [notifier.handle(ev) for ev in final_events(aws)] == ["sent", "sent"]
    posted = sink.posted(DEFAULT_HOOK)
    headers = [m["blocks"][0]["text"]["text"] for m in posted]
    # both cells had ended when the first was handled: its message, the group's, the other's
    assert headers == [":white_check_mark: pytorch 2.5.1 build succeeded",
                       ":white_check_mark: pytorch matrix succeeded: 2 of 2 cells succeeded",
                       ":white_check_mark: pytorch 2.6.0 build succeeded"]


def test_a_group_that_asked_for_no_slack_sends_nothing(aws, slack, sink, make_group, notifier_factory):
    group_id, cells = make_group(notify=False)
    notifier = notifier_factory()
    for cell in cells:
        make_group.finish(cell)
    assert [notifier.handle(ev) for ev in final_events(aws)] == ["skipped", "duplicate"]
    assert sink.received == []
    assert wiring.store().get_group(group_id)["notification"]["status"] == "skipped"


def test_a_group_message_that_slack_refuses_is_retried_as_a_group_message(aws, slack, sink, make_group,
                                                                          notifier_factory):
    group_id, cells = make_group()
    for cell in cells:
        make_group.finish(cell)
    queue = RecordingQueue()
    notifier = notifier_factory(queue=queue, max_retries=0)
    sink.then(Reply(status=500, body="oops"))
    first, second = final_events(aws)
    assert notifier.handle(first) == "retrying"
    [(body, delay)] = queue.sent
    assert body == {"event": "group", "group_id": group_id, "attempt": 2} and delay == 30
    # the retry goes through (the other cell's message, coming first, takes it up: the
    # retry then finds it sent); one message reaches Slack either way
    assert notifier.handle(NotifyEvent.model_validate(body)) == "sent"
    assert notifier.handle(second) == "duplicate"
    assert len(sink.posted(DEFAULT_HOOK)) == 1
    assert wiring.store().get_group(group_id)["notification"]["attempts"] == 2
