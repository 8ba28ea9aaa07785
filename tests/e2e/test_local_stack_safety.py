"""What a web page open in the developer's browser (or anything else on the machine) can
make the local stack do: nothing. moto answers no cross-origin preflight, and the executor
runs the user-data only of instances the launcher recorded on their build."""

from __future__ import annotations

import base64

import pytest
import requests

pytestmark = pytest.mark.e2e


def test_the_emulated_aws_answers_no_cross_origin_preflight(stack):
    # GIVEN a page on another origin  WHEN its browser asks whether it may call moto
    resp = requests.options(stack.env["AWS_ENDPOINT_URL"] + "/", timeout=10, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-amz-target"})
    # THEN nothing allows it: the browser never sends the real request
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_an_instance_the_launcher_did_not_record_is_terminated_unplayed(stack, tmp_path):
    # GIVEN a real build (so its id exists) and an instance someone else started in moto,
    # tagged with that build's id, whose user-data would leave a mark on this machine
    build = stack.post({"framework": "canary", "tags": ["safety"]}).json()
    mark = tmp_path / "user-data-ran"
    script = f"#!/usr/bin/env bash\ntouch {mark}\n"
    ec2 = stack.stack_session().client("ec2")
    image = ec2.describe_images(Owners=["self"])["Images"][0]["ImageId"]
    iid = ec2.run_instances(
        ImageId=image, MinCount=1, MaxCount=1, InstanceType="g5.xlarge",
        UserData=base64.b64encode(script.encode()).decode(),
        TagSpecifications=[{"ResourceType": "instance", "Tags": [
            {"Key": "voltabuild:build-id", "Value": build["id"]}, {"Key": "voltabuild:attempt", "Value": "1"}]}],
    )["Instances"][0]["InstanceId"]
    # WHEN the executor finds it  THEN it ends terminated, its user-data never ran
    assert iid not in stack.instances_left_running(wait=90)
    state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "terminated"
    assert not mark.exists()
    # AND the real build went on to succeed on its own instance
    final = stack.wait_final(build["id"])
    assert final["status"] == "SUCCEEDED" and final["instance"]["id"] != iid
