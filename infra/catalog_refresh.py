"""`make catalog-refresh`: what PyPI has that the catalog does not, as a patch for review.

For every framework in ``buildspecs/facts/wheels.yaml`` it reads PyPI's JSON API
(``https://pypi.org/pypi/<package>/json``) and lists the final releases that are newer than the
newest version the buildspec offers, plus newer patch releases of the minors it offers and does
not deprecate. For each it gives the release date, the CPython versions its Linux x86_64 wheels
declare (wheel tags, read with ``packaging.utils.parse_wheel_filename``) and the CUDA variants it
can tell: the CUDA of the build PyPI serves (from the newest release's ``requires_dist``) and,
for torch, the ``+cuXYZ`` builds on download.pytorch.org when that index can be reached.

A release ``wheels.yaml`` already records with ``not_offered: <why>`` is reported as held back,
not proposed. It writes ``dist/catalog-refresh/catalog.patch`` (``git apply`` it after review): new lines in
``releases.yaml``, new ``confirmed: false`` entries in ``wheels.yaml`` and a new ``versions:``
entry at the top of the buildspec. It never changes a default and never removes a version, and
the catalog tests fail until someone confirms the proposed facts. It says which sources it could
not reach, and prints "up to date" when nothing is newer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org/pypi"
PYTORCH_INDEX = "https://download.pytorch.org/whl/torch/"
TIMEOUT_S = 30

_CPYTHON = re.compile(r"^cp3(\d+)$")
_PYTORCH_LOCAL = re.compile(r"^cu(\d+)(\d)$")  # local version "cu126" -> 12.6
# requirements that name the CUDA of a build: cuda-toolkit[...]==13.2.2 (torch 2.14+),
# nvidia-cuda-runtime-cu12==12.6.77 (torch) or nvidia-cuda-runtime-cu12<13.0,>=12.5.82 (TensorFlow)
_CUDA_PACKAGE = re.compile(r"^(cuda-toolkit|nvidia-cuda-runtime-cu\d+)$")
_HREF = re.compile(r'href="([^"]+\.whl)[^"]*"')


# ---- the catalog and its facts -------------------------------------------------------

def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def load_wheels(root: Path = ROOT) -> dict:
    return load_yaml(root / "buildspecs" / "facts" / "wheels.yaml")["frameworks"]


def load_releases(root: Path = ROOT) -> dict:
    return load_yaml(root / "buildspecs" / "facts" / "releases.yaml")["frameworks"]


def final_versions(versions: Iterable[str]) -> list[Version]:
    """Parsed final releases (no pre-, dev- or unparseable versions), oldest first."""
    out = []
    for v in versions:
        try:
            parsed = Version(v)
        except InvalidVersion:
            continue
        if not (parsed.is_prerelease or parsed.is_devrelease):
            out.append(parsed)
    return sorted(out)


def newest_minors(versions: Iterable[str], n: int = 3) -> list[tuple[int, int]]:
    """The ``n`` newest (major, minor) pairs among the final releases, newest first."""
    minors = sorted({(v.major, v.minor) for v in final_versions(versions)}, reverse=True)
    return minors[:n]


def is_stale(default: str, released: Iterable[str], window: int = 3) -> bool:
    """True when ``default`` is older than the ``window``-th newest minor release."""
    minors = newest_minors(released, window)
    if len(minors) < window:
        return False
    oldest = minors[-1]
    v = Version(default)
    return (v.major, v.minor) < oldest


# ---- what PyPI says --------------------------------------------------------------------

@dataclass(frozen=True)
class Release:
    package: str
    version: str
    released: dt.date
    python: list[str]  # "3.12", ... from the Linux x86_64 wheels, ascending
    cuda: list[str] = field(default_factory=list)  # what could be told, newest first
    cuda_sources: list[str] = field(default_factory=list)


def linux_x86_64_pythons(filenames: Iterable[str]) -> list[str]:
    """CPython versions (``"3.12"``) with a Linux x86_64 wheel; free-threaded builds left out."""
    out: set[tuple[int, int]] = set()
    for name in filenames:
        if not name.endswith(".whl"):
            continue
        try:
            _, _, _, tags = parse_wheel_filename(name)
        except InvalidWheelFilename:
            continue
        for tag in tags:
            m = _CPYTHON.match(tag.interpreter)
            if m and "linux" in tag.platform and tag.platform.endswith("x86_64") and not tag.abi.endswith("t"):
                out.add((3, int(m.group(1))))
    return [f"{a}.{b}" for a, b in sorted(out)]


def cuda_of_requires(requires_dist: Iterable[str] | None) -> str | None:
    """The CUDA (``"13.2"``) a build's dependencies name, if any."""
    for line in requires_dist or ():
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if not _CUDA_PACKAGE.match(canonicalize_name(req.name)):
            continue
        floors = [Version(s.version) for s in req.specifier if s.operator in ("==", ">=", "~=")]
        if floors:
            low = min(floors)
            return f"{low.major}.{low.minor}"
    return None


def pytorch_index_variants(html: str, version: str) -> list[str]:
    """CUDA variants (``"12.6"``) of ``torch==version`` with Linux x86_64 wheels in the index page."""
    out: set[tuple[int, int]] = set()
    for href in _HREF.findall(html):
        name = href.rsplit("/", 1)[-1].replace("%2B", "+")
        try:
            _, ver, _, tags = parse_wheel_filename(name)
        except InvalidWheelFilename:
            continue
        if ver.public != version or not ver.local:
            continue
        m = _PYTORCH_LOCAL.match(ver.local)
        if m and any("linux" in t.platform and t.platform.endswith("x86_64") for t in tags):
            out.add((int(m.group(1)), int(m.group(2))))
    return [f"{a}.{b}" for a, b in sorted(out, reverse=True)]


class Sources:
    """The HTTP side: PyPI's JSON API and the PyTorch wheel index, through one requests session.

    Every source that could not be read is remembered in ``unreachable`` (with the reason)."""

    def __init__(self, session: requests.Session, pypi: str = PYPI, pytorch_index: str = PYTORCH_INDEX):
        self.session = session
        self.pypi = pypi.rstrip("/")
        self.pytorch_index = pytorch_index
        self.unreachable: dict[str, str] = {}
        self._index_html: str | None = None
        self._index_tried = False

    def _get(self, url: str) -> requests.Response | None:
        try:
            resp = self.session.get(url, timeout=TIMEOUT_S)
            resp.raise_for_status()
            return resp
        except requests.RequestException as e:
            self.unreachable[url] = f"{type(e).__name__}: {e}"
            return None

    def project(self, package: str) -> dict | None:
        resp = self._get(f"{self.pypi}/{package}/json")
        if resp is None:
            return None
        try:
            return resp.json()
        except ValueError as e:
            self.unreachable[f"{self.pypi}/{package}/json"] = f"not JSON: {e}"
            return None

    def torch_index(self) -> str | None:
        if not self._index_tried:
            self._index_tried = True
            resp = self._get(self.pytorch_index)
            self._index_html = resp.text if resp is not None else None
        return self._index_html


def releases_from(project: dict, package: str, wanted: Iterable[str], sources: Sources) -> list[Release]:
    """``Release`` facts for the ``wanted`` versions of one PyPI project."""
    files_by_version = project.get("releases", {})
    newest = project.get("info", {}).get("version")
    pypi_cuda = cuda_of_requires(project.get("info", {}).get("requires_dist"))
    out = []
    for version in wanted:
        files = [f for f in files_by_version.get(version, []) if not f.get("yanked")]
        if not files:
            continue
        released = min(f["upload_time"] for f in files)[:10]
        cuda: list[str] = []
        cuda_sources: list[str] = []
        if version == newest and pypi_cuda:
            cuda.append(pypi_cuda)
            cuda_sources.append(f"PyPI {package} {version} requires_dist names CUDA {pypi_cuda}")
        if package == "torch":
            html = sources.torch_index()
            if html is not None:
                variants = pytorch_index_variants(html, version)
                cuda += [c for c in variants if c not in cuda]
                cuda_sources.append(f"{sources.pytorch_index}: +cu builds {', '.join(variants) or 'none'}")
        out.append(Release(package=package, version=version, released=dt.date.fromisoformat(released),
                           python=linux_x86_64_pythons(f["filename"] for f in files),
                           cuda=cuda, cuda_sources=cuda_sources))
    return out


def newer_than_catalog(pypi_versions: Iterable[str], offered: list[dict]) -> list[str]:
    """Final releases newer than the newest offered version, and newer patches of the offered,
    non-deprecated minors; newest first."""
    finals = final_versions(pypi_versions)
    offered_v = [Version(v["version"]) for v in offered]
    newest = max(offered_v)
    supported = {(Version(v["version"]).major, Version(v["version"]).minor): Version(v["version"])
                 for v in offered if not v.get("deprecated")}
    out = []
    for v in finals:
        if v > newest:
            out.append(v)
        elif (v.major, v.minor) in supported and v > supported[(v.major, v.minor)] and v not in offered_v:
            out.append(v)
    # only the newest patch of each new minor is worth proposing
    best: dict[tuple[int, int], Version] = {}
    for v in out:
        best[(v.major, v.minor)] = max(v, best.get((v.major, v.minor), v))
    return [str(v) for v in sorted(best.values(), reverse=True)]


# ---- the proposal ----------------------------------------------------------------------

def _insert_after(text: str, anchor: re.Pattern, lines: list[str], start: int = 0) -> str:
    src = text.splitlines(keepends=True)
    for i in range(start, len(src)):
        if anchor.match(src[i]):
            return "".join(src[: i + 1] + [line + "\n" for line in lines] + src[i + 1:])
    raise ValueError(f"no line matching {anchor.pattern!r}")


def _framework_block_start(text: str, framework: str) -> int:
    for i, line in enumerate(text.splitlines()):
        if line == f"  {framework}:":
            return i
    raise ValueError(f"framework {framework!r} not found")


def propose_releases_yaml(text: str, framework: str, new: list[Release], known: Iterable[str]) -> str:
    new = [r for r in new if r.version not in set(known)]
    if not new:
        return text
    start = _framework_block_start(text, framework)
    lines = [f'      "{r.version}": {{released: {r.released.isoformat()}}}' for r in new]
    return _insert_after(text, re.compile(r"^    versions:\s*$"), lines, start)


def propose_wheels_yaml(text: str, framework: str, new: list[Release], today: dt.date,
                        known: Iterable[str]) -> str:
    new = [r for r in new if r.version not in set(known)]
    if not new:
        return text
    start = _framework_block_start(text, framework)
    lines: list[str] = []
    for r in new:
        lines.append(f'      "{r.version}":')
        lines.append("        wheels:")
        for cuda in r.cuda or ["?"]:
            lines += [
                f'          - cuda: "{cuda}"',
                f"            python: {json.dumps(r.python)}",
                f'            source: "{"; ".join(r.cuda_sources) or "PyPI " + r.package + " " + r.version + " wheel tags"}"',
                f"            checked: {today.isoformat()}",
                "            confirmed: false",
                '            note: "proposed by make catalog-refresh: confirm the CUDA variants (release matrix,'
                ' wheel index) and, for torch, the torchvision/torchaudio companions, then set confirmed: true"',
            ]
    return _insert_after(text, re.compile(r"^    versions:\s*$"), lines, start)


def propose_buildspec(text: str, new: list[Release], template: dict) -> str:
    """A ``versions:`` entry per new release at the top (defaults are left alone)."""
    lines: list[str] = []
    for r in new:
        python = sorted(r.python, key=lambda p: (p != "3.12", p))  # 3.12 first when offered
        lines += [
            f'  - version: "{r.version}"',
            f"    cuda: {json.dumps(r.cuda)}  # confirm in buildspecs/facts/wheels.yaml",
            f"    python: {json.dumps(python)}",
        ]
        args = dict(template.get("args", {}))
        if "PACKAGES_AS_OF" in args:
            args["PACKAGES_AS_OF"] = r.released.isoformat()
        if args:
            rendered = ", ".join(f'{k}: "{v}"' for k, v in args.items())
            lines.append(f"    args: {{{rendered}}}  # copied from {template['version']}: check the companions")
    return _insert_after(text, re.compile(r"^versions:\s*$"), lines)


def unified(path: str, before: str, after: str) -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        fromfile=f"a/{path}", tofile=f"b/{path}"))


@dataclass
class Outcome:
    new: dict[str, list[Release]]
    held_back: dict[str, dict[str, str]]  # framework -> version -> why wheels.yaml leaves it out
    unchecked: list[str]  # frameworks whose PyPI project could not be read
    unreachable: dict[str, str]
    patch: str


def refresh(root: Path, sources: Sources, today: dt.date) -> Outcome:
    wheels = load_wheels(root)
    released = load_releases(root)
    unchecked: list[str] = []
    held_back: dict[str, dict[str, str]] = {}
    texts = {p: (root / p).read_text() for p in ("buildspecs/facts/releases.yaml", "buildspecs/facts/wheels.yaml")}
    proposed = dict(texts)
    new: dict[str, list[Release]] = {}
    for framework, facts in wheels.items():
        spec_path = f"buildspecs/{framework}.yaml"
        spec = load_yaml(root / spec_path)
        project = sources.project(facts["package"])
        if project is None:
            unchecked.append(framework)
            continue
        offered = spec["versions"]
        if spec.get("deprecated"):  # the whole framework is retired: no patch is worth proposing
            offered = [{**v, "deprecated": v.get("deprecated") or spec["deprecated"]} for v in offered]
        wanted = newer_than_catalog(project.get("releases", {}), offered)
        known = facts.get("versions", {})
        held = {v: " ".join(str(known[v]["not_offered"]).split()) for v in wanted
                if (known.get(v) or {}).get("not_offered")}
        if held:
            held_back[framework] = held
        wanted = [v for v in wanted if v not in held]
        found = releases_from(project, facts["package"], wanted, sources)
        if not found:
            continue
        new[framework] = found
        rel_key, whl_key = "buildspecs/facts/releases.yaml", "buildspecs/facts/wheels.yaml"
        proposed[rel_key] = propose_releases_yaml(proposed[rel_key], framework, found,
                                                  released.get(framework, {}).get("versions", {}))
        proposed[whl_key] = propose_wheels_yaml(proposed[whl_key], framework, found, today,
                                                facts.get("versions", {}))
        spec_text = (root / spec_path).read_text()
        texts[spec_path] = spec_text
        proposed[spec_path] = propose_buildspec(spec_text, found, spec["versions"][0])
    patch = "".join(unified(p, texts[p], proposed[p]) for p in texts if texts[p] != proposed[p])
    return Outcome(new=new, held_back=held_back, unchecked=unchecked, unreachable=dict(sources.unreachable),
                   patch=patch)


def report(outcome: Outcome, patch_path: Path | None) -> str:
    lines = []
    for framework, found in outcome.new.items():
        for r in found:
            cuda = ", ".join(r.cuda) if r.cuda else "unknown (confirm from the release matrix / wheel index)"
            lines.append(f"{framework} {r.version} (released {r.released}): Python {', '.join(r.python)}; CUDA {cuda}")
    for framework, held in outcome.held_back.items():
        for version, why in held.items():
            lines.append(f"{framework} {version}: known, held back (buildspecs/facts/wheels.yaml not_offered): {why}")
    if outcome.unchecked:
        lines.append(f"not checked (PyPI unreachable): {', '.join(outcome.unchecked)}")
    if not outcome.new and not outcome.unchecked:
        held = " apart from the held-back versions above" if outcome.held_back else ""
        lines.append(f"up to date: no release on PyPI is newer than the catalog{held}")
    elif patch_path is not None:
        lines.append(f"proposed change for review: {patch_path} (git apply it, confirm the facts, run the catalog tests)")
    for url, why in outcome.unreachable.items():
        lines.append(f"could not reach {url}: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "catalog-refresh")
    parser.add_argument("--pytorch-index", default=PYTORCH_INDEX)
    args = parser.parse_args(argv)
    with requests.Session() as session:
        sources = Sources(session, pytorch_index=args.pytorch_index)
        outcome = refresh(args.root, sources, dt.date.today())
    patch_path = None
    if outcome.patch:
        args.out.mkdir(parents=True, exist_ok=True)
        patch_path = args.out / "catalog.patch"
        patch_path.write_text(outcome.patch)
    print(report(outcome, patch_path))
    return 2 if outcome.unchecked else 0


if __name__ == "__main__":
    sys.exit(main())
