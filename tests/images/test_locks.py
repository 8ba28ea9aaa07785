"""The images' lock files (buildspecs/locks/, made by `make lock` = scripts/lock.py): each records
the hash of its inputs, and a buildspec change that would resolve differently makes it stale,
which fails here. No network: nothing is resolved, only the inputs are recomputed."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from chalicelib.specs.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]


def _load_lock_module():
    spec = importlib.util.spec_from_file_location("voltabuild_lock", ROOT / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["voltabuild_lock"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


lock = _load_lock_module()


def test_every_lock_is_up_to_date_and_every_default_is_locked():
    assert lock.stale(load_catalog(ROOT)) == []


@pytest.fixture
def copy(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    for folder in ("buildspecs", "dockerfiles"):
        shutil.copytree(ROOT / folder, root / folder)
    shutil.copy(ROOT / "requirements-dev.txt", root / "requirements-dev.txt")
    monkeypatch.setattr(lock, "ROOT", root)
    monkeypatch.setattr(lock, "LOCKS", root / "buildspecs" / "locks")
    return root


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_a_buildspec_change_makes_its_lock_stale(copy):
    # GIVEN the default PyTorch version moved to another PACKAGES_AS_OF date
    _edit(copy / "buildspecs" / "pytorch.yaml",
          lambda d: d["versions"][0]["args"].update(PACKAGES_AS_OF="2026-10-31"))
    # THEN its lock is stale, named, and the others are not
    assert lock.stale(load_catalog(copy)) == [
        "buildspecs/locks/pytorch/2.14.1-cu126-py312.txt: stale (its buildspec or Dockerfile changed): run `make lock`"]


def test_a_dockerfile_pin_change_makes_its_lock_stale(copy):
    path = copy / "dockerfiles" / "mxnet" / "Dockerfile"
    path.write_text(path.read_text().replace("ARG SCIPY_VERSION=1.10.1", "ARG SCIPY_VERSION=1.10.0"))
    assert lock.stale(load_catalog(copy)) == [
        "buildspecs/locks/mxnet/1.9.1-cu112-py38.txt: stale (its buildspec or Dockerfile changed): run `make lock`"]


def test_a_new_default_without_a_lock_and_a_lock_without_a_combination(copy):
    # GIVEN the default Python moved to 3.11 and TensorFlow 2.21.0 was removed... of its Python 3.12
    _edit(copy / "buildspecs" / "pytorch.yaml", lambda d: d["defaults"].update(python="3.11"))
    _edit(copy / "buildspecs" / "tensorflow.yaml",
          lambda d: (d["versions"][0].update(python=["3.11", "3.10", "3.13"]), d["defaults"].update(python="3.11")))
    problems = lock.stale(load_catalog(copy))
    assert "buildspecs/locks/pytorch/2.14.1-cu126-py311.txt: missing (the default combination): run `make lock`" in problems
    assert ("buildspecs/locks/tensorflow/2.21.0-cu125-py312.txt: no such combination in the buildspecs any more: "
            "delete it") in problems


def _requirements(text: str) -> dict[str, list[str]]:
    """name==version -> its hashes, from a lock file."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9._\[\],-]+==\S+)", line)
        if m:
            current = m.group(1)
            out[current] = []
        elif current and (h := re.search(r"--hash=(sha256:[0-9a-f]{64})", line)):
            out[current].append(h.group(1))
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "buildspecs" / "locks").glob("*/*.txt")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_locked_requirement_is_hashed(path):
    reqs = _requirements(path.read_text())
    assert len(reqs) > 20  # numpy, scipy, JupyterLab and their dependencies
    assert all(hashes for hashes in reqs.values()), [r for r, h in reqs.items() if not h]


def test_pytorch_pins_what_it_cannot_hash_and_says_why():
    text = (ROOT / "buildspecs" / "locks" / "pytorch" / "2.14.1-cu126-py312.txt").read_text()
    assert "# pinned, not hashed (download.pytorch.org" in text
    assert "#   torch==2.14.1 --index-url https://download.pytorch.org/whl/cu126\n" in text
    assert "#   torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu126\n" in text
    assert "#   torchaudio==2.11.1 --index-url https://pypi.org/simple\n" in text
    assert not any(r.startswith("torch") for r in _requirements(text))  # never from PyPI's variant
    tf = (ROOT / "buildspecs" / "locks" / "tensorflow" / "2.21.0-cu125-py312.txt").read_text()
    assert "pinned, not hashed" not in tf and "tensorflow==2.21.0" in _requirements(tf)
