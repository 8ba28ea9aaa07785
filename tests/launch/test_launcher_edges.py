"""Edges of the launcher that test_launch_launcher.py leaves out: what a cancel before the
launch records, that a message read from a stale copy of its build never moves it, and
the log line an operator reads for each message."""

from __future__ import annotations

import json
import logging

import pytest
from test_launch_launcher import ec2_env, instances, record, submit  # noqa: F401 (ec2_env: a fixture)

from chalicelib import wiring
from chalicelib.builds.states import Status


def stale_reads(monkeypatch, copy) -> None:
    """The launcher reads ``copy`` of the build (the message raced a write it does not see yet)."""
    monkeypatch.setattr(wiring.store(), "get_record", lambda _id: copy)


def stored(build_id: str) -> dict:
    """The build as the table holds it (past a stale_reads patch)."""
    store = wiring.store()
    return type(store).get_record(store, build_id).model_dump(mode="json", exclude_unset=True)


def relaunch_message(build_id: str, attempt: int = 1) -> str:
    """A launch message without the timeout: the launcher reads the build first."""
    return json.dumps({"build_id": build_id, "attempt": attempt})


# ---- a cancel before the launch ------------------------------------------------------------------
def test_a_cancel_before_the_launch_says_so_in_the_timeline_and_the_log(aws, ec2_env, caplog):  # noqa: F811
    build_id, _ = submit(aws)
    wiring.store().update_fields(build_id, {"cancel_requested": True})
    with caplog.at_level(logging.INFO, logger="voltabuild.launcher"):
        outcome = wiring.launcher().handle(relaunch_message(build_id))
    assert (outcome.action, outcome.detail) == ("cancelled", build_id)
    rec = record(build_id)
    assert rec["status"] == "CANCELLED"
    assert rec["events"][-1]["message"] == "cancelled by request before launch"
    assert f"launch cancelled: {build_id}" in caplog.messages
    assert instances(ec2_env["ec2"]) == []


def test_a_redelivered_cancel_read_from_a_stale_copy_changes_nothing(aws, ec2_env, monkeypatch, caplog):  # noqa: F811
    build_id, _ = submit(aws)
    wiring.store().update_fields(build_id, {"cancel_requested": True})
    stale = wiring.store().get_record(build_id)
    assert wiring.launcher().handle(relaunch_message(build_id)).action == "cancelled"
    before = record(build_id)
    stale_reads(monkeypatch, stale)
    with caplog.at_level(logging.INFO, logger="voltabuild.launcher"):
        outcome = wiring.launcher().handle(relaunch_message(build_id))
    assert (outcome.action, outcome.detail) == ("ignored", f"{build_id}: moved on")
    assert f"launch ignored: {build_id}: moved on" in caplog.messages
    assert stored(build_id) == before


@pytest.mark.parametrize("now", ["queued again as attempt 2", "launching attempt 1 elsewhere"])
def test_a_cancel_read_from_a_stale_copy_never_moves_the_build(aws, ec2_env, monkeypatch, now):  # noqa: F811
    """The copy says QUEUED at attempt 1 with a cancel requested; the build has moved on since
    (another attempt, or another launcher's LAUNCHING write): this message is stale."""
    build_id, _ = submit(aws)
    wiring.store().update_fields(build_id, {"cancel_requested": True})
    stale = wiring.store().get_record(build_id)
    if now.startswith("queued"):
        wiring.store().update_fields(build_id, {"attempt": 2}, expect=[Status.QUEUED])
    else:
        wiring.transitions().move(build_id, Status.LAUNCHING, expect=[Status.QUEUED], message="launching attempt 1")
    before = record(build_id)
    stale_reads(monkeypatch, stale)
    assert wiring.launcher().handle(relaunch_message(build_id)).action == "ignored"
    assert stored(build_id) == before
