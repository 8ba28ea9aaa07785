"""JSON request bodies parsed into typed models. Every way a body can be wrong is a
domain error that says what is wrong and what is allowed (no HTTP here: http.py maps
the errors to statuses)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError

from chalicelib.errors import BadRequest, PayloadTooLarge

MAX_BODY = 64 * 1024


def describe_validation(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "body"
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
