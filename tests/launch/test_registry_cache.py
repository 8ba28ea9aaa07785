"""The registry build cache a build reads and writes (issue 22): one per base, so a matrix's
cells on the same base reuse each other's layers and cells on another base keep their own."""

from __future__ import annotations

import re

import pytest
from hostrun import CFG, TOKEN, record_for, render_for, run_script

from chalicelib.builds.records import BuildRecord
from chalicelib.launching.hostscript import render
from chalicelib.launching.warmcache import registry_cache_tag
from chalicelib.specs.catalog import load_catalog


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def cache_tag(script: str) -> str:
    [tag] = re.findall(r"^readonly CACHE_TAG=(\S+)$", script, re.M)
    return tag


def rendered(catalog, **cell) -> str:
    """A cell's host script, its catalog context fetched from the contexts bucket (as the
    launcher renders it once the context is there: only the default cells have their lock
    files in this repository)."""
    return render(BuildRecord.of(record_for(catalog, "pytorch", **cell)), catalog, CFG, token=TOKEN,
                  build_date="2026-11-28T15:00:00Z", context_url="https://contexts.example.test/ctx.tar.gz",
                  context_max_bytes=10**6, context_sha256="sha256:" + "e" * 64)


def test_cells_on_the_same_base_share_one_cache_and_another_base_has_its_own(catalog):
    # GIVEN the cells of a matrix over pytorch versions and CUDA releases (Python 3.12)
    tags = {(v, c): cache_tag(rendered(catalog, version=v, cuda=c, python="3.12"))
            for v in ("2.13.0", "2.14.1") for c in ("12.6", "13.0")}
    # THEN the versions on one CUDA (one base image) share a cache, and the two CUDAs do not
    assert tags[("2.13.0", "12.6")] == tags[("2.14.1", "12.6")]
    assert tags[("2.13.0", "13.0")] == tags[("2.14.1", "13.0")]
    assert tags[("2.13.0", "12.6")] != tags[("2.13.0", "13.0")]
    # each a tag only the catalog may use (a request cannot overwrite a cache by naming it)
    assert all(t.startswith("buildcache-") and catalog.spec("pytorch").reserved(t) for t in tags.values())


def test_the_key_is_the_base_images_alone():
    base = {"BASE_IMAGE": "nvidia/cuda:12.6.3-base-ubuntu22.04", "DEVEL_IMAGE": "nvidia/cuda:12.6.3-devel"}
    tag = registry_cache_tag({**base, "PYTORCH_VERSION": "2.13.0", "VOLTABUILD_BUILD_ID": "b-1"})
    assert tag == registry_cache_tag({**base, "PYTORCH_VERSION": "2.14.1", "VOLTABUILD_BUILD_ID": "b-2"})
    assert tag != registry_cache_tag({**base, "DEVEL_IMAGE": "nvidia/cuda:13.0.1-devel"})
    assert registry_cache_tag({"CANARY_VERSION": "1.0"}) == "buildcache"  # no base argument: the one cache


def test_the_build_reads_and_writes_its_bases_cache(catalog, tmp_path):
    rec = record_for(catalog, "pytorch", version="2.14.1", cuda="12.6", python="3.12")
    script = render_for(rec, catalog)
    run = run_script(tmp_path, script)
    assert run.rc == 0, run.output
    build = run.docker("buildx", "build")[0]
    ref = f"{CFG.registry}/voltabuild/pytorch:{cache_tag(script)}"
    assert build[build.index("--cache-from") + 1] == f"type=registry,ref={ref}"
    assert build[build.index("--cache-to") + 1] == (
        f"type=registry,ref={ref},mode=max,image-manifest=true,oci-mediatypes=true")
