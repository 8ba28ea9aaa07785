"""The PyTorch Dockerfile's stages, really resolved by buildah from the packed build context: a
wheel build never needs the devel image (its `compiled` stage is an empty one on the base), and a
source build goes through the compile stage on `DEVEL_IMAGE`. Nothing is pulled: the base is the
local busybox image, the devel image one that does not exist.

Needs root, buildah and Debian's busybox-static (`bash scripts/system-deps.sh`), as
test_canary_image.py; the builds use their own storage under tmp (vfs, chroot isolation)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from chalicelib.launching.catalog_contexts import catalog_tarball
from chalicelib.specs.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(ROOT)
SPEC = CATALOG.spec("pytorch")
LOCAL_BASE = "localhost/voltabuild/busybox:local"
MISSING_DEVEL = "localhost/voltabuild/no-such-devel:1"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed (bash scripts/system-deps.sh)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah with vfs storage and chroot isolation needs root here"),
    pytest.mark.skipif(not Path("/bin/busybox").exists(),
                       reason="/bin/busybox missing: install busybox-static (bash scripts/system-deps.sh)"),
]


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    """Private buildah storage holding only the local busybox base."""
    d = tmp_path_factory.mktemp("buildah")
    conf = d / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{d}/graph"\nrunroot = "{d}/run"\n')
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}
    made = subprocess.run(["bash", str(CATALOG.context_dir(CATALOG.spec("canary")) / "make-local-base.sh"), LOCAL_BASE],
                          env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    return env


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    """The default combination's context as the instance unpacks it (Dockerfile, lock, shared files)."""
    d = tmp_path_factory.mktemp("context")
    data = catalog_tarball(CATALOG, SPEC, SPEC.resolve(None, None, None))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(d, filter="data")
    return d


def build_compiled(storage, context, mode: str) -> subprocess.CompletedProcess:
    args = SPEC.docker_build_args(SPEC.resolve(None, None, None), CATALOG.hardware, {"BUILD_MODE": mode})
    args.update(BASE_IMAGE=LOCAL_BASE, DEVEL_IMAGE=MISSING_DEVEL)
    return subprocess.run(["buildah", "bud", "--isolation", "chroot", "--pull=never", "--target", "compiled",
                           *[f"--build-arg={k}={v}" for k, v in args.items()], "-t", f"localhost/i19/compiled:{mode}",
                           str(context)], env=storage, capture_output=True, text=True, timeout=300)


def test_a_wheel_build_never_needs_the_devel_image(storage, context):
    result = build_compiled(storage, context, "wheels")
    assert result.returncode == 0, result.stderr
    assert "no-such-devel" not in result.stdout + result.stderr
    # and what the image takes from that stage is empty: no wheels, no CUDA libraries
    listing = subprocess.run(["buildah", "from", "--pull=never", "localhost/i19/compiled:wheels"], env=storage,
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    container = listing.stdout.strip()
    try:
        out = subprocess.run(["buildah", "run", "--isolation", "chroot", container, "--", "find", "/out"],
                             env=storage, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert sorted(out.stdout.split()) == ["/out", "/out/cuda-libs", "/out/wheels"]
    finally:
        subprocess.run(["buildah", "rm", container], env=storage, capture_output=True, timeout=60)


def test_a_source_build_compiles_on_the_devel_image(storage, context):
    # the compile stage also takes uv from its image: stand one in, so the devel image is what is missing
    uv = re.search(r"^ARG UV_VERSION=(\S+)$", (context / "Dockerfile").read_text(), re.M).group(1)
    tag = subprocess.run(["buildah", "tag", LOCAL_BASE, f"ghcr.io/astral-sh/uv:{uv}"],
                         env=storage, capture_output=True, text=True, timeout=60)
    assert tag.returncode == 0, tag.stderr
    result = build_compiled(storage, context, "source")
    assert result.returncode != 0
    assert MISSING_DEVEL in result.stderr
