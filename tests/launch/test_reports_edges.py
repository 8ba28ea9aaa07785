"""The instance's reports at their edges (issue 26, found by mutating
chalicelib/launching/reports.py): what the timeline and the record say when a report leaves
a field out, the limits on what a report may carry, the header's spelling, and reports that
race a relaunch or the launcher.

GIVEN a build as the launcher leaves it, WHEN its instance (or a stale one) reports, THEN the
user reads on GET /builds/{id} what happened, and a report that lost a race changes nothing."""

from __future__ import annotations

import hashlib
import json

import pytest
from test_launch_reports import (
    DIGEST,
    TOKEN,
    Calls,
    _launching,
    _launching_unrecorded,
    phase,
    post,
    push,
    pushing,  # noqa: F401  (a fixture)
    record,
)

from chalicelib import wiring
from chalicelib.builds.states import Phase, Status
from chalicelib.launching import reports as reports_module


@pytest.fixture
def build_id(aws):
    return _launching(aws)


def shown(api, build_id: str) -> dict:
    return json.loads(api.http.get(f"/builds/{build_id}").body)


def message(resp) -> str:
    return json.loads(resp.body)["Message"]


# ---- the Authorization header ---------------------------------------------------------------
def test_the_scheme_is_case_insensitive_and_spaces_around_the_header_are_ignored(api, build_id):
    assert post(api, build_id, phase("PREPARING"), scheme="bearer").status_code == 202
    assert post(api, build_id, phase("BUILDING"), token=f"{TOKEN}  ", scheme="  BEARER").status_code == 202
    assert record(build_id)["phase"] == "BUILDING"


def test_more_than_one_space_between_the_scheme_and_the_token_is_allowed(api, build_id):
    # RFC 9110's credentials: auth-scheme, then 1*SP, then the token
    assert post(api, build_id, phase("PREPARING"), token=f"   {TOKEN}").status_code == 202
    assert post(api, build_id, phase("BUILDING"), token=f"{TOKEN} extra").status_code == 403


# ---- what a report leaves out -------------------------------------------------------------------
def test_a_phase_without_a_message_is_named_on_the_timeline(api, build_id):
    assert post(api, build_id, {"type": "phase", "phase": "BUILDING"}).status_code == 202
    assert shown(api, build_id)["events"][-1]["message"] == "building"


def test_a_success_without_a_message_names_its_digest(api, build_id):
    post(api, build_id, phase("PUSHING"))
    assert post(api, build_id, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST}).status_code == 202
    assert shown(api, build_id)["events"][-1]["message"] == f"pushed {DIGEST}"


def test_a_failure_without_a_reason_says_the_build_failed(api, build_id):
    post(api, build_id, phase("BUILDING"))
    assert post(api, build_id, {"type": "result", "status": "FAILED"}).status_code == 202
    build = shown(api, build_id)
    assert build["reason"] == "the build failed" and build["events"][-1]["message"] == "the build failed"


def test_a_blank_log_tail_adds_no_log_section(api, build_id):
    post(api, build_id, phase("BUILDING"))
    body = {"type": "result", "status": "FAILED", "reason": "pip failed", "log_tail": " \n\n "}
    assert post(api, build_id, body).status_code == 202
    assert shown(api, build_id)["reason"] == "pip failed"


def test_the_reason_keeps_the_last_6000_characters_of_a_long_log(api, build_id):
    post(api, build_id, phase("BUILDING"))
    tail = "".join(f"line {n:05d}\n" for n in range(700))  # 7700 characters, the end matters
    body = {"type": "result", "status": "FAILED", "reason": "the image build failed", "log_tail": tail}
    assert post(api, build_id, body).status_code == 202
    reason = shown(api, build_id)["reason"]
    assert len(reason) == 6000 and reason.endswith("line 00699")
    assert shown(api, build_id)["events"][-1]["message"] == "the image build failed"


def test_the_success_report_is_the_last_heartbeat(api, build_id, monkeypatch):
    monkeypatch.setattr(reports_module, "now_iso", lambda: "2026-12-02T10:00:00.000Z")
    post(api, build_id, phase("PUSHING"))
    monkeypatch.setattr(reports_module, "now_iso", lambda: "2026-12-02T10:05:00.000Z")
    assert post(api, build_id, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST}).status_code == 202
    assert shown(api, build_id)["heartbeat_at"] == "2026-12-02T10:05:00.000Z"


# ---- limits on what a report carries ------------------------------------------------------------
def test_messages_up_to_2000_characters_are_taken_and_longer_ones_are_400(api, build_id):
    assert post(api, build_id, {**phase("PREPARING"), "message": "m" * 2000}).status_code == 202
    before = record(build_id)
    resp = post(api, build_id, {**phase("BUILDING"), "message": "m" * 2001})
    assert resp.status_code == 400 and "message" in message(resp)
    for field, size in (("reason", 2001), ("log_tail", 8001)):
        resp = post(api, build_id, {"type": "result", "status": "FAILED", field: "r" * size})
        assert resp.status_code == 400 and field in message(resp), field
    assert record(build_id) == before
    assert post(api, build_id, {"type": "result", "status": "FAILED", "log_tail": "l" * 8000}).status_code == 202


def test_a_result_that_contradicts_itself_is_400_saying_why(api, build_id):
    for body, needle in [
        ({"type": "result", "status": "SUCCEEDED"}, "digest: required when status is SUCCEEDED"),
        ({"type": "result", "status": "BUILT"}, "digest: required when status is BUILT"),
        ({"type": "result", "status": "SUCCEEDED", "digest": DIGEST, "cause": "host"},
         "cause: only a FAILED result has a cause"),
    ]:
        resp = post(api, build_id, body)
        assert resp.status_code == 400 and needle in message(resp), (body, resp.body)
    assert record(build_id)["status"] == "LAUNCHING"


# ---- what a report that came too late hears --------------------------------------------------
def test_a_phase_that_would_move_back_is_409_naming_both_phases(api, build_id):
    post(api, build_id, phase("TESTING"))
    resp = post(api, build_id, phase("BUILDING"))
    assert resp.status_code == 409
    assert message(resp) == "phase: the build is already TESTING; BUILDING would move it backwards"


def test_built_from_a_build_that_is_not_split_is_409_saying_so(api, build_id):
    resp = post(api, build_id, {"type": "result", "status": "BUILT", "digest": DIGEST})
    assert resp.status_code == 409
    assert "BUILT is for a split build's build stage" in message(resp)
    assert record(build_id)["status"] == "LAUNCHING"


# ---- races -------------------------------------------------------------------------------------------
def test_a_stale_attempts_success_while_the_next_attempt_runs_is_403(api, build_id):
    post(api, build_id, phase("PUSHING"))
    new = "new-" + "n" * 40
    move = wiring.transitions().move
    move(build_id, Status.QUEUED, expect=[Status.RUNNING], fields={"attempt": 2}, remove=["token_hash"])
    move(build_id, Status.LAUNCHING, expect=[Status.QUEUED],
         fields={"token_hash": hashlib.sha256(new.encode()).hexdigest()})
    assert post(api, build_id, phase("PREPARING"), token=new).status_code == 202
    before = record(build_id)
    assert post(api, build_id, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST}).status_code == 403
    assert record(build_id) == before


def test_an_instance_the_launcher_records_meanwhile_is_kept(api, aws, monkeypatch):
    """The report's write found no instance; before the report records its own, the
    launcher (which just learned its instance id) records the real one: that one stays."""
    bid = _launching_unrecorded(aws)
    store = wiring.store()
    real = store.update_fields

    def launcher_first(build_id, fields, **kw):
        if fields == {"instance_id": "i-0aaaaaaaaaaaaaaa1"}:
            real(build_id, {"instance_id": "i-0123456789abcdef0"})
        return real(build_id, fields, **kw)

    monkeypatch.setattr(store, "update_fields", launcher_first)
    resp = post(api, bid, {**phase("PREPARING"), "instance_id": "i-0aaaaaaaaaaaaaaa1"})
    assert resp.status_code == 202, resp.body
    assert record(bid)["instance_id"] == "i-0123456789abcdef0"


def test_a_relaunch_between_the_report_and_its_instance_id_keeps_the_new_attempt(api, aws, monkeypatch):
    """The report's write went through; before it records its instance, the build was
    relaunched (a new token, no instance yet): the old instance is not recorded on it."""
    bid = _launching_unrecorded(aws)
    store = wiring.store()
    real = store.update_fields
    new_hash = hashlib.sha256(b"new-" + b"n" * 40).hexdigest()

    def relaunched_first(build_id, fields, **kw):
        if fields == {"instance_id": "i-0aaaaaaaaaaaaaaa1"}:
            real(build_id, {"token_hash": new_hash, "attempt": 2})
        return real(build_id, fields, **kw)

    monkeypatch.setattr(store, "update_fields", relaunched_first)
    assert post(api, bid, {**phase("PREPARING"), "instance_id": "i-0aaaaaaaaaaaaaaa1"}).status_code == 202
    rec = record(bid)
    assert rec["token_hash"] == new_hash and "instance_id" not in rec


def test_a_heartbeat_moves_the_heartbeat_time_forward(api, build_id, monkeypatch):
    """The reaper takes a build whose heartbeat is old for dead: every heartbeat must renew it."""
    monkeypatch.setattr(reports_module, "now_iso", lambda: "2026-12-02T10:00:00.000Z")
    post(api, build_id, phase("BUILDING"))
    monkeypatch.setattr(reports_module, "now_iso", lambda: "2026-12-02T10:20:00.000Z")
    assert post(api, build_id, {"type": "heartbeat"}).status_code == 202
    assert shown(api, build_id)["heartbeat_at"] == "2026-12-02T10:20:00.000Z"


def test_a_refused_report_of_any_type_costs_one_write_and_no_read(api, aws, build_id):
    """A forged token is told 403 from the item the refused write returned (ALL_OLD)."""
    post(api, build_id, phase("BUILDING"))
    calls = Calls()
    forged = "forged-" + "y" * 40
    for body in ({"type": "heartbeat"}, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST},
                 {"type": "result", "status": "FAILED", "reason": "x"}, phase("TESTING")):
        calls.take()
        assert post(api, build_id, body, token=forged).status_code == 403, body
        assert calls.take() == ["dynamodb.UpdateItem"], body


def test_success_straight_from_launching_notes_that_the_instance_reported_in(api, build_id):
    assert post(api, build_id, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST}).status_code == 202
    events = shown(api, build_id)["events"]
    assert [(e["status"], e["message"]) for e in events[-2:]] == [
        ("RUNNING", "the instance reported in"), ("SUCCEEDED", f"pushed {DIGEST}")]


# ---- a report from LAUNCHING racing EC2's event or a relaunch -----------------------------------
NEW = "new-" + "n" * 40


def before_write(monkeypatch, n: int, action, calls: Calls | None = None) -> None:
    """Run ``action`` just before the report's ``n``-th write (1 = its first); ``calls`` then
    forgets the calls so far, to hold what the report makes after the race."""
    transitions = wiring.transitions()
    real = transitions.move
    count = [0]

    def move(*args, **kw):
        count[0] += 1
        if count[0] == n:
            monkeypatch.setattr(transitions, "move", real)
            action()
            if calls is not None:
                calls.take()
        return real(*args, **kw)

    monkeypatch.setattr(transitions, "move", move)


def ec2_running(build_id: str):
    return lambda: wiring.transitions().move(build_id, Status.RUNNING, expect=[Status.LAUNCHING],
                                             message="EC2 running")


def relaunched(build_id: str):
    def action():
        move = wiring.transitions().move
        move(build_id, Status.QUEUED, expect=[Status.LAUNCHING, Status.RUNNING], fields={"attempt": 2},
             remove=["token_hash"])
        move(build_id, Status.LAUNCHING, expect=[Status.QUEUED],
             fields={"token_hash": hashlib.sha256(NEW.encode()).hexdigest()})
    return action


@pytest.mark.parametrize("body", [{"type": "heartbeat"}, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST}],
                         ids=["heartbeat", "success"])
def test_a_first_report_that_loses_to_ec2s_running_event_still_counts(api, build_id, monkeypatch, body):
    # the report's first write finds the build LAUNCHING; EC2's event moves it before the second
    calls = Calls()
    before_write(monkeypatch, 2, ec2_running(build_id), calls)
    assert post(api, build_id, body).status_code == 202
    # the lost write's old item (ALL_OLD) says the build is RUNNING now: no read
    assert calls.take() == (["dynamodb.UpdateItem"] if body["type"] == "heartbeat"
                            else ["dynamodb.UpdateItem", "dynamodb.UpdateItem", "sqs.SendMessage"])
    rec = record(build_id)
    assert rec["status"] == ("RUNNING" if body["type"] == "heartbeat" else "SUCCEEDED")
    assert [e["status"] for e in rec["events"]].count("RUNNING") == 1


@pytest.mark.parametrize("body", [{"type": "heartbeat"}, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST}],
                         ids=["heartbeat", "success"])
def test_a_first_report_that_loses_to_a_relaunch_changes_nothing(api, build_id, monkeypatch, body):
    # the report's first write finds the build LAUNCHING; a relaunch draws a new token before the second
    before_write(monkeypatch, 2, relaunched(build_id))
    assert post(api, build_id, body).status_code == 403
    rec = record(build_id)
    assert (rec["status"], rec["attempt"]) == ("LAUNCHING", 2)
    assert [e["status"] for e in rec["events"]] == ["QUEUED", "LAUNCHING", "QUEUED", "LAUNCHING"]


def test_a_success_whose_last_write_loses_to_a_relaunch_is_403(api, build_id, monkeypatch):
    # LAUNCHING: the success moves it to RUNNING, then a relaunch comes before the success's write
    calls = Calls()
    before_write(monkeypatch, 3, relaunched(build_id), calls)
    assert post(api, build_id, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST}).status_code == 403
    assert calls.take() == ["dynamodb.UpdateItem"], "the lost write's old item tells why: no read"
    rec = record(build_id)
    assert (rec["status"], rec["attempt"]) == ("LAUNCHING", 2) and not rec.get("image", {}).get("digest")


# ---- FAILED reported after the push (the choice is documented in chalicelib/launching/pushed.py) ----
def test_a_failure_after_the_push_without_a_reason_says_so_in_the_note(api, aws, pushing):  # noqa: F811
    assert post(api, pushing, phase("PUSHING")).status_code == 202
    push(aws, pushing, record(pushing)["image"]["tags"])
    assert post(api, pushing, {"type": "result", "status": "FAILED"}).status_code == 202
    rec = record(pushing)
    assert rec["status"] == "SUCCEEDED"
    assert "the instance reported FAILED (no reason given)" in rec["events"][-1]["message"]


def test_the_note_quotes_at_most_300_characters_of_the_reason(api, aws, pushing):  # noqa: F811
    assert post(api, pushing, phase("PUSHING")).status_code == 202
    push(aws, pushing, record(pushing)["image"]["tags"])
    assert post(api, pushing, {"type": "result", "status": "FAILED", "reason": "r" * 1000}).status_code == 202
    note = record(pushing)["events"][-1]["message"]
    assert f"the instance reported FAILED ({'r' * 300})" in note


@pytest.mark.parametrize("pushed_all", [True, False], ids=["every-tag-pushed", "partly-pushed"])
def test_a_cancel_while_ecr_is_asked_wins_over_a_failure_after_the_push(api, aws, pushing, monkeypatch,  # noqa: F811
                                                                        pushed_all):
    """A cancel recorded while the service asks ECR about the pushed tags: the report's write
    (SUCCEEDED with a note, or FAILED) must not go through; the instance's end will make it CANCELLED."""
    assert post(api, pushing, phase("PUSHING")).status_code == 202
    tags = record(pushing)["image"]["tags"]
    push(aws, pushing, tags if pushed_all else tags[:1])
    pushed = wiring.reports().pushed
    real = pushed.digest

    calls = Calls()

    def cancel_meanwhile(old):
        wiring.store().update_fields(pushing, {"cancel_requested": True})
        calls.take()
        return real(old)

    monkeypatch.setattr(pushed, "digest", cancel_meanwhile)
    resp = post(api, pushing, {"type": "result", "status": "FAILED", "reason": "x"})
    assert resp.status_code == 409 and message(resp) == f"build {pushing} moved on; the report was not applied"
    assert calls.take() == ["dynamodb.UpdateItem"], "the lost write's old item tells why: no read"
    rec = record(pushing)
    assert (rec["status"], rec["cancel_requested"]) == ("RUNNING", True)


# ---- more of what the instance hears ------------------------------------------------------------
def test_a_too_large_body_with_a_forged_token_is_403_and_with_the_real_one_413(api, build_id):
    big = json.dumps({"type": "phase", "phase": "BUILDING", "message": "m" * (70 * 1024)})
    assert post(api, build_id, big, token="forged-" + "y" * 40).status_code == 403
    assert post(api, build_id, big).status_code == 413
    assert record(build_id)["status"] == "LAUNCHING"


def test_the_answer_has_no_phase_until_one_was_reported(api, build_id):
    resp = post(api, build_id, {"type": "heartbeat"})
    assert json.loads(resp.body) == {"id": build_id, "status": "RUNNING", "phase": None}


def test_a_retried_phase_report_renews_the_heartbeat(api, build_id, monkeypatch):
    monkeypatch.setattr(reports_module, "now_iso", lambda: "2026-12-02T10:00:00.000Z")
    post(api, build_id, phase("BUILDING"))
    monkeypatch.setattr(reports_module, "now_iso", lambda: "2026-12-02T10:30:00.000Z")
    resp = post(api, build_id, phase("BUILDING"))
    assert resp.status_code == 202 and json.loads(resp.body)["phase"] == "BUILDING"
    assert shown(api, build_id)["heartbeat_at"] == "2026-12-02T10:30:00.000Z"


def test_the_reason_of_a_cancel_that_took_effect_is_cut_to_6000_characters(api, build_id):
    post(api, build_id, phase("BUILDING"))
    assert api.http.delete(f"/builds/{build_id}").status_code == 202
    body = {"type": "result", "status": "FAILED", "reason": "terminated", "log_tail": "t" * 8000}
    assert post(api, build_id, body).status_code == 202
    reason = shown(api, build_id)["reason"]
    assert reason.startswith("cancelled by request; the instance stopped: terminated\n--- last log lines ---\n")
    assert len(reason) == 6000


def test_a_final_report_naming_its_instance_writes_nothing_more(api, aws):
    """The build is final after the report: its instance is not written after it."""
    bid = _launching_unrecorded(aws)
    post(api, bid, phase("PUSHING"))
    calls = Calls()
    body = {"type": "result", "status": "SUCCEEDED", "digest": DIGEST, "instance_id": "i-0aaaaaaaaaaaaaaa1"}
    assert post(api, bid, body).status_code == 202
    assert calls.take() == ["dynamodb.UpdateItem", "sqs.SendMessage"]


def test_an_unsplit_builds_timeline_entry_names_no_instance(api, aws):
    """Only a split build's entries name their stage's instance (issue 23)."""
    bid = _launching_unrecorded(aws)
    assert post(api, bid, {**phase("PREPARING"), "instance_id": "i-0aaaaaaaaaaaaaaa1"}).status_code == 202
    entry = shown(api, bid)["events"][-1]
    assert entry["status"] == "RUNNING" and entry["instance_id"] is None and entry["stage"] is None


def test_a_report_for_a_build_that_does_not_exist_is_403_saying_what_to_send(api, aws):
    # the same answer as a wrong token: a caller cannot tell which build ids exist
    for body in ({"type": "heartbeat"}, {"type": "nonsense"}):  # a bad body is told the token's 403 first
        resp = post(api, "b-0000000000000000dead", body)
        assert resp.status_code == 403
        assert json.loads(resp.body)["Message"] == reports_module._FORBIDDEN


def test_a_repeated_phase_report_racing_a_relaunch_is_403_and_refreshes_nothing(api, build_id, monkeypatch):
    # GIVEN a build in BUILDING, whose attempt is replaced (a new token) while the instance
    # repeats its BUILDING report (a retry): the first write finds the phase already there
    assert post(api, build_id, phase("BUILDING")).status_code == 202
    before = record(build_id)["heartbeat_at"]
    store = wiring.store()
    real, calls = store.move, []

    def move(*args, **kwargs):
        calls.append(kwargs.get("record_event", True))
        if len(calls) == 2:  # the relaunch lands between the two writes
            store.update_fields(build_id, {"token_hash": "0" * 64}, expect=[Status.RUNNING])
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "move", move)
    # WHEN the old attempt's repeat arrives THEN 403: its heartbeat refresh is conditional on its token
    assert post(api, build_id, phase("BUILDING")).status_code == 403
    monkeypatch.undo()
    assert calls == [True, False]
    assert record(build_id)["heartbeat_at"] == before


def test_a_repeated_phase_report_after_the_next_phase_began_is_409_from_the_writes_alone(api, build_id, monkeypatch):
    # GIVEN a build in BUILDING whose instance repeats that report just as its TESTING report lands
    assert post(api, build_id, phase("BUILDING")).status_code == 202
    store = wiring.store()
    real_move, real_get, moves, reads = store.move, store.get_record, [], []

    def move(*args, **kwargs):
        moves.append(kwargs.get("phase"))
        if len(moves) == 2:  # between the repeat's two writes
            real_move(build_id, Status.RUNNING, expect=[Status.RUNNING], phase=Phase.TESTING, message="testing")
        return real_move(*args, **kwargs)

    monkeypatch.setattr(store, "move", move)
    monkeypatch.setattr(store, "get_record", lambda bid: reads.append(bid) or real_get(bid))
    # WHEN the repeat's refresh finds TESTING THEN 409 naming the build; the lost writes' own
    # answers (ALL_OLD) told it so, without a read
    resp = post(api, build_id, phase("BUILDING"))
    monkeypatch.undo()
    assert resp.status_code == 409
    assert json.loads(resp.body)["Message"] == f"build {build_id} moved on; the report was not applied"
    assert reads == [] and moves == [Phase.BUILDING, None]
    assert record(build_id)["phase"] == "TESTING"


def test_a_failed_build_forgets_its_token(api, build_id):
    # the stored hash goes with the move to FAILED, as with SUCCEEDED: nothing of the attempt's
    # secret outlives the attempt
    assert "token_hash" in record(build_id)
    resp = post(api, build_id, {"type": "result", "status": "FAILED", "reason": "make: *** [all] Error 2"})
    assert resp.status_code == 202
    rec = record(build_id)
    assert rec["status"] == "FAILED" and "token_hash" not in rec


def cancelled_while_building(api, build_id: str) -> None:
    assert post(api, build_id, phase("BUILDING")).status_code == 202
    assert api.http.delete(f"/builds/{build_id}").status_code == 202


def test_a_failure_reported_after_a_cancel_reads_as_the_cancel_on_the_timeline(api, build_id):
    # GIVEN a building build whose cancel was asked for; WHEN its dying instance reports FAILED
    cancelled_while_building(api, build_id)
    resp = post(api, build_id, {"type": "result", "status": "FAILED", "reason": "terminated (SIGTERM)"})
    # THEN the user reads a cancel, with what the instance said, and the attempt's token is gone
    assert resp.status_code == 202
    rec = record(build_id)
    assert rec["status"] == "CANCELLED"
    assert rec["reason"] == "cancelled by request; the instance stopped: terminated (SIGTERM)"
    assert rec["events"][-1]["status"] == "CANCELLED" and rec["events"][-1]["message"] == "cancelled by request"
    assert "token_hash" not in rec


def test_a_failure_after_a_cancel_racing_a_new_token_is_403_from_the_writes_alone(api, build_id, monkeypatch):
    # GIVEN a cancelled building build whose token is replaced between the report's two writes
    cancelled_while_building(api, build_id)
    store = wiring.store()
    real_move, real_get, moves, reads = store.move, store.get_record, [], []

    def move(*args, **kwargs):
        moves.append(args[1])
        if len(moves) == 2:
            store.update_fields(build_id, {"token_hash": "0" * 64}, expect=[Status.RUNNING])
        return real_move(*args, **kwargs)

    monkeypatch.setattr(store, "move", move)
    monkeypatch.setattr(store, "get_record", lambda bid: reads.append(bid) or real_get(bid))
    # WHEN the old token's FAILED arrives THEN 403 and the build is left to its cancel (no read made)
    resp = post(api, build_id, {"type": "result", "status": "FAILED", "reason": "terminated (SIGTERM)"})
    monkeypatch.undo()
    assert resp.status_code == 403
    assert moves == [Status.FAILED, Status.CANCELLED] and reads == []
    rec = record(build_id)
    assert rec["status"] == "RUNNING" and rec["cancel_requested"] is True
