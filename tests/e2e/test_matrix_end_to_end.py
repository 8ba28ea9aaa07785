"""A matrix through the local stack (issue 22): one POST, four real canary builds (two
build-arg axes), four images in the registry, the group SUCCEEDED, and ONE Slack message."""

from __future__ import annotations

import json
import time

import pytest

from voltabuild_local.registry import image_summary

pytestmark = pytest.mark.e2e


def wait_group(stack, group_id: str, timeout: float = 600.0) -> dict:
    deadline = time.monotonic() + timeout
    group: dict = {}
    while time.monotonic() < deadline:
        group = stack.get(f"/groups/{group_id}").json()
        if group["status"] != "RUNNING":
            return group
        time.sleep(1)
    raise AssertionError(f"group {group_id} never ended; last seen {json.dumps(group)[:2000]}")


def test_a_2x2_canary_matrix_builds_four_images_and_sends_one_slack_message(stack):
    # GIVEN the local stack  WHEN a 2x2 canary matrix is submitted (build args as the axes)
    body = {"framework": "canary", "matrix": {"build_args": {"CANARY_GREETING": ["hello", "hi"],
                                                             "CANARY_FLAVOUR": ["plain", "spicy"]}}}
    resp = stack.post(body)
    assert resp.status_code == 202, resp.text
    group_id = resp.json()["id"]
    # THEN the group ends SUCCEEDED, every cell too
    group = wait_group(stack, group_id)
    assert group["status"] == "SUCCEEDED", json.dumps(group)[:2000]
    assert [c["status"] for c in group["cells"]] == ["SUCCEEDED"] * 4
    # AND four images are in the registry, each with its own digest and its own cell's build id
    digests = set()
    for cell in group["cells"]:
        build = stack.get(f"/builds/{cell['id']}").json()
        repo = build["image"]["repository"].split("/", 1)[1]
        summary = image_summary(stack.registry, repo, build["image"]["tags"][0])
        assert summary is not None and summary["digest"] == build["image"]["digest"]
        assert summary["labels"]["io.voltabuild.build-id"] == build["id"]
        digests.add(summary["digest"])
    assert len(digests) == 4
    # AND one Slack message, for the group, with a row per cell
    messages = stack.slack_messages(group_id)
    assert len(messages) == 1, messages
    # every cell's own message is skipped once its notify message is handled (the group's may
    # go out first: whichever cell's handler finds the group complete sends it)
    for c in group["cells"]:
        cell = stack.wait_for(c["id"], lambda b: b.get("notification") is not None, timeout=60)
        assert cell["notification"]["status"] == "skipped", cell["notification"]
    assert len(stack.slack_messages(group_id)) == 1
    payload = messages[0]["payload"]
    assert payload["blocks"][0]["text"]["text"] == ":white_check_mark: canary matrix succeeded: 4 of 4 cells succeeded"
    [table] = [b for b in payload["blocks"] if b["type"] == "table"]
    assert len(table["rows"]) == 5
    for cell in group["cells"]:  # and no cell sent a message of its own
        assert not [m for m in stack.slack_messages(cell["id"], wait=0.1) if group_id not in json.dumps(m)]


def test_a_failing_cell_fails_the_group_and_its_one_message_names_the_cell(stack):
    # GIVEN a two-cell canary matrix whose "spicy" cell is asked to fail (CANARY_FAIL=1)
    body = {"framework": "canary", "matrix": {
        "build_args": {"CANARY_FLAVOUR": ["plain", "spicy"], "CANARY_FAIL": ["0", "1"]},
        "exclude": [{"CANARY_FLAVOUR": "plain", "CANARY_FAIL": "1"}, {"CANARY_FLAVOUR": "spicy", "CANARY_FAIL": "0"}]}}
    resp = stack.post(body)
    assert resp.status_code == 202, resp.text
    group_id = resp.json()["id"]
    # THEN the other cell still succeeds, the failing one fails, and so does the group
    group = wait_group(stack, group_id)
    assert group["status"] == "FAILED", json.dumps(group)[:2000]
    by_flavour = {stack.get(f"/builds/{c['id']}").json()["build_args"]["CANARY_FLAVOUR"]: c for c in group["cells"]}
    assert by_flavour["plain"]["status"] == "SUCCEEDED" and by_flavour["spicy"]["status"] == "FAILED"
    # AND one Slack message for the group, which names the failed cell
    messages = stack.slack_messages(group_id)
    assert len(messages) == 1, messages
    text = json.dumps(messages[0]["payload"])
    assert by_flavour["spicy"]["id"] in text and "1 of 2 cells succeeded" in text
