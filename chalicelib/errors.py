"""Domain errors. They say what went wrong, never how to answer it: ``chalicelib/api/http.py``
alone maps each to an HTTP status (the launcher, consumers and the reaper raise and catch
the same errors and have no HTTP in them)."""

from __future__ import annotations


class VoltabuildError(Exception):
    """Base of every error the domain raises on purpose."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class CatalogError(VoltabuildError):
    """A buildspec or the hardware table is broken (a deployment error, not a user's)."""


class BadRequest(VoltabuildError):
    """The request (or what it names) is not allowed; the message says what is."""


class Forbidden(VoltabuildError):
    """Credentials that do not open this resource."""


class BuildNotFound(VoltabuildError):
    """No build with that id."""


class Conflict(VoltabuildError):
    """The request is fine but the build's state does not allow it."""


class IdempotencyConflict(Conflict):
    """The same Idempotency-Key was sent with a different body."""


class InvalidTransition(Conflict):
    """The build is not in a state from which this transition is allowed."""


class PayloadTooLarge(VoltabuildError):
    """A body over the size limit."""


class QuotaExceeded(VoltabuildError):
    """Too many active builds."""


class Busy(VoltabuildError):
    """A transient conflict that outlasted our retries: the client should retry soon."""

