"""The whole local stack — moto server, chalice local, the worker and its executor, the
registry and the Slack sink — on free loopback ports, for end-to-end tests."""

from __future__ import annotations

import json
import time

import pytest
import requests


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    from voltabuild_local.stack import Stack
    from voltabuild_local.worker import detect_builder

    if detect_builder() is None:
        pytest.skip("end-to-end builds need a Docker engine or buildah as root (apt-get install buildah)")
    s = Stack(state_dir=tmp_path_factory.mktemp("stack"), reaper_seconds=3, quiet=True)
    s.up()
    try:
        yield Client(s)
    finally:
        s.down()


class Client:
    """curl, as a test would use it: real HTTP to the local API."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.env = dict(stack.env)
        self.url = self.env["VOLTABUILD_API_URL"]
        self.registry = self.env["VOLTABUILD_REGISTRY"]
        self.headers = {"x-api-key": self.env["VOLTABUILD_API_KEY"]}

    def stack_session(self):
        from voltabuild_local.stack import EndpointSession

        return EndpointSession(self.env["AWS_ENDPOINT_URL"])

    def instances_left_running(self, wait: float = 0.0) -> list[str]:
        """Instances tagged ours that are not terminated, after waiting up to ``wait`` s."""
        ec2 = self.stack_session().client("ec2")
        deadline = time.monotonic() + wait
        while True:
            resp = ec2.describe_instances(Filters=[
                {"Name": "tag-key", "Values": ["voltabuild:build-id"]},
                {"Name": "instance-state-name", "Values": ["pending", "running", "shutting-down"]}])
            left = [i["InstanceId"] for r in resp["Reservations"] for i in r["Instances"]]
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.5)

    def post(self, body, **kw) -> requests.Response:
        return requests.post(f"{self.url}/builds", json=body, headers={**self.headers, **kw.pop("headers", {})},
                             timeout=60, **kw)

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.url}{path}", headers=self.headers, timeout=60)

    def delete(self, path: str) -> requests.Response:
        return requests.delete(f"{self.url}{path}", headers=self.headers, timeout=60)

    def wait_for(self, build_id: str, predicate, timeout: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout
        build = {}
        while time.monotonic() < deadline:
            build = self.get(f"/builds/{build_id}").json()
            if predicate(build):
                return build
            time.sleep(0.5)
        raise AssertionError(f"build {build_id} never got there; last seen {json.dumps(build)[:1500]}")

    def wait_final(self, build_id: str, timeout: float = 180.0) -> dict:
        return self.wait_for(build_id, lambda b: b["status"] in {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"},
                             timeout)

    def slack_messages(self, build_id: str, wait: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + wait
        found: list[dict] = []
        while time.monotonic() < deadline:
            if self.stack.slack_file.exists():
                found = [json.loads(x) for x in self.stack.slack_file.read_text().splitlines() if build_id in x]
                if found:
                    return found
            time.sleep(0.3)
        return found
