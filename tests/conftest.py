"""Shared fixtures: moto AWS with fake credentials, the table and queues made from infra/."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Never let a test reach real AWS, whatever the developer's shell has set.
for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(var, None)
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    MOTO_EC2_LOAD_DEFAULT_AMIS="false",
)


def _share_botocore_models() -> None:
    """Every boto3 session parses botocore's JSON service models again (EC2's alone is
    megabytes), and the tests make a session per test (a fresh moto AWS, the app's reset
    clients, moto's own serializers): a third of the suite's time went to json.loads of the
    same files. The files never change while the tests run, and botocore already shares one
    parsed copy between the clients of a session, so one process-wide copy is safe."""
    from botocore import loaders

    parse = loaders.JSONFileLoader.load_file
    parsed: dict[str, object] = {}

    def load_file(self, file_path):
        if file_path not in parsed:
            parsed[file_path] = parse(self, file_path)
        return parsed[file_path]

    loaders.JSONFileLoader.load_file = load_file


_share_botocore_models()


def pytest_collection_modifyitems(items):
    """`make test` runs the suite with pytest-xdist, which schedules tests by node id: two
    tests with one id would run as one, and the other would be lost without a word."""
    seen: dict[str, int] = {}
    for item in items:
        seen[item.nodeid] = seen.get(item.nodeid, 0) + 1
    shared = sorted(nodeid for nodeid, n in seen.items() if n > 1)
    if shared:
        raise pytest.UsageError("tests that share a node id (give each its own name): " + ", ".join(shared))

@contextlib.contextmanager
def moto_aws():
    """moto's in-process AWS with voltabuild's resources created from infra/resources.yaml;
    the app's environment points at them and every lazy client is reset."""
    from infra.local import emulated_aws

    with emulated_aws("us-east-1") as (session, resources):
        yield Aws(session, resources)


@pytest.fixture
def aws():
    """A fresh moto AWS for one test (see moto_aws)."""
    with moto_aws() as a:
        yield a


@pytest.fixture(scope="module")
def aws_module():
    """One moto AWS shared by a module's tests, for data that is costly to build."""
    with moto_aws() as a:
        yield a


@contextlib.contextmanager
def serial_moto_server():
    """moto served over HTTP one request at a time, as the local stack serves it
    (voltabuild_local.moto_server): writes to one item are applied whole, as DynamoDB
    applies them. In-process moto is not atomic across threads (a conditional write and
    a transaction can both win), so every "exactly one winner" test races against this.
    Yields the endpoint session, started in < 1 s. moto keeps its state in the process, not
    the server: every server in this pytest process shares it, so each start resets it
    (the queues would otherwise still hold an earlier module's messages)."""
    import threading

    import requests

    from voltabuild_local import moto_server
    from voltabuild_local.stack import EndpointSession

    server = moto_server.server("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    requests.post(f"{endpoint}/moto-api/reset", timeout=30).raise_for_status()
    try:
        yield EndpointSession(endpoint)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def serial_moto():
    with serial_moto_server() as session:
        yield session


@pytest.fixture
def serial_aws():
    """Like ``aws``, but on a serialized moto server: the app's clients reach it through
    AWS_ENDPOINT_URL. A module whose races need atomic writes overrides ``aws`` with it,
    and every fixture built on ``aws`` follows."""
    from chalicelib import wiring
    from infra.local import create_resources, stage_environment

    with serial_moto_server() as session:
        resources = create_resources(session)
        env = {**stage_environment(resources), "AWS_ENDPOINT_URL": session.endpoint}
        with wiring.environment(env):
            yield Aws(session, resources)


class Aws:
    def __init__(self, session, resources: dict[str, str]) -> None:
        self.session = session
        self.resources = resources

    def client(self, name: str):
        return self.session.client(name)

    def messages(self, logical: str = "LaunchQueue") -> list[dict]:
        import json

        sqs = self.client("sqs")
        out = []
        while True:
            resp = sqs.receive_message(QueueUrl=self.resources[logical], MaxNumberOfMessages=10)
            msgs = resp.get("Messages", [])
            if not msgs:
                return out
            for m in msgs:
                out.append(json.loads(m["Body"]))
                sqs.delete_message(QueueUrl=self.resources[logical], ReceiptHandle=m["ReceiptHandle"])

    def items(self) -> list[dict]:
        from chalicelib.builds.store import from_item

        ddb = self.client("dynamodb")
        return [from_item(i) for i in ddb.scan(TableName=self.resources["BuildsTable"])["Items"]]


def _client():
    from chalice.test import Client

    import app as app_module

    return Client(app_module.app, stage_name="dev", project_dir=str(ROOT))


@pytest.fixture
def api(aws):
    """chalice.test.Client on the real app, stage dev, against moto."""
    with _client() as client:
        yield client


@pytest.fixture(scope="module")
def api_module(aws_module):
    """chalice.test.Client against the module's shared moto AWS."""
    with _client() as client:
        yield client


@pytest.fixture(scope="session")
def live_api(tmp_path_factory):
    """The real API over HTTP: moto server + `chalice local` (no worker, registry or sink),
    on free loopback ports. `.url`, `.api_key`, `.env` (what a client needs), `.stack`."""
    from voltabuild_local.stack import Stack

    stack = Stack(state_dir=tmp_path_factory.mktemp("live-api"), services=("moto", "api"), quiet=True)
    stack.up()
    try:
        yield Live(stack)
    finally:
        stack.down()


class Live:
    def __init__(self, stack) -> None:
        self.stack = stack
        self.env = dict(stack.env)
        self.url = self.env["VOLTABUILD_API_URL"]
        self.api_key = self.env["VOLTABUILD_API_KEY"]

    def session(self):
        """A boto3 session on the stack's emulated AWS."""
        from voltabuild_local.stack import EndpointSession

        return EndpointSession(self.env["AWS_ENDPOINT_URL"])
