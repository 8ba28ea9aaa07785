"""The host script measures the image before pushing it (issue 19): the compressed size from the
layer sizes of an OCI layout (or, from docker's own store, the saved layers gzipped), the base
image's digest, and a build over its buildspec's max_image_gb fails before anything is pushed.
Runs the rendered script under bash with the recording shims (tests/launch/shims)."""

from __future__ import annotations

import pytest
from hostrun import record_for, render_for, run_script

from chalicelib.specs.catalog import load_catalog


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _pushed(run) -> bool:
    return bool([a for a in run.named("docker") if "--push" in a or a[:1] == ["push"]]
                or [a for a in run.named("buildah") if "push" in a and a[-1].startswith("docker://")])


def test_an_image_over_its_budget_fails_before_the_push(catalog, tmp_path):
    # GIVEN a PyTorch build (max_image_gb 8) whose image comes to 9 GB compressed
    budget = catalog.spec("pytorch").max_image_gb
    run = run_script(tmp_path, render_for(record_for(catalog, "pytorch"), catalog),
                     {"SHIM_LAYER_SIZES": "4000000000 5000000000"})
    # THEN it fails saying how big the image is and what the budget is, and pushes nothing
    assert run.rc != 0
    result = run.result()
    assert result["status"] == "FAILED"
    assert result["reason"] == (f"the image is 9.00 GB compressed, over this buildspec's budget of {budget:.2f} GB "
                                "(max_image_gb): nothing was pushed")
    assert not _pushed(run)
    assert run.calls[-1] == ["shutdown", "-h", "now"]


def test_an_image_exactly_at_its_budget_is_pushed(catalog, tmp_path):
    limit = int(catalog.spec("pytorch").max_image_gb * 10**9)
    run = run_script(tmp_path, render_for(record_for(catalog, "pytorch"), catalog),
                     {"SHIM_LAYER_SIZES": f"{limit - 1} 1"})
    assert run.rc == 0, run.output
    assert run.result()["image_size_bytes"] == limit
    assert _pushed(run)


def test_an_image_that_cannot_be_measured_is_not_pushed(catalog, tmp_path):
    run = run_script(tmp_path, render_for(record_for(catalog, "pytorch"), catalog), {"SHIM_FAIL": "measure"})
    assert run.result()["reason"] == "could not export the image to measure it"
    assert not _pushed(run)


def test_a_base_pinned_by_digest_is_recorded_without_asking_the_registry(catalog, tmp_path):
    pinned = "nvidia/cuda:12.6.3-base-ubuntu22.04@sha256:" + "f" * 64
    run = run_script(tmp_path, render_for(record_for(catalog, "pytorch"), catalog), {"SHIM_BASE_NAME": pinned})
    assert run.rc == 0, run.output
    assert run.result()["base_image_digest"] == "sha256:" + "f" * 64
    assert not [a for a in run.named("docker") if a[:2] == ["buildx", "imagetools"]]


def test_local_docker_measures_the_saved_layers_gzipped(catalog, tmp_path):
    # docker's own image store has no OCI export: the saved layers (100000 random bytes, which
    # gzip cannot shrink) are compressed as a push would
    env = {"VOLTABUILD_LOCAL": "1", "VOLTABUILD_BUILDER": "docker", "VOLTABUILD_REGISTRY_OVERRIDE": "127.0.0.1:5055"}
    run = run_script(tmp_path, render_for(record_for(catalog, "canary"), catalog), env)
    assert run.rc == 0, run.output
    size = run.result()["image_size_bytes"]
    assert 100000 < size < 100000 * 1.01
    # the base digest is the one docker pulled it at
    assert run.result()["base_image_digest"] == "sha256:" + "e" * 64
    assert not (run.work / "measure.tar").exists()


def test_the_canary_over_its_tiny_budget_fails_in_local_mode_too(catalog, tmp_path):
    env = {"VOLTABUILD_LOCAL": "1", "VOLTABUILD_BUILDER": "buildah", "VOLTABUILD_REGISTRY_OVERRIDE": "127.0.0.1:5055",
           "SHIM_LAYER_SIZES": "60000000"}
    run = run_script(tmp_path, render_for(record_for(catalog, "canary"), catalog), env)
    assert "the image is 0.06 GB compressed, over this buildspec's budget of 0.05 GB" in run.result()["reason"]
    assert not _pushed(run)
