"""POST /builds/{id}/events (the instance's reports) and GET /builds/{id}/logs, through the app."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from chalicelib import wiring
from chalicelib.builds.records import BuildRecord
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.states import Status

TOKEN = "tok-" + "x" * 40
DIGEST = "sha256:" + "c" * 64
NOW_MS = int(time.time() * 1000) - 60_000


def _launching(aws, token: str = TOKEN) -> str:
    """A build as the launcher leaves it: LAUNCHING, its token's hash stored."""
    build, _ = wiring.builds().submit(BuildRequest(framework="canary"))
    aws.messages("LaunchQueue")
    wiring.transitions().move(build.id, Status.LAUNCHING, expect=[Status.QUEUED], fields={
        "token_hash": hashlib.sha256(token.encode()).hexdigest(), "instance_id": "i-0123456789abcdef0"})
    return build.id


@pytest.fixture
def build_id(aws):
    return _launching(aws)


def post(api, build_id: str, body, token: str | None = TOKEN, scheme: str = "Bearer"):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    raw = body if isinstance(body, str) else json.dumps(body)
    return api.http.post(f"/builds/{build_id}/events", headers=headers, body=raw)


def record(build_id: str) -> dict:
    """The stored build as plain data (the fields the item holds)."""
    return wiring.store().get_record(build_id).model_dump(mode="json", exclude_unset=True)


def phase(p: str) -> dict:
    return {"type": "phase", "phase": p, "message": f"now {p}"}


# ---- authentication -----------------------------------------------------------------------------
def test_missing_or_forged_token_is_403_and_changes_nothing(api, build_id):
    before = record(build_id)
    for token, scheme in [(None, "Bearer"), ("forged-" + "y" * 40, "Bearer"), ("", "Bearer"),
                          (TOKEN, "Basic"), (TOKEN.upper(), "Bearer")]:
        resp = post(api, build_id, phase("PREPARING"), token=token, scheme=scheme)
        assert resp.status_code == 403, (token, scheme, resp.body)
        assert "token" in json.loads(resp.body)["Message"]
    assert record(build_id) == before


def test_a_token_opens_only_its_own_build(api, aws, build_id):
    other = _launching(aws, token="other-" + "z" * 40)
    assert post(api, other, phase("PREPARING")).status_code == 403
    assert post(api, "b-00000000000000000000", phase("PREPARING")).status_code == 403
    assert record(other)["status"] == "LAUNCHING"


def test_auth_comes_before_parsing(api, build_id):
    assert post(api, build_id, "{not json", token="forged-" + "y" * 40).status_code == 403


def test_a_previous_attempts_token_is_stale(api, build_id):
    assert post(api, build_id, phase("BUILDING")).status_code == 202
    # a spot interruption sent the build back to QUEUED; the launcher relaunched it with a new token
    new = "new-" + "n" * 40
    wiring.transitions().move(build_id, Status.QUEUED, expect=[Status.RUNNING], fields={"attempt": 2},
                              remove=["token_hash"])
    assert post(api, build_id, phase("PUSHING")).status_code == 403, "QUEUED: nothing may report"
    wiring.transitions().move(build_id, Status.LAUNCHING, expect=[Status.QUEUED],
                              fields={"token_hash": hashlib.sha256(new.encode()).hexdigest()})
    resp = post(api, build_id, {"type": "result", "status": "FAILED", "reason": "old instance dying"})
    assert resp.status_code == 403
    assert record(build_id)["status"] == "LAUNCHING"
    assert post(api, build_id, phase("PREPARING"), token=new).status_code == 202


def test_the_token_is_useless_once_the_build_is_final(api, aws, build_id):
    wiring.builds().cancel(build_id)
    wiring.transitions().move(build_id, Status.CANCELLED, message="instance gone")
    before = record(build_id)
    assert post(api, build_id, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST}).status_code == 403
    assert post(api, build_id, {"type": "heartbeat"}).status_code == 403
    assert record(build_id) == before


# ---- phases and heartbeats ----------------------------------------------------------------------
def test_first_phase_moves_launching_to_running(api, build_id):
    resp = post(api, build_id, phase("PREPARING"))
    assert resp.status_code == 202, resp.body
    assert json.loads(resp.body) == {"id": build_id, "status": "RUNNING", "phase": "PREPARING"}
    rec = record(build_id)
    assert (rec["status"], rec["phase"]) == ("RUNNING", "PREPARING")
    assert rec["events"][-1]["message"] == "now PREPARING" and rec["heartbeat_at"]


def test_phases_move_forward_and_never_back(api, build_id):
    for p in ("PREPARING", "BUILDING", "TESTING"):
        assert post(api, build_id, phase(p)).status_code == 202
    events = len(record(build_id)["events"])
    resp = post(api, build_id, phase("BUILDING"))
    assert resp.status_code == 409
    assert "backwards" in json.loads(resp.body)["Message"]
    rec = record(build_id)
    assert rec["phase"] == "TESTING" and len(rec["events"]) == events
    # the same phase again (a retried report) is fine and adds no timeline entry
    assert post(api, build_id, phase("TESTING")).status_code == 202
    assert len(record(build_id)["events"]) == events


def test_phase_after_the_running_event_already_arrived(api, build_id):
    wiring.transitions().move(build_id, Status.RUNNING, expect=[Status.LAUNCHING], message="EC2 running")
    assert post(api, build_id, phase("BUILDING")).status_code == 202
    assert record(build_id)["phase"] == "BUILDING"


def test_heartbeat_records_the_time_only(api, build_id):
    post(api, build_id, phase("BUILDING"))
    before = record(build_id)
    assert post(api, build_id, {"type": "heartbeat"}).status_code == 202
    after = record(build_id)
    assert after["heartbeat_at"] >= before["heartbeat_at"]
    assert after["events"] == before["events"] and after["phase"] == "BUILDING"


MALFORMED = [
    {"type": "phase", "phase": "COMPILING"},
    {"type": "phase", "phase": "BUILDING", "extra": 1},
    {"type": "launch-missiles"},
    {"phase": "BUILDING"},
    {"type": "result", "status": "SUCCEEDED"},
    {"type": "result", "status": "SUCCEEDED", "digest": "sha256:abc"},
    {"type": "result", "status": "CANCELLED"},
    "not json",
    "[]",
]


def test_malformed_reports_are_400(api, build_id):
    before = record(build_id)
    for body in MALFORMED:
        resp = post(api, build_id, body)
        assert resp.status_code == 400, (body, resp.body)
    assert record(build_id) == before


# ---- results ----------------------------------------------------------------------------------------
def test_success_records_the_digest_and_notifies(api, aws, build_id):
    for p in ("PREPARING", "BUILDING", "TESTING", "PUSHING"):
        post(api, build_id, phase(p))
    resp = post(api, build_id, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST, "message": "pushed 1.0"})
    assert resp.status_code == 202, resp.body
    rec = record(build_id)
    assert rec["status"] == "SUCCEEDED" and rec["image"]["digest"] == DIGEST
    assert rec["image"]["tags"] == ["1.0", "latest"]
    assert "token_hash" not in rec and rec["finished_at"]
    assert aws.messages("NotifyQueue") == [{"build_id": build_id, "status": "SUCCEEDED"}]
    build = json.loads(api.http.get(f"/builds/{build_id}").body)
    assert build["image"]["digest"] == DIGEST and build["status"] == "SUCCEEDED"
    # a retried result report changes nothing and sends nothing
    assert post(api, build_id, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST}).status_code == 403
    assert aws.messages("NotifyQueue") == []


def test_failure_records_the_reason_with_the_last_log_lines(api, aws, build_id):
    post(api, build_id, phase("BUILDING"))
    resp = post(api, build_id, {"type": "result", "status": "FAILED", "reason": "the image build failed",
                                "log_tail": "Step 3/9\nERROR: pip install torch failed\n"})
    assert resp.status_code == 202
    rec = record(build_id)
    assert rec["status"] == "FAILED"
    assert rec["reason"].startswith("the image build failed\n--- last log lines ---\n")
    assert "ERROR: pip install torch failed" in rec["reason"]
    assert aws.messages("NotifyQueue") == [{"build_id": build_id, "status": "FAILED"}]


def test_failure_straight_from_launching(api, aws, build_id):
    resp = post(api, build_id, {"type": "result", "status": "FAILED", "reason": "NVIDIA driver too old"})
    assert resp.status_code == 202
    assert record(build_id)["status"] == "FAILED"


def test_a_failure_after_a_cancel_was_asked_ends_cancelled(api, aws, build_id):
    # GIVEN a running build whose cancel was recorded (its instance is being terminated)
    post(api, build_id, phase("BUILDING"))
    assert api.http.delete(f"/builds/{build_id}").status_code == 202
    # WHEN the dying instance's trap reports a failure before the EC2 event arrives
    resp = post(api, build_id, {"type": "result", "status": "FAILED", "reason": "terminated (SIGTERM)"})
    # THEN the build ends as the user asked: CANCELLED, with one notification
    assert resp.status_code == 202
    rec = record(build_id)
    assert rec["status"] == "CANCELLED"
    assert rec["reason"].startswith("cancelled by request")
    assert aws.messages("NotifyQueue") == [{"build_id": build_id, "status": "CANCELLED"}]


# ---- logs ----------------------------------------------------------------------------------------------
@pytest.fixture
def shipped(aws, build_id):
    logs = aws.client("logs")
    try:
        logs.create_log_group(logGroupName="/voltabuild/builds")
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    logs.create_log_stream(logGroupName="/voltabuild/builds", logStreamName=build_id)
    logs.put_log_events(logGroupName="/voltabuild/builds", logStreamName=build_id, logEvents=[
        {"timestamp": NOW_MS + i, "message": f"line {i}"} for i in range(5)])
    return logs


def test_logs_page_with_a_cursor(api, build_id, shipped):
    resp = api.http.get(f"/builds/{build_id}/logs?limit=3")
    assert resp.status_code == 200, resp.body
    page = json.loads(resp.body)
    assert [ln["message"] for ln in page["lines"]] == ["line 0", "line 1", "line 2"]
    assert page["lines"][0]["at"].endswith("Z")
    page2 = json.loads(api.http.get(f"/builds/{build_id}/logs?limit=3&next={page['next']}").body)
    assert [ln["message"] for ln in page2["lines"]] == ["line 3", "line 4"]
    end = json.loads(api.http.get(f"/builds/{build_id}/logs?next={page2['next']}").body)
    assert end["lines"] == [] and end["next"], "the cursor survives the end, to poll with"
    shipped.put_log_events(logGroupName="/voltabuild/builds", logStreamName=build_id,
                           logEvents=[{"timestamp": NOW_MS + 1000, "message": "line 5"}])
    more = json.loads(api.http.get(f"/builds/{build_id}/logs?next={end['next']}").body)
    assert [ln["message"] for ln in more["lines"]] == ["line 5"]


def test_logs_before_anything_was_shipped(api, build_id):
    page = json.loads(api.http.get(f"/builds/{build_id}/logs").body)
    assert page["lines"] == [] and page["status"] == "LAUNCHING"


def test_logs_bad_queries_are_400(api, build_id, shipped):
    for query in ["?next=$(id)", "?next=f/1;id", "?limit=0", "?limit=x", "?limit=1001", "?follow=1"]:
        resp = api.http.get(f"/builds/{build_id}/logs{query}")
        assert resp.status_code == 400, (query, resp.body)


def test_logs_of_an_unknown_build_is_404(api):
    assert api.http.get("/builds/b-00000000000000000000/logs").status_code == 404


def test_a_token_replaced_between_check_and_write_changes_nothing(api, build_id, monkeypatch):
    """The write itself is conditional on the token's hash: a relaunch that replaced the
    token after the check still wins."""
    wiring.store().update_fields(build_id, {"token_hash": hashlib.sha256(b"relaunched").hexdigest()})
    stale = BuildRecord.of({**record(build_id), "token_hash": hashlib.sha256(TOKEN.encode()).hexdigest()})
    real_get = wiring.store().get_record
    calls = []

    def first_read_is_stale(bid):
        calls.append(bid)
        return stale if len(calls) == 1 else real_get(bid)

    monkeypatch.setattr(wiring.store(), "get_record", first_read_is_stale)
    before = real_get(build_id)
    resp = post(api, build_id, {"type": "result", "status": "FAILED", "reason": "late"})
    assert resp.status_code == 403, resp.body
    assert real_get(build_id) == before


# ---- AWS calls: the token check is the write's condition --------------------------------------
class Calls:
    """The app's AWS API calls as ``service.Operation`` (botocore's before-call event)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        for name in ("dynamodb", "sqs"):
            wiring.client(name).meta.events.register(
                "before-call", lambda model, **_: self.seen.append(f"{model.service_model.service_name}.{model.name}"))

    def take(self) -> list[str]:
        seen, self.seen = self.seen, []
        return seen


def test_each_report_is_one_conditional_write(api, aws, build_id):
    calls = Calls()
    # the first report moves LAUNCHING -> RUNNING in the same write
    assert post(api, build_id, phase("PREPARING")).status_code == 202
    assert calls.take() == ["dynamodb.UpdateItem"]
    assert post(api, build_id, phase("BUILDING")).status_code == 202
    assert calls.take() == ["dynamodb.UpdateItem"]
    assert post(api, build_id, {"type": "heartbeat"}).status_code == 202
    assert calls.take() == ["dynamodb.UpdateItem"]
    resp = post(api, build_id, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST})
    assert resp.status_code == 202
    assert calls.take() == ["dynamodb.UpdateItem", "sqs.SendMessage"]  # the write, the notify message
    rec = record(build_id)
    assert rec["status"] == "SUCCEEDED" and rec["image"]["digest"] == DIGEST
    assert rec["image"]["tags"] == ["1.0", "latest"], "the rest of the image is kept"
    # a forged token: the write's condition refuses it, and its old item tells why (no second read)
    other = _launching(aws, token="t2-" + "q" * 40)
    before = record(other)
    calls.take()
    assert post(api, other, phase("BUILDING"), token="forged-" + "y" * 40).status_code == 403
    assert calls.take() == ["dynamodb.UpdateItem"]
    assert record(other) == before


def test_a_failure_is_one_write_and_the_notify_message(api, aws, build_id):
    post(api, build_id, phase("BUILDING"))
    calls = Calls()
    assert post(api, build_id, {"type": "result", "status": "FAILED", "reason": "x"}).status_code == 202
    assert calls.take() == ["dynamodb.UpdateItem", "sqs.SendMessage"]


def test_success_straight_from_launching_passes_through_running(api, aws, build_id):
    resp = post(api, build_id, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST})
    assert resp.status_code == 202, resp.body
    rec = record(build_id)
    assert rec["status"] == "SUCCEEDED" and rec["image"]["digest"] == DIGEST
    assert [e["status"] for e in rec["events"]] == ["QUEUED", "LAUNCHING", "RUNNING", "SUCCEEDED"]
    assert aws.messages("NotifyQueue") == [{"build_id": build_id, "status": "SUCCEEDED"}]


def test_heartbeat_from_launching_moves_it_to_running(api, build_id):
    assert post(api, build_id, {"type": "heartbeat"}).status_code == 202
    rec = record(build_id)
    assert rec["status"] == "RUNNING" and rec["heartbeat_at"]
    assert rec["events"][-1]["message"] == "the instance reported in"


def test_a_result_after_the_build_was_requeued_is_403(api, build_id):
    post(api, build_id, phase("BUILDING"))
    wiring.transitions().move(build_id, Status.QUEUED, expect=[Status.RUNNING], fields={"attempt": 2},
                              remove=["token_hash"])
    before = record(build_id)
    for body in ({"type": "result", "status": "FAILED", "reason": "x"}, {"type": "heartbeat"}, phase("PUSHING")):
        assert post(api, build_id, body).status_code == 403
    assert record(build_id) == before


# ---- the reporting instance's identity (issue 16) ------------------------------------------------
def _launching_unrecorded(aws) -> str:
    """LAUNCHING with the attempt's token, but the launcher died before recording its instance."""
    build, _ = wiring.builds().submit(BuildRequest(framework="canary"))
    aws.messages("LaunchQueue")
    wiring.transitions().move(build.id, Status.LAUNCHING, expect=[Status.QUEUED], fields={
        "token_hash": hashlib.sha256(TOKEN.encode()).hexdigest()})
    return build.id


def test_a_report_records_its_instance_on_a_build_that_has_none(api, aws):
    bid = _launching_unrecorded(aws)
    resp = post(api, bid, {**phase("PREPARING"), "instance_id": "i-0aaaaaaaaaaaaaaa1"})
    assert resp.status_code == 202, resp.body
    rec = record(bid)
    assert (rec["status"], rec["instance_id"]) == ("RUNNING", "i-0aaaaaaaaaaaaaaa1")
    # once recorded it is never replaced by what a report says
    assert post(api, bid, {"type": "heartbeat", "instance_id": "i-0bbbbbbbbbbbbbbb2"}).status_code == 202
    assert record(bid)["instance_id"] == "i-0aaaaaaaaaaaaaaa1"


def test_a_recorded_instance_is_kept_and_a_bad_instance_id_is_400(api, build_id):
    assert post(api, build_id, {"type": "heartbeat", "instance_id": "i-0bbbbbbbbbbbbbbb2"}).status_code in (202, 409)
    assert record(build_id)["instance_id"] == "i-0123456789abcdef0"
    resp = post(api, build_id, {**phase("PREPARING"), "instance_id": "i-; reboot"})
    assert resp.status_code == 400 and "instance_id" in json.loads(resp.body)["Message"]


def test_a_forged_token_records_no_instance(api, aws):
    bid = _launching_unrecorded(aws)
    resp = post(api, bid, {**phase("PREPARING"), "instance_id": "i-0aaaaaaaaaaaaaaa1"}, token="forged-" + "y" * 40)
    assert resp.status_code == 403
    assert "instance_id" not in record(bid)


# ---- pushed, but reported FAILED (issue 16; the choice is documented in chalicelib/launching/pushed.py) --------
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7,
                                  "digest": "sha256:" + "d" * 64}, "layers": []})


@pytest.fixture
def pushing(aws, monkeypatch):
    """A RUNNING build in ECR's registry (moto's account), in phase PUSHING."""
    monkeypatch.setenv("IMAGE_REGISTRY", "123456789012.dkr.ecr.us-east-1.amazonaws.com")
    wiring.reset()
    build, _ = wiring.builds().submit(BuildRequest(framework="canary", tags=["nightly", "stable"]))
    aws.messages("LaunchQueue")
    wiring.transitions().move(build.id, Status.LAUNCHING, expect=[Status.QUEUED], fields={
        "token_hash": hashlib.sha256(TOKEN.encode()).hexdigest(), "instance_id": "i-0123456789abcdef0",
        "launch_started_at": wiring.store().get_record(build.id).created_at})
    return build.id  # its ECR repository comes with the stage's resources (infra/)


def push(aws, bid: str, tags: list[str], manifest: str = MANIFEST) -> str:
    ecr = aws.client("ecr")
    name = record(bid)["image"]["repository"].split("/", 1)[1]
    digests = {ecr.put_image(repositoryName=name, imageManifest=manifest, imageTag=tag)["image"]["imageId"]
               ["imageDigest"] for tag in tags}
    (digest,) = digests
    return digest


def test_failure_reported_after_every_tag_was_pushed_is_a_success_with_a_note(api, aws, pushing):
    assert post(api, pushing, phase("PUSHING")).status_code == 202
    digest = push(aws, pushing, record(pushing)["image"]["tags"])
    aws.messages("NotifyQueue")
    resp = post(api, pushing, {"type": "result", "status": "FAILED",
                               "reason": "the image was pushed but the result could not be reported"})
    assert resp.status_code == 202 and json.loads(resp.body)["status"] == "SUCCEEDED"
    rec = record(pushing)
    assert rec["status"] == "SUCCEEDED" and rec["image"]["digest"] == digest and not rec.get("reason")
    note = rec["events"][-1]["message"]
    assert "the instance reported FAILED (the image was pushed but the result could not be reported)" in note
    assert f"ECR holds every tag ({', '.join(rec['image']['tags'])}) at {digest}" in note
    assert aws.messages("NotifyQueue") == [{"build_id": pushing, "status": "SUCCEEDED"}]


def test_failure_after_a_partial_push_stays_failed(api, aws, pushing):
    tags = record(pushing)["image"]["tags"]
    assert len(tags) >= 2
    assert post(api, pushing, phase("PUSHING")).status_code == 202
    push(aws, pushing, tags[:1])  # the push of the other tags failed
    assert post(api, pushing, {"type": "result", "status": "FAILED", "reason": "pushing failed"}).status_code == 202
    rec = record(pushing)
    assert rec["status"] == "FAILED" and rec["reason"] == "pushing failed"


def test_failure_before_pushing_never_asks_ecr(api, aws, pushing):
    push(aws, pushing, record(pushing)["image"]["tags"])  # an earlier build's image under the same tags
    assert post(api, pushing, phase("TESTING")).status_code == 202
    assert post(api, pushing, {"type": "result", "status": "FAILED", "reason": "GPU test failed"}).status_code == 202
    assert record(pushing)["status"] == "FAILED"


def test_tags_at_a_digest_ecr_did_not_see_this_build_push_stay_failed(api, aws, pushing):
    assert post(api, pushing, phase("PUSHING")).status_code == 202
    wiring.store().update_fields(pushing, {"ecr_digest": "sha256:" + "e" * 64})  # what the push event saw
    push(aws, pushing, record(pushing)["image"]["tags"])  # ... but the tags point elsewhere
    assert post(api, pushing, {"type": "result", "status": "FAILED", "reason": "x"}).status_code == 202
    assert record(pushing)["status"] == "FAILED"
