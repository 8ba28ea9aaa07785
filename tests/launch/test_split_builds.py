"""Split builds on the service side (issue 23): the request field, both stages' launches in
moto, the BUILT report that keeps the build RUNNING and launches the GPU test stage, per-stage
tokens and attempts, and a spot interruption that relaunches only the stage it hit.

GIVEN a split build, WHEN the launcher, the instance's reports and EC2's events drive it, THEN
the build stage runs on a CPU type with the CPU AMI and the test stage on a GPU type with the
GPU AMI, each with its own token, and the record keeps both instances.
"""

from __future__ import annotations

import base64
import json
import re

import pytest

from chalicelib import wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.errors import BadRequest, Conflict, Forbidden
from chalicelib.launching.hostscript import script_of
from infra.local import prepare_ec2

TYPES = ["g5.xlarge", "g4dn.xlarge"]
CPU_TYPES = ["m7i.xlarge", "c7i.xlarge", "m6i.xlarge"]
DIGEST = "sha256:" + "b" * 64


@pytest.fixture
def env(aws, monkeypatch):
    prepared = prepare_ec2(aws.session, "voltabuild-test-builder")
    ec2 = aws.client("ec2")
    # the CPU stage's AMI apart from the GPU one, as a deployment has them (no DLAMI for a CPU box)
    cpu_ami = ec2.register_image(Name="stock-ubuntu", RootDeviceName="/dev/sda1", Architecture="x86_64")["ImageId"]
    settings = {**prepared, "PUBLIC_API_URL": "https://api.example.test/api", "AMI_OVERRIDES": f"cpu={cpu_ami}"}
    for k, v in settings.items():
        monkeypatch.setenv(k, v)
    wiring.reset()
    return {"ami": prepared["AMI_ID"], "cpu_ami": cpu_ami, "ec2": ec2}


def submit(aws, **req) -> tuple[str, dict]:
    build, _ = wiring.builds().submit(BuildRequest(framework="pytorch", instance_types=TYPES, **req))
    (msg,) = aws.messages("LaunchQueue")
    return build.id, msg


def live(ec2) -> list[dict]:
    return [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] in ("pending", "running")]


def script(ec2, iid: str) -> str:
    attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
    return script_of(base64.b64decode(attr["UserData"]["Value"]))


def token(text: str) -> str:
    return re.search(r"^readonly TOKEN=(\S+)$", text, re.M).group(1)


def value(text: str, name: str) -> str:
    return re.search(rf"^readonly {name}=(\S*)$", text, re.M).group(1)


def report(build_id: str, tok: str, body: dict) -> dict:
    return wiring.reports().receive(build_id, f"Bearer {tok}", json.dumps(body).encode())


def launch(msg: dict):
    outcome = wiring.launcher().handle(json.dumps(msg))
    assert outcome.action == "launched", outcome
    return outcome.instance_id


def to_test_stage(aws, env, **req) -> tuple[str, str, str]:
    """A split build through its build stage: (build id, build instance, its token)."""
    build_id, msg = submit(aws, split=True, **req)
    iid = launch(msg)
    tok = token(script(env["ec2"], iid))
    report(build_id, tok, {"type": "phase", "phase": "BUILDING", "stage": "build"})
    report(build_id, tok, {"type": "result", "status": "BUILT", "digest": DIGEST, "image_size_bytes": 1234})
    return build_id, iid, tok


# ---- the request ---------------------------------------------------------------------------
def test_split_comes_from_the_request_or_the_buildspec(aws, env):
    b = wiring.builds()
    # auto (pytorch's default): a source build splits on the many-core types, a wheels build does not
    source = b.plan(BuildRequest(framework="pytorch", build_args={"BUILD_MODE": "source",
                                                                 "TORCH_CUDA_ARCH_LIST": "7.0 7.5 8.0 8.6 8.9 9.0"}))
    assert source.split and source.stage == "build"
    assert source.stages["build"].instance_types == ["c7i.8xlarge", "c6i.8xlarge", "m7i.8xlarge"]
    assert source.stages["test"].instance_types == source.instance_types
    assert not b.plan(BuildRequest(framework="pytorch")).split
    # asked for: a wheels build splits on the small types; false keeps a source build whole
    assert b.plan(BuildRequest(framework="pytorch", split=True)).stages["build"].instance_types == CPU_TYPES
    assert not b.plan(BuildRequest(framework="pytorch", split=False, build_args={
        "BUILD_MODE": "source", "TORCH_CUDA_ARCH_LIST": "7.0 7.5 8.0 8.6 8.9 9.0"})).split
    assert not b.plan(BuildRequest(framework="canary")).split  # the canary's buildspec says false


def test_bad_split_values_are_a_400(api):
    for bad, words in [("yes", "split"), (1, "split")]:
        resp = api.http.post("/builds", headers={"Content-Type": "application/json", "x-api-key": "k"},
                             body=json.dumps({"framework": "canary", "split": bad}))
        assert resp.status_code == 400 and words in resp.json_body["Message"], resp.json_body
    resp = api.http.post("/builds", headers={"Content-Type": "application/json", "x-api-key": "k"},
                         body=json.dumps({"framework": "canary", "tags": ["candidate-1"]}))
    assert resp.status_code == 400 and "reserved" in resp.json_body["Message"]
    with pytest.raises(BadRequest, match="split"):
        wiring.builds().plan(BuildRequest(source={"git": "https://example.test/x.git"}, split=True))


# ---- the two stages in moto -------------------------------------------------------------------
def test_the_build_stage_launches_a_cpu_type_with_the_cpu_ami(aws, env):
    build_id, msg = submit(aws, split=True)
    iid = launch(msg)
    (inst,) = live(env["ec2"])
    assert inst["InstanceType"] == CPU_TYPES[0] and inst["ImageId"] == env["cpu_ami"]
    assert inst["InstanceLifecycle"] == "spot" and inst["MetadataOptions"]["HttpTokens"] == "required"
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["voltabuild:build-stage"] == "build" and tags["voltabuild:attempt"] == "1"
    text = script(env["ec2"], iid)
    assert "readonly STAGE_ROLE=build" in text and "readonly DRIVER_BRANCH=''" in text
    assert value(text, "CANDIDATE_TAG") == f"candidate-{build_id}-1"
    rec = wiring.store().get_record(build_id)
    assert rec.stages["build"].instance.id == iid and rec.stages["build"].instance.type == CPU_TYPES[0]
    assert rec.instance_id == iid and rec.stage == "build"


def test_built_keeps_the_build_running_and_launches_the_gpu_test_stage(aws, env):
    build_id, build_iid, build_tok = to_test_stage(aws, env)
    rec = wiring.store().get_record(build_id)
    # THEN the build is still RUNNING, now in its test stage, with the candidate and its size
    assert rec.status == "RUNNING" and rec.stage == "test" and rec.phase is None
    assert rec.candidate_digest == DIGEST and rec.image.compressed_size_bytes == 1234
    assert rec.instance_id is None and rec.token_hash is None and rec.attempt == 2
    assert rec.stages["build"].instance.id == build_iid and rec.stages["test"].attempts == 1
    last = rec.events[-1]
    assert (last.stage, last.instance_id) == ("test", build_iid)
    building = next(e for e in rec.events if e.phase == "BUILDING")
    assert building.stage == "build"
    # AND the build instance's token no longer opens the build
    with pytest.raises(Forbidden):
        report(build_id, build_tok, {"type": "heartbeat"})
    # AND the test stage's launch message went out
    (msg,) = aws.messages("LaunchQueue")
    assert msg == {"build_id": build_id, "attempt": 2, "stage": "test"}
    test_iid = launch(msg)
    inst = next(i for i in live(env["ec2"]) if i["InstanceId"] == test_iid)
    assert inst["InstanceType"] == TYPES[0] and inst["ImageId"] == env["ami"]
    text = script(env["ec2"], test_iid)
    assert "readonly STAGE_ROLE=test" in text and value(text, "CANDIDATE_DIGEST") == DIGEST
    assert value(text, "CANDIDATE_TAG") == f"candidate-{build_id}-1", "the candidate the build stage pushed"
    assert "readonly DRIVER_BRANCH=580" in text
    rec = wiring.store().get_record(build_id)
    assert rec.status == "RUNNING" and rec.instance_id == test_iid and rec.stages["test"].instance.id == test_iid
    # a duplicate of the message launches nothing more
    assert wiring.launcher().handle(json.dumps(msg)).action == "ignored"
    assert len([i for i in live(env["ec2"]) if i["InstanceType"] in TYPES]) == 1
    # WHEN the test stage reports success with its own token THEN the build SUCCEEDED on the tested digest
    test_tok = token(text)
    report(build_id, test_tok, {"type": "phase", "phase": "PREPARING", "stage": "test"})
    out = report(build_id, test_tok, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST})
    assert out["status"] == "SUCCEEDED"
    assert wiring.store().get_record(build_id).image.digest == DIGEST


def test_built_from_an_unsplit_build_or_twice_is_refused(aws, env):
    build_id, msg = submit(aws)
    tok = token(script(env["ec2"], launch(msg)))
    with pytest.raises(Conflict):
        report(build_id, tok, {"type": "result", "status": "BUILT", "digest": DIGEST})
    assert wiring.store().get_record(build_id).status == "LAUNCHING"
    with pytest.raises(BadRequest, match="digest"):
        report(build_id, tok, {"type": "result", "status": "BUILT"})


def test_a_spot_interruption_of_the_test_stage_relaunches_the_test_stage_only(aws, env):
    build_id, _, _ = to_test_stage(aws, env)
    (msg,) = aws.messages("LaunchQueue")
    test_iid = launch(msg)
    lifecycle = wiring.lifecycle()
    rec = wiring.store().get_record(build_id)
    lifecycle.relaunch(rec, f"spot interruption warning for {test_iid}", reclaimed=True)
    rec = wiring.store().get_record(build_id)
    assert rec.status == "QUEUED" and rec.stage == "test" and rec.attempt == 3
    assert rec.stages["test"].attempts == 2 and rec.stages["build"].attempts == 1
    (msg,) = aws.messages("LaunchQueue")
    again = launch(msg)
    inst = next(i for i in live(env["ec2"]) if i["InstanceId"] == again)
    assert inst["InstanceType"] in TYPES, "the GPU test stage again, not the build stage"
    assert "readonly STAGE_ROLE=test" in script(env["ec2"], again)


def test_each_stage_counts_its_own_attempts(aws, env):
    build_id, msg = submit(aws, split=True)
    for _ in range(1, 3):  # the build stage interrupted twice: attempts 1 and 2 of 3
        launch(msg)
        rec = wiring.store().get_record(build_id)
        wiring.lifecycle().relaunch(rec, "spot interruption", reclaimed=True)
        (msg,) = aws.messages("LaunchQueue")
    tok = token(script(env["ec2"], launch(msg)))
    report(build_id, tok, {"type": "result", "status": "BUILT", "digest": DIGEST})
    rec = wiring.store().get_record(build_id)
    assert rec.stages["build"].attempts == 3 and rec.attempt == 4
    # the test stage still has all its attempts: an interruption there relaunches it
    (msg,) = aws.messages("LaunchQueue")
    launch(msg)
    rec = wiring.lifecycle().relaunch(wiring.store().get_record(build_id), "spot interruption", reclaimed=True)
    assert rec.status == "QUEUED" and rec.stages["test"].attempts == 2


# ---- a failure reported in the test stage's promotion (chalicelib/launching/pushed.py) ----------
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7,
                                  "digest": "sha256:" + "d" * 64}, "layers": []})


@pytest.mark.parametrize("untagged", [True, False])
def test_a_failure_after_the_promotion_succeeds_only_without_the_candidate_tag(aws, env, monkeypatch, untagged):
    # GIVEN a split canary in ECR whose build stage pushed its candidate and whose test stage
    # put every requested tag on it
    monkeypatch.setenv("IMAGE_REGISTRY", "123456789012.dkr.ecr.us-east-1.amazonaws.com")
    wiring.reset()
    ecr = aws.client("ecr")
    build, _ = wiring.builds().submit(BuildRequest(framework="canary", split=True, instance_types=["g5.xlarge"]))
    (msg,) = aws.messages("LaunchQueue")
    iid = launch(msg)
    rec = wiring.store().get_record(build.id)
    name = rec.image.repository.split("/", 1)[1]
    cand = f"candidate-{build.id}-1"
    digest = ecr.put_image(repositoryName=name, imageManifest=MANIFEST, imageTag=cand)["image"]["imageId"]["imageDigest"]
    report(build.id, token(script(env["ec2"], iid)), {"type": "result", "status": "BUILT", "digest": digest})
    (msg,) = aws.messages("LaunchQueue")
    tok = token(script(env["ec2"], launch(msg)))
    report(build.id, tok, {"type": "phase", "phase": "PUSHING", "stage": "test"})
    for tag in rec.image.tags:
        ecr.put_image(repositoryName=name, imageManifest=MANIFEST, imageTag=tag)
    if untagged:
        ecr.batch_delete_image(repositoryName=name, imageIds=[{"imageTag": cand}])
    # WHEN the instance reports a failure (its result report was lost, or the untagging failed)
    out = report(build.id, tok, {"type": "result", "status": "FAILED", "reason": "could not remove the candidate tag"})
    # THEN it succeeded only when ECR holds every tag at the tested digest and no candidate tag
    assert out["status"] == ("SUCCEEDED" if untagged else "FAILED")
    if untagged:
        assert wiring.store().get_record(build.id).image.digest == digest


@pytest.mark.parametrize("estimates,splits", [
    (None, False),  # no estimate: auto splits source builds only
    ({"default": {"build": 25, "test": 5}}, True),  # a GPU idle 25 min for 5 of testing: split
    ({"default": {"build": 4, "test": 5}}, False),  # building is quicker than testing: keep it whole
    ({"source": {"build": 90, "test": 5}}, False),  # an estimate for the other mode does not count
])
def test_auto_splits_a_wheels_build_whose_gpu_would_idle_longer_than_it_tests(estimates, splits):
    from chalicelib.specs.catalog import SplitEstimates

    spec = wiring.catalog().spec("pytorch")
    spec = spec.model_copy(update={"split_estimate_minutes": SplitEstimates.model_validate(estimates)
                                   if estimates else None})
    types = spec.split_types("auto", {"BUILD_MODE": "wheels"})
    assert types == (CPU_TYPES if splits else [])
    # a source build splits under auto whatever the estimates say
    assert spec.split_types("auto", {"BUILD_MODE": "source"}) == ["c7i.8xlarge", "c6i.8xlarge", "m7i.8xlarge"]
    # and an explicit choice is never second-guessed
    assert spec.split_types(False, {"BUILD_MODE": "wheels"}) == []
