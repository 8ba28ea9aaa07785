"""Races of issue 22 against the serialized moto server (see test_concurrency.py for why):
concurrent matrices never take more quota slots than the stage has, and a build's cost is
booked exactly once however many copies of its termination event race."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from chalicelib import clock
from chalicelib.builds.builds import BuildService
from chalicelib.builds.groups import Groups
from chalicelib.builds.matrix import MatrixRequest
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.states import Status
from chalicelib.builds.store import BuildStore
from chalicelib.builds.transitions import Transitions
from chalicelib.costs.build_costs import BuildCosts
from chalicelib.costs.costagg import CostAggregates, Dimension, booking_day
from chalicelib.errors import QuotaExceeded
from chalicelib.events.cloud_events import InstanceStateChange
from chalicelib.events.lifecycle import Lifecycle, LifecycleConfig
from chalicelib.queues import Queue
from chalicelib.settings import DEFAULT_SPOT_PRICES, Settings, _prices
from chalicelib.specs.catalog import load_catalog
from infra.local import create_resources, stage_environment

MAX_ACTIVE = 10


@pytest.fixture(scope="module")
def world(serial_moto):
    env = stage_environment(create_resources(serial_moto))
    settings = Settings(table_name=env["BUILDS_TABLE"], max_active_builds=MAX_ACTIVE,
                        spot_price_table=_prices(DEFAULT_SPOT_PRICES))
    ddb = serial_moto.client("dynamodb")
    store = BuildStore(ddb, settings.table_name, cursor_key=b"k", max_active=MAX_ACTIVE)
    transitions = Transitions(store, Queue(serial_moto.client("sqs"), env["NOTIFY_QUEUE_URL"]))
    costs = BuildCosts(load_catalog(), dict(settings.spot_price_table))
    service = BuildService(store, load_catalog(), settings, Queue(serial_moto.client("sqs"), env["LAUNCH_QUEUE_URL"]),
                           transitions, costs=costs)
    lifecycle = Lifecycle(store, transitions, None, None, LifecycleConfig(), costs=costs)
    return service, Groups(service), lifecycle, CostAggregates(ddb, settings.table_name)


def race(n, fn):
    barrier = threading.Barrier(n)
    out: list = []

    def run(i):
        barrier.wait()
        try:
            out.append(fn(i))
        except QuotaExceeded as e:
            out.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_concurrent_matrices_never_overfill_the_quota(world):
    service, groups, _, _ = world
    req = MatrixRequest.model_validate({"framework": "pytorch", "python": "3.11",
                                        "matrix": {"version": ["2.5.1", "2.6.0"], "cuda": ["12.4", "11.8"]}})
    results = race(4, lambda i: groups.submit(req, idempotency_key=None, api_key_id="k"))
    made = [r for r in results if not isinstance(r, Exception)]
    assert len(made) == 2  # 2 x 4 cells fit 10; a third would not
    assert all("limit is 10" in str(r) for r in results if isinstance(r, Exception))
    assert len(service.store.slot_holders()) == 8
    for group, _ in made:
        for cell in group.cells:  # free the slots for the next test
            service.transitions.move(cell.id, Status.CANCELLED)
            service.store.release_slot(cell.id)


def test_a_cost_is_booked_once_however_many_termination_events_race(world):
    service, _, lifecycle, aggregates = world
    build, _ = service.submit(BuildRequest(framework="canary"))
    now = clock.now()
    iid = "i-0123456789abcdef0"
    service.transitions.move(build.id, Status.LAUNCHING, fields={"instance_id": iid, "instance": {
        "id": iid, "type": "g5.xlarge", "lifecycle": "spot", "price": 0.5, "launched_at": clock.iso(now)}})
    service.transitions.move(build.id, Status.FAILED, message="broken")
    record = service.store.get_record(build.id)
    ev = InstanceStateChange(instance_id=iid, state="terminated", time=clock.iso(now + timedelta(seconds=600)))
    race(6, lambda i: lifecycle._note_terminated(record, ev))
    report = aggregates.read(booking_day(now), booking_day(now + timedelta(seconds=600)), Dimension.FRAMEWORK)
    [row] = report.rows
    cost = service.get(build.id).cost
    assert row.builds == 1 and row.usd == cost.usd and not cost.estimated and cost.billed_seconds == 600
    service.store.release_slot(build.id)
