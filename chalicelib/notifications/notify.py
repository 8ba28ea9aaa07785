"""The notify-queue consumer: at most one Slack message per final outcome (and per start).

A build that becomes final puts a message on the notify queue (notify_events.py);
:class:`Notifier` consumes it apart from the state change, so Slack being down, slow or
rate limiting never fails or delays a transition:

1. the build is read, and the channel's webhook URL from SSM (webhooks.py: cached per
   warm Lambda);
2. the delivery is *claimed* on the build record (``notification``) with a conditional
   write, so a duplicate queue message finds it claimed or done and sends nothing; the
   build's quota slots are given back in the same transaction (or on their own when
   nothing is written: set deletes are idempotent);
3. ``slack_sdk``'s webhook client posts the message (slack_message.py, slack_delivery.py),
   retrying 5xx, 429 (after its ``Retry-After``), timeouts and connection errors a few
   times in-process;
4. still failing, the message goes back on the queue with a growing delay; when the
   attempts run out, ``notification.status`` becomes ``failed`` with the error.

Webhook URLs are never logged, never written to the table and never returned by the API:
the record holds the channel *name* only.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import clock, metrics
from chalicelib.builds.records import BuildRecord, DeliveryClaim
from chalicelib.builds.schemas import Build
from chalicelib.builds.states import FINAL, Status
from chalicelib.builds.store import BuildStore
from chalicelib.clock import now_iso
from chalicelib.costs.build_costs import BuildCosts
from chalicelib.errors import BuildNotFound
from chalicelib.notifications.notify_events import NotifyEvent
from chalicelib.notifications.slack_delivery import Delivery, SlackSender
from chalicelib.notifications.slack_message import build_message
from chalicelib.notifications.webhooks import WebhookDirectory, WebhookInvalid, WebhookNotConfigured
from chalicelib.queues import Queue

log = logging.getLogger("voltabuild.notify")

DONE = frozenset({"sent", "failed", "skipped", "unconfirmed"})


class Notifier:
    """Consumes the notify queue: quota release, then at most one Slack message per
    final outcome (and per start, when enabled), with its delivery recorded on the build."""

    def __init__(self, store: BuildStore, queue: Queue, webhooks: WebhookDirectory, sender: SlackSender, *,
                 api_url: str = "", channels: tuple[str, ...] = ("default",), notify_on_start: bool = False,
                 max_attempts: int = 5, retry_base_seconds: float = 30, lease_seconds: int = 50,
                 clock: Callable[[], float] = time.time, costs: BuildCosts | None = None) -> None:
        self.store = store
        self.queue = queue
        self.webhooks = webhooks
        self.sender = sender
        self.api_url = api_url.rstrip("/")
        self.default_channel = channels[0] if channels else None
        self.notify_on_start = notify_on_start
        self.max_attempts = max(1, max_attempts)
        self.retry_base_seconds = retry_base_seconds
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.costs = costs  # the one cost function (GET /builds/{id}'s): the message shows what the API shows

    def handle(self, ev: NotifyEvent) -> str:
        """Process one queue message; returns what happened: ``sent``, ``retrying``,
        ``failed``, ``skipped``, ``unconfirmed``, ``duplicate`` or ``ignored``. Raises only on an AWS
        error of the table or queue (the message then comes back: everything is idempotent).

        A final message gives the build's quota slots back whatever happens: with the write
        that claims or settles its delivery (one transaction), or on their own."""
        started = ev.event == "started"
        if started and not self.notify_on_start:
            return "ignored"  # disabled: nothing to read
        try:
            build = self.store.get_record(ev.build_id)
        except BuildNotFound:
            if not started:
                self.store.release_slot(ev.build_id, owner_key=None)
            log.warning("notify: build %s does not exist; nothing to send", ev.build_id)
            return "ignored"
        outcome, wrote = self._deliver(build, ev, started)
        if not wrote and not started:  # nothing was written: the slots go back on their own
            self.store.release_slot(build.id, owner_key=build.owner_key)
        return outcome

    def _deliver(self, build: BuildRecord, ev: NotifyEvent, started: bool) -> tuple[str, bool]:
        """The message's delivery: what happened, and whether a write was made (a final
        message's first write gives the quota slots back with it)."""
        if started and build.status != Status.RUNNING:
            return "ignored", False  # the build already moved on: a late "started" helps nobody
        if not started and build.status not in FINAL:
            log.warning("notify: build %s is %s, not final; ignoring a final event", build.id, build.status.value)
            return "ignored", False
        prev = build.delivery(started)
        if prev and prev.status in DONE:
            log.info("notify: build %s %s message already %s", build.id, ev.event, prev.status)
            return "duplicate", False
        channel = build.notify.channel or self.default_channel
        if not build.notify.slack or not channel:
            why = "the request turned Slack off" if not build.notify.slack else "no Slack channel is configured"
            self._write(build, {"status": "skipped", "reason": why}, prev, started, release=True)
            return "skipped", True
        if prev and prev.status == "sending" and prev.lease_until <= self.clock():
            return self._unconfirmed(build, prev, started), True
        if prev and prev.status == "sending":
            log.info("notify: build %s %s message is being sent; duplicate dropped", build.id, ev.event)
            return "duplicate", False
        # everything that can fail before the post happens before the claim, so a worker
        # that dies holding a claim died while posting or after it (see _unconfirmed)
        webhook = self._webhook(channel)
        claim = {
            "status": "sending",
            "channel": channel,
            "attempts": ((prev.attempts or 0) if prev else 0) + 1,
            "lease_until": int(self.clock() + self.lease_seconds),
            "token": secrets.token_hex(8),
            "updated_at": now_iso(),
        }
        if not self._write(build, claim, prev, started, release=True):
            log.info("notify: build %s %s message is being sent or was sent; duplicate dropped", build.id, ev.event)
            return "duplicate", True
        result = webhook if isinstance(webhook, Delivery) else self.sender.send(
            webhook, build_message(self.priced(build), api_url=self.api_url, started=started))
        return self._finish(build, ev, claim, result, started), True

    def priced(self, build: BuildRecord) -> Build:
        """The build as the API shows it, with its cost as of now (``BuildCosts.cost``)."""
        public = build.public()
        return self.costs.with_cost(public, clock.now()) if self.costs is not None else public

    # ---- steps --------------------------------------------------------------------
    def _webhook(self, channel: str) -> str | Delivery:
        """The channel's webhook URL, or the failed Delivery that reading it amounts to."""
        try:
            return self.webhooks.url(channel)
        except WebhookInvalid as e:
            log.error("notify: %s", e)
            return Delivery(ok=False, error_type="webhook_invalid")
        except WebhookNotConfigured as e:
            log.error("notify: %s", e)
            return Delivery(ok=False, error_type="webhook_missing")
        except (ClientError, BotoCoreError) as e:
            log.warning("notify: reading the webhook from SSM failed: %s", type(e).__name__)
            return Delivery(ok=False, retryable=True, error_type="ssm_error")

    def _unconfirmed(self, build: BuildRecord, prev: DeliveryClaim, started: bool) -> str:
        """A claim whose worker died (its lease ran out) before recording the outcome. It
        claimed only once the webhook was in hand, so it died posting or after posting:
        the message is *not* sent again. Slack shows each outcome at most once; the rare
        cost is a message lost with a worker that died mid-post (logged, and recorded as
        ``unconfirmed`` with error ``worker_died``, never as sent)."""
        value = {"status": "unconfirmed", "channel": prev.channel, "attempts": prev.attempts or 1,
                 "token": secrets.token_hex(8), "updated_at": now_iso(), "error": "worker_died"}
        if not self._write(build, value, prev, started, release=True):
            return "duplicate"
        log.error("notify: build %s: a worker died while posting its %s message; not sending it again",
                  build.id, "start" if started else "final")
        metrics.emit("SlackDeliveries", Outcome="abandoned")
        return "unconfirmed"

    def _finish(self, build: BuildRecord, ev: NotifyEvent, claim: dict, result: Delivery, started: bool) -> str:
        build_id = build.id
        base = {"channel": claim["channel"], "attempts": claim["attempts"], "token": secrets.token_hex(8),
                "updated_at": now_iso()}
        if result.ok:
            self._write(build, {**base, "status": "sent", "sent_at": now_iso()}, claim, started)
            log.info("notify: build %s %s message sent to Slack channel %s", build_id, ev.event, claim["channel"])
            metrics.emit("SlackDeliveries", Outcome="sent")
            return "sent"
        if result.retryable and claim["attempts"] < self.max_attempts:
            delay = self.retry_base_seconds * 2 ** (claim["attempts"] - 1)
            delay = int(min(900, max(delay, result.retry_after or 0)))
            if not self._write(build, {**base, "status": "retrying", **result.error_fields(),
                                       "retry_in_seconds": delay}, claim, started):
                return "duplicate"
            self.queue.send(ev.model_copy(update={"attempt": ev.attempt + 1}).body(), delay_seconds=delay)
            log.warning("notify: build %s %s message not delivered (attempt %d of %d: %s); retrying in %ds",
                        build_id, ev.event, claim["attempts"], self.max_attempts, result.error, delay)
            metrics.emit("SlackDeliveries", Outcome="retried")
            return "retrying"
        self._write(build, {**base, "status": "failed", **result.error_fields()}, claim, started)
        log.error("notify: build %s %s message to Slack channel %s failed after %d attempt(s): %s",
                  build_id, ev.event, claim["channel"], claim["attempts"], result.error)
        metrics.emit("SlackDeliveries", Outcome="failed")
        return "failed"

    def _write(self, build: BuildRecord, value: dict, prev: DeliveryClaim | dict | None, started: bool, *,
               release: bool = False) -> bool:
        """Replace the bookkeeping map if nobody changed it since ``prev`` was read; with
        ``release`` (a final message's first write), give the quota slots back with it."""
        token = None if prev is None else prev["token"] if isinstance(prev, dict) else prev.token
        if release and not started:
            return self.store.record_delivery(build.id, started, value, token, release_owner=build.owner_key)
        return self.store.record_delivery(build.id, started, value, token)
