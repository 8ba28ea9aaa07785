"""The HTTP edge: map domain errors to responses (request bodies are parsed in bodies.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chalice import Response

from chalicelib.errors import (
    BadRequest,
    BuildNotFound,
    Busy,
    CatalogError,
    Conflict,
    Forbidden,
    PayloadTooLarge,
    QuotaExceeded,
    VoltabuildError,
)

_CODES = {400: "BadRequestError", 401: "UnauthorizedError", 403: "ForbiddenError", 404: "NotFoundError",
          409: "ConflictError", 413: "RequestEntityTooLargeError", 429: "TooManyRequestsError",
          503: "ServiceUnavailableError"}


# The one map from domain errors to HTTP statuses (the errors themselves know no HTTP).
# Looked up along the error's class hierarchy, most specific first; a VoltabuildError
# not listed (CatalogError: a broken deployment, not the caller's fault) is a 500.
STATUS: dict[type[VoltabuildError], int] = {
    BadRequest: 400,
    Forbidden: 403,
    BuildNotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    QuotaExceeded: 429,
    Busy: 503,
    CatalogError: 500,
}


def status_of(error: VoltabuildError) -> int:
    """The HTTP status for a domain error (its nearest mapped class), 500 if none is mapped."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, message: str) -> Response:
    return Response(
        body={"Code": _CODES.get(status, "Error"), "Message": message},
        status_code=status,
        headers={"Content-Type": "application/json", **({"Retry-After": "1"} if status == 503 else {})},
    )


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map domain errors to JSON error responses (every other exception is a real bug)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VoltabuildError as e:
            return error_response(status_of(e), e.message)

    return wrapper


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    if hasattr(body, "model_dump"):  # a pydantic model (not imported here: no cold start pays for it)
        body = body.model_dump(mode="json")
    return Response(body=body, status_code=status, headers={"Content-Type": "application/json", **(headers or {})})
