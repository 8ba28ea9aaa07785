"""Concurrent conflicting transitions leave exactly one winner.

DynamoDB applies the writes to one item one at a time; moto's in-process backend does
not (its condition check and write are not atomic across threads). So the racing
clients here talk over HTTP to moto as the local stack serves it (the ``serial_moto``
fixture: one request at a time, as DynamoDB applies them), while they race freely.
"""

from __future__ import annotations

import threading

import pytest

from chalicelib.builds.builds import BuildService
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.states import Status
from chalicelib.builds.store import BuildStore
from chalicelib.builds.transitions import Transitions
from chalicelib.errors import InvalidTransition
from chalicelib.queues import Queue
from chalicelib.settings import Settings
from chalicelib.specs.catalog import load_catalog
from infra.local import create_resources, stage_environment


@pytest.fixture(scope="module")
def service(serial_moto):
    env = stage_environment(create_resources(serial_moto))
    settings = Settings(table_name=env["BUILDS_TABLE"], max_active_builds=1000)
    store = BuildStore(serial_moto.client("dynamodb"), settings.table_name, cursor_key=b"k", max_active=1000)
    transitions = Transitions(store, Queue(serial_moto.client("sqs"), env["NOTIFY_QUEUE_URL"]))
    return BuildService(store, load_catalog(), settings, Queue(serial_moto.client("sqs"), env["LAUNCH_QUEUE_URL"]),
                        transitions)


def test_conflicting_transitions_from_threads_have_one_winner(service):
    for _ in range(10):
        build, _ = service.submit(BuildRequest(framework="canary"))
        winners: list[Status] = []
        barrier = threading.Barrier(6)

        def attempt(to: Status, bid=build.id, barrier=barrier, winners=winners) -> None:
            barrier.wait()
            try:
                service.transitions.move(bid, to, expect=[Status.QUEUED])
                winners.append(to)
            except InvalidTransition:
                pass

        threads = [threading.Thread(target=attempt, args=(s,))
                   for s in (Status.LAUNCHING, Status.CANCELLED, Status.FAILED) * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1
        final = service.get(build.id)
        assert final.status == winners[0]
        assert [e.status for e in final.events] == [Status.QUEUED, winners[0]]


def test_final_state_never_changes(service):
    build, _ = service.submit(BuildRequest(framework="canary"))
    service.transitions.move(build.id, Status.CANCELLED)
    for to in Status:
        with pytest.raises(InvalidTransition):
            service.transitions.move(build.id, to)
    assert service.get(build.id).status == Status.CANCELLED
