"""POST /builds and GET /frameworks through the real app (chalice.test.Client on moto)."""

from __future__ import annotations

import json

import pytest


def post(api, body: dict):
    resp = api.http.post("/builds", body=json.dumps(body), headers={"Content-Type": "application/json"})
    return resp.status_code, json.loads(resp.body)


@pytest.mark.parametrize(("body", "says"), [
    ({"framework": "pytorch", "version": "2.9.1", "cuda": "13.0", "instance_types": ["p3.2xlarge"]},
     ["p3.2xlarge (NVIDIA V100, compute capability 7.0)", "CUDA 13.0 needs compute capability 7.5 or newer",
      "instance families that run CUDA 13.0: g4dn, g5, g6, g6e, p4d, p5"]),
    ({"framework": "pytorch", "version": "2.9.1", "cuda": "13.0", "build_args": {"BUILD_MODE": "source"}},
     ["TORCH_CUDA_ARCH_LIST", "7.0+PTX is outside it", "TORCH_CUDA_ARCH_LIST='7.5 8.0 8.6 8.9 9.0'"]),
    ({"framework": "pytorch", "build_args": {"BUILD_MODE": "source", "TORCH_CUDA_ARCH_LIST": "8.6"}},
     ["missing 7.0, 7.5", "TORCH_CUDA_ARCH_LIST='7.0 7.5 8.6'", "families it covers: g5, g6, g6e"]),
])
def test_incompatible_requests_are_a_400_that_says_what_works_and_change_nothing(api, aws, body, says):
    status, err = post(api, body)
    assert status == 400, err
    assert err["Code"] == "BadRequestError"
    for s in says:
        assert s in err["Message"]
    assert aws.items() == []
    assert aws.messages("LaunchQueue") == []


def test_cuda_13_with_default_types_is_accepted_off_p3_with_a_warning(api, aws):
    status, build = post(api, {"framework": "pytorch", "version": "2.9.1", "cuda": "13.0"})
    assert status == 202, build
    assert build["instance_types"] == ["g5.xlarge", "g4dn.xlarge", "g6.xlarge"]
    assert any("dropped p3.2xlarge (NVIDIA V100" in w for w in build["warnings"])
    (item,) = [i for i in aws.items() if i.get("id") == build["id"]]
    assert item["instance_types"] == ["g5.xlarge", "g4dn.xlarge", "g6.xlarge"]
    assert aws.messages("LaunchQueue") == [{"build_id": build["id"], "attempt": 1,
                                            "timeout_minutes": build["timeout_minutes"]}]


def test_frameworks_lists_the_families_that_run_each_cuda(api):
    resp = api.http.get("/frameworks")
    assert resp.status_code == 200
    body = json.loads(resp.body)
    pytorch = next(f for f in body["frameworks"] if f["framework"] == "pytorch")
    v291 = next(v for v in pytorch["versions"] if v["version"] == "2.9.1")
    assert v291["instance_families"]["13.0"] == ["g4dn", "g5", "g6", "g6e", "p4d", "p5"]
    assert "p3" in v291["instance_families"]["12.8"]
    hw = body["hardware"]
    assert hw["families"]["p3"]["compute_capability"] == "7.0"
    assert hw["cuda"]["13.0"]["min_driver"] == "580.65.06"
