"""Structured logs: every line a Lambda logs is one JSON object (python-json-logger) that
carries the function, the invocation's request id and the build it is handling, so
CloudWatch Logs Insights follows one build across the API, the launcher, the EC2
handlers, the notifier and the reaper::

    fields @timestamp, function, level, message | filter build_id = "b-..." | sort @timestamp

Why python-json-logger and not Powertools' Logger: both are well kept; measured with
``python -X importtime`` on top of what the API already imports (boto3, pydantic),
``pythonjsonlogger.json`` adds about 1.3 ms and one small package, Powertools' Logger about
5 ms (its package also pulls in metrics and the shared utilities) — the API's cold start is
held to 1.3x ``import boto3``. The context comes from a :class:`contextvars.ContextVar`,
set by one :func:`bind` call at the start of each handler (a thread of ``chalice local``
or of the local worker has its own).

Secrets are never passed to a log call: tokens are hashed before they are stored, Slack
webhook URLs are redacted from slack_sdk's logger (chalicelib/notifications/notify.py), the API key is
never logged; ``tests/e2e/test_observability_e2e.py`` scans a whole local build's logs.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

# libraries whose INFO lines are noise at the root's INFO level
QUIET = ("botocore", "boto3", "urllib3")
_CONTEXT: ContextVar[dict[str, str] | None] = ContextVar("voltabuild_log_context", default=None)


class _Stdout(logging.StreamHandler):
    """A handler on whatever ``sys.stdout`` is now: Lambda sends stdout to CloudWatch Logs
    (EMF lines go there too), the local stack to its process logs, pytest to its capture."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # noqa: D401 — logging.StreamHandler's attribute
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _WithContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_CONTEXT.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def json_handler() -> logging.Handler:
    handler = _Stdout()
    handler.setFormatter(JsonFormatter(
        "{levelname}{name}{message}", style="{", timestamp=True,  # ISO 8601, UTC
        rename_fields={"levelname": "level", "name": "logger"},
    ))
    handler.addFilter(_WithContext())
    return handler


def setup(level: int = logging.INFO) -> None:
    """Make the root logger write JSON lines to stdout (replacing the Lambda runtime's text
    handler, or a local process's ``basicConfig``). Idempotent: a warm start or a second
    import keeps the one handler."""
    root = logging.getLogger()
    if any(isinstance(h, _Stdout) for h in root.handlers):
        return
    # pytest's capture handlers stay (its log report); every other one writes text
    root.handlers = [h for h in root.handlers if type(h).__module__.startswith("_pytest")] + [json_handler()]
    root.setLevel(level)
    for name in QUIET:  # their INFO lines ("Found credentials ...") cost log volume and say nothing
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def bind(function: str, lambda_context: Any = None, *, build_id: str | None = None) -> None:
    """Start an invocation's log context (one call at the top of each handler): every line
    logged until the next ``bind`` in this thread carries ``function``, the Lambda request
    id and, once known, ``build_id``."""
    ctx = {"function": function}
    request_id = getattr(lambda_context, "aws_request_id", None)
    if request_id:
        ctx["request_id"] = str(request_id)
    if build_id:
        ctx["build_id"] = build_id
    _CONTEXT.set(ctx)


def bind_build(build_id: str | None) -> None:
    """The build this invocation is handling now (None: none any more)."""
    ctx = {k: v for k, v in (_CONTEXT.get() or {}).items() if k != "build_id"}
    if build_id:
        ctx["build_id"] = build_id
    _CONTEXT.set(ctx)


def context() -> dict[str, str]:
    """The current log context (the metrics put it beside their values)."""
    return dict(_CONTEXT.get() or {})
