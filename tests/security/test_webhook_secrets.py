"""Item 5 of issue 17: a webhook URL never leaks through an error, however malformed the
stored parameter is; errors are recorded as a type and a status."""

from __future__ import annotations

import json
import logging

import pytest

from chalicelib import wiring
from chalicelib.builds.states import Status
from chalicelib.notifications.slack_delivery import Delivery
from chalicelib.notifications.webhooks import WEBHOOK_URL, WebhookDirectory, WebhookInvalid
from tests.notify.conftest import Reply
from tests.notify.test_consumer import final_event, record

pytest_plugins = ["tests.notify.conftest"]  # the sink, slack and make_build fixtures

SECRET = "XyZsup3rS3cretPath"


@pytest.mark.parametrize("bad", [
    "https://hooks.slack.com/services/T0 /B0/" + SECRET,        # a stray space
    "https://hooks.slack.com/services/T0/B0/" + SECRET + "\n",  # a trailing newline
    " https://hooks.slack.com/services/T0/B0/" + SECRET,        # a leading space
    "https://hooks.slack.com/services/T0/B0/\x07" + SECRET,     # a control character
    "https://hooks.slack.com/services/T0/B0/" + SECRET + "\u200b",
    "http://hooks.slack.com/services/T0/B0/" + SECRET,          # cleartext to a remote host
    "ftp://example.com/" + SECRET,
    "unset",
])
def test_malformed_webhook_parameters_are_refused_without_quoting_them(aws, bad):
    ssm = aws.client("ssm")
    ssm.put_parameter(Name="/voltabuild/dev/slack/default", Value=bad, Type="SecureString", Overwrite=True)
    directory = WebhookDirectory(wiring.client("ssm"), "/voltabuild/dev/slack/")
    with pytest.raises(WebhookInvalid) as e:
        directory.url("default")
    assert SECRET not in str(e.value) and "/voltabuild/dev/slack/default" in str(e.value)


@pytest.mark.parametrize("good", [
    "https://hooks.slack.com/services/T000/B000/abcDEF123",
    "https://hooks.slack.com/triggers/E0/123/abc",
    "http://127.0.0.1:5123/hooks/default",
])
def test_well_formed_webhooks_pass(good):
    assert WEBHOOK_URL.match(good)


def test_a_webhook_with_a_stray_space_leaks_nowhere(api, aws, slack, sink, make_build, notifier_factory, caplog):
    # GIVEN the default channel's webhook parameter holds a URL with a stray space
    caplog.set_level(logging.DEBUG, logger="voltabuild")
    caplog.set_level(logging.INFO)
    url = slack["default"].replace("/hooks/T000/", "/hooks/T000 /") + "-" + SECRET
    aws.client("ssm").put_parameter(Name="/voltabuild/dev/slack/default", Value=url, Type="SecureString",
                                    Overwrite=True)
    build_id = make_build(Status.FAILED, reason="boom")
    # WHEN the final message is handled
    assert notifier_factory().handle(final_event(aws)) == "failed"
    # THEN nothing was posted, the record says why as a type, and no secret is anywhere
    assert sink.received == []
    note = record(build_id)["notification"]
    assert note["status"] == "failed" and note["error"] == "webhook_invalid"
    shown = api.http.get(f"/builds/{build_id}").body.decode()
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for where in (shown, json.dumps(aws.items()), logs):
        assert SECRET not in where and "T000 " not in where
    assert "webhook_invalid" in shown


def test_an_http_error_body_that_quotes_the_url_is_not_kept(aws, slack, sink, make_build, notifier_factory):
    build_id = make_build(Status.SUCCEEDED)
    sink.then(Reply(403, f"invalid token at {slack['default'].replace('/hooks', ' /hooks')}"))
    assert notifier_factory().handle(final_event(aws)) == "failed"
    note = record(build_id)["notification"]
    assert (note["error"], note["error_status"]) == ("http_status", 403) and "error_code" not in note
    assert "s3cr3t" not in json.dumps(note)


def test_a_delivery_error_is_one_of_the_known_types():
    with pytest.raises(ValueError):
        Delivery(ok=False, error_type="HTTP 500 see https://hooks.slack.com/services/x")
    assert Delivery(ok=False, error_type="http_status", http_status=404, slack_error="no_service").error_fields() \
        == {"error": "http_status", "error_status": 404, "error_code": "no_service"}

