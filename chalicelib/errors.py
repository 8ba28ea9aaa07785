"""Domain errors. ``app.py`` maps each to one HTTP status in one place."""

from __future__ import annotations


class VoltabuildError(Exception):
    """Base of every error the domain raises on purpose."""

    status = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class CatalogError(VoltabuildError):
    """A buildspec or the hardware table is broken (a deployment error, not a user's)."""


class BadRequest(VoltabuildError):
    status = 400


class Unauthorized(VoltabuildError):
    status = 401


class Forbidden(VoltabuildError):
    status = 403


class BuildNotFound(VoltabuildError):
    status = 404


class Conflict(VoltabuildError):
    status = 409


class IdempotencyConflict(Conflict):
    """The same Idempotency-Key was sent with a different body."""


class InvalidTransition(Conflict):
    """The build is not in a state from which this transition is allowed."""


class PayloadTooLarge(VoltabuildError):
    status = 413


class QuotaExceeded(VoltabuildError):
    status = 429


class Busy(VoltabuildError):
    """A transient conflict that outlasted our retries: the client should retry soon."""

    status = 503
