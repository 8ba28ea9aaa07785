"""The buildspec catalog: every file loads, every combination resolves, a broken file
fails loudly naming the file and the field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from chalicelib.builds.names import DOCKER_TAG
from chalicelib.errors import BadRequest, CatalogError
from chalicelib.specs.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(ROOT)
COMBOS = [(s.framework, r) for s in CATALOG.frameworks.values() for r in s.combinations()]


def test_the_four_frameworks_are_there():
    assert set(CATALOG.frameworks) == {"pytorch", "tensorflow", "mxnet", "canary"}
    assert CATALOG.frameworks["mxnet"].deprecated
    for spec in CATALOG.frameworks.values():
        assert spec.instance_types[0] == "p3.2xlarge"


@pytest.mark.parametrize("framework,combo", COMBOS, ids=lambda x: getattr(x, "version", x))
def test_every_combination_resolves_to_concrete_tags(framework, combo):
    spec = CATALOG.frameworks[framework]
    resolved = spec.resolve(combo.version, combo.cuda, combo.python)
    assert resolved == combo
    tags = spec.tags_for(resolved, CATALOG.hardware)
    assert tags and all(DOCKER_TAG.match(t) for t in tags)
    assert all("{" not in t for t in tags)
    args = spec.docker_build_args(resolved, CATALOG.hardware)
    assert all("{" not in v for v in args.values())


def test_defaults_and_version_alone():
    spec = CATALOG.frameworks["pytorch"]
    d = spec.resolve(None, None, None)
    assert (d.version, d.cuda, d.python) == ("2.14.1", "12.6", "3.12")
    assert "latest" in spec.tags_for(d, CATALOG.hardware)
    other = spec.resolve("2.6.0", None, None)
    assert other.cuda == spec.version("2.6.0").cuda[0]
    assert "latest" not in spec.tags_for(other, CATALOG.hardware)


def test_unsupported_combination_lists_what_is_supported():
    spec = CATALOG.frameworks["pytorch"]
    with pytest.raises(BadRequest, match="supported versions: 2.14.1, 2.13.0"):
        spec.resolve("0.1", None, None)
    with pytest.raises(BadRequest, match="built for CUDA 12.4, 12.1, 11.8"):
        spec.resolve("2.5.1", "10.0", None)


@pytest.fixture
def catalog_copy(tmp_path):
    shutil.copytree(ROOT / "buildspecs", tmp_path / "buildspecs")
    shutil.copytree(ROOT / "dockerfiles", tmp_path / "dockerfiles")
    return tmp_path


def _edit(root: Path, name: str, change) -> None:
    path = root / "buildspecs" / name
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize("change,needle", [
    (lambda d: d.update(timeout_minutes={"default": 500, "max": 10}), "timeout_minutes"),
    (lambda d: d.update(root_volume_gb="big"), "root_volume_gb"),
    (lambda d: d["build_args"]["BUILD_MODE"].update(pattern="^(wheels)$", default="source"), "build_args.BUILD_MODE"),
    (lambda d: d.update(surprise=1), "surprise"),
    (lambda d: d.update(instance_types=["p3.2xlarge", "t3.micro"]), "instance_types"),
    (lambda d: d.update(defaults={"version": "9.9", "cuda": "12.4", "python": "3.11"}), "defaults"),
    (lambda d: d.pop("repository"), "repository"),
])
def test_broken_buildspec_names_file_and_field(catalog_copy, change, needle):
    _edit(catalog_copy, "pytorch.yaml", change)
    with pytest.raises(CatalogError) as err:
        load_catalog(catalog_copy)
    assert "pytorch.yaml" in str(err.value)
    assert needle in str(err.value)


def test_not_yaml_at_all(catalog_copy):
    (catalog_copy / "buildspecs" / "canary.yaml").write_text("framework: [unclosed\n")
    with pytest.raises(CatalogError, match="canary.yaml: not valid YAML"):
        load_catalog(catalog_copy)
