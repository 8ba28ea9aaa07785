"""The REST API through chalice.test.Client against moto DynamoDB and SQS."""

from __future__ import annotations

import json

import pytest

from chalicelib.builds.store import QUOTA_ID

JSON = {"Content-Type": "application/json"}


def post(api, body, headers=None, raw=None):
    resp = api.http.post("/builds", headers={**JSON, **(headers or {})},
                         body=raw if raw is not None else json.dumps(body))
    return resp.status_code, json.loads(resp.body) if resp.body else None


def build_items(aws):
    return [i for i in aws.items() if i.get("kind") == "build"]


def test_submit_takes_the_buildspec_defaults_and_queues_for_launch(api, aws):
    # GIVEN only a framework  WHEN it is submitted
    status, build = post(api, {"framework": "pytorch"})
    # THEN 202 with the resolved build, recorded and queued
    assert status == 202
    assert build["status"] == "QUEUED"
    assert (build["version"], build["cuda"], build["python"]) == ("2.14.1", "12.6", "3.12")
    assert build["image"]["tags"] == ["2.14.1-cu126-py312", "latest"]
    assert build["image"]["repository"].endswith("/voltabuild/pytorch")
    assert build["instance_types"][0] == "p3.2xlarge"
    assert build["timeout_minutes"] == 90
    assert build["build_args"]["BUILD_MODE"] == "wheels"
    assert [e["status"] for e in build["events"]] == ["QUEUED"]
    assert aws.messages("LaunchQueue") == [{"build_id": build["id"], "attempt": 1,
                                            "timeout_minutes": build["timeout_minutes"]}]
    got = api.http.get(f"/builds/{build['id']}")
    assert got.status_code == 200
    assert json.loads(got.body)["id"] == build["id"]


def test_location_header_points_at_the_build(api, aws):
    resp = api.http.post("/builds", headers=JSON, body=json.dumps({"framework": "canary", "tags": ["smoke"]}))
    body = json.loads(resp.body)
    assert resp.headers["Location"] == f"/builds/{body['id']}"
    assert body["image"]["tags"] == ["1.0", "latest", "smoke"]


def test_deprecated_framework_is_built_with_a_warning(api, aws):
    status, build = post(api, {"framework": "mxnet"})
    assert status == 202
    assert any("deprecated" in w for w in build["warnings"])


def test_idempotency_key_replays_and_conflicts(api, aws):
    key = {"Idempotency-Key": "retry-1234"}
    s1, first = post(api, {"framework": "canary"}, key)
    s2, again = post(api, {"framework": "canary"}, key)
    assert (s1, s2) == (202, 200)
    assert again["id"] == first["id"]
    s3, err = post(api, {"framework": "canary", "tags": ["other"]}, key)
    assert s3 == 409
    assert "Idempotency-Key" in err["Message"]
    assert len(build_items(aws)) == 1
    assert len(aws.messages("LaunchQueue")) == 1


def test_quota_of_active_builds_gives_429_naming_the_limit(api, aws, monkeypatch):
    from chalicelib import wiring

    monkeypatch.setenv("MAX_ACTIVE_BUILDS", "2")
    wiring.reset()
    assert wiring.settings().max_active_builds == 2  # cached before chalice applies the stage's env
    assert post(api, {"framework": "canary"})[0] == 202
    _, second = post(api, {"framework": "canary"})
    status, err = post(api, {"framework": "canary"})
    assert status == 429
    assert "limit is 2" in err["Message"]
    assert len(build_items(aws)) == 2
    # a finished build gives its slot back (the notify consumer calls release_slot)
    api.http.delete(f"/builds/{second['id']}")
    wiring.store().release_slot(second["id"])
    assert post(api, {"framework": "canary"})[0] == 202


BAD = [
    ({"framework": "caffe"}, 400, "known frameworks: canary, mxnet, pytorch, tensorflow"),
    ({"framework": "pytorch", "version": "0.4.0"}, 400, "supported versions"),
    ({"framework": "pytorch", "version": "2.5.1", "cuda": "10.2"}, 400, "built for CUDA"),
    ({"framework": "pytorch", "python": "2.7"}, 400, "built for Python"),
    ({"framework": "canary", "tags": ["ok", "bad;rm -rf /"]}, 400, "tags.1"),
    ({"framework": "canary", "tags": ["-leading-dash"]}, 400, "tags.0"),
    ({"framework": "pytorch", "build_args": {"LD_PRELOAD": "x"}}, 400, "allowed: BUILD_MODE"),
    ({"framework": "pytorch", "build_args": {"BUILD_MODE": "$(curl evil)"}}, 400, "does not match"),
    ({"framework": "pytorch", "build_args": {"lower": "x"}}, 400, "build_args.lower"),
    ({"framework": "pytorch", "instance_types": ["t3.micro"]}, 400, "instance_types: t3.micro not allowed"),
    ({"framework": "pytorch", "timeout_minutes": 10000}, 400, "allowed 5 to 360"),
    ({"framework": "pytorch", "timeout_minutes": 1}, 400, "timeout_minutes"),
    ({"framework": "pytorch", "max_price": -1}, 400, "max_price"),
    ({"framework": "pytorch", "colour": "blue"}, 400, "colour: unknown field"),
    ({"framework": 5}, 400, "framework"),
    ({"version": "2.5.1"}, 400, "framework: Field required"),
    ({"framework": "pytorch", "notify": {"channel": "ops"}}, 400, "configured channels: default"),
    ({"framework": "pytorch", "notify": {"webhook": "https://hooks.slack.com/x"}}, 400, "unknown field"),
    ({"framework": "pytorch", "timeout_minutes": "30"}, 400, "timeout_minutes"),
    ({"framework": "pytorch", "timeout_minutes": 30.5}, 400, "timeout_minutes"),
    ({"framework": "pytorch", "notify": "yes"}, 400, "notify"),
    ({"framework": "pytorch", "notify": {"slack": 0}}, 400, "notify"),
    ({"framework": "pytorch", "tags": "latest"}, 400, "tags"),
]


@pytest.mark.parametrize("body,status,needle", BAD, ids=[str(b[0])[:60] for b in BAD])
def test_bad_input_is_a_4xx_naming_the_field_and_writes_nothing(api, aws, body, status, needle):
    got, err = post(api, body)
    assert got == status
    assert needle in err["Message"]
    assert build_items(aws) == []
    assert aws.messages("LaunchQueue") == []


@pytest.mark.parametrize("raw,headers,status,needle", [
    ("{not json", {}, 400, "not valid JSON"),
    ("[1, 2]", {}, 400, "JSON object"),
    ("", {}, 400, "empty"),
    (json.dumps({"framework": "canary", "tags": ["x" * 100] * 700}), {}, 413, "limit is 65536"),
    (json.dumps({"framework": "canary"}), {"Idempotency-Key": "has space"}, 400, "Idempotency-Key"),
])
def test_malformed_bodies(api, aws, raw, headers, status, needle):
    got, err = post(api, None, headers, raw=raw)
    assert got == status
    assert needle in err["Message"]
    assert build_items(aws) == []


def test_wrong_content_type_is_415(api, aws):
    resp = api.http.post("/builds", headers={"Content-Type": "text/plain"}, body="framework=pytorch")
    assert resp.status_code == 415
    assert build_items(aws) == []


@pytest.mark.parametrize("bid", ["b-00000000000000000000", "nope", "b-..%2F..%2Fetc", "B-ABC"])
def test_unknown_or_malformed_id_is_404(api, aws, bid):
    assert api.http.get(f"/builds/{bid}").status_code == 404
    assert api.http.delete(f"/builds/{bid}").status_code == 404


def test_cancel_a_queued_build_at_once_and_a_finished_one_is_409(api, aws):
    _, build = post(api, {"framework": "canary"})
    resp = api.http.delete(f"/builds/{build['id']}")
    assert resp.status_code == 200
    cancelled = json.loads(resp.body)
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["finished_at"]
    assert aws.messages("NotifyQueue") == [{"build_id": build["id"], "status": "CANCELLED"}]
    again = api.http.delete(f"/builds/{build['id']}")
    assert again.status_code == 409
    assert "already finished as CANCELLED" in json.loads(again.body)["Message"]


def test_cancel_a_running_build_is_recorded_and_answered_202(api, aws):
    from chalicelib import wiring
    from chalicelib.builds.states import Status

    _, build = post(api, {"framework": "canary"})
    wiring.store().move(build["id"], Status.LAUNCHING)
    resp = api.http.delete(f"/builds/{build['id']}")
    assert resp.status_code == 202
    body = json.loads(resp.body)
    assert body["cancel_requested"] is True
    assert body["status"] == "LAUNCHING"


def test_health_needs_no_key_and_frameworks_lists_the_catalog(api, aws):
    assert json.loads(api.http.get("/health").body) == {"status": "ok"}
    cat = json.loads(api.http.get("/frameworks").body)
    names = {f["framework"]: f for f in cat["frameworks"]}
    assert set(names) == {"pytorch", "tensorflow", "mxnet", "canary"}
    assert names["mxnet"]["deprecated"]
    assert "BUILD_MODE" in names["pytorch"]["build_args"]
    assert names["pytorch"]["defaults"] == {"version": "2.14.1", "cuda": "12.6", "python": "3.12"}
    # each version's release date, the newest marked, and why old ones are deprecated
    torch = {v["version"]: v for v in names["pytorch"]["versions"]}
    assert torch["2.14.1"]["released"] == "2026-09-30" and torch["2.14.1"]["newest"] is True
    assert torch["2.13.0"]["released"] == "2026-07-08" and torch["2.13.0"]["newest"] is False
    assert torch["2.14.1"]["deprecated"] is None and "2.9" in torch["2.9.1"]["deprecated"]
    assert [v["version"] for v in names["tensorflow"]["versions"] if v["newest"]] == ["2.21.0"]


def test_a_deprecated_version_builds_with_a_warning_saying_why(api, aws):
    status, build = post(api, {"framework": "pytorch", "version": "2.5.1"})
    assert status == 202
    assert any(w.startswith("pytorch 2.5.1 is deprecated: PyTorch 2.5") for w in build["warnings"])
    status, current = post(api, {"framework": "pytorch", "version": "2.14.1"})
    assert status == 202 and not [w for w in current["warnings"] if "deprecated" in w]


def test_openapi_document_is_valid_and_describes_the_request(api, aws):
    from openapi_spec_validator import validate

    doc = json.loads(api.http.get("/openapi.json").body)
    validate(doc)
    req = doc["components"]["schemas"]["BuildRequest"]
    assert "framework" in req["properties"] and "source" in req["properties"]  # exactly one: issue 20
    assert req["additionalProperties"] is False
    assert "/builds/{build_id}" in doc["paths"]


def test_quota_item_is_not_a_build(api, aws):
    post(api, {"framework": "canary"})
    ids = {i["id"] for i in aws.items()}
    assert QUOTA_ID in ids
    listed = json.loads(api.http.get("/builds").body)["builds"]
    assert all(b["id"].startswith("b-") for b in listed)
