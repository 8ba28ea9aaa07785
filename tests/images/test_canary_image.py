"""The canary image really built with buildah from the local busybox base, with the build args a
real build passes, and its smoke test run inside it, as the host script does without Docker.

Needs root, buildah and Debian's busybox-static (`bash scripts/system-deps.sh`); vfs storage and
chroot isolation, as on this kind of machine. A few seconds in all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from chalicelib.specs.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(ROOT)
SPEC = CATALOG.frameworks["canary"]
CONTEXT = CATALOG.context_dir(SPEC)
MAKE_BASE = CONTEXT / "make-local-base.sh"
LOCAL_BASE = "localhost/voltabuild/busybox:local"
BUILDAH = ["buildah", "--storage-driver", "vfs"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed (bash scripts/system-deps.sh)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah with vfs storage and chroot isolation needs root here"),
    pytest.mark.skipif(not Path("/bin/busybox").exists(),
                       reason="/bin/busybox missing: install busybox-static (bash scripts/system-deps.sh)"),
]


def buildah(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"buildah {' '.join(args)}: {result.stderr}"
    return result


def build_args(**overrides: str) -> list[str]:
    """What a real build passes: the buildspec's rendering plus the host script's three."""
    resolved = SPEC.resolve(None, None, None)
    args = SPEC.docker_build_args(resolved, CATALOG.hardware, overrides)
    args["BASE_IMAGE"] = LOCAL_BASE  # stands in for the allowed image (no request may choose it)
    args.update(BUILD_DATE="2026-11-28T12:00:00Z", VOLTABUILD_BUILD_ID="b-test", VCS_REF="0123abcd")
    return [f"--build-arg={k}={v}" for k, v in args.items()]


def bud(tag: str, *args: str) -> subprocess.CompletedProcess:
    return buildah("bud", "--isolation", "chroot", "--pull=never", "--quiet", *args, "-t", tag, str(CONTEXT),
                   check=False)


@pytest.fixture(scope="module")
def local_base():
    result = subprocess.run(["bash", str(MAKE_BASE), LOCAL_BASE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return LOCAL_BASE


@pytest.fixture(scope="module")
def canary(local_base):
    tag = f"localhost/voltabuild-test/canary:{uuid.uuid4().hex[:12]}"
    result = bud(tag, *build_args())
    assert result.returncode == 0, result.stderr
    yield tag
    buildah("rmi", tag, check=False)


def run_in(image: str, argv: list[str], *env: str) -> subprocess.CompletedProcess:
    ctr = buildah("from", "--pull=never", image).stdout.strip()
    try:
        env_args = [a for e in env for a in ("--env", e)]
        return buildah("run", "--isolation", "chroot", *env_args, ctr, "--", *argv, check=False)
    finally:
        buildah("rm", ctr, check=False)


def test_smoke_test_passes_in_the_built_image(canary):
    result = run_in(canary, SPEC.smoke_test)
    assert result.returncode == 0, result.stderr
    assert "canary version 1.0" in result.stderr
    assert "running as voltabuild (uid 1000)" in result.stderr
    assert "GPU: none visible" in result.stderr
    assert "smoke test passed" in result.stderr


def test_smoke_test_with_require_gpu_fails_on_a_machine_without_gpu(canary):
    result = run_in(canary, SPEC.smoke_test, "VOLTABUILD_REQUIRE_GPU=1")
    assert result.returncode == 1
    assert "--gpus all" in result.stderr


def test_image_carries_the_build_labels_and_runs_as_non_root(canary):
    info = json.loads(buildah("inspect", "--type", "image", canary).stdout)
    config = info["OCIv1"]["config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == "1.0"
    assert labels["org.opencontainers.image.revision"] == "0123abcd"
    assert labels["org.opencontainers.image.created"] == "2026-11-28T12:00:00Z"
    assert labels["io.voltabuild.framework"] == "canary"
    assert labels["io.voltabuild.build-id"] == "b-test"
    assert labels["io.voltabuild.buildspec-hash"] == SPEC.source_hash
    assert config["User"] == "1000"
    assert config["Entrypoint"] == [SPEC.smoke_test[0]]


def test_canary_fail_fails_the_build_with_a_clear_message(local_base):
    tag = f"localhost/voltabuild-test/canary:fail-{uuid.uuid4().hex[:12]}"
    result = bud(tag, *build_args(CANARY_FAIL="1"))
    assert result.returncode != 0
    assert "CANARY_FAIL=1 was requested, so this build fails on purpose" in result.stderr + result.stdout
    assert buildah("inspect", "--type", "image", tag, check=False).returncode != 0  # nothing was tagged


def test_make_local_base_is_idempotent(local_base):
    before = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", local_base).stdout
    result = subprocess.run(["bash", str(MAKE_BASE), local_base], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "already in local storage" in result.stderr
    assert buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", local_base).stdout == before
