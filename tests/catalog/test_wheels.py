"""The catalog against its wheel and release facts (buildspecs/facts/wheels.yaml, releases.yaml).

Data-driven: every (version, cuda, python) a buildspec offers is a test case, so a new line in a
buildspec is checked without touching this file. A failure names the buildspec file, the
combination and the fact that is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.version import Version

from chalicelib.specs.catalog import load_catalog
from infra.catalog_refresh import is_stale, load_releases, load_wheels, newest_minors

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(ROOT)
WHEELS = load_wheels(ROOT)
RELEASES = load_releases(ROOT)
WHEELS_FILE = "buildspecs/facts/wheels.yaml"
RELEASES_FILE = "buildspecs/facts/releases.yaml"

# every framework voltabuild builds from published wheels (the canary builds nothing of the kind)
FRAMEWORKS = sorted(f for f in CATALOG.frameworks if f != "canary")
COMBINATIONS = [(fw, r) for fw in FRAMEWORKS for r in CATALOG.frameworks[fw].combinations()]


def test_every_wheel_framework_has_facts():
    assert set(FRAMEWORKS) <= set(WHEELS), f"{WHEELS_FILE}: no facts for {sorted(set(FRAMEWORKS) - set(WHEELS))}"
    assert set(FRAMEWORKS) <= set(RELEASES), f"{RELEASES_FILE}: no facts for {sorted(set(FRAMEWORKS) - set(RELEASES))}"


def wheel_fact(framework: str, version: str, cuda: str) -> dict | None:
    facts = WHEELS.get(framework, {}).get("versions", {}).get(version)
    if facts is None:
        return None
    return next((w for w in facts.get("wheels", []) if w["cuda"] == cuda), None)


@pytest.mark.parametrize(("framework", "r"), COMBINATIONS,
                         ids=[f"{fw}-{r.version}-cu{r.cuda}-py{r.python}" for fw, r in COMBINATIONS])
def test_every_offered_combination_is_a_confirmed_wheel(framework, r):
    where = f"buildspecs/{framework}.yaml offers {framework} {r.version} CUDA {r.cuda} Python {r.python}"
    facts = WHEELS[framework]["versions"].get(r.version)
    assert facts is not None, f"{where}, but {WHEELS_FILE} has no {framework} {r.version}"
    fact = wheel_fact(framework, r.version, r.cuda)
    assert fact is not None, (
        f"{where}, but {WHEELS_FILE} lists no CUDA {r.cuda} wheels for it "
        f"(it lists {', '.join(w['cuda'] for w in facts['wheels'])})")
    assert fact.get("confirmed") is True, (
        f"{where}, but {WHEELS_FILE} marks {framework} {r.version} CUDA {r.cuda} unconfirmed: {fact.get('note')}")
    assert r.python in fact["python"], (
        f"{where}, but {WHEELS_FILE} lists Python {', '.join(fact['python'])} for its CUDA {r.cuda} wheels")


@pytest.mark.parametrize("version", [v.version for v in CATALOG.frameworks["pytorch"].versions])
def test_pytorch_companions_are_the_facts(version):
    spec = CATALOG.frameworks["pytorch"]
    args = spec.version(version).args
    companions = WHEELS["pytorch"]["versions"][version]["companions"]
    for name in ("torchvision", "torchaudio"):
        fact = companions[name]
        where = f"buildspecs/pytorch.yaml {version}: {name.upper()}"
        assert args[f"{name.upper()}_VERSION"] == fact["version"], (
            f"{where}_VERSION={args[f'{name.upper()}_VERSION']} but {WHEELS_FILE} pairs {fact['version']}")
        assert args[f"{name.upper()}_FROM"] == fact["index"], (
            f"{where}_FROM={args[f'{name.upper()}_FROM']} but {WHEELS_FILE} says it comes from {fact['index']}")
        assert fact.get("confirmed", True) is True, f"{WHEELS_FILE}: {name} for torch {version} is unconfirmed"


def _lines():
    for fw, facts in WHEELS.items():
        for version, entry in facts["versions"].items():
            for w in entry.get("wheels", []):
                yield f"{fw} {version} CUDA {w['cuda']}", w
            for name, c in entry.get("companions", {}).items():
                yield f"{fw} {version} {name}", c


def test_every_fact_has_a_source_and_a_date_and_unconfirmed_ones_say_why():
    for what, line in _lines():
        assert line.get("source"), f"{WHEELS_FILE}: {what} has no source"
        assert line.get("checked"), f"{WHEELS_FILE}: {what} has no checked date"
        if line.get("confirmed") is False:
            assert line.get("note"), f"{WHEELS_FILE}: {what} is unconfirmed without a note saying why"
    for fw, facts in RELEASES.items():
        assert facts.get("source") and facts.get("checked"), f"{RELEASES_FILE}: {fw} has no source or checked date"


@pytest.mark.parametrize(("framework", "version"),
                         [(fw, v.version) for fw in FRAMEWORKS for v in CATALOG.frameworks[fw].versions])
def test_every_offered_version_has_a_release_date(framework, version):
    assert version in RELEASES[framework]["versions"], (
        f"buildspecs/{framework}.yaml offers {version} but {RELEASES_FILE} has no release date for it")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_default_is_not_older_than_the_third_newest_minor(framework):
    spec = CATALOG.frameworks[framework]
    released = RELEASES[framework]["versions"]
    window = newest_minors(released)
    assert not is_stale(spec.defaults.version, released), (
        f"buildspecs/{framework}.yaml: default {spec.defaults.version} is older than "
        f"{framework}'s third-newest minor release {window[-1][0]}.{window[-1][1]} in {RELEASES_FILE}; "
        f"newest minors: {', '.join(f'{a}.{b}' for a, b in window)}")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_versions_out_of_the_support_window_are_deprecated_and_the_rest_are_not(framework):
    spec = CATALOG.frameworks[framework]
    window = newest_minors(RELEASES[framework]["versions"])
    for v in spec.versions:
        parsed = Version(v.version)
        inside = (parsed.major, parsed.minor) in window
        deprecated = bool(v.deprecated or spec.deprecated)
        if inside and not spec.deprecated:
            assert not v.deprecated, f"buildspecs/{framework}.yaml: {v.version} is one of the newest minors but deprecated"
        if not inside:
            assert deprecated, (
                f"buildspecs/{framework}.yaml: {v.version} is older than the newest minors "
                f"({', '.join(f'{a}.{b}' for a, b in window)}) and needs `deprecated:` with a note")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_default_is_the_newest_version_the_first_default_instance_type_runs(framework):
    # the default combination is built and smoke-tested on the first default instance type
    # (p3: V100, which no CUDA 13 runs), so the default is the newest version with a CUDA it runs
    spec = CATALOG.frameworks[framework]
    hw, first = CATALOG.hardware, spec.instance_types[0]
    runnable = [v for v in spec.versions if any(hw.runs(first, c) for c in v.cuda) and not v.deprecated]
    newest = max(runnable, key=lambda v: Version(v.version))
    assert spec.defaults.version == newest.version, (
        f"buildspecs/{framework}.yaml: default {spec.defaults.version}, but {newest.version} is newer and has a "
        f"CUDA {first} runs ({', '.join(c for c in newest.cuda if hw.runs(first, c))})")
    assert hw.runs(first, spec.defaults.cuda)
