"""One moto AWS, one Slack sink and one app client for the whole crash suite (setting
them up per case would cost seconds each); every case starts from an empty table, empty
queues and the clock set to now."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lifecycle"))  # lifecycle_helpers
sys.path.insert(0, str(HERE))  # harness


def _sink_class():
    spec = importlib.util.spec_from_file_location("crash_notify_sink", HERE.parent / "notify" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.Sink


class Env:
    def __init__(self, aws, api, sink, clock, hook) -> None:
        self.aws, self.api, self.sink, self.clock, self.hook = aws, api, sink, clock, hook

    def fresh(self) -> None:
        """An empty table and queues, the clock at now (what earlier cases left is gone)."""
        ddb = self.aws.client("dynamodb")
        table = self.aws.resources["BuildsTable"]
        for item in ddb.scan(TableName=table, ProjectionExpression="id")["Items"]:
            ddb.delete_item(TableName=table, Key={"id": item["id"]})
        self.aws.messages("LaunchQueue")
        self.aws.messages("NotifyQueue")
        self.clock.at = datetime.now(UTC)
        self.hook.log.clear()
        self.hook.crash = None


@pytest.fixture(scope="module")
def crash_env():
    from chalice.test import Client
    from harness import CallHook
    from lifecycle_helpers import FakeClock

    import app as app_module
    from chalicelib import clock as clock_module
    from chalicelib import wiring
    from tests.conftest import moto_aws

    root = HERE.parent.parent
    with moto_aws() as aws, _sink_class()() as sink, pytest.MonkeyPatch.context() as mp:
        ec2 = aws.client("ec2")
        ami = ec2.register_image(Name="voltabuild-crash-ami", RootDeviceName="/dev/sda1")["ImageId"]
        ssm = aws.client("ssm")
        ssm.put_parameter(Name="/voltabuild/dev/slack/default", Type="SecureString", Overwrite=True,
                          Value=f"{sink.url}/hooks/T000/B000/crash-suite")
        for k, v in {"AMI_ID": ami, "IMAGE_REGISTRY": "123456789012.dkr.ecr.us-east-1.amazonaws.com",
                     "PUBLIC_API_URL": "https://api.example.test/api", "SLACK_CHANNELS": "default",
                     "MAX_ACTIVE_BUILDS": "1000"}.items():
            mp.setenv(k, v)
        mp.delenv("LOCAL_API_KEY", raising=False)
        wiring.reset()
        clock = FakeClock(clock_module.now())
        mp.setattr(clock_module, "now", clock)
        with Client(app_module.app, stage_name="dev", project_dir=str(root)) as api:
            yield Env(aws, api, sink, clock, CallHook())
