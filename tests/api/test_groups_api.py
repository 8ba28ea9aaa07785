"""Matrices through the API (issue 22): POST /builds with a matrix makes a group, all or nothing;
GET/DELETE /groups/{id}; GET /builds?group=. In-process moto via chalice.test.Client."""

from __future__ import annotations

import json

import pytest

from chalicelib.builds.groups import aggregate_status
from chalicelib.builds.states import Status
from chalicelib.builds.store import QUOTA_ID

JSON = {"Content-Type": "application/json"}
MATRIX_2X2 = {"framework": "pytorch", "python": "3.11",
              "matrix": {"version": ["2.5.1", "2.6.0"], "cuda": ["12.4", "11.8"]}}


def post(api, body, headers=None):
    resp = api.http.post("/builds", headers={**JSON, **(headers or {})}, body=json.dumps(body))
    return resp.status_code, json.loads(resp.body)


def get(api, path):
    resp = api.http.get(path)
    return resp.status_code, json.loads(resp.body)


def builds_in(aws):
    return [i for i in aws.items() if i.get("kind") == "build"]


def with_env(monkeypatch, **env):
    from chalicelib import wiring
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    wiring.reset()
    wiring.settings()  # cached before chalice applies the stage's environment


def test_a_2x2_matrix_is_one_group_of_four_queued_builds(api, aws):
    status, group = post(api, MATRIX_2X2)
    assert status == 202
    assert group["id"].startswith("g-") and group["status"] == "RUNNING"
    assert [(c["version"], c["cuda"], c["python"]) for c in group["cells"]] == [
        ("2.5.1", "12.4", "3.11"), ("2.5.1", "11.8", "3.11"), ("2.6.0", "12.4", "3.11"), ("2.6.0", "11.8", "3.11")]
    assert group["cells"][0]["values"] == {"version": "2.5.1", "cuda": "12.4"}
    assert all(c["status"] == "QUEUED" and c["cost"]["usd"] == "0" for c in group["cells"])
    assert group["skipped"] == []
    ids = [c["id"] for c in group["cells"]]
    # each cell is a normal build with the group id, queued for launch, holding a quota slot
    stored = builds_in(aws)
    assert sorted(b["id"] for b in stored) == sorted(ids)
    assert {b["group_id"] for b in stored} == {group["id"]}
    assert sorted(m["build_id"] for m in aws.messages("LaunchQueue")) == sorted(ids)
    assert set(ids) <= api_slot_holders()
    # the group's builds are listed, and each build says its group
    status, listed = get(api, f"/builds?group={group['id']}")
    assert status == 200 and [b["id"] for b in listed["builds"]] == ids and listed["next"] is None
    status, one = get(api, f"/builds/{ids[0]}")
    assert status == 200 and one["group_id"] == group["id"]


def api_slot_holders():
    from chalicelib import wiring
    return wiring.store().slot_holders()


def test_an_invalid_cell_is_a_400_listing_it_and_nothing_is_written(api, aws):
    body = {"framework": "pytorch", "matrix": {"version": ["2.5.1", "2.6.0"], "cuda": ["12.1", "12.4"]}}
    status, err = post(api, body)
    assert status == 400
    assert "{version: 2.6.0, cuda: 12.1}" in err["Message"] and "skip_invalid" in err["Message"]
    assert builds_in(aws) == [] and aws.messages("LaunchQueue") == []
    # skip_invalid builds the other three and says what it skipped
    status, group = post(api, {**body, "skip_invalid": True})
    assert status == 202 and len(group["cells"]) == 3
    assert group["skipped"][0]["values"] == {"version": "2.6.0", "cuda": "12.1"}
    assert "12.1" in group["skipped"][0]["reason"]
    assert get(api, f"/groups/{group['id']}")[1]["skipped"] == group["skipped"]


def test_a_matrix_over_the_quota_is_a_429_and_writes_nothing(api, aws, monkeypatch):
    with_env(monkeypatch, MAX_ACTIVE_BUILDS="5")
    # 2 active + 4 cells do not fit 5
    assert post(api, {"framework": "canary"})[0] == 202
    assert post(api, {"framework": "canary"})[0] == 202
    aws.messages("LaunchQueue")
    before = aws.items()
    status, err = post(api, MATRIX_2X2)
    assert status == 429 and "4 cells" in err["Message"] and "5" in err["Message"]
    assert sorted(map(str, aws.items())) == sorted(map(str, before))  # not a build, group or slot more
    assert aws.messages("LaunchQueue") == []
    # a matrix bigger than the limit itself is refused before any write
    with_env(monkeypatch, MAX_ACTIVE_BUILDS="3")
    status, err = post(api, MATRIX_2X2)
    assert status == 429 and "limit is 3" in err["Message"]
    assert len(builds_in(aws)) == 2


def test_the_per_key_quota_counts_every_cell(api, aws, monkeypatch):
    with_env(monkeypatch, MAX_ACTIVE_BUILDS_PER_KEY="3")
    status, err = post(api, MATRIX_2X2)
    assert status == 429 and "per key is 3" in err["Message"]
    assert builds_in(aws) == []


def test_an_idempotency_key_covers_the_whole_group(api, aws):
    key = {"Idempotency-Key": "matrix-1"}
    s1, first = post(api, MATRIX_2X2, key)
    s2, again = post(api, MATRIX_2X2, key)
    assert (s1, s2) == (202, 200) and again["id"] == first["id"]
    assert len(builds_in(aws)) == 4 and len(aws.messages("LaunchQueue")) == 4
    s3, err = post(api, {**MATRIX_2X2, "python": "3.12"}, key)
    assert s3 == 409 and "Idempotency-Key" in err["Message"]


def test_cancelling_the_group_cancels_every_cell_not_yet_final(api, aws):
    from chalicelib import wiring
    _, group = post(api, MATRIX_2X2)
    first = group["cells"][0]["id"]
    t = wiring.transitions()
    for to in (Status.LAUNCHING, Status.RUNNING, Status.SUCCEEDED):
        t.move(first, to)
    resp = api.http.delete(f"/groups/{group['id']}")
    body = json.loads(resp.body)
    assert resp.status_code == 200
    assert [c["status"] for c in body["cells"]] == ["SUCCEEDED", "CANCELLED", "CANCELLED", "CANCELLED"]
    assert body["status"] == "CANCELLED"
    # nothing left to cancel: a 409
    resp = api.http.delete(f"/groups/{group['id']}")
    assert resp.status_code == 409


def test_the_group_status_is_running_until_every_cell_is_final(api, aws):
    from chalicelib import wiring
    _, group = post(api, MATRIX_2X2)
    ids = [c["id"] for c in group["cells"]]
    t = wiring.transitions()
    for bid in ids[:3]:
        for to in (Status.LAUNCHING, Status.RUNNING, Status.SUCCEEDED):
            t.move(bid, to)
    assert get(api, f"/groups/{group['id']}")[1]["status"] == "RUNNING"
    t.move(ids[3], Status.LAUNCHING)
    t.move(ids[3], Status.FAILED, message="broken")
    body = get(api, f"/groups/{group['id']}")[1]
    assert body["status"] == "FAILED"
    assert [c["status"] for c in body["cells"]] == ["SUCCEEDED"] * 3 + ["FAILED"]


@pytest.mark.parametrize(("cells", "want"), [
    ([Status.SUCCEEDED, Status.SUCCEEDED], Status.SUCCEEDED),
    ([Status.SUCCEEDED, Status.QUEUED], Status.RUNNING),
    ([Status.SUCCEEDED, Status.TIMED_OUT, Status.CANCELLED], Status.FAILED),
    ([Status.SUCCEEDED, Status.CANCELLED], Status.CANCELLED),
])
def test_aggregate_status(cells, want):
    assert aggregate_status(cells) == want


def test_unknown_groups_and_bad_group_queries(api, aws):
    assert get(api, "/groups/g-0123456789abcdef0123")[0] == 404
    assert get(api, "/groups/nope")[0] == 404
    status, err = get(api, "/builds?group=g-0123456789abcdef0123&status=QUEUED")
    assert status == 400 and "group" in err["Message"]


def test_quota_slots_of_a_group_are_one_set(api, aws):
    _, group = post(api, MATRIX_2X2)
    [slots] = [i for i in aws.items() if i["id"] == QUOTA_ID]
    assert set(slots["ids"]) == {c["id"] for c in group["cells"]}
