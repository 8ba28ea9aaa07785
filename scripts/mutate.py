"""`make mutate [MODULE=name]`: mutation testing of the core modules with mutmut.

For each module it copies the working tree into ``.mutate/<module>/`` (so nothing here is
touched), tells mutmut to mutate that one module and to select from the test folders that
exercise it, and runs ``mutmut run``. mutmut 3 records which tests reach each function and
runs only those against each mutant, so one module finishes on 2 cores. It then prints the
score per module and every surviving mutant (``mutmut show NAME`` in that folder prints its
diff). Mutants that cannot change behaviour are listed, each with its reason, in
``tests/mutation/equivalents.txt``; they are left out of the score, never silenced in code.

    python scripts/mutate.py [MODULE ...]      (default: every module below)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutate"
EQUIVALENTS = ROOT / "tests" / "mutation" / "equivalents.txt"
TARGET = 0.90
# processes mutmut runs at once (MUTATE_CHILDREN=1 on a machine shared with other work)
CHILDREN = os.environ.get("MUTATE_CHILDREN", "2")

# module -> the test folders or files that exercise it (mutmut narrows to the covering tests)
MODULES: dict[str, list[str]] = {
    "states": ["tests/unit", "tests/lifecycle/test_lifecycle_property.py"],
    "transitions": ["tests/notify", "tests/lifecycle", "tests/api/test_concurrency.py"],
    "gpu": ["tests/gpu", "tests/unit"],
    "hostscript": ["tests/launch/test_launch_hostscript.py", "tests/launch/test_hostscript_contract.py",
                   "tests/launch/test_hostscript_render_rules.py", "tests/launch/test_hostscript_values_render.py",
                   "tests/launch/test_hostscript_stage_roles_render.py", "tests/launch/test_hostscript_source_values_render.py"],
    "store": ["tests/api", "tests/lifecycle", "tests/notify", "tests/security/test_spend.py",
              "tests/security/test_cursors.py", "tests/security/test_listing_reads.py"],
    "reports": ["tests/launch/test_launch_reports.py", "tests/notify/test_start_message_wiring.py",
                "tests/launch/test_launch_hostfailure.py", "tests/launch/test_split_builds.py",
                "tests/launch/test_image_size_reports.py", "tests/security/test_events_route.py",
                "tests/launch/test_reports_edges.py", "tests/launch/test_host_failure_edges.py",
                "tests/launch/test_split_report_edges.py"],
    "launcher": ["tests/launch/test_launch_launcher.py", "tests/launch/test_launcher_edges.py",
                 "tests/launch/test_launch_amis.py", "tests/launch/test_launch_calls.py",
                 "tests/launch/test_launch_hostfailure.py", "tests/launch/test_split_builds.py",
                 "tests/sources/test_source_launch.py", "tests/lifecycle/test_lifecycle_split.py"],
    "lifecycle": ["tests/lifecycle", "tests/launch/test_split_builds.py", "tests/launch/test_launch_hostfailure.py"],
}
# what the tests read besides chalicelib/ and tests/
ALSO_COPY = ["app.py", "buildspecs", "dockerfiles", "infra", "voltabuild_local", ".chalice", "client", "bench"]


def equivalents() -> dict[str, str]:
    """``mutant-name  reason`` lines (``#`` comments and blank lines ignored)."""
    out = {}
    if EQUIVALENTS.exists():
        for line in EQUIVALENTS.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition(" ")
                out[name] = reason.strip()
    return out


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def module_path(module: str) -> str:
    """``chalicelib/<package>/<module>.py``: where the module lives in the tree."""
    found = sorted((ROOT / "chalicelib").rglob(f"{module}.py"))
    if len(found) != 1:
        raise SystemExit(f"no single chalicelib module named {module!r}: {found}")
    return str(found[0].relative_to(ROOT))


def _config(module: str) -> str:
    tests = json.dumps(MODULES[module])
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["chalicelib"]\n'
        f'only_mutate = ["{module_path(module)}"]\n'
        f"also_copy = {json.dumps(ALSO_COPY)}\n"
        f"pytest_add_cli_args_test_selection = {tests}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
    )


def run_module(module: str, known: dict[str, str]) -> dict:
    work = WORK / module
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _copy_tree(work)
    with open(work / "pyproject.toml", "a") as f:
        f.write(_config(module))
    print(f"==> {module}: mutmut run in {work.relative_to(ROOT)}", file=sys.stderr, flush=True)
    # tests that call tools from the venv (shellcheck, hadolint) look for ROOT/.venv
    (work / "mutants").mkdir()
    (work / "mutants" / ".venv").symlink_to(ROOT / ".venv")
    log = work / "mutmut.log"
    with open(log, "wb") as out:
        done = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", CHILDREN], cwd=work,
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"mutmut failed on {module} (exit {done.returncode}); the end of {log}:\n{tail}")
    listing = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work,
                             capture_output=True, text=True, check=True).stdout
    results = {}
    for line in listing.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith("chalicelib."):
            results[name] = status
    equivalent = sorted(n for n in results if n in known)
    counted = {n: s for n, s in results.items() if n not in known}
    killed = sum(1 for s in counted.values() if s in ("killed", "timeout"))
    survivors = sorted(n for n, s in counted.items() if s not in ("killed", "timeout"))
    score = killed / len(counted) if counted else 1.0
    return {"module": module, "total": len(results), "equivalent": len(equivalent), "killed": killed,
            "survived": survivors, "score": score, "statuses": {n: counted[n] for n in survivors}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", metavar="MODULE", help=f"one or more of: {', '.join(MODULES)}")
    args = ap.parse_args()
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        ap.error(f"unknown module(s) {', '.join(unknown)}; the core modules are {', '.join(MODULES)}")
    known = equivalents()
    reports = [run_module(m, known) for m in (args.modules or MODULES)]
    print(f"\n{'module':<12} {'mutants':>7} {'equivalent':>10} {'killed':>6} {'survived':>8} {'score':>6}")
    for r in reports:
        print(f"{r['module']:<12} {r['total']:>7} {r['equivalent']:>10} {r['killed']:>6} "
              f"{len(r['survived']):>8} {r['score']:>6.0%}")
    for r in reports:
        for name in r["survived"]:
            print(f"  {r['statuses'][name]:<9} {name}   (cd .mutate/{r['module']} && mutmut show {name})")
    below = [r["module"] for r in reports if r["score"] < TARGET]
    if below:
        print(f"\nbelow the {TARGET:.0%} target: {', '.join(below)}")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
