"""The image's measurements in the SUCCEEDED report (issue 19): recorded on the build and shown
by GET /builds/{id}; a malformed measurement is a 400 that changes nothing."""

from __future__ import annotations

import json

import pytest
from test_launch_reports import DIGEST, _launching, phase, post, record

BASE = "sha256:" + "b" * 64


@pytest.fixture
def pushing(aws, api):
    build_id = _launching(aws)
    for p in ("PREPARING", "BUILDING", "TESTING", "PUSHING"):
        assert post(api, build_id, phase(p)).status_code == 202
    return build_id


def test_the_size_and_base_digest_are_recorded_and_shown(api, aws, pushing):
    resp = post(api, pushing, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST,
                               "image_size_bytes": 2_150_000, "base_image_digest": BASE})
    assert resp.status_code == 202, resp.body
    image = record(pushing)["image"]
    assert image["compressed_size_bytes"] == 2_150_000 and image["base_image_digest"] == BASE
    shown = json.loads(api.http.get(f"/builds/{pushing}").body)["image"]
    assert shown["compressed_size_bytes"] == 2_150_000 and shown["base_image_digest"] == BASE
    assert shown["digest"] == DIGEST


def test_a_result_without_measurements_leaves_them_out(api, aws, pushing):
    assert post(api, pushing, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST}).status_code == 202
    shown = json.loads(api.http.get(f"/builds/{pushing}").body)["image"]
    assert shown["compressed_size_bytes"] is None and shown["base_image_digest"] is None


def test_a_malformed_measurement_is_400_and_changes_nothing(api, aws, pushing):
    before = record(pushing)
    for bad in [{"image_size_bytes": -1}, {"image_size_bytes": "2150000"}, {"image_size_bytes": 10**14},
                {"base_image_digest": "sha256:xyz"}, {"base_image_digest": "busybox:1.36"}]:
        resp = post(api, pushing, {"type": "result", "status": "SUCCEEDED", "digest": DIGEST, **bad})
        assert resp.status_code == 400, (bad, resp.body)
        assert next(iter(bad)) in json.loads(resp.body)["Message"]
    assert record(pushing) == before
