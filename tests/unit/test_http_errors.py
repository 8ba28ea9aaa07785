"""Domain errors carry no HTTP status; chalicelib/api/http.py alone maps them (issue 16)."""

from __future__ import annotations

import json

import pytest

from chalicelib import errors
from chalicelib.api.http import handle_errors, status_of
from chalicelib.events.cloud_events import MalformedEvent


@pytest.mark.parametrize("error, status", [
    (errors.BadRequest("x"), 400), (errors.Forbidden("x"), 403),
    (errors.BuildNotFound("x"), 404), (errors.Conflict("x"), 409), (errors.InvalidTransition("x"), 409),
    (errors.IdempotencyConflict("x"), 409), (errors.PayloadTooLarge("x"), 413), (errors.QuotaExceeded("x"), 429),
    (errors.Busy("x"), 503), (errors.CatalogError("x"), 500), (MalformedEvent("x"), 500),
])
def test_each_domain_error_maps_to_one_status(error, status):
    assert status_of(error) == status


def test_no_domain_error_knows_an_http_status():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.VoltabuildError)]
    assert len(classes) >= 10
    assert not [c.__name__ for c in classes + [MalformedEvent] if "status" in vars(c)]


def test_a_handler_raising_a_domain_error_answers_its_status_and_message():
    @handle_errors
    def route():
        raise errors.QuotaExceeded("too many active builds: the limit is 3")

    resp = route()
    assert resp.status_code == 429
    assert json.loads(json.dumps(resp.body)) == {"Code": "TooManyRequestsError",
                                                 "Message": "too many active builds: the limit is 3"}
