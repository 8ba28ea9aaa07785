"""Item 4 of issue 17: what one key may spend. Stage ceilings on a build's size, price cap
and timeout (400 naming what is allowed), and per-key quotas on active builds and GPU-hours
booked per day (429 naming the limit hit)."""

from __future__ import annotations

import json

import pytest

from chalicelib import wiring
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.spend import Ceilings, gpu_hours, size_rank
from chalicelib.builds.states import Status
from chalicelib.errors import QuotaExceeded
from chalicelib.settings import Settings


def post(api, body):
    resp = api.http.post("/builds", headers={"Content-Type": "application/json"}, body=json.dumps(body))
    return resp.status_code, json.loads(resp.body)


# ---- stage ceilings (dev: .chalice/config.json) ---------------------------------------
@pytest.mark.parametrize("body,needle", [
    ({"framework": "pytorch", "version": "2.6.0", "cuda": "12.6", "instance_types": ["p5.48xlarge"]},
     "p5.48xlarge (largest p5 size allowed: p5.2xlarge)"),
    ({"framework": "pytorch", "instance_types": ["g5.xlarge", "g5.12xlarge"]}, "g5.12xlarge"),
    ({"framework": "pytorch", "max_price": 100}, "max_price: 100.0 is over this stage's ceiling; allowed up to 2.0"),
    ({"framework": "pytorch", "timeout_minutes": 360}, "timeout_minutes: 360 is over this stage's ceiling; allowed 5 to 180"),
])
def test_requests_over_the_stage_ceilings_are_400_and_launch_nothing(api, aws, body, needle):
    code, resp = post(api, body)
    assert code == 400 and needle in resp["Message"], resp
    assert aws.messages() == [] and aws.items() == []


def test_within_the_ceilings_is_accepted(api, aws):
    code, resp = post(api, {"framework": "pytorch", "instance_types": ["g5.2xlarge"], "max_price": 2,
                            "timeout_minutes": 180})
    assert code == 202, resp


def test_size_order_and_family_overrides():
    assert size_rank("large") < size_rank("xlarge") < size_rank("2xlarge") < size_rank("48xlarge") < size_rank("metal")
    c = Ceilings(sizes=(("*", "2xlarge"), ("p5", "4xlarge")))
    assert c.largest_size("p5") == "4xlarge" and c.largest_size("g5") == "2xlarge"
    assert Ceilings().largest_size("p5") is None  # no ceiling configured


def test_the_stages_configure_ceilings_and_quotas():
    from pathlib import Path

    cfg = json.loads((Path(__file__).resolve().parents[2] / ".chalice" / "config.json").read_text())
    for stage in ("dev", "prod"):
        s = Settings.from_env({**cfg["environment_variables"], **cfg["stages"][stage]["environment_variables"]})
        assert s.max_instance_sizes and s.max_price_ceiling and s.max_timeout_minutes
        assert s.max_active_builds_per_key and s.max_gpu_hours_per_key_day
        assert s.max_attempts <= 3


# ---- per-key quotas ------------------------------------------------------------------
@pytest.fixture
def quota_env(aws, monkeypatch):
    monkeypatch.setenv("MAX_ACTIVE_BUILDS_PER_KEY", "2")
    monkeypatch.setenv("MAX_GPU_HOURS_PER_KEY_DAY", "4")
    wiring.reset()
    return wiring.builds()


def test_active_builds_are_limited_per_key_not_globally(quota_env):
    svc = quota_env
    a1, _ = svc.submit(BuildRequest(framework="canary"), api_key_id="key-a")
    svc.submit(BuildRequest(framework="canary"), api_key_id="key-a")
    with pytest.raises(QuotaExceeded, match="too many active builds for this API key: the limit per key is 2"):
        svc.submit(BuildRequest(framework="canary"), api_key_id="key-a")
    # another key is not affected
    svc.submit(BuildRequest(framework="canary"), api_key_id="key-b")
    # a finished build gives its key's slot back
    svc.cancel(a1.id)
    wiring.store().release_slot(a1.id)
    assert a1.id not in wiring.store().key_slot_holders("key-a")
    svc.submit(BuildRequest(framework="canary"), api_key_id="key-a")


def test_gpu_hours_booked_per_key_and_day(quota_env):
    svc = quota_env
    hw = wiring.catalog().hardware
    # pytorch's default: 90 minutes on 1 GPU = 1.5 GPU-hours booked
    b, _ = svc.submit(BuildRequest(framework="pytorch"), api_key_id="key-a")
    assert gpu_hours(hw, b.instance_types, b.timeout_minutes) == 1.5
    svc.cancel(b.id)
    wiring.store().release_slot(b.id)  # the active slot comes back; booked hours do not
    svc.submit(BuildRequest(framework="pytorch"), api_key_id="key-a")
    assert wiring.store().key_gpu_hours("key-a", b.created_at[:10]) == 3.0
    with pytest.raises(QuotaExceeded, match="daily GPU-hour quota of this API key reached: this build books 1.5"):
        svc.submit(BuildRequest(framework="pytorch"), api_key_id="key-a")
    # a build that alone is over the day's quota never gets a slot
    with pytest.raises(QuotaExceeded, match="GPU-hour"):
        svc.submit(BuildRequest(framework="pytorch", instance_types=["g5.12xlarge"]), api_key_id="key-b")
    assert wiring.store().key_gpu_hours("key-b", b.created_at[:10]) == 0
    # nothing was recorded for the refused builds
    assert len(wiring.store().list(limit=50)[0]) == 2


def test_the_api_answers_429_with_the_limit_that_was_hit(api, aws):
    # dev allows 10 active builds per key; locally every request is the one local key
    for _ in range(10):
        assert post(api, {"framework": "canary"})[0] == 202
    code, resp = post(api, {"framework": "canary"})
    assert code == 429 and "too many active builds for this API key: the limit per key is 10" in resp["Message"]
    items = [i for i in aws.items() if i.get("kind") == "build"]
    assert len(items) == 10 and {i["owner_key"] for i in items} == {"local"}
    assert all(i["status"] == Status.QUEUED.value for i in items)


def test_the_key_id_comes_from_the_api_gateway_request_context():
    from types import SimpleNamespace

    from app import api_key_id

    assert api_key_id(SimpleNamespace(context={"identity": {"apiKeyId": "abc123"}})) == "abc123"
    assert api_key_id(SimpleNamespace(context={"identity": {}})) == "local"
    assert api_key_id(SimpleNamespace(context={})) == "local"
