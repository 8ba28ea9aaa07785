"""The HTTP edge: parse requests into typed objects, map domain errors to responses."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from chalice import Response
from pydantic import BaseModel, ValidationError

from chalicelib.errors import (
    BadRequest,
    BuildNotFound,
    Busy,
    CatalogError,
    Conflict,
    Forbidden,
    PayloadTooLarge,
    QuotaExceeded,
    Unauthorized,
    VoltabuildError,
)

MAX_BODY = 64 * 1024
_CODES = {400: "BadRequestError", 401: "UnauthorizedError", 403: "ForbiddenError", 404: "NotFoundError",
          409: "ConflictError", 413: "RequestEntityTooLargeError", 429: "TooManyRequestsError",
          503: "ServiceUnavailableError"}


# The one map from domain errors to HTTP statuses (the errors themselves know no HTTP).
# Looked up along the error's class hierarchy, most specific first; a VoltabuildError
# not listed (CatalogError: a broken deployment, not the caller's fault) is a 500.
STATUS: dict[type[VoltabuildError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
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


def describe_validation(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"] if not isinstance(x, int) or True) or "body"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "string_pattern_mismatch":
            msg = f"{err.get('input')!r} does not match {err['ctx']['pattern']}"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_body(raw: bytes | None, model: type[BaseModel]) -> Any:
    if raw is None or raw == b"":
        raise BadRequest("the request body is empty; send a JSON object")
    if len(raw) > MAX_BODY:
        raise PayloadTooLarge(f"the request body is {len(raw)} bytes; the limit is {MAX_BODY}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return model.model_validate_json(raw)  # JSON mode: strict models still take JSON objects
    except ValidationError as e:
        raise BadRequest(describe_validation(e)) from None


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
    if isinstance(body, BaseModel):
        body = body.model_dump(mode="json")
    return Response(body=body, status_code=status, headers={"Content-Type": "application/json", **(headers or {})})
