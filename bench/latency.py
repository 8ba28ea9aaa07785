"""Latency through the app against a moto *server* (a real HTTP round trip to DynamoDB and
SQS), as ratios to raw DynamoDB calls on the same server, measured in the same run with the
samples interleaved (this machine is noisy: only ratios mean anything).

- ``POST /builds`` vs a raw ``PutItem`` of an item the same size as a build's;
- ``GET /builds/{id}`` vs a raw consistent ``GetItem``;
- scale: ``GET /builds`` (one page of 20) and ``GET /builds/{id}`` with 100 and with 10,000
  builds in the table, beside a raw ``Query`` of the same index and page size.

The app runs in this process through chalice.test.Client (the Lambda handler path, no HTTP
in front of it); its boto3 clients reach moto server over HTTP via ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import world


def percentile(samples: list[float], p: float) -> float:
    s = sorted(samples)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(samples: list[float]) -> dict:
    return {"n": len(samples), "p50_ms": round(percentile(samples, 50) * 1000, 3),
            "p99_ms": round(percentile(samples, 99) * 1000, 3)}


def ratio(a: dict, b: dict) -> dict:
    return {"p50": round(a["p50_ms"] / b["p50_ms"], 2), "p99": round(a["p99_ms"] / b["p99_ms"], 2)}


@contextlib.contextmanager
def moto_server() -> Iterator[tuple[dict, dict]]:
    """A moto server with voltabuild's resources (the local stack's moto part); the app's
    environment points at it while inside. Yields (app environment, resources)."""
    from chalicelib import wiring
    from voltabuild_local.stack import Stack

    world.base_environment()
    with tempfile.TemporaryDirectory(prefix="voltabuild-bench-") as tmp:
        stack = Stack(state_dir=Path(tmp), services=("moto",), quiet=True)
        state = stack.up()
        try:
            # the stack's quotas (global and per API key) are not what this measures
            env = {**state["app_env"], "MAX_ACTIVE_BUILDS": world.BASE_ENV["MAX_ACTIVE_BUILDS"],
                   "MAX_ACTIVE_BUILDS_PER_KEY": world.BASE_ENV["MAX_ACTIVE_BUILDS"]}
            with wiring.environment(env):
                wiring.settings()
                yield env, state["resources"]
        finally:
            stack.down()


def interleaved(ops: dict[str, Callable[[], object]], rounds: int, warmup: int = 10) -> dict[str, list[float]]:
    """Run every op once a round, in an order that rotates each round; time each."""
    names = list(ops)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t = time.perf_counter()
            ops[name]()
            dt = time.perf_counter() - t
            if r >= warmup:
                samples[name].append(dt)
    return samples


class App:
    def __init__(self, api, env: dict) -> None:
        self.api = api
        self.headers = {"Content-Type": "application/json", "x-api-key": env.get("LOCAL_API_KEY", "")}

    def call(self, method: str, path: str, body: str | None = None, expect: int = 200):
        resp = getattr(self.api.http, method)(path, headers=self.headers, **({"body": body} if body else {}))
        if resp.status_code != expect:
            raise RuntimeError(f"{method.upper()} {path}: {resp.status_code} {resp.body[:300]!r}")
        return resp


def request_latency(rounds: int) -> dict:
    """POST /builds and GET /builds/{id} against raw PutItem / GetItem."""
    import json

    from chalicelib import wiring

    with moto_server() as (env, resources), world.api_client() as api:
        app = App(api, env)
        ddb = wiring.client("dynamodb")
        table = resources["BuildsTable"]
        body = json.dumps({"framework": "canary"})
        created: list[str] = []

        def post():
            created.append(json.loads(app.call("post", "/builds", body, expect=202).body)["id"])

        post()
        item = world.build_item(world.planned_build(), active=True)  # what store.create puts, same size
        raw_ids: list[str] = []

        def put():
            item["id"] = {"S": world.planned_build().id}
            ddb.put_item(TableName=table, Item=item, ConditionExpression="attribute_not_exists(id)")
            raw_ids.append(item["id"]["S"])

        quota_key = {"id": {"S": "quota#raw-baseline"}}

        def raw_submit():
            """The two calls POST /builds makes, made raw: the conditional put with its quota
            update in one transaction, and the launch message."""
            item["id"] = {"S": world.planned_build().id}
            ddb.transact_write_items(TransactItems=[
                {"Put": {"TableName": table, "Item": item, "ConditionExpression": "attribute_not_exists(id)"}},
                {"Update": {"TableName": table, "Key": quota_key, "UpdateExpression": "ADD ids :me",
                            "ConditionExpression": "attribute_not_exists(ids) OR size(ids) < :max",
                            "ExpressionAttributeValues": {":me": {"SS": [item["id"]["S"]]},
                                                          ":max": {"N": "100000"}}}},
            ])
            sqs.send_message(QueueUrl=resources["LaunchQueue"],
                             MessageBody=json.dumps({"build_id": item["id"]["S"], "attempt": 1}))

        sqs = wiring.client("sqs")
        target = created[0]
        samples = interleaved({
            "POST /builds": post,
            "PutItem": put,
            "TransactWriteItems+SendMessage": raw_submit,
            "GET /builds/{id}": lambda: app.call("get", f"/builds/{target}"),
            "GetItem": lambda: ddb.get_item(TableName=table, Key={"id": {"S": target}}, ConsistentRead=True),
        }, rounds)
    s = {k: summary(v) for k, v in samples.items()}
    return {
        "samples": s,
        "ratios": {
            "POST /builds / PutItem": ratio(s["POST /builds"], s["PutItem"]),
            "POST /builds / its 2 calls raw": ratio(s["POST /builds"], s["TransactWriteItems+SendMessage"]),
            "GET /builds/{id} / GetItem": ratio(s["GET /builds/{id}"], s["GetItem"]),
        },
    }


def scale(rounds: int, sizes: tuple[int, ...] = (100, 10_000), on_progress=print) -> dict:
    """List page and get with 100 and 10,000 builds in the table."""
    from chalicelib import wiring

    out: dict = {"sizes": {}}
    with moto_server() as (env, resources), world.api_client() as api:
        app = App(api, env)
        ddb = wiring.client("dynamodb")
        table = resources["BuildsTable"]
        have = 0
        for size in sizes:
            t = time.perf_counter()
            items = [world.finished_item(have + i) for i in range(size - have)]
            world.batch_write(ddb, table, items)
            have = size
            on_progress(f"scale: {size:,} builds seeded over HTTP ({time.perf_counter() - t:.1f} s)")
            target = items[len(items) // 2]["id"]["S"]
            samples = interleaved({
                "GET /builds (page of 20)": lambda: app.call("get", "/builds?limit=20"),
                "Query (page of 20)": lambda: ddb.query(
                    TableName=table, IndexName="by-created", KeyConditionExpression="#k = :v",
                    ExpressionAttributeNames={"#k": "kind"}, ExpressionAttributeValues={":v": {"S": "build"}},
                    ScanIndexForward=False, Limit=20),
                "GET /builds/{id}": lambda target=target: app.call("get", f"/builds/{target}"),
                "GetItem": lambda target=target: ddb.get_item(TableName=table, Key={"id": {"S": target}},
                                                              ConsistentRead=True),
            }, rounds)
            out["sizes"][str(size)] = {k: summary(v) for k, v in samples.items()}
    small, large = (out["sizes"][str(n)] for n in (sizes[0], sizes[-1]))
    label = f"{sizes[-1]:,} / {sizes[0]:,} builds"
    out["growth"] = {
        f"GET /builds, {label}": ratio(large["GET /builds (page of 20)"], small["GET /builds (page of 20)"]),
        f"raw Query, {label}": ratio(large["Query (page of 20)"], small["Query (page of 20)"]),
        f"GET /builds/{{id}}, {label}": ratio(large["GET /builds/{id}"], small["GET /builds/{id}"]),
        f"raw GetItem, {label}": ratio(large["GetItem"], small["GetItem"]),
    }
    out["app_over_raw"] = {
        str(n): {"list / Query": ratio(out["sizes"][str(n)]["GET /builds (page of 20)"],
                                       out["sizes"][str(n)]["Query (page of 20)"]),
                 "get / GetItem": ratio(out["sizes"][str(n)]["GET /builds/{id}"], out["sizes"][str(n)]["GetItem"])}
        for n in sizes
    }
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)
