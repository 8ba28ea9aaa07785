"""`make catalog-refresh` (infra/catalog_refresh.py) offline, against PyPI responses recorded on
2026-12-02 (tests/catalog_refresh/data/): it says "up to date" for the current catalog, proposes
a reviewable patch for releases the catalog lacks (never touching a default or removing a
version), and says which sources it could not reach."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from infra import catalog_refresh as cr

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
TODAY = dt.date(2026, 12, 2)
PYPI = "https://pypi.org/pypi"
INDEX = "https://download.pytorch.org/whl/torch/"


class FakeResponse:
    def __init__(self, url: str, body: str):
        self.url, self.text = url, body

    def raise_for_status(self) -> None:
        pass

    def json(self):
        return json.loads(self.text)


class RecordedSession:
    """requests.Session's `get` over the recorded files; anything else is unreachable."""

    def __init__(self, pages: dict[str, Path]):
        self.pages = pages
        self.asked: list[str] = []

    def get(self, url: str, timeout: float):
        self.asked.append(url)
        if url not in self.pages:
            raise requests.ConnectionError(f"Failed to resolve '{url.split('/')[2]}'")
        return FakeResponse(url, self.pages[url].read_text())


def pypi_pages(*skip: str) -> dict[str, Path]:
    pages = {f"{PYPI}/{name}/json": DATA / f"{name}.json" for name in ("torch", "tensorflow", "mxnet-cu112")}
    return {url: path for url, path in pages.items() if not any(f"/{s}/" in url for s in skip)}


@pytest.fixture
def catalog_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "buildspecs", tmp_path / "buildspecs")
    return tmp_path


def _drop_version(root: Path, framework: str, version: str) -> None:
    """The buildspec as it was before `version` was added (the facts keep their lines)."""
    path = root / "buildspecs" / f"{framework}.yaml"
    text = path.read_text()
    start = text.index(f'  - version: "{version}"')
    end = text.find("  - version:", start + 1)
    path.write_text(text[:start] + text[end:])


def _drop_facts(root: Path, version: str) -> None:
    """The facts files without `version`'s lines (its block in wheels.yaml)."""
    for name in ("wheels.yaml", "releases.yaml"):
        path = root / "buildspecs" / "facts" / name
        lines = path.read_text().splitlines(keepends=True)
        start = next(i for i, line in enumerate(lines) if line.startswith(f'      "{version}"'))
        end = start + 1
        while end < len(lines) and lines[end].startswith("       "):
            end += 1
        path.write_text("".join(lines[:start] + lines[end:]))


def _run(root: Path, pages: dict[str, Path]) -> tuple[cr.Outcome, str, RecordedSession]:
    session = RecordedSession(pages)
    outcome = cr.refresh(root, cr.Sources(session), TODAY)
    return outcome, cr.report(outcome, Path("dist/catalog-refresh/catalog.patch") if outcome.patch else None), session


def test_the_current_catalog_is_up_to_date():
    outcome, text, session = _run(ROOT, pypi_pages())
    # 2.15.0 is newer, but wheels.yaml records why it is left out: reported, not proposed
    held, up_to_date = text.splitlines()
    assert held.startswith("pytorch 2.15.0: known, held back (buildspecs/facts/wheels.yaml not_offered): "
                           "its only confirmed build is CUDA 13.2")
    assert up_to_date == "up to date: no release on PyPI is newer than the catalog apart from the held-back versions above"
    assert outcome.patch == "" and outcome.new == {}
    # only PyPI was needed: nothing new for torch, so the PyTorch index was not asked
    assert all(url.startswith(PYPI) for url in session.asked)


def test_a_missing_release_is_proposed_as_a_patch_that_applies(catalog_copy):
    # GIVEN the catalog before TensorFlow 2.21.0 was added and facts that do not know it or
    # PyTorch 2.15.0 (which the buildspec does not offer)
    _drop_version(catalog_copy, "tensorflow", "2.21.0")
    _drop_facts(catalog_copy, "2.15.0")
    _drop_facts(catalog_copy, "2.21.0")
    before = {p: (catalog_copy / p).read_text() for p in ("buildspecs/pytorch.yaml", "buildspecs/tensorflow.yaml")}

    # WHEN the tool runs (download.pytorch.org unreachable, as here)
    outcome, text, _ = _run(catalog_copy, pypi_pages())

    # THEN it lists them with their dates, Pythons and the CUDA PyPI's builds name
    assert "pytorch 2.15.0 (released 2026-10-28): Python 3.11, 3.12, 3.13, 3.14, 3.15; CUDA 13.2" in text
    assert "tensorflow 2.21.0 (released 2026-03-06): Python 3.10, 3.11, 3.12, 3.13; CUDA 12.5" in text
    assert f"could not reach {INDEX}" in text
    assert "up to date" not in text
    # and its patch applies, adds the lines, keeps the defaults and every version
    subprocess.run(["git", "init", "-q", str(catalog_copy)], check=True)
    subprocess.run(["git", "apply", "-"], input=outcome.patch, text=True, cwd=catalog_copy, check=True)
    for fw, version in (("pytorch", "2.15.0"), ("tensorflow", "2.21.0")):
        old = yaml.safe_load(before[f"buildspecs/{fw}.yaml"])
        new = yaml.safe_load((catalog_copy / "buildspecs" / f"{fw}.yaml").read_text())
        assert new["defaults"] == old["defaults"]
        assert [v["version"] for v in new["versions"]] == [version] + [v["version"] for v in old["versions"]]
        wheels = yaml.safe_load((catalog_copy / "buildspecs/facts/wheels.yaml").read_text())
        entries = wheels["frameworks"][fw]["versions"][version]["wheels"]
        assert entries and all(e["confirmed"] is False and e["checked"] == TODAY for e in entries)
        releases = yaml.safe_load((catalog_copy / "buildspecs/facts/releases.yaml").read_text())
        assert version in releases["frameworks"][fw]["versions"]
    torch = yaml.safe_load((catalog_copy / "buildspecs/pytorch.yaml").read_text())["versions"][0]
    assert torch["cuda"] == ["13.2"] and torch["args"]["PACKAGES_AS_OF"] == "2026-10-28"


def test_the_pytorch_index_adds_its_cuda_builds_when_reachable(catalog_copy):
    _drop_facts(catalog_copy, "2.15.0")
    outcome, text, _ = _run(catalog_copy, {**pypi_pages(), INDEX: DATA / "torch-index.html"})
    (release,) = outcome.new["pytorch"]
    # PyPI's build first, then the index's Linux x86_64 +cu builds (not cpu, rocm, aarch64-only)
    assert release.cuda == ["13.2", "13.0"]
    assert "could not reach" not in text


def test_unreachable_pypi_is_said_and_never_called_up_to_date():
    outcome, text, _ = _run(ROOT, pypi_pages("tensorflow"))
    assert "not checked (PyPI unreachable): tensorflow" in text
    assert f"could not reach {PYPI}/tensorflow/json" in text
    assert "up to date" not in text


def test_main_writes_the_patch_and_exit_code(catalog_copy, tmp_path, monkeypatch, capsys):
    _drop_version(catalog_copy, "tensorflow", "2.21.0")
    monkeypatch.setattr(cr.requests, "Session", lambda: _Ctx(RecordedSession(pypi_pages())))
    out = tmp_path / "dist"
    assert cr.main(["--root", str(catalog_copy), "--out", str(out)]) == 0
    assert "tensorflow 2.21.0" in capsys.readouterr().out
    assert "+++ b/buildspecs/tensorflow.yaml" in (out / "catalog.patch").read_text()
    monkeypatch.setattr(cr.requests, "Session", lambda: _Ctx(RecordedSession({})))
    assert cr.main(["--root", str(ROOT), "--out", str(out)]) == 2


class _Ctx:
    def __init__(self, session):
        self.session = session

    def __enter__(self):
        return self.session

    def __exit__(self, *exc):
        return False


# ---- the pieces ------------------------------------------------------------------------

def test_newer_than_catalog_skips_prereleases_and_patches_of_deprecated_minors():
    pypi = ["2.18.0", "2.18.1", "2.19.1", "2.20.0", "2.21.0", "2.22.0rc0", "2.20.1"]
    offered = [{"version": "2.21.0"}, {"version": "2.20.0"}, {"version": "2.18.0", "deprecated": "old"}]
    assert cr.newer_than_catalog(pypi, offered) == ["2.20.1"]
    assert cr.newer_than_catalog(pypi + ["2.23.0", "2.23.1"], offered) == ["2.23.1", "2.20.1"]
    assert cr.newer_than_catalog(pypi, [{"version": "2.21.0"}, {"version": "2.18.0"}]) == ["2.18.1"]


def test_python_versions_from_linux_x86_64_wheel_tags():
    files = [f["filename"] for f in json.loads((DATA / "torch.json").read_text())["releases"]["2.15.0"]]
    assert cr.linux_x86_64_pythons(files) == ["3.11", "3.12", "3.13", "3.14", "3.15"]
    assert cr.linux_x86_64_pythons(["x-1.0-cp313-cp313t-manylinux_2_28_x86_64.whl",
                                    "x-1.0-cp39-cp39-win_amd64.whl", "x-1.0.tar.gz"]) == []


def test_cuda_named_by_requires_dist():
    torch = json.loads((DATA / "torch.json").read_text())["info"]["requires_dist"]
    tf = json.loads((DATA / "tensorflow.json").read_text())["info"]["requires_dist"]
    assert cr.cuda_of_requires(torch) == "13.2"
    assert cr.cuda_of_requires(tf) == "12.5"
    assert cr.cuda_of_requires(["nvidia-cuda-runtime-cu12==12.6.77; platform_system == 'Linux'"]) == "12.6"
    assert cr.cuda_of_requires(["numpy", "not a requirement ==="]) is None


@pytest.mark.parametrize(("default", "stale"), [("2.13.0", False), ("2.12.1", True), ("2.15.0", False)])
def test_is_stale_against_the_third_newest_minor(default, stale):
    released = ["2.12.1", "2.13.0", "2.14.0", "2.14.1", "2.15.0", "2.16.0rc1"]
    assert cr.is_stale(default, released) is stale
