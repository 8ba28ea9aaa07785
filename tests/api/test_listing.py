"""Listing: newest first, every build exactly once across pages, filters, cursors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from chalicelib import clock, wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.states import Status


@pytest.fixture(scope="module")
def many(aws_module):
    """250 builds, one second apart, alternating frameworks; every 5th cancelled.

    Four go through the service (each framework, queued and cancelled); the other 246 are
    copies of those stored items with their own id and creation time, written in batches:
    the listing reads stored items, and 250 submits cost two minutes of the suite."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clock, "now", lambda: t0)
        mp.setenv("MAX_ACTIVE_BUILDS", "1000")
        wiring.reset()
        svc = wiring.builds()
        table = boto3.resource("dynamodb").Table(wiring.settings().table_name)
        models = {}
        for framework in ("tensorflow", "canary"):
            for cancelled in (False, True):
                b, _ = svc.submit(BuildRequest(framework=framework))
                if cancelled:
                    svc.cancel(b.id)
                models[framework, cancelled] = table.get_item(Key={"id": b.id}, ConsistentRead=True)["Item"]
                table.delete_item(Key={"id": b.id})
        ids = []
        with table.batch_writer() as batch:
            for i in range(250):
                item = models["canary" if i % 2 else "tensorflow", i % 5 == 0]
                build_id, created = f"b-{i:020x}", clock.iso(t0 + timedelta(seconds=i))
                batch.put_item(Item={**item, "id": build_id, "created_at": created,
                                     "created_key": f"{created}#{build_id}"})
                ids.append(build_id)
    wiring.reset()
    return ids


@pytest.fixture
def api(api_module):
    return api_module


def pages(api, query: str):
    seen, cursor, n = [], None, 0
    while True:
        q = query + (f"&next={cursor}" if cursor else "")
        resp = api.http.get(f"/builds?{q}")
        assert resp.status_code == 200, resp.body
        body = json.loads(resp.body)
        seen.extend(body["builds"])
        cursor = body["next"]
        n += 1
        if not cursor:
            return seen, n


def test_pagination_returns_each_build_exactly_once_newest_first(api, many):
    seen, n = pages(api, "limit=37")
    assert [b["id"] for b in seen] == list(reversed(many))
    assert n == 7  # 250 / 37, the last page short


def test_filters_by_status_framework_and_both(api, many):
    cancelled, _ = pages(api, "status=CANCELLED&limit=100")
    assert [b["id"] for b in cancelled] == [i for n, i in enumerate(many) if n % 5 == 0][::-1]
    canary, _ = pages(api, "framework=canary&limit=100")
    assert len(canary) == 125 and all(b["framework"] == "canary" for b in canary)
    both, n = pages(api, "status=queued&framework=tensorflow&limit=25")
    expected = [i for n, i in enumerate(many) if n % 2 == 0 and n % 5 != 0][::-1]
    assert [b["id"] for b in both] == expected
    assert all(b["status"] == Status.QUEUED.value for b in both)
    assert n == 4  # 100 queued TensorFlow builds, 25 a page: the filter holds across pages


@pytest.mark.parametrize("query,needle", [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"),
    ("status=DONE", "status: 'DONE' is not a status"), ("framework=caffe", "known frameworks"),
    ("next=garbage", "not a cursor"), ("colour=red", "unknown query parameter"),
])
def test_bad_listing_queries_are_400(api, many, query, needle):
    resp = api.http.get(f"/builds?{query}")
    assert resp.status_code == 400
    assert needle in json.loads(resp.body)["Message"]


def test_a_tampered_cursor_is_400(api, many):
    import base64

    body = json.loads(api.http.get("/builds?limit=5").body)
    payload, sig = body["next"].split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["k"]["created_key"] = "2099-01-01"
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=") + "." + sig
    resp = api.http.get(f"/builds?limit=5&next={forged}")
    assert resp.status_code == 400
    other = api.http.get(f"/builds?status=QUEUED&next={body['next']}")
    assert other.status_code == 400
