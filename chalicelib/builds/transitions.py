"""The one way a build changes state: a conditional write, then — when the build just
became final — a message on the notify queue (its consumer sends Slack and gives the
quota slot back), and, with NOTIFY_ON_START, one when it just became RUNNING. Every
handler, route and the reaper moves builds through here."""

from __future__ import annotations

from typing import Any

from chalicelib import metrics
from chalicelib.builds.records import BuildRecord
from chalicelib.builds.states import FINAL, Status
from chalicelib.builds.store import BuildStore
from chalicelib.notifications.notify_events import enqueue_final, enqueue_started
from chalicelib.queues import Queue


def just_started(record: BuildRecord) -> bool:
    """True when the move that returned ``record`` was the one out of LAUNCHING: its
    timeline entry is the first RUNNING one after something else."""
    events = record.events
    return len(events) >= 2 and events[-1].status == Status.RUNNING and events[-2].status != Status.RUNNING


class Transitions:
    def __init__(self, store: BuildStore, notify_queue: Queue, *, notify_on_start: bool = False) -> None:
        self.store = store
        self.notify_queue = notify_queue
        self.notify_on_start = notify_on_start

    def move(self, build_id: str, to: Status, **kwargs: Any) -> BuildRecord:
        """``BuildStore.move`` plus the notifications. Raises InvalidTransition
        when the build was not in a state that allows ``to``: only the caller that won
        the conditional write sends a notification, so a duplicate event can never
        produce a second one."""
        item = self.store.move(build_id, to, **kwargs)
        if to in FINAL:
            enqueue_final(self.notify_queue, build_id, to)
            metrics.build_finished(item)
        elif to == Status.RUNNING and kwargs.get("record_event", True) and just_started(item):
            enqueue_started(self.notify_queue, build_id, enabled=self.notify_on_start)
        return item
