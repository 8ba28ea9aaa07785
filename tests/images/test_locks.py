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

from chalicelib.launching.catalog_contexts import combination_key, lock_path, uses_lock
from chalicelib.specs.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]


def _load_lock_module():
    spec = importlib.util.spec_from_file_location("voltabuild_lock", ROOT / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["voltabuild_lock"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


lock = _load_lock_module()


def test_every_lock_is_up_to_date_and_every_combination_is_locked():
    assert lock.stale(load_catalog(ROOT)) == []


def test_every_combination_the_catalog_accepts_has_its_lock():
    # the catalog accepts every framework x version x CUDA x Python of its buildspecs; an image
    # that installs from a lock cannot build without one, so each must have its own
    catalog = load_catalog(ROOT)
    offered = [(spec, r) for spec in catalog.frameworks.values() if uses_lock(catalog, spec)
               for r in spec.combinations()]
    assert {spec.framework for spec, _ in offered} == {"pytorch", "tensorflow", "mxnet"}
    assert len(offered) > 3  # every combination, not only the defaults
    missing = [combination_key(r) for _, r in offered if not lock_path(catalog, r).is_file()]
    assert missing == [], f"no lock for {missing}: run `make lock`"
    # and every lock file is one the catalog offers (none left behind by a removed combination)
    files = {p.relative_to(ROOT / "buildspecs" / "locks").as_posix().removesuffix(".txt")
             for p in (ROOT / "buildspecs" / "locks").glob("*/*.txt")}
    assert files == {combination_key(r) for _, r in offered}


@pytest.fixture
def copy(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    for folder in ("buildspecs", "dockerfiles"):
        shutil.copytree(ROOT / folder, root / folder)
    shutil.copy(ROOT / "requirements-dev.txt", root / "requirements-dev.txt")
    monkeypatch.setattr(lock, "ROOT", root)
    monkeypatch.setattr(lock, "LOCKS", root / "buildspecs" / "locks")
    # `make lock` first asks the registries for the bases' digests: never beyond loopback here
    # (tests/catalog/test_base_digests.py runs that step against a local registry)
    monkeypatch.setattr(lock.base_digests, "manifest_digest", _no_registry)
    return root


def _no_registry(ref):
    raise lock.base_digests.Unreachable(f"{ref.manifest_url}: not asked (the tests stay on loopback)")


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_a_buildspec_change_makes_its_lock_stale(copy):
    # GIVEN the default PyTorch version moved to another PACKAGES_AS_OF date
    _edit(copy / "buildspecs" / "pytorch.yaml",
          lambda d: d["versions"][0]["args"].update(PACKAGES_AS_OF="2026-10-31"))
    # THEN each of its combinations' locks is stale, named, and no other version's
    assert lock.stale(load_catalog(copy)) == [
        f"buildspecs/locks/pytorch/2.14.1-cu{cuda}-py{py}.txt: stale (its buildspec or Dockerfile changed): run `make lock`"
        for cuda in ("126", "130") for py in ("310", "311", "312", "313", "314")]


def test_a_dockerfile_pin_change_makes_its_lock_stale(copy):
    path = copy / "dockerfiles" / "mxnet" / "Dockerfile"
    path.write_text(path.read_text().replace("ARG SCIPY_VERSION=1.10.1", "ARG SCIPY_VERSION=1.10.0"))
    assert lock.stale(load_catalog(copy)) == [
        "buildspecs/locks/mxnet/1.9.1-cu112-py38.txt: stale (its buildspec or Dockerfile changed): run `make lock`"]


def test_a_new_combination_without_a_lock_and_a_lock_without_a_combination(copy):
    # GIVEN PyTorch 2.14.1 now offered for Python 3.9 too, and TensorFlow 2.21.0 no longer for 3.12
    _edit(copy / "buildspecs" / "pytorch.yaml", lambda d: d["versions"][0]["python"].append("3.9"))
    _edit(copy / "buildspecs" / "tensorflow.yaml",
          lambda d: (d["versions"][0].update(python=["3.11", "3.10", "3.13"]), d["defaults"].update(python="3.11")))
    problems = lock.stale(load_catalog(copy))
    # THEN each new combination is named missing (not only a default one), the old lock as left behind
    for cuda in ("126", "130"):
        assert (f"buildspecs/locks/pytorch/2.14.1-cu{cuda}-py39.txt: missing (the catalog offers pytorch 2.14.1, "
                f"CUDA {cuda[:-1]}.{cuda[-1]}, Python 3.9): run `make lock`") in problems
    assert ("buildspecs/locks/tensorflow/2.21.0-cu125-py312.txt: no such combination in the buildspecs any more: "
            "delete it") in problems
    assert len(problems) == 3, problems


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


FAKE_UV = """#!/usr/bin/env bash
# uv as scripts/lock.py runs it: `--version`, and `pip compile -` resolving the requirements on
# stdin to one hashed line each; each compile is logged with its --python-version
if [[ $1 == --version ]]; then echo "uv 0.13.9 (fake)"; exit 0; fi
py=""; prev=""
for a in "$@"; do [[ $prev == --python-version ]] && py=$a; prev=$a; done
echo "compile $py" >>"$FAKE_UV_LOG"
if [[ $py == "${FAKE_UV_FAIL:-none}" ]]; then echo "No solution found for Python $py" >&2; exit 1; fi
while read -r req; do
  [[ -n $req ]] && printf '%s==1.0 \\\\\\n    --hash=sha256:%064d\\n' "${req%%[=\\[]*}" 0
done
"""


@pytest.fixture
def fake_uv(tmp_path):
    uv = tmp_path / "uv"
    uv.write_text(FAKE_UV)
    uv.chmod(0o755)
    log = tmp_path / "uv.log"
    log.write_text("")
    return uv, log


def test_make_lock_resolves_once_per_distinct_input_and_a_forced_rerun_changes_nothing(copy, fake_uv, monkeypatch, capsys):
    uv, log = fake_uv
    monkeypatch.setenv("FAKE_UV_LOG", str(log))
    shutil.rmtree(copy / "buildspecs" / "locks")
    catalog = load_catalog(copy)
    # WHEN every lock is made from nothing
    assert lock.main(["--uv", str(uv)]) == 0
    # THEN every combination has one, up to date, and PyTorch's CUDA variants of a version and
    # Python shared one resolve (their PyPI part is the same)
    assert lock.stale(catalog) == []
    offered = lock.combinations(catalog, everything=True)
    distinct = {(x.hashed, x.python, x.exclude_newer) for x in offered}
    assert len(log.read_text().splitlines()) == len(distinct) < len(offered)
    assert f"{len(offered)} lock file(s) changed" in capsys.readouterr().out
    before = {p: p.read_bytes() for p in (copy / "buildspecs" / "locks").glob("*/*.txt")}
    text = (copy / "buildspecs" / "locks" / "pytorch" / "2.14.1-cu130-py313.txt").read_text()
    assert "numpy==1.0 \\\n    --hash=sha256:" in text and "#   torch==2.14.1 --index-url" in text
    # WHEN it runs again: nothing to do; forced: everything resolved again, nothing changed
    assert lock.main(["--uv", str(uv)]) == 0
    assert "0 lock file(s) changed" in capsys.readouterr().out
    assert lock.main(["--uv", str(uv), "--force"]) == 0
    assert "0 lock file(s) changed" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in (copy / "buildspecs" / "locks").glob("*/*.txt")} == before


def test_a_combination_that_does_not_resolve_is_named_and_the_others_are_locked(copy, fake_uv, monkeypatch, capsys):
    uv, log = fake_uv
    monkeypatch.setenv("FAKE_UV_LOG", str(log))
    monkeypatch.setenv("FAKE_UV_FAIL", "3.14")
    shutil.rmtree(copy / "buildspecs" / "locks")
    assert lock.main(["--uv", str(uv)]) == 1
    err = capsys.readouterr().err
    assert "No solution found for Python 3.14" in err
    assert "buildspecs/locks/pytorch/2.14.1-cu126-py314.txt" in err
    problems = lock.stale(load_catalog(copy))
    assert problems and all("-py314.txt: missing" in p for p in problems), problems


CATALOG = load_catalog(ROOT)


def _locked_combinations():
    return [(spec, r) for spec in CATALOG.frameworks.values() if uses_lock(CATALOG, spec) for r in spec.combinations()]


@pytest.mark.parametrize("spec,r", _locked_combinations(), ids=lambda x: combination_key(x) if hasattr(x, "cuda") else "")
def test_each_lock_holds_its_own_combination(spec, r):
    # the file named for a combination locks that framework version for that CUDA and Python
    text = lock_path(CATALOG, r).read_text()
    assert f"# {r.framework} {r.version}, CUDA {r.cuda}, Python {r.python}, " in text
    reqs = _requirements(text)
    if r.framework == "tensorflow":
        assert f"tensorflow=={r.version}" in reqs
    elif r.framework == "mxnet":
        assert f"mxnet-cu{r.cuda.replace('.', '')}=={r.version}" in reqs
    else:  # PyTorch's own wheels: pinned by version and the index of the combination's CUDA
        assert f"#   torch=={r.version} --index-url https://download.pytorch.org/whl/cu{r.cuda.replace('.', '')}\n" in text
        assert not [name for name in reqs if name.startswith(("torch==", "nvidia-"))], "no CUDA wheels from PyPI"
