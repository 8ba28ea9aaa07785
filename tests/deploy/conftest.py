"""Packaging fixtures: `chalice package` runs once per test run and stage (it takes seconds;
under pytest-xdist the workers share one build, made by whichever asks first)."""

from __future__ import annotations

import fcntl
import os

import pytest

STAGES = ("dev", "prod")


@pytest.fixture(scope="session")
def packages(tmp_path_factory):
    """stage -> infra.package.Package, built like `make package STAGE=<stage>` into a tmp dir
    that every xdist worker of this run shares (a lock file makes the first one build it)."""
    from infra.package import Package, package

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-N/popen-gwX: the run's folder is shared by its workers
    out = base / "voltabuild-dist"
    with open(base / "voltabuild-dist.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "complete").exists():
            for stage in STAGES:
                package(stage, out / stage)
            (out / "complete").touch()
    return {stage: Package(stage=stage, template=out / stage / "sam.json", zip=out / stage / "deployment.zip")
            for stage in STAGES}


@pytest.fixture(scope="session")
def templates(packages):
    return {stage: p.load_template() for stage, p in packages.items()}
