"""A split build's BUILT report at its edge (issue 26, found by mutating
chalicelib/launching/reports.py): only the build stage may report BUILT. GIVEN a split build
in its GPU test stage, WHEN the test stage's instance reports BUILT, THEN it is a 409 that says
BUILT is for the build stage, and the build stays RUNNING in its test stage."""

from __future__ import annotations

import pytest
from test_split_builds import DIGEST, env, launch, report, script, submit, to_test_stage, token  # noqa: F401

from chalicelib import wiring
from chalicelib.builds.states import Status
from chalicelib.errors import Conflict, Forbidden


def test_built_from_the_test_stage_is_409_saying_so(aws, env):  # noqa: F811
    build_id, _, _ = to_test_stage(aws, env)
    (msg,) = aws.messages("LaunchQueue")
    tok = token(script(env["ec2"], launch(msg)))
    with pytest.raises(Conflict, match="BUILT is for a split build's build stage"):
        report(build_id, tok, {"type": "result", "status": "BUILT", "digest": DIGEST})
    rec = wiring.store().get_record(build_id)
    assert (rec.status, rec.stage) == ("RUNNING", "test")


def test_built_straight_from_launching_notes_that_the_instance_reported_in(aws, env):  # noqa: F811
    build_id, msg = submit(aws, split=True)
    tok = token(script(env["ec2"], launch(msg)))
    report(build_id, tok, {"type": "result", "status": "BUILT", "digest": DIGEST})
    events = wiring.store().get_record(build_id).events
    assert [(e.status, e.message) for e in events[2:4]] == [("RUNNING", "the instance reported in"),
                                                           ("RUNNING", events[3].message)]
    assert events[3].message.startswith("build stage done")


def test_a_stage_phase_report_names_its_instance_on_the_timeline(aws, env):  # noqa: F811
    build_id, msg = submit(aws, split=True)
    iid = launch(msg)
    tok = token(script(env["ec2"], iid))
    report(build_id, tok, {"type": "phase", "phase": "BUILDING", "stage": "build", "instance_id": iid})
    entry = wiring.store().get_record(build_id).events[-1]
    assert (entry.stage, entry.instance_id) == ("build", iid)


# ---- BUILT racing EC2, a relaunch and a cancel ---------------------------------------------
def stale_reads(monkeypatch, build_id: str, **as_read) -> list[str]:
    """The report's read of the build returns it as it was a moment ago (``as_read``): a write
    that lands meanwhile is what the report's conditional write finds. Returns the reads made."""
    store = wiring.store()
    real, reads = store.get_record, []

    def read(bid: str):
        reads.append(bid)
        return real(bid).model_copy(update=as_read)

    monkeypatch.setattr(store, "get_record", read)
    return reads


def test_built_straight_from_launching_after_ec2s_running_event_won_starts_the_test_stage(
        aws, env, monkeypatch):  # noqa: F811
    # GIVEN a split build the report reads LAUNCHING, while EC2's "running" event moved it on
    build_id, msg = submit(aws, split=True)
    tok = token(script(env["ec2"], launch(msg)))
    wiring.transitions().move(build_id, Status.RUNNING, expect=[Status.LAUNCHING], message="instance running")
    stale_reads(monkeypatch, build_id, status=Status.LAUNCHING)
    # WHEN the build stage reports BUILT THEN the test stage starts (the token still opens the build)
    report(build_id, tok, {"type": "result", "status": "BUILT", "digest": DIGEST})
    monkeypatch.undo()
    rec = wiring.store().get_record(build_id)
    assert (rec.status, rec.stage, rec.candidate_digest) == ("RUNNING", "test", DIGEST)


def token_replaced_after_the_read(monkeypatch, build_id: str, status: Status) -> None:
    """The build's token is replaced (a new attempt) after the report read it with the old one."""
    read = wiring.store().get_record(build_id)
    wiring.store().update_fields(build_id, {"token_hash": "0" * 64}, expect=[status])
    stale_reads(monkeypatch, build_id, token_hash=read.token_hash)


def test_built_with_a_token_replaced_meanwhile_is_403_and_moves_nothing(aws, env, monkeypatch):  # noqa: F811
    # GIVEN a split build still LAUNCHING whose token was replaced after the report read it
    build_id, msg = submit(aws, split=True)
    tok = token(script(env["ec2"], launch(msg)))
    token_replaced_after_the_read(monkeypatch, build_id, Status.LAUNCHING)
    # WHEN the old token reports BUILT THEN 403, and the build is not even moved to RUNNING
    with pytest.raises(Forbidden):
        report(build_id, tok, {"type": "result", "status": "BUILT", "digest": DIGEST})
    monkeypatch.undo()
    rec = wiring.store().get_record(build_id)
    assert (rec.status, rec.stage) == ("LAUNCHING", "build")
    assert [e.status for e in rec.events] == ["QUEUED", "LAUNCHING"]


def test_built_after_a_cancel_is_409_naming_the_build_with_one_read(aws, env, monkeypatch):  # noqa: F811
    # GIVEN a split build in its build stage whose cancel was just asked for
    build_id, msg = submit(aws, split=True)
    tok = token(script(env["ec2"], launch(msg)))
    report(build_id, tok, {"type": "phase", "phase": "BUILDING", "stage": "build"})
    wiring.store().update_fields(build_id, {"cancel_requested": True}, expect=[Status.RUNNING])
    reads = stale_reads(monkeypatch, build_id)
    # WHEN its build stage reports BUILT THEN 409 "moved on" (no test stage, nothing sent), and the
    # lost write's own answer told it so: one read of the build, not two
    with pytest.raises(Conflict, match=f"^build {build_id} moved on; the report was not applied$"):
        report(build_id, tok, {"type": "result", "status": "BUILT", "digest": DIGEST})
    assert reads == [build_id]
    monkeypatch.undo()
    assert wiring.store().get_record(build_id).stage == "build"
    assert aws.messages("LaunchQueue") == []


def test_built_while_building_with_a_token_replaced_meanwhile_is_403_and_starts_no_test_stage(
        aws, env, monkeypatch):  # noqa: F811
    # GIVEN a split build building, whose token is replaced after the BUILT report read the build
    build_id, msg = submit(aws, split=True)
    tok = token(script(env["ec2"], launch(msg)))
    report(build_id, tok, {"type": "phase", "phase": "BUILDING", "stage": "build"})
    token_replaced_after_the_read(monkeypatch, build_id, Status.RUNNING)
    # WHEN the old token reports BUILT THEN 403: the test stage's write holds only for that token
    with pytest.raises(Forbidden):
        report(build_id, tok, {"type": "result", "status": "BUILT", "digest": DIGEST})
    monkeypatch.undo()
    assert wiring.store().get_record(build_id).stage == "build"
    assert aws.messages("LaunchQueue") == []
