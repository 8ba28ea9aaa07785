"""`voltabuild doctor` against the real API over HTTP and the local stack's moto (its
alarms, queues and Slack parameters)."""

from __future__ import annotations

import json
import socket

import pytest

NO_AWS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
          "AWS_PROFILE": None, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
          "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONTAINER_CREDENTIALS_FULL_URI": None,
          "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": None}


@pytest.fixture
def stack_aws(live_api):
    """The environment that points boto3 at the local stack's moto, and a session on it."""
    env = {k: v for k, v in live_api.env.items() if k.startswith("AWS_")}
    return env, live_api.session()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_a_working_setup_passes_every_api_check(cli):
    r = cli("doctor", "--no-aws")
    assert r.exit_code == 0, r.stdout
    for text in ("[  ok] API URL", "[  ok] API health", "[  ok] API key: accepted", "[  ok] catalog:", "canary"):
        assert text in r.stdout, text
    assert "FAIL" not in r.stdout


def test_a_wrong_key_and_an_unreachable_api_say_what_to_fix(cli):
    wrong = cli("doctor", "--no-aws", key="not-the-key")
    assert wrong.exit_code == 1
    assert "[FAIL] API key: refused" in wrong.stdout and "fix: the key from" in wrong.stdout
    gone = cli("doctor", "--no-aws", url=closed_port_url())
    assert gone.exit_code == 1
    assert "[FAIL] API health: cannot reach the voltabuild API" in gone.stdout
    assert "make up" in gone.stdout
    assert "catalog" not in gone.stdout  # nothing after the API did not answer


def test_without_aws_credentials_the_aws_checks_are_skipped_and_say_how_to_enable_them(cli):
    r = cli("doctor", env=NO_AWS)
    assert r.exit_code == 0, r.stdout
    assert "[skip] AWS: no AWS credentials" in r.stdout and "AWS_PROFILE" in r.stdout


def test_with_credentials_it_reads_the_stacks_queues_slack_parameters_and_alarms(cli, stack_aws):
    env, session = stack_aws
    r = cli("doctor", "--json", env=env)
    assert r.exit_code == 0, r.stdout
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["queue voltabuild-dev-launch-dlq"]["status"] == "ok"
    assert checks["Slack default"] == {"name": "Slack default", "status": "ok",
                                       "detail": "the local stack's webhook sink", "fix": ""}
    assert checks["alarms"]["status"] == "warn"  # the local stack has none
    assert "127.0.0.1" not in r.stdout.split('"Slack default"')[1]  # the webhook URL is never shown


def test_an_alarm_firing_a_dead_letter_and_an_unset_webhook_are_each_named_with_their_fix(cli, stack_aws):
    env, session = stack_aws
    cw, sqs, ssm = session.client("cloudwatch"), session.client("sqs"), session.client("ssm")
    name = "/voltabuild/dev/slack/default"
    webhook = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    dlq = sqs.get_queue_url(QueueName="voltabuild-dev-notify-dlq")["QueueUrl"]
    cw.put_metric_alarm(AlarmName="voltabuild-dev-ReaperSilentAlarm", AlarmDescription="the reaper has not run",
                        Namespace="voltabuild", MetricName="ReaperRuns", Statistic="Sum", Period=300,
                        EvaluationPeriods=3, Threshold=1, ComparisonOperator="LessThanThreshold")
    cw.set_alarm_state(AlarmName="voltabuild-dev-ReaperSilentAlarm", StateValue="ALARM", StateReason="test")
    sqs.send_message(QueueUrl=dlq, MessageBody='{"build_id": "b-00000000000000000000", "status": "FAILED"}')
    ssm.put_parameter(Name=name, Value="unset", Type="SecureString", Overwrite=True)
    try:
        r = cli("doctor", env=env)
    finally:
        cw.delete_alarms(AlarmNames=["voltabuild-dev-ReaperSilentAlarm"])
        sqs.purge_queue(QueueUrl=dlq)
        ssm.put_parameter(Name=name, Value=webhook, Type="SecureString", Overwrite=True)
    assert r.exit_code == 1
    out = r.stdout
    assert "[FAIL] alarms: 1 alarms, 1 in ALARM" in out
    assert "[FAIL] alarm ReaperSilentAlarm: the reaper has not run" in out and "Operating voltabuild" in out
    assert "[FAIL] queue voltabuild-dev-notify-dlq: 1 waiting" in out and "start-message-move-task" in out
    assert "[FAIL] Slack default: no webhook URL set yet" in out and "aws ssm put-parameter" in out


def test_doctor_help_has_examples(cli):
    r = cli("doctor", "--help")
    assert r.exit_code == 0 and "voltabuild doctor --stage prod" in r.stdout and "--json" in r.stdout
