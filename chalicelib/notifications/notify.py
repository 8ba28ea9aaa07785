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
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import clock as wall
from chalicelib import metrics
from chalicelib.builds.records import BuildRecord, DeliveryClaim
from chalicelib.builds.schemas import Build
from chalicelib.builds.states import FINAL, Status
from chalicelib.builds.store import GROUP_PREFIX, BuildStore
from chalicelib.clock import now_iso
from chalicelib.costs.build_costs import BudgetWatch, BuildCosts, month_end
from chalicelib.errors import BuildNotFound
from chalicelib.notifications.notify_events import NotifyEvent
from chalicelib.notifications.slack_delivery import Delivery, SlackSender
from chalicelib.notifications.slack_message import budget_message, build_message, group_message
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
                 clock: Callable[[], float] = time.time, costs: BuildCosts | None = None,
                 budget: BudgetWatch | None = None, stage: str = "") -> None:
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
        self.budget = budget  # the MONTHLY_BUDGET_USD alert (None: no budget)
        self.stage = stage
        self.costs = costs  # the one cost function (GET /builds/{id}'s): the message shows what the API shows

    def handle(self, ev: NotifyEvent) -> str:
        """Process one queue message; returns what happened: ``sent``, ``retrying``,
        ``failed``, ``skipped``, ``unconfirmed``, ``duplicate`` or ``ignored``. Raises only on an AWS
        error of the table or queue (the message then comes back: everything is idempotent).

        A final message gives the build's quota slots back whatever happens: with the write
        that claims or settles its delivery (one transaction), or on their own."""
        if ev.event == "group":  # a retry of a group's message
            return self.group(ev.group_id, ev)
        if ev.event == "budget":
            return self.budget_alert(ev)
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
        if not started and build.group_id and build.status in FINAL:
            # the cell is final: it may be the group's last (a duplicate too: its worker may
            # have died between the cell's write and the group's)
            grouped = self.group(build.group_id, ev)
            return grouped if outcome in ("grouped", "duplicate") else outcome
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
        ledger = self._build_ledger(build, ev, started)
        channel = build.notify.channel or self.default_channel
        if not started and build.group_id and not build.notify.cells:
            why = f"one message for its group {build.group_id} when its last cell ends"
            ledger.write({"status": "skipped", "reason": why}, prev, True)
            return "grouped", True
        if not build.notify.slack or not channel:
            why = "the request turned Slack off" if not build.notify.slack else "no Slack channel is configured"
            ledger.write({"status": "skipped", "reason": why}, prev, True)
            return "skipped", True
        return self._send(ledger, prev, channel, lambda: build_message(self.priced(build), api_url=self.api_url,
                                                                       started=started)), True

    def _build_ledger(self, build: BuildRecord, ev: NotifyEvent, started: bool) -> _Ledger:
        return _Ledger(what=f"build {build.id} {ev.event}", event=ev,
                       write=lambda value, prev, release=False: self._write(build, value, prev, started,
                                                                            release=release))

    def priced(self, build: BuildRecord) -> Build:
        """The build as the API shows it, with its cost as of now (``BuildCosts.cost``)."""
        public = build.public()
        return self.costs.with_cost(public, wall.now()) if self.costs is not None else public

    # ---- a matrix's one message (issue 22) -------------------------------------------
    def group(self, group_id: str, ev: NotifyEvent) -> str:
        """The group's one message, once every cell is final: ``waiting`` while one is not.
        Any cell's final message may find the group complete (two cells ending together both
        may): the claim on the group item is one conditional write, so exactly one sends."""
        try:
            item = self.store.get_group(group_id)
        except BuildNotFound:
            log.warning("notify: group %s does not exist; nothing to send", group_id)
            return "ignored"
        cells = self.store.get_records(list(item.get("cell_ids") or []))
        if not cells or len(cells) < len(item.get("cell_ids") or []) or any(c.status not in FINAL for c in cells):
            return "waiting"
        notice = item.get("notification")
        prev = DeliveryClaim.model_validate(notice) if notice else None
        if prev and prev.status in DONE:
            log.info("notify: group %s message already %s", group_id, prev.status)
            return "duplicate"
        retry = NotifyEvent(event="group", group_id=group_id, attempt=ev.attempt if ev.event == "group" else 1)
        ledger = _Ledger(what=f"group {group_id}", event=retry,
                         write=lambda value, prev, release=False: self.store.record_notice(
                             GROUP_PREFIX + group_id, "group", value, _token(prev)))
        first = cells[0]  # every cell has the request's notify options
        channel = first.notify.channel or self.default_channel
        if not first.notify.slack or not channel:
            why = "the request turned Slack off" if not first.notify.slack else "no Slack channel is configured"
            ledger.write({"status": "skipped", "reason": why}, prev)
            return "skipped"
        values = item.get("values") or [{} for _ in cells]
        return self._send(ledger, prev, channel, lambda: group_message(
            group_id, item.get("framework", first.framework), list(zip(values, [self.priced(c) for c in cells],
                                                                       strict=False)),
            skipped=len(item.get("skipped") or []), api_url=self.api_url))

    # ---- the budget alert (issue 22) ---------------------------------------------------
    def budget_alert(self, ev: NotifyEvent) -> str:
        """The month's alert that 80% of MONTHLY_BUDGET_USD is spent: sent once per month
        and stage (``budget-alert#<month>``, claimed with one conditional write), and only
        while the month's booked costs really are past the line."""
        if self.budget is None:
            return "ignored"
        spent = self.budget.due(month_end(ev.month))
        if spent is None:
            return "ignored"
        item_id = f"budget-alert#{ev.month}"
        notice = self.store.get_notice(item_id)
        prev = DeliveryClaim.model_validate(notice) if notice else None
        if prev and prev.status in DONE:
            return "duplicate"
        ledger = _Ledger(what=f"budget alert {ev.month}", event=ev,
                         write=lambda value, prev, release=False: self.store.record_notice(
                             item_id, "budget-alert", value, _token(prev), create=True))
        if not self.default_channel:
            ledger.write({"status": "skipped", "reason": "no Slack channel is configured"}, prev)
            return "skipped"
        budget = self.budget
        return self._send(ledger, prev, self.default_channel, lambda: budget_message(
            ev.month, spent, budget.budget_usd, budget.fraction, stage=self.stage, api_url=self.api_url))

    # ---- steps --------------------------------------------------------------------
    def _send(self, ledger: _Ledger, prev: DeliveryClaim | None, channel: str,
              payload: Callable[[], dict]) -> str:
        """Claim the message on its ledger, post it, record the outcome (see the module doc)."""
        if prev and prev.status == "sending" and prev.lease_until <= self.clock():
            return self._unconfirmed(ledger, prev)
        if prev and prev.status == "sending":
            log.info("notify: %s message is being sent; duplicate dropped", ledger.what)
            return "duplicate"
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
        if not ledger.write(claim, prev, True):
            log.info("notify: %s message is being sent or was sent; duplicate dropped", ledger.what)
            return "duplicate"
        result = webhook if isinstance(webhook, Delivery) else self.sender.send(webhook, payload())
        return self._finish(ledger, claim, result)

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

    def _unconfirmed(self, ledger: _Ledger, prev: DeliveryClaim) -> str:
        """A claim whose worker died (its lease ran out) before recording the outcome. It
        claimed only once the webhook was in hand, so it died posting or after posting:
        the message is *not* sent again. Slack shows each outcome at most once; the rare
        cost is a message lost with a worker that died mid-post (logged, and recorded as
        ``unconfirmed`` with error ``worker_died``, never as sent)."""
        value = {"status": "unconfirmed", "channel": prev.channel, "attempts": prev.attempts or 1,
                 "token": secrets.token_hex(8), "updated_at": now_iso(), "error": "worker_died"}
        if not ledger.write(value, prev, True):
            return "duplicate"
        log.error("notify: %s: a worker died while posting its message; not sending it again", ledger.what)
        metrics.emit("SlackDeliveries", Outcome="abandoned")
        return "unconfirmed"

    def _finish(self, ledger: _Ledger, claim: dict, result: Delivery) -> str:
        ev = ledger.event
        base = {"channel": claim["channel"], "attempts": claim["attempts"], "token": secrets.token_hex(8),
                "updated_at": now_iso()}
        if result.ok:
            ledger.write({**base, "status": "sent", "sent_at": now_iso()}, claim)
            log.info("notify: %s message sent to Slack channel %s", ledger.what, claim["channel"])
            metrics.emit("SlackDeliveries", Outcome="sent")
            return "sent"
        if result.retryable and claim["attempts"] < self.max_attempts:
            delay = self.retry_base_seconds * 2 ** (claim["attempts"] - 1)
            delay = int(min(900, max(delay, result.retry_after or 0)))
            if not ledger.write({**base, "status": "retrying", **result.error_fields(), "retry_in_seconds": delay},
                                claim):
                return "duplicate"
            self.queue.send(ev.model_copy(update={"attempt": ev.attempt + 1}).body(), delay_seconds=delay)
            log.warning("notify: %s message not delivered (attempt %d of %d: %s); retrying in %ds",
                        ledger.what, claim["attempts"], self.max_attempts, result.error, delay)
            metrics.emit("SlackDeliveries", Outcome="retried")
            return "retrying"
        ledger.write({**base, "status": "failed", **result.error_fields()}, claim)
        log.error("notify: %s message to Slack channel %s failed after %d attempt(s): %s",
                  ledger.what, claim["channel"], claim["attempts"], result.error)
        metrics.emit("SlackDeliveries", Outcome="failed")
        return "failed"

    def _write(self, build: BuildRecord, value: dict, prev: DeliveryClaim | dict | None, started: bool, *,
               release: bool = False) -> bool:
        """Replace the bookkeeping map if nobody changed it since ``prev`` was read; with
        ``release`` (a final message's first write), give the quota slots back with it."""
        token = _token(prev)
        if release and not started:
            return self.store.record_delivery(build.id, started, value, token, release_owner=build.owner_key)
        return self.store.record_delivery(build.id, started, value, token)


def _token(prev: DeliveryClaim | dict | None) -> str | None:
    return None if prev is None else prev["token"] if isinstance(prev, dict) else prev.token


@dataclass(frozen=True)
class _Ledger:
    """Where one message's delivery is recorded (``write(value, prev, release)``: the
    conditional write of its bookkeeping), what to call it in logs, and the queue message
    that tries it again."""

    what: str
    event: NotifyEvent
    write: Callable[..., bool]
