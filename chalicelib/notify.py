"""Slack notifications: the message, the webhook lookup, delivery and the notify-queue consumer.

A build that becomes final puts ``{"build_id", "status"}`` on the notify queue (see
``Transitions.move``); :class:`Notifier` consumes it apart from the state change, so
Slack being down, slow or rate limiting never fails or delays a transition:

1. the delivery is *claimed* on the build record (``notification``) with a conditional
   write that also reads the build, so a duplicate queue message finds it claimed or done
   and sends nothing;
2. the build's quota slots are given back (idempotent, whatever the claim's outcome);
3. the channel's webhook URL is read from SSM (SecureString, cached per warm Lambda);
4. ``slack_sdk``'s webhook client posts the message, retrying 5xx, 429 (after its
   ``Retry-After``), timeouts and connection errors a few times in-process;
5. still failing, the message goes back on the queue with a growing delay; when the
   attempts run out, ``notification.status`` becomes ``failed`` with the error.

Webhook URLs are never logged, never written to the table and never returned by the API:
the record holds the channel *name* only.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException, RemoteDisconnected
from typing import Any, Literal
from urllib.error import URLError

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from slack_sdk.errors import SlackRequestError
from slack_sdk.http_retry import BackoffRetryIntervalCalculator, RetryHandler
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.webhook import WebhookClient

from chalicelib.clock import now_iso, parse
from chalicelib.queues import Queue
from chalicelib.records import BuildRecord, DeliveryClaim
from chalicelib.schemas import Build
from chalicelib.states import FINAL, Status
from chalicelib.store import BuildStore

log = logging.getLogger("voltabuild.notify")

FINAL_ATTR = "notification"  # the final-outcome message's bookkeeping on the build record
START_ATTR = "start_notification"  # the optional "started" message's
DONE = frozenset({"sent", "failed", "skipped", "unconfirmed"})


# ---- the queue message ------------------------------------------------------------
class NotifyEvent(BaseModel):
    """A notify-queue message. ``event`` is ``final`` (sent by ``Transitions.move``) or
    ``started`` (sent by :func:`enqueue_started`); ``attempt`` counts re-queued tries."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    build_id: str = Field(pattern=r"^b-[0-9a-f]{20}$")
    status: Status
    event: Literal["final", "started"] = "final"
    attempt: int = Field(1, ge=1, le=100)

    def body(self) -> dict:
        return self.model_dump(mode="json")


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
    queue.send(NotifyEvent(build_id=build_id, status=Status.RUNNING, event="started").body())
    return True


# ---- the message ------------------------------------------------------------------
OUTCOME = {
    Status.SUCCEEDED: (":white_check_mark:", "succeeded"),
    Status.FAILED: (":x:", "failed"),
    Status.TIMED_OUT: (":alarm_clock:", "timed out"),
    Status.CANCELLED: (":no_entry_sign:", "was cancelled"),
    Status.RUNNING: (":rocket:", "started"),
}
_SECTION_MAX = 2900  # Slack: a section's text is at most 3000 characters


def escape(text: str) -> str:
    """Slack mrkdwn needs only &, < and > escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h {m:02d}m {sec:02d}s"
    if m:
        return f"{m}m {sec:02d}s"
    return f"{sec}s"


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (parse(end) - parse(start)).total_seconds()


@dataclass(frozen=True)
class Cost:
    usd: float
    billed_seconds: int
    price_per_hour: float
    lifecycle: str


def estimate_cost(build: Build) -> Cost | None:
    """The recorded hourly price × billed time (launch to finish, per second, at least
    60 s, as EC2 bills Linux instances). None when no price or launch time was recorded."""
    inst = build.instance
    if inst is None or inst.price is None or not inst.launched_at or not build.finished_at:
        return None
    ran = _seconds_between(inst.launched_at, build.finished_at) or 0.0
    billed = max(60, math.ceil(ran))
    return Cost(usd=inst.price * billed / 3600, billed_seconds=billed, price_per_hour=inst.price,
                lifecycle=inst.lifecycle)


def image_uris(build: Build) -> list[str]:
    """Every pushed reference: one per tag, and the digest."""
    repo = build.image.repository
    uris = [f"{repo}:{t}" for t in build.image.tags]
    if build.image.digest:
        uris.append(f"{repo}@{build.image.digest}")
    return uris


def _reason_parts(reason: str | None) -> tuple[str, str]:
    """(the reason's first line, the log lines after it)."""
    if not reason:
        return "", ""
    head, _, tail = reason.strip().partition("\n")
    return head.strip(), tail.strip("\n")


def _code_block(text: str, limit: int) -> str:
    """A mrkdwn code block of the *last* characters of ``text`` (a log tail keeps its end)."""
    lines = escape(text.replace("```", "`\u200b``")).splitlines()
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        line = line[-limit:]
        if size + len(line) + 1 > limit:
            break
        kept.insert(0, line)
        size += len(line) + 1
    if len(kept) < len(lines):
        kept.insert(0, f"… ({len(lines) - len(kept)} earlier lines cut)")
    return "```" + "\n".join(kept) + "```"


def build_message(build: Build, *, api_url: str = "", started: bool = False) -> dict[str, Any]:
    """The Slack payload: Block Kit ``blocks`` plus a plain ``text`` fallback (shown in
    notifications and by clients that cannot render blocks)."""
    status = Status.RUNNING if started else build.status
    emoji, word = OUTCOME.get(status, (":grey_question:", status.value.lower()))
    what = f"{build.framework} {build.version}"
    stack = f"CUDA {build.cuda} · Python {build.python}"
    headline = f"{emoji} {what} build {word}"
    inst = build.instance
    instance = f"{inst.type} ({inst.lifecycle}{', ' + inst.az if inst.az else ''})" if inst else "none launched"

    total = _seconds_between(build.created_at, build.finished_at)
    on_instance = _seconds_between(inst.launched_at if inst else None, build.finished_at)
    duration = format_duration(total)
    if on_instance is not None:
        duration += f" (on the instance {format_duration(on_instance)})"
    cost = estimate_cost(build)
    if cost:
        cost_text = (f"~${cost.usd:.2f} ({cost.lifecycle}: ${cost.price_per_hour:.4g}/h × "
                     f"{format_duration(cost.billed_seconds)} billed)")
    elif inst is None:
        cost_text = "$0.00 (no instance was launched)"
    else:
        cost_text = "unknown (no price or launch time recorded)"

    cli = f"voltabuild status {build.id}"
    api = f"{api_url}/builds/{build.id}" if api_url else ""
    uris = image_uris(build) if (build.image.digest or status == Status.SUCCEEDED) else []
    reason, log_tail = _reason_parts(build.reason)

    fields = [f"*Framework*\n{escape(what)}", f"*Toolchain*\n{escape(stack)}",
              f"*Instance*\n{escape(instance)}", f"*Attempt*\n{build.attempt} of {build.max_attempts}"]
    if not started:
        fields += [f"*Duration*\n{escape(duration)}", f"*Estimated cost*\n{escape(cost_text)}"]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": headline[:150], "emoji": True}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]
    if uris:
        listing = "\n".join(f"`{escape(u)}`" for u in uris)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Image*\n{listing}"[:_SECTION_MAX]}})
    elif not started:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "*Image*\nnot pushed"}})
    if reason and not started:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": f"*Reason*\n{escape(reason)}"[:_SECTION_MAX]}})
    if log_tail and not started:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": "*Last log lines*\n" + _code_block(log_tail, 2800)}})
    context = [f"`{escape(cli)}`", f"build `{build.id}`"]
    if api:
        context.append(f"<{api}|{escape(api)}>")
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": c} for c in context]})

    parts = [f"{headline} ({stack})"]
    if not started:
        parts.append(f"duration {duration}")
    parts.append(f"instance {instance}")
    if not started:
        parts.append(f"estimated cost {cost_text}")
    if uris:
        parts.append("image " + " ".join(uris))
    if reason and not started:
        parts.append(f"reason: {reason}")
    parts.append(f"see `{cli}`" + (f" or {api}" if api else ""))
    # the fallback is mrkdwn too (notifications, clients without blocks): escaped like the
    # blocks, so `<!channel>` or `<https://evil|click>` from a log or a reason stays text
    text = escape(" · ".join(parts))
    if log_tail and not started:
        text += "\nLast log lines:\n" + escape(log_tail[-1500:])
    return {"text": text, "blocks": blocks}


# ---- webhook URLs (SSM Parameter Store) -------------------------------------------
class WebhookNotConfigured(Exception):
    """No SSM parameter holds a webhook URL for this channel (a deployment error)."""


class WebhookInvalid(WebhookNotConfigured):
    """The parameter exists but does not hold a well-formed webhook URL."""


# What a webhook URL may look like (issue 17): https to any host, or http to loopback (the
# local stack's and the tests' sinks); printable path characters only, nothing to trim.
WEBHOOK_URL = re.compile(
    r"^(?:https://[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
    r"|http://(?:127\.0\.0\.1|localhost|\[::1\]))"
    r"(?::[0-9]{1,5})?/[A-Za-z0-9._~/%+-]{0,1024}\Z"
)


class WebhookDirectory:
    """Channel name -> webhook URL, from SSM SecureStrings ``<prefix><channel>``, cached
    for ``ttl_seconds`` (per warm Lambda: this object lives as long as the process)."""

    def __init__(self, ssm, prefix: str, *, ttl_seconds: float = 300,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ssm = ssm
        self.prefix = prefix.rstrip("/") + "/"
        self._ttl = ttl_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, str]] = {}

    def parameter_name(self, channel: str) -> str:
        return self.prefix + channel

    def url(self, channel: str) -> str:
        hit = self._cache.get(channel)
        if hit and hit[0] > self._clock():
            return hit[1]
        name = self.parameter_name(channel)
        try:
            resp = self._ssm.get_parameter(Name=name, WithDecryption=True)
        except ClientError as e:
            if e.response["Error"]["Code"] == "ParameterNotFound":
                raise WebhookNotConfigured(
                    f"no webhook for Slack channel {channel!r}: SSM parameter {name} does not exist"
                ) from None
            raise
        value = resp["Parameter"]["Value"]
        if not WEBHOOK_URL.match(value):  # e.g. the placeholder "unset", a stray space or newline
            # the message names the parameter, never its value: a near-URL is still a secret
            raise WebhookInvalid(
                f"the webhook for Slack channel {channel!r} (SSM parameter {name}) is not a valid "
                "webhook URL: https://host/path with no spaces or control characters"
            )
        self._cache[channel] = (self._clock() + self._ttl, value)
        return value


# ---- delivery ---------------------------------------------------------------------
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+")


def redact(text: object) -> str:
    """Any URL in ``text`` replaced: error messages may quote the webhook URL."""
    return _URL.sub("<webhook-url>", str(text))


class _RedactUrls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


# slack_sdk logs the request URL (the webhook, a secret) at INFO when it retries and
# dumps requests at DEBUG when its logger's level allows: give it a logger of our own
# that never goes below INFO and scrubs URLs from every record.
_SDK_LOG = logging.getLogger("voltabuild.notify.slack_sdk")
_SDK_LOG.setLevel(logging.INFO)
_SDK_LOG.addFilter(_RedactUrls())

_BACKOFF = BackoffRetryIntervalCalculator(backoff_factor=0.5)


def retry_after_seconds(headers: Mapping[str, Any] | None) -> float | None:
    """``Retry-After`` (seconds) from a response's headers, whatever their shape."""
    for k, v in (headers or {}).items():
        if k.lower() == "retry-after":
            v = v[0] if isinstance(v, (list, tuple)) else v
            try:
                return max(0.0, float(v))
            except (TypeError, ValueError):
                return None
    return None


class _InjectedSleep(RetryHandler):
    """slack_sdk's handlers call ``time.sleep``; these take the sleep as a parameter."""

    def __init__(self, *args: Any, sleep: Callable[[float], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sleep = sleep

    def _wait(self, state, response) -> float:
        return self.interval_calculator.calculate_sleep_duration(state.current_attempt)

    def prepare_for_next_attempt(self, *, state, request, response=None, error=None) -> None:
        state.next_attempt_requested = True
        self._sleep(self._wait(state, response))
        state.increment_current_attempt()


class _ServerErrors(_InjectedSleep, ServerErrorRetryHandler):
    def _can_retry(self, *, state, request, response=None, error=None) -> bool:
        return response is not None and response.status_code in (500, 502, 503, 504)


class _ConnectionErrors(_InjectedSleep, ConnectionErrorRetryHandler):
    """Connection errors, and timeouts (a slow webhook), which the stock list lacks."""


class _RateLimited(_InjectedSleep, RateLimitErrorRetryHandler):
    """429: wait ``Retry-After`` in-process when it is short; a longer one is left to
    the queue (the message is re-queued with that delay)."""

    def __init__(self, *args: Any, max_wait: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_wait = max_wait

    def _can_retry(self, *, state, request, response=None, error=None) -> bool:
        if response is None or response.status_code != 429:
            return False
        wait = retry_after_seconds(response.headers)
        return wait is None or wait <= self._max_wait

    def _wait(self, state, response) -> float:
        wait = retry_after_seconds(response.headers)
        return 1.0 if wait is None else wait


# A failed delivery is recorded as a type from this list, the HTTP status and Slack's own
# error code (snake_case, as Slack's webhooks answer): never as free text, which could hold
# the webhook URL (issue 17).
ERROR_TYPES = frozenset({"webhook_missing", "webhook_invalid", "ssm_error", "http_status", "timeout",
                         "connection", "request_rejected"})
_SLACK_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def slack_code(body: str | None) -> str | None:
    """Slack's error code from a webhook answer's body (``no_service``), or None."""
    text = (body or "").strip()
    return text if _SLACK_CODE.match(text) else None


@dataclass(frozen=True)
class Delivery:
    ok: bool
    retryable: bool = False
    error_type: str = ""
    http_status: int | None = None
    slack_error: str | None = None
    retry_after: float | None = None

    def __post_init__(self) -> None:
        if not self.ok and self.error_type not in ERROR_TYPES:
            raise ValueError(f"unknown delivery error type {self.error_type!r}")

    def error_fields(self) -> dict[str, Any]:
        """What the build record keeps about the failure."""
        out: dict[str, Any] = {"error": self.error_type}
        if self.http_status is not None:
            out["error_status"] = self.http_status
        if self.slack_error:
            out["error_code"] = self.slack_error
        return out

    @property
    def error(self) -> str:
        """A one-line description for logs, made of the recorded fields only."""
        parts = [self.error_type]
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        if self.slack_error:
            parts.append(self.slack_error)
        return " ".join(parts)


class SlackSender:
    """Posts one message to an incoming webhook with ``slack_sdk``'s client and retry
    handlers: 5xx, 429 (honouring ``Retry-After`` up to ``max_inline_wait``), timeouts
    and connection errors are retried ``max_retries`` times with backoff."""

    def __init__(self, *, timeout: float = 5.0, max_retries: int = 2, max_inline_wait: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.timeout = timeout
        self.handlers: list[RetryHandler] = [
            _RateLimited(max_retries, sleep=sleep, max_wait=max_inline_wait),
            _ServerErrors(max_retries, _BACKOFF, sleep=sleep),
            _ConnectionErrors(max_retries, _BACKOFF, sleep=sleep,
                              error_types=[URLError, ConnectionError, RemoteDisconnected, TimeoutError]),
        ]

    def send(self, url: str, message: dict[str, Any]) -> Delivery:
        client = WebhookClient(url, timeout=self.timeout, retry_handlers=self.handlers, logger=_SDK_LOG)
        try:
            resp = client.send(text=message["text"], blocks=message.get("blocks"), unfurl_links=False)
        except SlackRequestError:
            return Delivery(ok=False, error_type="request_rejected")
        except (TimeoutError, OSError, HTTPException) as e:
            timed_out = isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError)
            return Delivery(ok=False, retryable=True, error_type="timeout" if timed_out else "connection")
        if resp.status_code == 200:
            return Delivery(ok=True)
        retryable = resp.status_code == 429 or resp.status_code >= 500
        return Delivery(ok=False, retryable=retryable, error_type="http_status", http_status=resp.status_code,
                        slack_error=slack_code(resp.body),
                        retry_after=retry_after_seconds(resp.headers) if resp.status_code == 429 else None)


# ---- the consumer -----------------------------------------------------------------
class Notifier:
    """Consumes the notify queue: quota release, then at most one Slack message per
    final outcome (and per start, when enabled), with its delivery recorded on the build."""

    def __init__(self, store: BuildStore, queue: Queue, webhooks: WebhookDirectory, sender: SlackSender, *,
                 api_url: str = "", channels: tuple[str, ...] = ("default",), notify_on_start: bool = False,
                 max_attempts: int = 5, retry_base_seconds: float = 30, lease_seconds: int = 50,
                 clock: Callable[[], float] = time.time) -> None:
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

    def handle(self, ev: NotifyEvent) -> str:
        """Process one queue message; returns what happened: ``sent``, ``retrying``,
        ``failed``, ``skipped``, ``unconfirmed``, ``duplicate`` or ``ignored``. Raises only on an AWS
        error of the table or queue (the message then comes back: everything is idempotent)."""
        started = ev.event == "started"
        if started and not self.notify_on_start:
            return "ignored"  # disabled: nothing to read
        claim = {"status": "sending", "lease_until": int(self.clock() + self.lease_seconds),
                 "token": secrets.token_hex(8), "updated_at": now_iso()}
        build, claimed = self.store.claim_delivery(ev.build_id, started, claim)
        if not started:  # whatever happens next, the slot goes back
            self.store.release_slot(ev.build_id, owner_key=build.owner_key if build else None)
        if build is None:
            log.warning("notify: build %s does not exist; nothing to send", ev.build_id)
            return "ignored"
        if started and build.status != Status.RUNNING:
            return "ignored"  # the build already moved on: a late "started" helps nobody
        if not started and build.status not in FINAL:
            log.warning("notify: build %s is %s, not final; ignoring a final event", build.id, build.status.value)
            return "ignored"
        prev = build.delivery(started)  # as it was before the claim
        if not claimed:
            return self._not_claimed(build, ev, prev)
        channel = build.notify.channel or self.default_channel
        claim.update(channel=channel, attempts=((prev.attempts or 0) if prev else 0) + 1)
        if not build.notify.slack or not channel:
            why = "the request turned Slack off" if not build.notify.slack else "no Slack channel is configured"
            self._write(build.id, {"status": "skipped", "reason": why}, claim, started)
            return "skipped"
        webhook = self._webhook(channel)
        result = webhook if isinstance(webhook, Delivery) else self.sender.send(
            webhook, build_message(build.public(), api_url=self.api_url, started=started))
        return self._finish(build.id, ev, claim, result, started)

    # ---- steps --------------------------------------------------------------------
    def _not_claimed(self, build: BuildRecord, ev: NotifyEvent, prev: DeliveryClaim | None) -> str:
        """The claim lost: the message was sent (or settled) already, another worker holds
        it, or a worker died holding it (its lease ran out)."""
        if prev is not None and prev.status == "sending" and prev.lease_until <= self.clock():
            return self._unconfirmed(build.id, prev, ev.event == "started")
        if prev is not None and prev.status in DONE:
            log.info("notify: build %s %s message already %s", build.id, ev.event, prev.status)
        else:
            log.info("notify: build %s %s message is being sent; duplicate dropped", build.id, ev.event)
        return "duplicate"

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

    def _unconfirmed(self, build_id: str, prev: DeliveryClaim, started: bool) -> str:
        """A claim whose worker died (its lease ran out) before recording the outcome: it
        died reading the webhook (a warm Lambda has it cached: no call), posting or after
        posting, so the message is *not* sent again. Slack shows each outcome at most once;
        the rare cost is a message lost with a worker that died in that window (logged, and
        recorded as ``unconfirmed`` with error ``worker_died``, never as sent)."""
        value = {"status": "unconfirmed", "channel": prev.channel, "attempts": prev.attempts or 1,
                 "token": secrets.token_hex(8), "updated_at": now_iso(), "error": "worker_died"}
        if not self._write(build_id, value, prev, started):
            return "duplicate"
        log.error("notify: build %s: a worker died while posting its %s message; not sending it again",
                  build_id, "start" if started else "final")
        return "unconfirmed"

    def _finish(self, build_id: str, ev: NotifyEvent, claim: dict, result: Delivery, started: bool) -> str:
        base = {"channel": claim["channel"], "attempts": claim["attempts"], "token": secrets.token_hex(8),
                "updated_at": now_iso()}
        if result.ok:
            self._write(build_id, {**base, "status": "sent", "sent_at": now_iso()}, claim, started)
            log.info("notify: build %s %s message sent to Slack channel %s", build_id, ev.event, claim["channel"])
            return "sent"
        if result.retryable and claim["attempts"] < self.max_attempts:
            delay = self.retry_base_seconds * 2 ** (claim["attempts"] - 1)
            delay = int(min(900, max(delay, result.retry_after or 0)))
            if not self._write(build_id, {**base, "status": "retrying", **result.error_fields(),
                                                "retry_in_seconds": delay}, claim, started):
                return "duplicate"
            self.queue.send(ev.model_copy(update={"attempt": ev.attempt + 1}).body(), delay_seconds=delay)
            log.warning("notify: build %s %s message not delivered (attempt %d of %d: %s); retrying in %ds",
                        build_id, ev.event, claim["attempts"], self.max_attempts, result.error, delay)
            return "retrying"
        self._write(build_id, {**base, "status": "failed", **result.error_fields()}, claim, started)
        log.error("notify: build %s %s message to Slack channel %s failed after %d attempt(s): %s",
                  build_id, ev.event, claim["channel"], claim["attempts"], result.error)
        return "failed"

    def _write(self, build_id: str, value: dict, prev: DeliveryClaim | dict | None, started: bool) -> bool:
        """Replace the bookkeeping map if nobody changed it since ``prev`` was read."""
        token = None if prev is None else prev["token"] if isinstance(prev, dict) else prev.token
        return self.store.record_delivery(build_id, started, value, token) is not None
