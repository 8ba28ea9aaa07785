"""Packaging fixtures: `chalice package` runs once per test session and stage (it takes seconds)."""

from __future__ import annotations

import pytest

STAGES = ("dev", "prod")


@pytest.fixture(scope="session")
def packages(tmp_path_factory):
    """stage -> infra.package.Package, built like `make package STAGE=<stage>` into a tmp dir."""
    from infra.package import package

    out = tmp_path_factory.mktemp("dist")
    return {stage: package(stage, out / stage) for stage in STAGES}


@pytest.fixture(scope="session")
def templates(packages):
    return {stage: p.load_template() for stage, p in packages.items()}
