"""Structured logs (chalicelib/observability.py): one JSON object per line, with the
function, the Lambda request id and the build being handled."""

from __future__ import annotations

import json
import logging

from chalicelib import observability


def log_lines(capsys) -> list[dict]:
    """The JSON log lines written to stdout (EMF lines are metrics, not log lines)."""
    out = []
    for line in capsys.readouterr().out.splitlines():
        obj = json.loads(line)  # every line on stdout is JSON
        if "_aws" not in obj:
            out.append(obj)
    return out


class Context:
    aws_request_id = "req-1"


def test_every_line_is_json_with_the_function_request_and_build_it_was_logged_for(capsys):
    observability.setup()
    observability.setup()  # idempotent: a warm start keeps one handler
    assert sum(isinstance(h, observability._Stdout) for h in logging.getLogger().handlers) == 1
    log = logging.getLogger("voltabuild.test")
    observability.bind("launcher", Context())
    log.info("before the build is known")
    observability.bind_build("b-123")
    log.warning("build %s: %s", "b-123", "launched")
    observability.bind_build(None)
    log.info("after")
    observability.bind("reaper")  # a new invocation starts a fresh context
    log.info("tick")
    lines = log_lines(capsys)
    assert [(x["function"], x.get("request_id"), x.get("build_id"), x["message"]) for x in lines] == [
        ("launcher", "req-1", None, "before the build is known"),
        ("launcher", "req-1", "b-123", "build b-123: launched"),
        ("launcher", "req-1", None, "after"),
        ("reaper", None, None, "tick"),
    ]
    assert [x["level"] for x in lines] == ["INFO", "WARNING", "INFO", "INFO"]
    assert all(x["logger"] == "voltabuild.test" and x["timestamp"].endswith("+00:00") for x in lines)


def test_library_chatter_below_warning_stays_out(capsys):
    observability.setup()
    logging.getLogger("botocore.credentials").info("Found credentials in environment variables.")
    logging.getLogger("botocore.retryhandler").warning("retry needed")
    assert [x["message"] for x in log_lines(capsys)] == ["retry needed"]


def test_a_handlers_log_lines_carry_its_name_and_the_build_it_handled(api, capsys):
    # GIVEN a notify message for a build that does not exist
    event = api.events.generate_sqs_event(queue_name="voltabuild-dev-notify",
                                          message_bodies=[json.dumps({"build_id": "b-0123456789abcdef0123",
                                                                      "status": "SUCCEEDED"})])
    capsys.readouterr()
    # WHEN the notifier handles it
    api.lambda_.invoke("notify_consumer", event)
    # THEN its warning is a JSON line naming the function, the invocation and the build
    [line] = [x for x in log_lines(capsys) if "does not exist" in x["message"]]
    assert line["function"] == "notify" and line["build_id"] == "b-0123456789abcdef0123"
    assert line["request_id"] and line["level"] == "WARNING"


def test_the_chalice_apps_own_logger_writes_json_too(api, capsys):
    bad = api.events.generate_cw_event(source="aws.ec2", detail_type="EC2 Instance State-change Notification",
                                       detail={"state": "melted"}, resources=[])
    capsys.readouterr()
    assert api.lambda_.invoke("on_instance_state", bad).payload == {"outcome": "malformed"}
    [line] = [x for x in log_lines(capsys) if x["message"].startswith("dropped")]
    assert line["logger"] == "voltabuild" and line["function"] == "instance_state"
