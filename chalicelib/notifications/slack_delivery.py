"""Posting one message to a Slack incoming webhook with ``slack_sdk``'s client and retry
handlers (5xx, 429 after its ``Retry-After``, timeouts and connection errors), and what
a failed delivery is recorded as: a type from a fixed list, never free text (which
could hold the webhook URL)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException, RemoteDisconnected
from typing import Any
from urllib.error import URLError

from slack_sdk.errors import SlackRequestError
from slack_sdk.http_retry import BackoffRetryIntervalCalculator, RetryHandler
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.webhook import WebhookClient

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
