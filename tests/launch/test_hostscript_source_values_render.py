"""The values render() hands the host script of a build-your-own build (issue 20): an extension
of a catalog image, a user's uploaded context, a git repository. Render-only and fast;
tests/sources runs these scripts for real. Each test fails on a small change to
chalicelib/launching/hostscript.py (mutation testing, see the README's testing section).
"""

from __future__ import annotations

import base64
import io
import tarfile

import pytest
from hostrun import BUILD_ID, CFG, TOKEN, readonly_values

from chalicelib.builds.records import BuildRecord
from chalicelib.custom.custom_builds import EXTEND_GROWTH, MAX_IMAGE_GB, extend_dockerfile
from chalicelib.launching import hostscript
from chalicelib.launching.hostscript import RenderError, render
from chalicelib.specs.catalog import load_catalog

AT = "2026-12-02T08:00:00Z"
URL = "https://contexts.example.test/sha256/abc?X-Amz-Signature=" + "f" * 64


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _stored(record: dict) -> BuildRecord:
    return BuildRecord.of({"status": "LAUNCHING", "notify": {"slack": False}, "created_at": AT, "updated_at": AT,
                           **record})


def _render(catalog, record: dict | BuildRecord, **kw) -> str:
    rec = record if isinstance(record, BuildRecord) else _stored(record)
    return render(rec, catalog, CFG, token=TOKEN, build_date=AT, **kw)


def _extend_record() -> dict:
    return {
        "id": BUILD_ID, "framework": "canary", "version": "1.0", "cuda": "none", "python": "none", "build_args": {},
        "image": {"repository": f"{CFG.registry}/voltabuild/canary-plus", "tags": ["v1"]},
        "instance_types": ["g5.xlarge"], "timeout_minutes": 15, "attempt": 1,
        "source": {"kind": "extend", "base": f"{CFG.registry}/voltabuild/canary:1.0", "pip": [], "apt": ["ffmpeg"],
                   "env": {"GREETING": "hi"}},
    }


def _context_record(**over) -> dict:
    rec = {
        "id": BUILD_ID, "framework": "custom", "version": "custom", "cuda": "12.4", "python": "none",
        "build_args": {"http_proxy": "", "MY_FLAG": "1"},
        "image": {"repository": f"{CFG.registry}/voltabuild/team/app", "tags": ["v1", "v1.2"]},
        "instance_types": ["g5.xlarge"], "timeout_minutes": 45, "attempt": 1,
        "source": {"kind": "context", "context": "sha256:" + "0" * 64, "dockerfile": "Dockerfile",
                   "target": None, "smoke_test": ["python", "-c", "import app"]},
    }
    rec.update(over)
    return rec


def test_an_extension_builds_its_generated_dockerfile_on_its_catalog_image(catalog):
    rec = _extend_record()
    script = _render(catalog, rec)
    v = readonly_values(script)
    spec = catalog.spec("canary")
    budget = min(spec.max_image_gb * EXTEND_GROWTH, spec.root_volume_gb / 2)
    assert {k: v[k] for k in ("SOURCE_KIND", "BASE_IMAGE", "REPOSITORY", "BUILD_ARGS", "SMOKE_TEST", "CUDA",
                              "MAX_IMAGE_BYTES", "UNPACKER", "CONTEXT_URL", "TAGS")} == {
        "SOURCE_KIND": "extend", "BASE_IMAGE": rec["source"]["base"], "REPOSITORY": "voltabuild/canary-plus",
        "BUILD_ARGS": [f"BASE_IMAGE={rec['source']['base']}"], "SMOKE_TEST": list(spec.smoke_test), "CUDA": "none",
        "MAX_IMAGE_BYTES": str(int(budget * 10**9)), "UNPACKER": "", "CONTEXT_URL": "", "TAGS": ["v1"]}
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(v["CONTEXT_B64"])), mode="r:gz") as tar:
        dockerfile = tar.extractfile("Dockerfile").read().decode()
    assert dockerfile == extend_dockerfile(rec["source"])
    assert "fetch_context() {" in script


def test_a_context_build_takes_its_values_from_the_record_not_the_catalog(catalog):
    script = _render(catalog, _context_record(), context_url=URL, context_max_bytes=5_000)
    v = readonly_values(script)
    assert {k: v[k] for k in ("REPOSITORY", "BUILD_ARGS", "SMOKE_TEST", "CUDA", "MAX_IMAGE_BYTES", "TAGS",
                              "CONTEXT_B64", "CONTEXT_MAX_BYTES", "HEALTH_IMAGE")} == {
        "REPOSITORY": "voltabuild/team/app", "BUILD_ARGS": ["http_proxy=", "MY_FLAG=1"],
        "SMOKE_TEST": ["python", "-c", "import app"], "CUDA": "12.4", "MAX_IMAGE_BYTES": str(int(MAX_IMAGE_GB * 10**9)),
        "TAGS": ["v1", "v1.2"], "CONTEXT_B64": "", "CONTEXT_MAX_BYTES": "5000",
        "HEALTH_IMAGE": catalog.hardware.cuda["12.4"].health_image}
    assert v["UNPACKER"] == "<multi-line>"


def test_a_user_build_arg_name_may_be_lower_case_but_never_shell(catalog):
    v = readonly_values(_render(catalog, _context_record(build_args={"pip_index": "x", "_Z9": "y"}), context_url=URL))
    assert v["BUILD_ARGS"] == ["pip_index=x", "_Z9=y"]
    rec = _stored(_context_record())
    rec.build_args = {"a-b": "x"}  # the API refuses it; the render does again
    with pytest.raises(RenderError) as e:
        _render(catalog, rec, context_url=URL)
    assert str(e.value) == ("build arg name: 'a-b' cannot go into the host script "
                            f"(must match {hostscript._USER_ARG_NAME.pattern})")


def test_a_stored_user_build_with_a_bad_cuda_is_refused_naming_it(catalog):
    rec = _stored(_context_record())
    rec.cuda = "12.4; reboot"
    with pytest.raises(RenderError) as e:
        _render(catalog, rec, context_url=URL)
    assert str(e.value) == ("cuda: '12.4; reboot' cannot go into the host script "
                            f"(must match {hostscript._VERSION.pattern})")


def test_a_context_url_that_is_not_a_plain_https_url_is_refused_naming_it(catalog):
    bad = "https://contexts.example.test/x?a=$(reboot)"
    with pytest.raises(RenderError) as e:
        _render(catalog, _context_record(), context_url=bad)
    assert str(e.value).startswith(f"context_url: {bad!r} cannot go into the host script (must match ^(https?://")
