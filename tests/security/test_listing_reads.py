"""Item 7 of issue 17: one list request reads a bounded number of items, however many
builds of other frameworks sit in the status it filters on."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import boto3
import pytest

from chalicelib import wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.store import MAX_ITEMS_READ
from chalicelib.clock import iso

OTHERS = 300


@pytest.fixture(scope="module")
def crowded(aws_module):
    """2 queued canary builds, then 300 queued tensorflow builds newer than them.

    One tensorflow build goes through the service; the other 299 are copies of its stored
    item with their own id and a later creation time, written in batches (what the listing
    reads is the stored item; 300 submits cost a minute of the suite)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAX_ACTIVE_BUILDS", "1000")
        wiring.reset()
        svc = wiring.builds()
        canary = [svc.submit(BuildRequest(framework="canary"))[0].id for _ in range(2)]
        first = svc.submit(BuildRequest(framework="tensorflow"))[0]
        table = boto3.resource("dynamodb").Table(wiring.settings().table_name)
        item = table.get_item(Key={"id": first.id}, ConsistentRead=True)["Item"]
        start = datetime.fromisoformat(item["created_at"].replace("Z", "+00:00"))
        with table.batch_writer() as batch:
            for n in range(1, OTHERS):
                created = iso(start + timedelta(seconds=n))
                copy_id = f"b-{n:020x}"
                batch.put_item(Item={**item, "id": copy_id, "created_at": created,
                                     "created_key": f"{created}#{copy_id}"})
    wiring.reset()
    return canary


@pytest.fixture
def queries(api_module, crowded):
    """Counts DynamoDB Query calls and the items they were asked to read (botocore hooks)."""
    seen: list[dict] = []

    def count(params, **_):
        seen.append(params)

    ddb = wiring.client("dynamodb")
    ddb.meta.events.register("before-parameter-build.dynamodb.Query", count)
    yield seen
    ddb.meta.events.unregister("before-parameter-build.dynamodb.Query", count)


def get(api, query):
    resp = api.http.get(f"/builds?{query}")
    assert resp.status_code == 200, resp.body
    return json.loads(resp.body)


def test_a_filtered_listing_reads_a_bounded_number_of_items(api_module, crowded, queries):
    # GIVEN 300 queued tensorflow builds newer than the 2 queued canary builds
    # WHEN a client pages GET /builds?status=QUEUED&framework=canary&limit=1 to the end
    found, cursor, requests = [], None, 0
    while True:
        before = len(queries)
        body = get(api_module, "status=QUEUED&framework=canary&limit=1" + (f"&next={cursor}" if cursor else ""))
        requests += 1
        # THEN each request makes at most two queries and reads at most MAX_ITEMS_READ items
        assert len(queries) - before <= 2
        assert sum(q["Limit"] for q in queries[before:]) <= MAX_ITEMS_READ
        found += [b["id"] for b in body["builds"]]
        cursor = body["next"]
        if not cursor:
            break
        assert requests < 10
    # AND every canary build is found, newest first, each once
    assert found == crowded[::-1]
    assert len(queries) <= 2 * requests < 20  # was 300 queries for the first page alone


def test_a_short_page_with_a_cursor_when_the_budget_runs_out(api_module, crowded, queries):
    body = get(api_module, "status=QUEUED&framework=canary&limit=1")
    assert body["builds"] == [] and body["next"], "300 others > the read budget: an empty page that goes on"
    assert len(queries) == 1


def test_unfiltered_and_single_filter_pages_are_still_one_query(api_module, crowded, queries):
    for q in ("limit=5", "status=QUEUED&limit=5", "framework=tensorflow&limit=5"):
        before = len(queries)
        body = get(api_module, q)
        assert len(body["builds"]) == 5 and body["next"]
        assert len(queries) - before == 1 and queries[-1]["Limit"] == 5
