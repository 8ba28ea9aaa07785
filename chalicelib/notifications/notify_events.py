"""The notify queue's messages: what asks for a Slack message about a build (its final
outcome, or that it started) and how the consumer reads one. No Slack code here: the
state changes that enqueue them (transitions.py, the reaper) need none."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chalicelib.builds.names import BUILD_ID
from chalicelib.builds.states import Status
from chalicelib.queues import Queue

log = logging.getLogger("voltabuild.notify")


class NotifyEvent(BaseModel):
    """A notify-queue message. ``event`` is ``final`` (:func:`enqueue_final`) or ``started``
    (:func:`enqueue_started`) about build ``build_id``; ``group``, a retry of the message about
    matrix group ``group_id`` (the first try rides on its last cell's ``final``); ``budget``,
    the alert that ``month``'s spending crossed the stage's threshold (:func:`enqueue_budget`).
    ``attempt`` counts re-queued tries. A final message also carries the status the build
    reached, for whoever reads the queue (the consumer reads the build itself)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    build_id: str | None = Field(None, pattern=BUILD_ID.pattern)
    event: Literal["final", "started", "group", "budget"] = "final"
    group_id: str | None = Field(None, pattern=r"^g-[0-9a-f]{20}$")
    month: str | None = Field(None, pattern=r"^[0-9]{4}-[0-9]{2}$")
    attempt: int = Field(1, ge=1, le=100)

    @model_validator(mode="after")
    def _about_something(self) -> NotifyEvent:
        needs = {"final": "build_id", "started": "build_id", "group": "group_id", "budget": "month"}[self.event]
        if getattr(self, needs) is None:
            raise ValueError(f"a {self.event} message needs {needs}")
        return self

    def body(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


def parse_event(body: str) -> NotifyEvent | None:
    """The typed message, or None (logged) for a body that is not one: a poison message
    is dropped rather than retried into the dead-letter queue."""
    try:
        return NotifyEvent.model_validate_json(body)
    except ValidationError as e:
        log.error("notify: dropping a malformed message: %s", e.errors(include_url=False, include_input=False))
        return None


def enqueue_started(queue: Queue, build_id: str, *, enabled: bool) -> bool:
    """Ask for the optional "build started" message (``NOTIFY_ON_START``). Call it once
    the build *became* RUNNING (the winner of the LAUNCHING -> RUNNING write). Returns
    whether a message was queued. The consumer sends it only while the build is RUNNING,
    at most once, and never when the request turned Slack off."""
    if not enabled:
        return False
    queue.send(NotifyEvent(build_id=build_id, event="started").body())
    return True


def enqueue_final(queue: Queue, build_id: str, status: Status) -> None:
    """Ask for the final-outcome message of a build that became ``status`` (final)."""
    queue.send({"build_id": build_id, "status": status.value})


def enqueue_budget(queue: Queue, month: str) -> None:
    """Ask for the alert that ``month``'s spending crossed the budget threshold. Sent at most
    once per month and stage however often it is asked (the consumer claims it)."""
    queue.send(NotifyEvent(event="budget", month=month).body())
