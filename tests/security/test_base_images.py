"""Item 2 of issue 17: a build arg that chooses a base image takes only images from the
catalog's allow-list (pinned by digest where one is recorded), and only a CUDA build gets
the GPUs in its smoke test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from chalicelib.errors import BadRequest
from chalicelib.specs.catalog import AllowedImage, BuildArgSpec, BuildSpec, load_catalog

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))
from hostrun import record_for, render_for, run_script  # noqa: E402

CATALOG = load_catalog()
CANARY = CATALOG.frameworks["canary"]
DEFAULT = CANARY.build_args["BASE_IMAGE"].default
DIGEST = "sha256:" + "b" * 64


@pytest.mark.parametrize("image", [
    "evil.example/busybox",
    "docker.io/library/busybox:1.36",                 # the same software from another registry
    "public.ecr.aws/docker/library/busybox:latest",   # another tag of the allowed repository
    "public.ecr.aws/docker/library/busybox:1.36@sha256:" + "0" * 64,
    "localhost/voltabuild/busybox:local",
])
def test_the_canary_base_image_must_come_from_the_allow_list(image):
    with pytest.raises(BadRequest) as e:
        CANARY.check_build_args({"BASE_IMAGE": image})
    assert "not an allowed image" in e.value.message or "does not match" in e.value.message
    assert DEFAULT in e.value.message or "does not match" in e.value.message


def test_the_default_base_image_is_allowed_and_listed():
    assert CANARY.check_build_args({"BASE_IMAGE": DEFAULT})["BASE_IMAGE"] == DEFAULT
    (canary,) = [f for f in CATALOG.summary["frameworks"] if f["framework"] == "canary"]
    assert canary["build_args"]["BASE_IMAGE"]["allowed"] == [DEFAULT]


def test_the_api_refuses_another_base_image_without_launching(api, aws):
    resp = api.http.post("/builds", headers={"Content-Type": "application/json"}, body=json.dumps(
        {"framework": "canary", "build_args": {"BASE_IMAGE": "evil.example/busybox:1"}}))
    assert resp.status_code == 400
    assert "build_args.BASE_IMAGE" in json.loads(resp.body)["Message"]
    assert aws.messages() == [] and aws.items() == []


def test_a_recorded_digest_pins_what_the_build_pulls():
    pinned = BuildArgSpec(pattern="^[a-z0-9./:-]+$", default="registry.example/base:1",
                          images=[AllowedImage(image="registry.example/base:1", digest=DIGEST, source="test")])
    spec = CANARY.model_copy(update={"build_args": {**CANARY.build_args, "BASE_IMAGE": pinned}})
    r = spec.resolve(None, None, None)
    assert spec.docker_build_args(r, CATALOG.hardware)["BASE_IMAGE"] == f"registry.example/base:1@{DIGEST}"
    # without a digest the name is used as is (the local stack retags that name)
    assert CANARY.docker_build_args(r, CATALOG.hardware)["BASE_IMAGE"] == DEFAULT


def test_an_allow_list_entry_needs_a_digest_or_a_reason():
    with pytest.raises(ValidationError):
        AllowedImage(image="x/y:1", source="somewhere")
    assert all(i.digest or i.unconfirmed for i in CANARY.build_args["BASE_IMAGE"].images)


def test_an_image_argument_without_an_allow_list_is_a_catalog_error():
    data = CANARY.model_dump()
    data["build_args"]["BASE_IMAGE"].pop("images")
    with pytest.raises(ValidationError, match="allow-list"):
        BuildSpec.model_validate(data)


# ---- the smoke test's GPUs ---------------------------------------------------------
def _smoke(run, image_ref):
    return [c[1:] for c in run.calls if c[0] == "docker" and c[1] == "run" and image_ref in c]


def test_a_build_without_cuda_is_smoke_tested_without_gpus(tmp_path):
    rec = record_for(CATALOG, "canary")
    run = run_script(tmp_path, render_for(rec, CATALOG))
    assert run.rc == 0, run.output
    ref = f"{rec['image']['repository']}:{rec['image']['tags'][0]}"
    (smoke,) = _smoke(run, ref)
    assert "--gpus" not in smoke


def test_a_cuda_build_is_smoke_tested_with_gpus(tmp_path):
    rec = record_for(CATALOG, "pytorch")
    run = run_script(tmp_path, render_for(rec, CATALOG))
    assert run.rc == 0, run.output
    ref = f"{rec['image']['repository']}:{rec['image']['tags'][0]}"
    (smoke,) = _smoke(run, ref)
    assert smoke[:4] == ["run", "--rm", "--gpus", "all"]
