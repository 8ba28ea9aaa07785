"""`make lock`: lock files for the framework images' Python packages (issue 19).

    python scripts/lock.py                  lock every framework x version x CUDA x Python the catalog
                                            offers (each accepted combination must build); up-to-date
                                            locks are skipped, so after a buildspec change only the
                                            stale ones resolve
    python scripts/lock.py --defaults       only the default combination of each GPU framework
    python scripts/lock.py --check          exit 1 naming each lock whose inputs changed (no network)
    python scripts/lock.py --force          resolve every lock again; prints how many changed (none:
                                            the locks are reproducible); and take the digest each
                                            base's tag points to now (see below)
    python scripts/lock.py --digests-only   only learn the base images' digests
    python scripts/lock.py --no-digests     only the lock files

First, the base images (scripts/base_digests.py): the digest each base the catalog builds FROM
points to, from its registry, into buildspecs/facts/base-digests.yaml; the catalog then pins
those bases by digest. A registry that cannot be reached records nothing (one line per image
says so) and keeps what was recorded; a recorded digest is replaced only with --force.

Each lock is ``buildspecs/locks/<framework>/<version>-cu<cuda>-py<python>.txt``, resolved by
``uv pip compile --generate-hashes`` for Linux x86_64 (manylinux_2_28) and the combination's
Python, with ``--exclude-newer`` set to the buildspec's ``PACKAGES_AS_OF`` (the version's release
date), so running it again resolves the same packages: the lock is reproducible and a re-run
changes nothing (unless PyPI yanks or deletes a pinned file). The header records the hash of the
inputs (the requirements, the date, the Python, the platform and the version of uv, pinned in
requirements-dev.txt);
tests/images/test_locks.py fails when a buildspec change makes a lock stale.

What cannot be hashed here: PyTorch's CUDA wheels come from download.pytorch.org/whl/cu<CUDA>,
which this machine cannot reach, so torch, torchvision and torchaudio are pinned by exact version
and index and listed, commented out, as "pinned, not hashed" (their own dependencies, the
nvidia-* CUDA wheels and triton, resolve at build time from that index). The hashed lines can be
installed with ``--require-hashes``; the pinned ones follow as a second, exact-version install.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chalicelib.specs.catalog import BuildSpec, Catalog, Resolved, load_catalog  # noqa: E402
from scripts import base_digests  # noqa: E402

LOCKS = ROOT / "buildspecs" / "locks"
PLATFORM = "x86_64-manylinux_2_28"
INDEX = "https://pypi.org/simple"
TORCH_INDEX = "https://download.pytorch.org/whl"
# MXNet's buildspec has no PACKAGES_AS_OF (it pins numpy, scipy and JupyterLab in its Dockerfile):
# its lock takes PyPI as it was two weeks after JupyterLab 4.2.5 (2024-08-30).
MXNET_AS_OF = "2024-09-15"


@dataclass(frozen=True)
class LockInputs:
    framework: str
    version: str
    cuda: str
    python: str
    hashed: tuple[str, ...]  # requirements resolved from PyPI, with every file's hash
    pinned: tuple[str, ...]  # exact pins from an index this machine cannot reach: not hashed
    exclude_newer: str
    uv: str

    @property
    def name(self) -> str:
        return f"{self.version}-cu{self.cuda.replace('.', '')}-py{self.python.replace('.', '')}.txt"

    @property
    def path(self) -> Path:
        return LOCKS / self.framework / self.name

    def digest(self) -> str:
        data = {"hashed": self.hashed, "pinned": self.pinned, "exclude_newer": self.exclude_newer,
                "python": self.python, "platform": PLATFORM, "uv": self.uv}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def lock_uv() -> str:
    """The uv that makes the locks: requirements-dev.txt pins it, so a re-run resolves alike."""
    m = re.search(r"^uv==(\S+)", (ROOT / "requirements-dev.txt").read_text(), re.M)
    if not m:
        raise SystemExit("requirements-dev.txt pins no uv==VERSION")
    return m.group(1)


def _dockerfile_default(catalog: Catalog, spec: BuildSpec, name: str) -> str:
    text = (catalog.context_dir(spec) / "Dockerfile").read_text()
    m = re.search(rf"^ARG {name}=(\S+)$", text, re.M)
    if not m:
        raise SystemExit(f"{spec.dockerfile}/Dockerfile declares no ARG {name} with a default")
    return m.group(1)


def inputs(catalog: Catalog, spec: BuildSpec, r: Resolved) -> LockInputs | None:
    """What a combination's lock is resolved from; None for a framework without Python (canary)."""
    args = spec.docker_build_args(r, catalog.hardware, {})
    uv = lock_uv()
    common = ("numpy", "scipy", "jupyterlab")
    if spec.framework == "pytorch":
        index = f"{TORCH_INDEX}/cu{r.cuda.replace('.', '')}"
        pinned = [f"torch=={r.version} --index-url {index}"]
        for pkg, from_arg, version_arg in (("torchvision", "TORCHVISION_FROM", "TORCHVISION_VERSION"),
                                           ("torchaudio", "TORCHAUDIO_FROM", "TORCHAUDIO_VERSION")):
            where = index if args.get(from_arg, "cuda") == "cuda" else INDEX
            pinned.append(f"{pkg}=={args[version_arg]} --index-url {where}")
        return LockInputs(spec.framework, r.version, r.cuda, r.python, common, tuple(pinned),
                          args["PACKAGES_AS_OF"], uv)
    if spec.framework == "tensorflow":
        return LockInputs(spec.framework, r.version, r.cuda, r.python,
                          (f"tensorflow[and-cuda]=={r.version}", *common), (), args["PACKAGES_AS_OF"], uv)
    if spec.framework == "mxnet":
        pins = [f"{p}=={_dockerfile_default(catalog, spec, a)}"
                for p, a in (("numpy", "NUMPY_VERSION"), ("scipy", "SCIPY_VERSION"), ("jupyterlab", "JUPYTERLAB_VERSION"))]
        return LockInputs(spec.framework, r.version, r.cuda, r.python,
                          (f"mxnet-cu{r.cuda.replace('.', '')}=={r.version}", *pins), (), MXNET_AS_OF, uv)
    return None


def header(lock: LockInputs) -> str:
    lines = [
        "# voltabuild lock file: generated by `make lock` (scripts/lock.py); do not edit by hand.",
        f"# {lock.framework} {lock.version}, CUDA {lock.cuda}, Python {lock.python}, {PLATFORM}",
        f"# resolved with uv {lock.uv} from {INDEX}, --exclude-newer {lock.exclude_newer}",
        f"# inputs-sha256: {lock.digest()}",
        "# requirements: " + ", ".join(lock.hashed),
    ]
    if lock.pinned:
        lines += [
            "# pinned, not hashed (download.pytorch.org, the CUDA wheel index, cannot be reached where",
            "# locks are made; their dependencies resolve from that index at build time):",
            *(f"#   {p}" for p in lock.pinned),
        ]
    return "\n".join(lines) + "\n"


def stored_digest(path: Path) -> str | None:
    m = re.search(r"^# inputs-sha256: ([0-9a-f]{64})$", path.read_text(), re.M)
    return m.group(1) if m else None


def resolve(lock: LockInputs, uv_bin: str) -> str:
    cmd = [uv_bin, "pip", "compile", "-", "--generate-hashes", "--no-header", "--quiet",
           "--python-version", lock.python, "--python-platform", PLATFORM,
           "--exclude-newer", lock.exclude_newer, "--index-url", INDEX]
    done = subprocess.run(cmd, input="\n".join(lock.hashed) + "\n", capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"uv pip compile failed for {lock.path.relative_to(ROOT)}:\n{done.stderr}")
    return done.stdout


def combinations(catalog: Catalog, everything: bool) -> list[LockInputs]:
    out = []
    for spec in sorted(catalog.frameworks.values(), key=lambda s: s.framework):
        wanted = spec.combinations() if everything else [spec.resolve(None, None, None)]
        out += [lock for r in wanted if (lock := inputs(catalog, spec, r)) is not None]
    return out


def stale(catalog: Catalog) -> list[str]:
    """Every lock whose recorded inputs differ from what the buildspecs now give, and every
    combination without a lock (the catalog accepts every combination: each must build)."""
    problems = []
    known = {lock.path: lock for lock in combinations(catalog, everything=True)}
    for lock in known.values():
        if not lock.path.exists():
            problems.append(f"{lock.path.relative_to(ROOT)}: missing (the catalog offers {lock.framework} "
                            f"{lock.version}, CUDA {lock.cuda}, Python {lock.python}): run `make lock`")
    for path in sorted(LOCKS.glob("*/*.txt")):
        lock = known.get(path)
        if lock is None:
            problems.append(f"{path.relative_to(ROOT)}: no such combination in the buildspecs any more: delete it")
        elif stored_digest(path) != lock.digest():
            problems.append(f"{path.relative_to(ROOT)}: stale (its buildspec or Dockerfile changed): run `make lock`")
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="every combination (the default; kept for `make lock ALL=1`)")
    parser.add_argument("--defaults", action="store_true", help="only the default combination of each framework")
    parser.add_argument("--check", action="store_true", help="only report stale or missing locks")
    parser.add_argument("--force", action="store_true",
                        help="resolve again even the locks that are up to date (a re-run must change nothing)")
    parser.add_argument("--uv", default="uv", help="the uv binary (default: uv on PATH)")
    digests = parser.add_mutually_exclusive_group()
    digests.add_argument("--digests-only", action="store_true", help="only learn the base images' digests")
    digests.add_argument("--no-digests", action="store_true", help="leave the base images' digests as they are")
    opts = parser.parse_args(argv)
    catalog = load_catalog(ROOT)
    if opts.check:  # the digests are data (facts), not lock inputs: a moved tag makes no lock stale
        problems = stale(catalog)
        print("\n".join(problems) or "every lock is up to date")
        return 1 if problems else 0
    if not opts.no_digests:
        base_digests.learn(catalog, ROOT / "buildspecs" / "facts" / base_digests.FACTS.name, force=opts.force)
        if opts.digests_only:
            return 0
    version = subprocess.run([opts.uv, "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    failed, resolved, changed = [], {}, 0
    for lock in combinations(catalog, not opts.defaults):
        if version != lock.uv:
            raise SystemExit(f"uv {version} is not the uv requirements-dev.txt pins ({lock.uv}): "
                             f"pip install uv=={lock.uv}")
        lock.path.parent.mkdir(parents=True, exist_ok=True)
        if not opts.force and lock.path.exists() and stored_digest(lock.path) == lock.digest():
            print(f"{lock.path.relative_to(ROOT)}: up to date")
            continue
        # PyTorch's CUDA variants of one version and Python resolve the same PyPI part: once
        key = (lock.hashed, lock.python, lock.exclude_newer)
        if key not in resolved:
            try:
                resolved[key] = resolve(lock, opts.uv)
            except SystemExit as e:  # one combination that does not resolve does not stop the others
                print(e, file=sys.stderr)
                resolved[key] = None
        if resolved[key] is None:
            failed.append(str(lock.path.relative_to(ROOT)))
            continue
        text = header(lock) + resolved[key]
        same = lock.path.exists() and lock.path.read_text() == text
        if not same:
            lock.path.write_text(text)
            changed += 1
        print(f"{lock.path.relative_to(ROOT)}: {'unchanged' if same else 'written'}")
    print(f"{changed} lock file(s) changed")
    if failed:
        print(f"{len(failed)} combination(s) did not resolve:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
