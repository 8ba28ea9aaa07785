"""Slack channel name -> incoming-webhook URL, from SSM SecureStrings. The URLs are
secrets: never logged, never written to the table, never returned by the API."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from botocore.exceptions import ClientError


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
