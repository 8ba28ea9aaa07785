"""Real builds through the local stack: POST -> a moto instance -> its user-data run for
real with buildah/docker -> pushed to the local registry -> final state -> Slack sink."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from voltabuild_local.registry import image_summary

pytestmark = pytest.mark.e2e
FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
VOLTABUILD = str(Path(sys.executable).parent / "voltabuild")  # the CLI as installed by `make`


def test_canary_from_post_to_succeeded_with_the_image_in_the_registry(stack):
    # GIVEN the local stack  WHEN the canary is submitted as curl would
    resp = stack.post({"framework": "canary", "tags": ["e2e"]})
    assert resp.status_code == 202
    build = stack.wait_final(resp.json()["id"])
    # THEN it succeeded through every phase, on an instance that is now gone
    assert build["status"] == "SUCCEEDED", build.get("reason")
    phases = [e["phase"] for e in build["events"] if e.get("phase")]
    assert phases[:1] == ["PREPARING"] and "PUSHING" in phases
    assert build["instance"]["id"].startswith("i-")
    # AND every tag is in the registry, with the digest the build record holds
    repo = build["image"]["repository"].split("/", 1)[1]
    digests = set()
    for tag in build["image"]["tags"]:
        summary = image_summary(stack.registry, repo, tag)
        assert summary is not None, f"{tag} is not in the registry"
        digests.add(summary["digest"])
        assert summary["labels"]["io.voltabuild.build-id"] == build["id"]
        assert re.fullmatch(r"[0-9a-f]{40}", summary["labels"]["org.opencontainers.image.revision"])
    assert digests == {build["image"]["digest"]}
    # AND one Slack message said so
    messages = stack.slack_messages(build["id"])
    assert len(messages) == 1
    assert "succeeded" in messages[0]["payload"]["text"]
    assert build["instance"]["id"] not in stack.instances_left_running(wait=30)


def test_a_failing_dockerfile_ends_failed_with_the_log_tail_in_reason_and_slack(stack):
    resp = stack.post({"framework": "canary", "build_args": {"CANARY_FAIL": "1"}})
    build = stack.wait_final(resp.json()["id"])
    assert build["status"] == "FAILED"
    assert "CANARY_FAIL=1 was requested" in build["reason"]
    text = stack.slack_messages(build["id"])[0]["payload"]
    assert "CANARY_FAIL=1 was requested" in str(text)
    assert build["image"].get("digest") is None


def test_cancelling_a_running_build_stops_its_instance(stack):
    resp = stack.post({"framework": "canary", "build_args": {"CANARY_SLEEP": "120"}})
    build_id = resp.json()["id"]
    stack.wait_for(build_id, lambda b: b["status"] == "RUNNING" and b.get("phase") == "BUILDING")
    cancel = stack.delete(f"/builds/{build_id}")
    assert cancel.status_code == 202
    t0 = time.monotonic()
    build = stack.wait_final(build_id, timeout=60)
    assert build["status"] == "CANCELLED"
    assert time.monotonic() - t0 < 60  # not the 120 s the build would have slept
    assert stack.instances_left_running(wait=30) == []


def test_twenty_concurrent_submissions_all_reach_a_final_state(stack):
    # GIVEN twenty builds at once: each pushes a tag of its own, and every other one also
    # pushes the same shared tag (the registry sees the same layers and the same tag at once)
    def body(i: int) -> dict:
        return {"framework": "canary", "tags": [f"many-{i}"] + (["many-shared"] if i % 2 else [])}

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda i: stack.post(body(i)), range(20)))
    assert [r.status_code for r in responses] == [202] * 20
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 20
    # WHEN they run  THEN every one succeeds: no push is lost
    finals = [stack.wait_final(i, timeout=600) for i in ids]
    assert {b["status"] for b in finals} <= FINAL
    failed = [(b["id"], b["status"], b.get("reason")) for b in finals if b["status"] != "SUCCEEDED"]
    assert failed == []
    # AND each tag of its own points at that build's digest; the shared tag at one of theirs
    repo = finals[0]["image"]["repository"].split("/", 1)[1]
    for b in finals:
        own = next(t for t in b["image"]["tags"] if t.startswith("many-") and t != "many-shared")
        assert image_summary(stack.registry, repo, own)["digest"] == b["image"]["digest"]
    shared = image_summary(stack.registry, repo, "many-shared")
    assert shared["digest"] in {b["image"]["digest"] for b in finals if "many-shared" in b["image"]["tags"]}
    # nothing left running: an instance reports its result, then goes away
    assert stack.instances_left_running(wait=60) == []


def test_voltabuild_logs_follows_a_build_and_shows_its_own_lines_once_finished(stack, tmp_path):
    # GIVEN a canary build that takes a few seconds
    resp = stack.post({"framework": "canary", "build_args": {"CANARY_SLEEP": "3"}})
    build_id = resp.json()["id"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTABUILD_")}
    env.update(VOLTABUILD_API_URL=stack.url, VOLTABUILD_API_KEY=stack.headers["x-api-key"],
               XDG_CONFIG_HOME=str(tmp_path))
    # WHEN a user follows its log with the CLI, from the moment it was accepted
    follow = subprocess.run([VOLTABUILD, "logs", "--follow", build_id], env=env, capture_output=True, text=True,
                            timeout=240)
    # THEN the lines come from the instance, as it shipped them to CloudWatch Logs, until the end
    assert follow.returncode == 0, follow.stderr
    assert f"build {build_id} attempt 1" in follow.stdout
    assert "sleeping 3 s as requested (CANARY_SLEEP)" in follow.stdout
    assert "pushed " in follow.stdout
    build = stack.wait_final(build_id)
    assert build["status"] == "SUCCEEDED", build.get("reason")
    # AND on the finished build, `voltabuild logs` shows exactly the lines that were followed:
    # none shown twice while following, none missed
    again = subprocess.run([VOLTABUILD, "logs", build_id], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == follow.stdout.splitlines()
    # AND the API serves them too
    page = stack.get(f"/builds/{build_id}/logs").json()
    assert any("pushed " in line["message"] for line in page["lines"])


def test_api_errors_over_real_http(stack):
    bad = stack.post({"framework": "canary", "tags": ["no;way"]})
    assert bad.status_code == 400 and "tags" in bad.json()["Message"]
    assert stack.get("/builds/b-00000000000000000000").status_code == 404
    import requests

    no_key = requests.get(f"{stack.url}/builds", timeout=10)
    assert no_key.status_code == 403
    wrong_type = requests.post(f"{stack.url}/builds", data="framework=canary", timeout=10,
                               headers={**stack.headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert wrong_type.status_code == 415


def test_a_split_canary_builds_on_a_cpu_instance_and_ships_the_digest_tested_on_the_gpu_one(stack):
    # GIVEN the local stack  WHEN a split canary is submitted (issue 23)
    resp = stack.post({"framework": "canary", "tags": ["split-e2e"], "split": True})
    assert resp.status_code == 202, resp.text
    build = stack.wait_final(resp.json()["id"])
    # THEN it succeeded, through both stages, each on its own instance
    assert build["status"] == "SUCCEEDED", build.get("reason")
    assert build["split"] is True and build["stage"] == "test"
    first, second = build["stages"]["build"]["instance"], build["stages"]["test"]["instance"]
    assert first["id"] != second["id"]
    stages = [e.get("stage") for e in build["events"] if e.get("phase")]
    assert "build" in stages and "test" in stages
    # AND the registry's requested tags point at the digest the build stage pushed and the test
    # stage tested; the candidate tag stays on it (docker/distribution 2.x deletes no tag; ECR's
    # batch-delete-image removes it, see tests/launch/test_hostscript_split.py)
    repo = build["image"]["repository"].split("/", 1)[1]
    assert build["image"]["digest"] == build["candidate_digest"]
    for tag in build["image"]["tags"]:
        assert image_summary(stack.registry, repo, tag)["digest"] == build["candidate_digest"], tag
    assert image_summary(stack.registry, repo, build["candidate_tag"])["digest"] == build["candidate_digest"]
    # AND both moto instances are gone, launched as each stage needs: a CPU type, then a GPU one
    left = stack.instances_left_running(wait=30)
    assert first["id"] not in left and second["id"] not in left
    ec2 = stack.stack_session().client("ec2")
    described = {i["InstanceId"]: i for r in ec2.describe_instances(InstanceIds=[first["id"], second["id"]])[
        "Reservations"] for i in r["Instances"]}
    assert described[first["id"]]["InstanceType"] in build["stages"]["build"]["instance_types"]
    assert described[second["id"]]["InstanceType"] in build["instance_types"]
    for iid, role in ((first["id"], "build"), (second["id"], "test")):
        tags = {t["Key"]: t["Value"] for t in described[iid]["Tags"]}
        assert tags["voltabuild:build-stage"] == role
        assert described[iid]["InstanceLifecycle"] == "spot"
        assert described[iid]["MetadataOptions"]["HttpTokens"] == "required"
