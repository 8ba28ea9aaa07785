"""The builds table's edges that no route test reaches (issue 26, found by mutating
chalicelib/builds/store.py): what a move writes besides the status, reads that must not
return a non-build item, batched reads, and the quotas exactly at their limits.

GIVEN builds in moto's table, WHEN the store reads or moves them, THEN what the API and the
reaper later read is what a user was promised."""

from __future__ import annotations

import pytest

from chalicelib import wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.states import Phase, Status
from chalicelib.builds.store import GROUP_PREFIX, QUOTA_ID
from chalicelib.errors import BuildNotFound, InvalidTransition, QuotaExceeded


def submit(**fields) -> str:
    build, _ = wiring.builds().submit(BuildRequest(framework="canary", **fields))
    return build.id


def running(phase: Phase | None = Phase.BUILDING) -> str:
    bid = submit()
    move = wiring.store().move
    move(bid, Status.LAUNCHING, expect=[Status.QUEUED])
    move(bid, Status.RUNNING, expect=[Status.LAUNCHING], phase=phase)
    return bid


# ---- what a move writes -----------------------------------------------------------------
def test_a_long_timeline_message_is_cut_to_2000_characters(aws):
    bid = submit()
    rec = wiring.store().move(bid, Status.LAUNCHING, expect=[Status.QUEUED], message="m" * 2500)
    assert rec.events[-1].message == "m" * 2000
    assert wiring.store().get(bid).events[-1].message == "m" * 2000


def test_a_move_written_with_other_items_returns_the_build_as_stored(aws):
    # GIVEN a building build WHEN it is failed in one transaction with another item's ADD
    bid = running()
    store = wiring.store()
    read = store.get_record(bid)
    also = [{"Update": {"TableName": store.table_name, "Key": {"id": {"S": "test#counter"}},
                        "UpdateExpression": "ADD n :one", "ExpressionAttributeValues": {":one": {"N": "1"}}}}]
    moved = store.move(bid, Status.FAILED, expect=[Status.RUNNING], message="lost", also=also, base=read,
                       fields={"reason": "lost", "instance_terminated_at": "2999-01-01T00:00:00.000Z"},
                       at="2999-01-01T00:00:00.000Z")
    # THEN what it returns is what a read gives: the status, the end at the given time, the
    # timeline entry, the fields, the phase and the active marker gone; and the other item was written
    stored = store.get_record(bid)
    for rec in (moved, stored):
        assert (rec.status, rec.finished_at, rec.reason) == (Status.FAILED, "2999-01-01T00:00:00.000Z", "lost")
        assert rec.instance_terminated_at == "2999-01-01T00:00:00.000Z"
        assert rec.phase is None and rec.active is None
        assert (rec.events[-1].status, rec.events[-1].at, rec.events[-1].message) == (
            Status.FAILED, "2999-01-01T00:00:00.000Z", "lost")
    assert moved.model_dump(exclude={"updated_at"}) == stored.model_dump(exclude={"updated_at"})
    counter = store._db.get_item(TableName=store.table_name, Key={"id": {"S": "test#counter"}})["Item"]
    assert counter["n"] == {"N": "1"}
    # a second such move loses (the build is final): nothing is added again
    with pytest.raises(InvalidTransition):
        store.move(bid, Status.FAILED, expect=[Status.RUNNING], also=also, base=stored)
    assert store._db.get_item(TableName=store.table_name, Key={"id": {"S": "test#counter"}})["Item"]["n"] == {"N": "1"}


def test_a_move_with_other_items_needs_the_build_as_read(aws):
    with pytest.raises(ValueError, match="base"):
        wiring.store().move(running(), Status.FAILED, expect=[Status.RUNNING], also=[{"Update": {}}])


def test_a_requeued_or_ended_build_has_no_phase_but_a_heartbeat_keeps_it(aws):
    store = wiring.store()
    bid = running()
    assert store.move(bid, Status.RUNNING, expect=[Status.RUNNING], record_event=False).phase == Phase.BUILDING
    assert store.move(bid, Status.QUEUED, expect=[Status.RUNNING]).phase is None
    assert store.get_record(bid).phase is None
    other = running(Phase.PUSHING)
    assert store.move(other, Status.FAILED, message="x").phase is None


def test_a_final_build_has_its_end_and_leaves_the_active_index(aws):
    store = wiring.store()
    done, live = running(), running()
    rec = store.move(done, Status.SUCCEEDED, expect=[Status.RUNNING])
    assert rec.finished_at and rec.finished_at == rec.events[-1].at
    assert store.get_record(live).finished_at is None
    assert [r.id for r in store.active_records()] == [live]
    assert store.get_record(done).active is None and store.get_record(live).active == "1"


def test_a_move_without_a_timeline_entry_adds_none(aws):
    store = wiring.store()
    bid = running()
    before = store.get_record(bid).events
    after = store.move(bid, Status.RUNNING, expect=[Status.RUNNING], record_event=False).events
    assert after == before


def test_a_move_no_expected_state_allows_is_refused_before_any_write(aws):
    store = wiring.store()
    bid = submit()
    before = store.get_record(bid)
    with pytest.raises(InvalidTransition, match="no state may move to QUEUED"):
        store.move(bid, Status.QUEUED, expect=[Status.SUCCEEDED])
    assert store.get_record(bid) == before


def test_a_refused_move_says_what_the_build_is(aws):
    bid = submit()
    with pytest.raises(InvalidTransition, match=f"build {bid} is QUEUED; it cannot move to SUCCEEDED"):
        wiring.store().move(bid, Status.SUCCEEDED, expect=[Status.RUNNING])


def test_fields_are_set_only_while_the_build_is_in_an_expected_state(aws):
    store = wiring.store()
    bid = running()
    store.move(bid, Status.FAILED, message="x")
    with pytest.raises(InvalidTransition, match=f"build {bid} is FAILED"):
        store.update_fields(bid, {"ecr_digest": "sha256:" + "a" * 64})
    assert store.get_record(bid).ecr_digest is None


# ---- reads -------------------------------------------------------------------------------
def test_a_quota_or_group_item_is_never_read_as_a_build(aws):
    store = wiring.store()
    bid = submit()
    aws.client("dynamodb").put_item(TableName=store.table_name, Item={
        "id": {"S": GROUP_PREFIX + "g-0123456789abcdef0123"}, "kind": {"S": "group"}})
    for item_id in (QUOTA_ID, GROUP_PREFIX + "g-0123456789abcdef0123", "b-00000000000000000000"):
        with pytest.raises(BuildNotFound, match="no build with id"):
            store.get_record(item_id)
    assert [r.id for r in store.get_records([QUOTA_ID, bid, "b-00000000000000000000"])] == [bid]


def test_many_builds_are_read_in_batches_in_the_order_asked(aws):
    # BatchGetItem takes at most 100 keys: 250 ids (most of them unknown) need three batches,
    # and the builds found come back in the order asked, wherever their batch
    real = [submit() for _ in range(3)]
    unknown = [f"b-{n:020d}" for n in range(247)]
    wanted = [real[2], *unknown[:99], real[0], *unknown[99:199], real[1], *unknown[199:]]
    assert len(wanted) == 250
    assert [r.id for r in wiring.store().get_records(wanted)] == [real[2], real[0], real[1]]


def test_a_group_id_that_is_a_build_is_not_a_group(aws):
    bid = submit()
    with pytest.raises(BuildNotFound, match="no group with id"):
        wiring.store().get_group(bid)


def test_find_by_instance(aws):
    store = wiring.store()
    bid = running()
    store.update_fields(bid, {"instance_id": "i-0123456789abcdef0"})
    assert store.find_by_instance("i-0123456789abcdef0").id == bid
    assert store.find_by_instance("i-0fffffffffffffff0") is None


def test_recent_records_are_the_newest_in_a_status(aws):
    store = wiring.store()
    ids = [submit() for _ in range(3)]
    store.move(ids[1], Status.LAUNCHING, expect=[Status.QUEUED])
    newest_first = [r.id for r in store.recent_records(Status.QUEUED, 5)]
    assert newest_first == [ids[2], ids[0]]
    assert [r.id for r in store.recent_records(Status.QUEUED, 1)] == [ids[2]]
    assert store.recent_records(Status.QUEUED, 1)[0].kind == "build"


# ---- quotas at their limits --------------------------------------------------------------
def test_a_key_may_book_its_gpu_hours_exactly(aws, monkeypatch):
    # pytorch's default books 1.5 GPU-hours: two fill a 3-hour day exactly, a third does not fit
    monkeypatch.setenv("MAX_GPU_HOURS_PER_KEY_DAY", "3")
    wiring.reset()
    svc = wiring.builds()
    b, _ = svc.submit(BuildRequest(framework="pytorch"), api_key_id="key-a")
    svc.submit(BuildRequest(framework="pytorch"), api_key_id="key-a")
    assert wiring.store().key_gpu_hours("key-a", b.created_at[:10]) == 3.0
    with pytest.raises(QuotaExceeded, match="the key may book 3 per UTC day"):
        svc.submit(BuildRequest(framework="pytorch"), api_key_id="key-a")
    assert wiring.store().key_gpu_hours("key-b", b.created_at[:10]) == 0.0


def test_the_last_active_slot_may_be_taken(aws, monkeypatch):
    monkeypatch.setenv("MAX_ACTIVE_BUILDS", "2")
    wiring.reset()
    first, second = submit(), submit()
    assert wiring.store().slot_holders() == {first, second}
    with pytest.raises(QuotaExceeded, match="too many active builds: the limit is 2; wait for one"):
        submit()
