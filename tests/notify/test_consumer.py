"""The notify-queue consumer against moto and a local webhook sink: quota back, exactly
one Slack message per outcome through failures, duplicates and opt-outs, and delivery
recorded on the build."""

from __future__ import annotations

import json
import logging

import pytest

from chalicelib import wiring
from chalicelib.builds.states import Status
from chalicelib.notifications.notify_events import NotifyEvent, enqueue_started
from chalicelib.notifications.webhooks import WebhookDirectory

from .conftest import RecordingQueue, Reply

DEFAULT_HOOK = "/hooks/T000/B000/default-s3cr3t-token"
ALERTS_HOOK = "/hooks/T000/B000/alerts-s3cr3t-token"


def final_event(aws) -> NotifyEvent:
    """The one message Transitions.move put on the notify queue."""
    bodies = aws.messages("NotifyQueue")
    assert len(bodies) == 1, bodies
    return NotifyEvent.model_validate(bodies[0])


def record(build_id: str) -> dict:
    """The stored build as plain data (the fields the item holds)."""
    return wiring.store().get_record(build_id).model_dump(mode="json", exclude_unset=True)


def invoke(api, *bodies: dict | str):
    event = api.events.generate_sqs_event(
        message_bodies=[b if isinstance(b, str) else json.dumps(b) for b in bodies],
        queue_name="voltabuild-dev-notify",
    )
    return api.lambda_.invoke("notify_consumer", event)


@pytest.mark.parametrize("final", [Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT, Status.CANCELLED])
def test_each_final_state_sends_one_message_and_gives_the_quota_slot_back(api, aws, slack, sink, make_build,
                                                                          final):
    # GIVEN a build that just ended (its quota slot still held)
    reason = "build failed: exit status 2\nStep 4/7 : RUN make\nmake: *** [all] Error 2" if final != Status.SUCCEEDED \
        else None
    build_id = make_build(final, reason=reason)
    assert build_id in wiring.store().slot_holders()
    ev = final_event(aws)
    assert ev.event == "final"

    # WHEN the consumer Lambda gets the notify-queue message
    invoke(api, ev.body())

    # THEN the slot is free, one message reached the default channel, and that is recorded
    assert build_id not in wiring.store().slot_holders()
    posted = sink.posted(DEFAULT_HOOK)
    assert len(posted) == 1 and len(sink.received) == 1
    msg = posted[0]
    assert msg["blocks"] and msg["text"]
    text = msg["text"] + json.dumps(msg["blocks"])
    for needle in ("canary 1.0", "CUDA none", "Python none", "g5.xlarge (spot, us-east-1a)", "*Cost*",
                   f"voltabuild status {build_id}", f"https://api.example.test/api/builds/{build_id}"):
        assert needle in text, needle
    if final == Status.SUCCEEDED:
        assert "voltabuild/canary:1.0" in msg["text"] and "voltabuild/canary:nightly" in msg["text"]
        assert "@sha256:" + "ab" * 32 in msg["text"]
    else:
        assert "build failed: exit status 2" in text
        assert "make: *** [all] Error 2" in text
    note = record(build_id)["notification"]
    assert note["status"] == "sent" and note["channel"] == "default" and note["attempts"] == 1


def test_duplicate_final_events_send_one_message(api, aws, slack, sink, make_build):
    build_id = make_build(Status.SUCCEEDED)
    ev = final_event(aws)

    # SQS delivers the same message twice: in one batch, then again later
    invoke(api, ev.body(), ev.body())
    invoke(api, ev.body())

    assert len(sink.posted()) == 1
    assert record(build_id)["notification"]["status"] == "sent"
    assert build_id not in wiring.store().slot_holders()


def test_server_errors_rate_limit_and_timeouts_then_success_deliver_exactly_one(aws, slack, sink, make_build,
                                                                              notifier_factory, sleeps):
    # GIVEN Slack answers 500, then 429 Retry-After: 1, then hangs past the client timeout, then works
    build_id = make_build(Status.SUCCEEDED)
    ev = final_event(aws)
    sink.then(Reply(500, "internal_error"), Reply(429, "rate_limited", {"Retry-After": "1"}), Reply(hang=1.0))
    queue = RecordingQueue()
    notifier = notifier_factory(queue=queue, timeout=0.3)

    # WHEN the message is handled: three tries in-process (2 retries), all fail
    assert notifier.handle(ev) == "retrying"

    # THEN the 429's Retry-After was honoured, nothing was posted, the try is recorded and
    # the message went back on the queue with a delay
    assert 1.0 in sleeps
    assert sink.posted() == []
    note = record(build_id)["notification"]
    assert note["status"] == "retrying" and note["attempts"] == 1
    assert note["error"] == "timeout"
    (body, delay), = queue.sent
    assert body == {**ev.body(), "attempt": 2} and delay == 30
    # the slot came back at once: Slack's trouble delays nothing else
    assert build_id not in wiring.store().slot_holders()

    # WHEN the re-queued message comes back (and the original is redelivered too)
    assert notifier.handle(NotifyEvent.model_validate(body)) == "sent"
    assert notifier.handle(ev) == "duplicate"

    # THEN exactly one message was posted
    assert len(sink.posted()) == 1
    assert len(sink.received) == 4
    assert record(build_id)["notification"]["status"] == "sent"


def test_transient_errors_within_one_invocation_are_retried_with_backoff(aws, slack, sink, make_build,
                                                                        notifier_factory, sleeps):
    build_id = make_build(Status.SUCCEEDED)
    sink.then(Reply(503, "service_unavailable"), Reply(502, "bad gateway"))
    assert notifier_factory().handle(final_event(aws)) == "sent"
    assert len(sink.posted()) == 1 and len(sink.received) == 3
    # exponential backoff (0.5 s, then 1 s) plus slack_sdk's random jitter of up to 1 s
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] < 1.5 and 1.0 <= sleeps[1] < 2.0
    assert record(build_id)["notification"]["attempts"] == 1


def test_a_long_retry_after_is_honoured_through_the_queue(aws, slack, sink, make_build, notifier_factory, sleeps):
    build_id = make_build(Status.SUCCEEDED)
    sink.then(Reply(429, "rate_limited", {"Retry-After": "120"}))
    queue = RecordingQueue()
    assert notifier_factory(queue=queue).handle(final_event(aws)) == "retrying"
    assert sleeps == []  # not waited for in the Lambda
    (_, delay), = queue.sent
    assert delay == 120
    assert record(build_id)["notification"]["retry_in_seconds"] == 120


def test_when_retries_run_out_the_failure_is_recorded(aws, slack, sink, make_build, notifier_factory):
    build_id = make_build(Status.FAILED, reason="oops")
    ev = final_event(aws)
    sink.then(*[Reply(500, "internal_error")] * 20)
    queue = RecordingQueue()
    notifier = notifier_factory(queue=queue, max_attempts=3)

    outcomes = [notifier.handle(ev)]
    while queue.sent:
        body, _ = queue.sent.pop()
        outcomes.append(notifier.handle(NotifyEvent.model_validate(body)))

    assert outcomes == ["retrying", "retrying", "failed"]
    note = record(build_id)["notification"]
    assert note["status"] == "failed" and note["attempts"] == 3
    assert (note["error"], note["error_status"], note["error_code"]) == ("http_status", 500, "internal_error")
    assert sink.posted() == []
    assert build_id not in wiring.store().slot_holders()
    # a late duplicate changes nothing
    assert notifier.handle(ev) == "duplicate"
    assert len(sink.received) == 9
    # and the user sees it on the build, without any token or URL
    shown = wiring.builds().get(build_id).model_dump(mode="json")["notification"]
    assert shown["status"] == "failed" and shown["attempts"] == 3
    assert "token" not in shown and "lease_until" not in shown


def test_a_rejected_webhook_fails_at_once_without_retrying(aws, slack, sink, make_build, notifier_factory):
    build_id = make_build(Status.SUCCEEDED)
    sink.then(Reply(404, "no_service"))
    queue = RecordingQueue()
    assert notifier_factory(queue=queue).handle(final_event(aws)) == "failed"
    assert queue.sent == [] and len(sink.received) == 1
    note = record(build_id)["notification"]
    assert (note["error"], note["error_status"], note["error_code"]) == ("http_status", 404, "no_service")


def test_notify_slack_false_sends_nothing_but_still_releases_the_slot(api, aws, slack, sink, make_build):
    build_id = make_build(Status.SUCCEEDED, notify=False)
    invoke(api, final_event(aws).body())
    assert sink.received == []
    assert build_id not in wiring.store().slot_holders()
    assert record(build_id)["notification"]["status"] == "skipped"

    build_id = make_build(Status.FAILED, notify={"slack": False, "channel": "alerts"})
    invoke(api, final_event(aws).body())
    assert sink.received == []


def test_the_requested_channel_gets_the_message(api, aws, slack, sink, make_build):
    build_id = make_build(Status.FAILED, notify={"channel": "alerts"}, reason="no capacity")
    invoke(api, final_event(aws).body())
    assert len(sink.posted(ALERTS_HOOK)) == 1 and sink.posted(DEFAULT_HOOK) == []
    assert record(build_id)["notification"]["channel"] == "alerts"


def test_a_channel_without_a_webhook_parameter_is_recorded_as_failed(aws, slack, sink, make_build,
                                                                    notifier_factory):
    aws.client("ssm").delete_parameter(Name="/voltabuild/dev/slack/alerts")
    build_id = make_build(Status.SUCCEEDED, notify={"channel": "alerts"})
    assert notifier_factory().handle(final_event(aws)) == "failed"
    note = record(build_id)["notification"]
    assert note["error"] == "webhook_missing"
    assert sink.received == []


def test_a_claim_left_by_a_dead_worker_is_never_sent_again(aws, slack, sink, make_build, notifier_factory):
    """A worker claims only with the webhook in hand, so one that died holding a claim died
    posting or after posting: after its lease the outcome is recorded as unconfirmed, and
    Slack never shows the message twice (issue 16)."""
    build_id = make_build(Status.SUCCEEDED)
    ev = final_event(aws)
    now = [1_000_000.0]
    notifier = notifier_factory(clock=lambda: now[0], lease_seconds=50)
    wiring.store().record_delivery(build_id, False, {"status": "sending", "channel": "default", "attempts": 1,
                                                     "lease_until": int(now[0] + 50), "token": "dead"}, None)
    assert notifier.handle(ev) == "duplicate"  # lease still held: someone may be sending
    now[0] += 51
    assert notifier.handle(ev) == "unconfirmed"  # SQS redelivered the message after the lease
    assert notifier.handle(ev) == "duplicate"
    assert sink.received == []
    shown = record(build_id)["notification"]
    assert (shown["status"], shown["error"]) == ("unconfirmed", "worker_died")


def test_a_worker_that_dies_before_claiming_leaves_the_message_to_its_redelivery(aws, slack, sink, make_build,
                                                                                 notifier_factory):
    """The webhook read fails (SSM down): the claim is released as ``retrying``, so the redelivery sends it."""
    from botocore.exceptions import EndpointConnectionError

    build_id = make_build(Status.FAILED)
    ev = final_event(aws)
    notifier = notifier_factory()

    class Down:
        def url(self, channel):
            raise EndpointConnectionError(endpoint_url="https://ssm.us-east-1.amazonaws.com")

    real, notifier.webhooks = notifier.webhooks, Down()
    assert notifier.handle(ev) == "retrying"
    assert record(build_id)["notification"]["status"] == "retrying"
    notifier.webhooks = real
    assert notifier.handle(ev) == "sent"
    assert len(sink.posted()) == 1


def test_malformed_or_unknown_messages_are_dropped_without_error(api, aws, slack, sink):
    invoke(api, "not json", {"build_id": "nope"}, {"build_id": "b-" + "0" * 20, "status": "SUCCEEDED"})
    assert sink.received == []


def test_a_final_event_for_a_build_that_is_not_final_sends_nothing(aws, slack, sink, notifier_factory):
    from chalicelib.builds.schemas import BuildRequest

    build, _ = wiring.builds().submit(BuildRequest(framework="canary"))
    ev = NotifyEvent(build_id=build.id)
    assert notifier_factory().handle(ev) == "ignored"
    assert sink.received == []


def test_webhook_url_never_appears_in_logs_api_or_table(api, aws, slack, sink, make_build, notifier_factory, caplog):
    caplog.set_level(logging.DEBUG, logger="voltabuild")
    caplog.set_level(logging.DEBUG, logger="slack_sdk")
    caplog.set_level(logging.INFO)
    # GIVEN deliveries that fail in every way (errors are logged and recorded) and then succeed
    ok = make_build(Status.SUCCEEDED)
    sink.then(Reply(500, f"error at {slack['default']}"), Reply(hang=1.0), Reply(429, "slow down",
                                                                              {"Retry-After": "1"}))
    queue = RecordingQueue()
    notifier = notifier_factory(queue=queue, timeout=0.3)
    notifier.handle(final_event(aws))
    notifier.handle(NotifyEvent.model_validate(queue.sent[0][0]))
    bad = make_build(Status.FAILED, reason="x")
    sink.then(Reply(403, f"invalid_token for {slack['default']}"))
    notifier.handle(final_event(aws))
    assert len(sink.posted()) == 1

    secrets = [slack["default"], "s3cr3t-token", sink.url]
    # THEN no log line, no table item and no API answer holds the URL
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert "retrying" in logs and "failed" in logs  # the failures were logged ...
    table = json.dumps(aws.items())
    bodies = [api.http.get(f"/builds/{b}").body.decode() for b in (ok, bad)]
    bodies.append(api.http.get("/builds").body.decode())
    for s in secrets:
        assert s not in logs  # ... without the URL
        assert s not in table
        for body in bodies:
            assert s not in body
    assert '"channel": "default"' in table  # the record names the channel only


def test_webhook_urls_are_cached_per_warm_lambda(aws, slack):
    calls = []
    ssm = aws.client("ssm")

    class CountingSsm:
        def get_parameter(self, **kw):
            calls.append(kw)
            return ssm.get_parameter(**kw)

    now = [0.0]
    hooks = WebhookDirectory(CountingSsm(), "/voltabuild/dev/slack", ttl_seconds=300, clock=lambda: now[0])
    assert hooks.url("default") == slack["default"]
    assert hooks.url("default") == slack["default"]
    assert hooks.url("alerts") == slack["alerts"]
    assert len(calls) == 2 and all(c["WithDecryption"] for c in calls)
    now[0] += 301
    hooks.url("default")
    assert len(calls) == 3


def test_started_message_is_opt_in_and_sent_once(aws, slack, sink, notifier_factory):
    from chalicelib.builds.schemas import BuildRequest
    from chalicelib.builds.states import Phase

    build, _ = wiring.builds().submit(BuildRequest(framework="canary"))
    t = wiring.transitions()
    t.move(build.id, Status.LAUNCHING, fields={"instance": {"id": "i-1", "type": "g5.xlarge", "lifecycle": "spot",
                                                            "price": 0.4, "launched_at": build.created_at}})
    t.move(build.id, Status.RUNNING, phase=Phase.PREPARING)

    queue = RecordingQueue()
    assert enqueue_started(queue, build.id, enabled=False) is False
    assert enqueue_started(queue, build.id, enabled=True) is True
    (body, _), = queue.sent
    assert body == {"build_id": build.id, "event": "started", "attempt": 1}
    ev = NotifyEvent.model_validate(body)

    assert notifier_factory(notify_on_start=False).handle(ev) == "ignored"
    on = notifier_factory(notify_on_start=True)
    assert on.handle(ev) == "sent"
    assert on.handle(ev) == "duplicate"
    (msg,) = sink.posted()
    assert msg["text"].startswith(":rocket: canary 1.0 build started")
    assert build.id in wiring.store().slot_holders()  # a start gives no slot back

    # the final message is separate from the start's
    t.move(build.id, Status.SUCCEEDED)
    assert on.handle(final_event(aws)) == "sent"
    assert len(sink.posted()) == 2
    assert on.handle(ev) == "ignored"  # a late start message for a finished build helps nobody
