"""Item 1 of issue 17: POST /builds/{id}/events needs no API key, so a malformed id or
token must cost nothing but the Lambda run (no AWS call at all)."""

from __future__ import annotations

import hashlib
import json

import pytest

from chalicelib import wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.states import Status

GOOD_TOKEN = "A" * 43  # the launcher's shape: secrets.token_urlsafe(32)
PHASE = json.dumps({"type": "phase", "phase": "PREPARING"})


class AwsCalls:
    """Every AWS API call the app's clients make (botocore's before-call event)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        for name in ("dynamodb", "sqs", "ssm", "logs", "ec2"):
            wiring.client(name).meta.events.register("before-call", self._record)

    def _record(self, model, **_):
        self.seen.append(f"{model.service_model.service_name}.{model.name}")


@pytest.fixture
def launching(api, aws):
    build, _ = wiring.builds().submit(BuildRequest(framework="canary"))
    wiring.store().move(build.id, Status.LAUNCHING,
                              fields={"token_hash": hashlib.sha256(GOOD_TOKEN.encode()).hexdigest(),
                                      "instance_id": "i-0123456789abcdef0"})
    return build.id


def post(api, build_id, token, body=PHASE):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return api.http.post(f"/builds/{build_id}/events", headers=headers, body=body)


@pytest.mark.parametrize("build_id,token", [
    ("b-0123", GOOD_TOKEN),                      # id too short
    ("B-0123456789ABCDEF0123", GOOD_TOKEN),      # upper case
    ("b-0123456789abcdef012g", GOOD_TOKEN),      # not hex
    ("x" * 200, GOOD_TOKEN),
    ("b-0123456789abcdef0123", None),            # no token
    ("b-0123456789abcdef0123", "short"),         # token far too short
    ("b-0123456789abcdef0123", "x" * 500),       # far too long
    ("b-0123456789abcdef0123", "a b" * 20),      # not URL-safe
    ("b-0123456789abcdef0123", "é" * 43),
])
def test_a_malformed_id_or_token_is_403_without_any_aws_call(api, aws, build_id, token):
    # GIVEN the app's AWS clients are watched
    calls = AwsCalls()
    # WHEN an anonymous caller posts a report with a malformed id or token
    resp = post(api, build_id, token)
    # THEN it is refused, and not one AWS call was made for it
    assert resp.status_code == 403
    assert "token" in json.loads(resp.body)["Message"]
    assert calls.seen == []


def test_a_well_formed_token_still_works_and_costs_one_write(api, aws, launching):
    calls = AwsCalls()
    assert post(api, launching, GOOD_TOKEN).status_code == 202
    assert calls.seen == ["dynamodb.UpdateItem"]


def test_a_well_formed_but_wrong_token_costs_exactly_one_write(api, aws, launching):
    calls = AwsCalls()
    assert post(api, launching, "B" * 43).status_code == 403
    assert calls.seen == ["dynamodb.UpdateItem"]


def test_the_launcher_draws_tokens_of_the_accepted_shape():
    import secrets

    from chalicelib.launching.reports import TOKEN_SHAPE

    assert all(TOKEN_SHAPE.match(secrets.token_urlsafe(32)) for _ in range(200))
