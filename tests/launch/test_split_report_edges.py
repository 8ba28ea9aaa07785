"""A split build's BUILT report at its edge (issue 26, found by mutating
chalicelib/launching/reports.py): only the build stage may report BUILT. GIVEN a split build
in its GPU test stage, WHEN the test stage's instance reports BUILT, THEN it is a 409 that says
BUILT is for the build stage, and the build stays RUNNING in its test stage."""

from __future__ import annotations

import pytest
from test_split_builds import DIGEST, env, launch, report, script, submit, to_test_stage, token  # noqa: F401

from chalicelib import wiring
from chalicelib.errors import Conflict


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
