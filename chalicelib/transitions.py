"""The one way a build changes state: a conditional write, then — when the build just
became final — a message on the notify queue (its consumer sends Slack and gives the
quota slot back). Every handler, route and the reaper moves builds through here."""

from __future__ import annotations

from typing import Any

from chalicelib.queues import Queue
from chalicelib.states import FINAL, Status
from chalicelib.store import BuildStore


class Transitions:
    def __init__(self, store: BuildStore, notify_queue: Queue) -> None:
        self.store = store
        self.notify_queue = notify_queue

    def move(self, build_id: str, to: Status, **kwargs: Any) -> dict:
        """``BuildStore.transition`` plus the final-state notification. Raises
        InvalidTransition when the build was not in a state that allows ``to``: only
        the caller that won the conditional write sends the notification, so a duplicate
        event can never produce a second one."""
        item = self.store.transition(build_id, to, **kwargs)
        if to in FINAL:
            self.notify_queue.send({"build_id": build_id, "status": to.value})
        return item
