"""Real builds through the local stack: POST -> a moto instance -> its user-data run for
real with buildah/docker -> pushed to the local registry -> final state -> Slack sink."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from voltabuild_local.registry import image_summary

pytestmark = pytest.mark.e2e
FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


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
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda i: stack.post({"framework": "canary", "tags": [f"many-{i}"]}), range(20)))
    assert [r.status_code for r in responses] == [202] * 20
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 20
    finals = [stack.wait_final(i, timeout=600) for i in ids]
    assert {b["status"] for b in finals} <= FINAL
    failed = [(b["id"], b["status"], b.get("reason")) for b in finals if b["status"] != "SUCCEEDED"]
    assert failed == []
    # nothing left running: an instance reports its result, then goes away
    assert stack.instances_left_running(wait=60) == []


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
