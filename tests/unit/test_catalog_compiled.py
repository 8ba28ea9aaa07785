"""The catalog compiled to JSON at package time (chalicelib/specs/catalog_compiled.py): the
Lambda reads exactly what the YAML says, and never a stale copy."""

from __future__ import annotations

import shutil
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

from chalicelib.specs import catalog_compiled
from chalicelib.specs.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path):
    """A copy of the catalog (buildspecs + dockerfiles), compiled like a deployment bundle."""
    for name in ("buildspecs", "dockerfiles"):
        shutil.copytree(ROOT / name, tmp_path / name)
    catalog_compiled.write(tmp_path)
    return tmp_path


def test_every_yaml_file_compiles_to_exactly_what_yaml_reads(root):
    files = sorted((root / "buildspecs").rglob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        compiled, data = catalog_compiled.parsed(path)
        assert compiled, path
        assert data == yaml.safe_load(path.read_text()), path
        assert repr(data) == repr(yaml.safe_load(path.read_text())), path  # the same order too
    # dates stay dates (releases.yaml, the facts)
    _, releases = catalog_compiled.parsed(root / "buildspecs" / "facts" / "releases.yaml")
    found = [v["released"] for fw in releases["frameworks"].values() for v in fw["versions"].values()]
    assert found and all(type(d) is date for d in found)


def test_the_compiled_catalog_is_the_yaml_catalog_without_yaml(root, monkeypatch):
    from_yaml = load_catalog(ROOT)
    # GIVEN no PyYAML at all (as in the Lambda)
    monkeypatch.setitem(sys.modules, "yaml", None)
    from_json = load_catalog(root)
    assert from_json.frameworks == from_yaml.frameworks
    assert from_json.hardware == from_yaml.hardware
    assert from_json.summary == from_yaml.summary
    # and loading twice gives the same (each load gets fresh objects to add to)
    assert load_catalog(root).frameworks == from_json.frameworks


def test_a_changed_yaml_file_is_read_from_the_yaml_not_the_stale_compiled_copy(root):
    path = root / "buildspecs" / "canary.yaml"
    text = path.read_text()
    assert "timeout_minutes" in text
    path.write_text(text + "\n# changed after compiling\n")
    assert catalog_compiled.parsed(path) == (False, None)
    assert load_catalog(root).frameworks["canary"] == load_catalog(ROOT).frameworks["canary"].model_copy(
        update={"source_hash": load_catalog(root).frameworks["canary"].source_hash})


def test_no_compiled_file_means_yaml(tmp_path):
    shutil.copytree(ROOT / "buildspecs", tmp_path / "buildspecs")
    assert catalog_compiled.parsed(tmp_path / "buildspecs" / "canary.yaml") == (False, None)
    assert not (ROOT / catalog_compiled.FILE_NAME).exists()  # a checkout reads its YAML


@pytest.mark.parametrize("value", [{"$date": "x"}, {1: "a"}, {"a": {1, 2}}])
def test_what_json_cannot_hold_faithfully_is_refused(value):
    with pytest.raises(ValueError):
        catalog_compiled._encode(value)
