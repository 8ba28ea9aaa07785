"""The launcher for a source or extend build (issue 20), against moto: the build's own
repository is created under voltabuild/ with scan on push and the catalog's lifecycle
rules; an uploaded context travels to the instance as a presigned GET URL (the instance
role has no S3 permission); a context gone by launch time fails the build with why."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile

import pytest
import yaml

from chalicelib import wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.custom.custom_builds import ECR_LIFECYCLE_POLICY
from chalicelib.launching.catalog_contexts import lock_path
from chalicelib.launching.hostscript import script_of
from infra.local import TEMPLATE
from voltabuild_local.stack import upload_catalog_contexts

DIGEST = "ab" * 32


@pytest.fixture
def launch_env(aws, monkeypatch):
    ec2 = aws.client("ec2")
    ami = ec2.register_image(Name="voltabuild-test-dlami", RootDeviceName="/dev/sda1",
                             Architecture="x86_64")["ImageId"]
    monkeypatch.setenv("AMI_ID", ami)
    monkeypatch.setenv("PUBLIC_API_URL", "https://api.example.test/api")
    wiring.reset()
    aws.client("s3").put_object(Bucket=aws.resources["ContextsBucket"], Key="sha256/" + DIGEST, Body=b"tarball")
    return ec2


def submit_and_launch(aws, body: dict):
    build, _ = wiring.builds().submit(BuildRequest.model_validate_json(json.dumps(body)))
    (msg,) = aws.messages("LaunchQueue")
    return build, wiring.launcher().handle(msg)


def user_data_of(ec2, iid: str) -> str:
    attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
    return script_of(base64.b64decode(attr["UserData"]["Value"]))


def test_a_context_build_launches_with_a_presigned_get_and_its_own_repository(aws, launch_env):
    build, outcome = submit_and_launch(aws, {"source": {"context": "sha256:" + DIGEST}, "repository": "team/app",
                                             "instance_types": ["g5.xlarge"]})
    assert outcome.action == "launched", outcome
    script = user_data_of(launch_env, outcome.instance_id)
    assert "readonly SOURCE_KIND=context\n" in script
    url = next(line for line in script.splitlines() if line.startswith("readonly CONTEXT_URL="))
    assert f"/sha256/{DIGEST}?" in url and "Signature=" in url
    assert "def checked_members" in script  # the unpacker travels along
    ecr = aws.client("ecr")
    repo = ecr.describe_repositories(repositoryNames=["voltabuild/team/app"])["repositories"][0]
    assert repo["imageScanningConfiguration"]["scanOnPush"] is True
    policy = ecr.get_lifecycle_policy(repositoryName="voltabuild/team/app")["lifecyclePolicyText"]
    assert json.loads(policy) == json.loads(ECR_LIFECYCLE_POLICY)


def test_the_lifecycle_rules_are_the_catalog_repositories_rules():
    text = yaml.safe_load(TEMPLATE.read_text())["Resources"]["PytorchRepository"]["Properties"]["LifecyclePolicy"]
    assert json.loads(text["LifecyclePolicyText"]) == json.loads(ECR_LIFECYCLE_POLICY)


def test_a_context_gone_by_launch_time_fails_the_build_with_the_reason(aws, launch_env):
    build, _ = wiring.builds().submit(BuildRequest.model_validate_json(json.dumps(
        {"source": {"context": "sha256:" + DIGEST}, "instance_types": ["g5.xlarge"]})))
    aws.client("s3").delete_object(Bucket=aws.resources["ContextsBucket"], Key="sha256/" + DIGEST)
    (msg,) = aws.messages("LaunchQueue")
    outcome = wiring.launcher().handle(msg)
    assert outcome.action == "failed"
    rec = wiring.store().get_record(build.id)
    assert rec.status == "FAILED" and "no context sha256:" + DIGEST in rec.reason
    assert not [i for r in launch_env.describe_instances()["Reservations"] for i in r["Instances"]]


def test_an_extension_launches_with_its_generated_dockerfile_and_the_frameworks_smoke_test(aws, launch_env):
    build, outcome = submit_and_launch(aws, {"framework": "canary", "extend": {"env": {"GREETING": "hi"}},
                                             "repository": "canary-plus", "instance_types": ["g5.xlarge"]})
    assert outcome.action == "launched", outcome
    script = user_data_of(launch_env, outcome.instance_id)
    assert "readonly SOURCE_KIND=extend\n" in script
    assert f"readonly BASE_IMAGE={wiring.settings().registry}/voltabuild/canary:1.0\n" in script
    assert "readonly -a SMOKE_TEST=(/usr/local/bin/entrypoint.sh --check)" in script


def test_a_catalog_build_launches_with_a_presigned_get_of_its_context_and_lock(aws, launch_env):
    # GIVEN the catalog's contexts uploaded as the local stack's `up` (and a deployment) does
    s3, bucket = aws.client("s3"), aws.resources["ContextsBucket"]
    manifest = upload_catalog_contexts(s3, bucket)
    # WHEN a PyTorch build (its default, locked combination) launches
    build, outcome = submit_and_launch(aws, {"framework": "pytorch", "instance_types": ["g5.xlarge"]})
    assert outcome.action == "launched", outcome
    script = user_data_of(launch_env, outcome.instance_id)
    # THEN its user-data names the context by digest and a presigned GET of it, and carries none of it
    digest = manifest[f"pytorch/{build.version}-cu{build.cuda.replace('.', '')}-py{build.python.replace('.', '')}"]
    assert f"readonly CONTEXT_SHA256={digest}\n" in script and "readonly CONTEXT_B64=''\n" in script
    url = next(line for line in script.splitlines() if line.startswith("readonly CONTEXT_URL="))
    assert f"/catalog/sha256/{digest[7:]}?" in url and "Signature=" in url
    # AND the object it names is the context with the combination's lock
    body = s3.get_object(Bucket=bucket, Key=f"catalog/sha256/{digest[7:]}")["Body"].read()
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        lock = tar.extractfile("lock-hashed.txt").read()
    resolved = wiring.catalog().spec("pytorch").resolve(build.version, build.cuda, build.python)
    assert lock == lock_path(wiring.catalog(), resolved).read_bytes()
