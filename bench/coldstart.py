"""Cold start, per function: ``import app`` and the first use of the function's objects (its
``wiring`` factory: the lazy imports, settings, the catalog for the API) in fresh interpreters,
as ratios to ``import boto3`` alone (medians of interleaved runs); the slowest imports under
``-X importtime``; and the deployment zip (built by ``infra.package``, as ``make package``).

Two settings:
- **checkout**: the project's modules from the working tree, everything with its bytecode
  cached (a private ``PYTHONPYCACHEPREFIX``, warmed first), so only imports are compared;
- **zip**: the deployment zip unpacked, beside only what the Lambda runtime brings (boto3 & co.
  with their bytecode), and no bytecode for the zip's code: what a Lambda cold start really
  runs (its ``/var/task`` is read-only, so Python compiles the zip's modules every time).

AWS clients are not created (``wiring.client`` answers None): their cost is the SDK's and the
same for every function.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bench import world

# function (as the template names it) -> the wiring factories its first invocation calls
FUNCTIONS = {
    "api": ("builds",),
    "events_handler": ("reports",),
    "launcher": ("launcher",),
    "notifier": ("notifier",),
    "reaper": ("reaper",),
    "ec2_ecr_events": ("lifecycle",),
}
WATCHED = ("slack_sdk", "yaml", "asyncio")  # what no API cold start should import
LAMBDA_RUNTIME = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")

_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import app
t1 = time.perf_counter()
from chalicelib import wiring
wiring.client = lambda service: None
for name in {factories!r}:
    getattr(wiring, name)()
t2 = time.perf_counter()
print(json.dumps({{"import_ms": (t1 - t0) * 1000, "first_use_ms": (t2 - t1) * 1000,
                  "loaded": [m for m in {watched!r} if m in sys.modules]}}))
"""
_BOTO3 = "import json, time; t = time.perf_counter(); import boto3; print(json.dumps({'import_ms': (time.perf_counter() - t) * 1000}))"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VOLTABUILD_", "PYTHON"))}
    env.update(AWS_DEFAULT_REGION=world.REGION, AWS_REGION=world.REGION, VOLTABUILD_STAGE="dev",
               BUILDS_TABLE="voltabuild-dev-builds", CURSOR_KEY="0" * 64,
               LAUNCH_QUEUE_URL="http://127.0.0.1:1/000000000000/voltabuild-dev-launch",
               NOTIFY_QUEUE_URL="http://127.0.0.1:1/000000000000/voltabuild-dev-notify")
    env.update(extra or {})
    return env


def _run(code: str, cwd: Path, env: dict[str, str], *flags: str) -> dict:
    out = subprocess.run([sys.executable, *flags, "-c", code], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"cold-start probe failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(cwd: Path, env: dict[str, str], runs: int, flags: tuple[str, ...] = (),
             functions: tuple[str, ...] = tuple(FUNCTIONS)) -> dict:
    """boto3 and ``functions``, interleaved round by round; medians in ms."""
    probes = {"boto3": _BOTO3, **{f: _PROBE.format(factories=FUNCTIONS[f], watched=WATCHED) for f in functions}}
    samples: dict[str, list[dict]] = {k: [] for k in probes}
    for code in probes.values():  # warm: bytecode (where it is kept) and the OS's file cache
        _run(code, cwd, env, *flags)
    for i in range(runs):
        order = list(probes) if i % 2 == 0 else list(reversed(probes))
        for name in order:
            samples[name].append(_run(probes[name], cwd, env, *flags))
    boto3 = statistics.median(s["import_ms"] for s in samples["boto3"])
    out = {}
    for name in functions:
        imp = statistics.median(s["import_ms"] for s in samples[name])
        total = statistics.median(s["import_ms"] + s["first_use_ms"] for s in samples[name])
        out[name] = {
            "factories": list(FUNCTIONS[name]),
            "import_ms": round(imp, 1), "import_and_first_use_ms": round(total, 1),
            "ratio_import": round(imp / boto3, 2), "ratio_import_and_first_use": round(total / boto3, 2),
            "imports": samples[name][-1]["loaded"],
        }
    return {"runs": runs, "boto3_ms": round(boto3, 1), "functions": out}


def import_times(runs: int = 10) -> dict:
    """The checkout setting, plus the figures earlier results used (``median_ms``, the ratio)."""
    with tempfile.TemporaryDirectory(prefix="voltabuild-bench-pyc-") as pyc:
        checkout = _measure(world.ROOT, _env({"PYTHONPYCACHEPREFIX": pyc}), runs)
    api = checkout["functions"]["api"]
    return {
        "runs": runs,
        "how": "fresh interpreters, bytecode cached for everything (PYTHONPYCACHEPREFIX), AWS clients not created",
        "median_ms": {"app": api["import_ms"], "boto3": checkout["boto3_ms"]},
        "ratio_app_to_boto3": api["ratio_import"],
        "target": "API function: import app <= 1.3x import boto3",
        "met": api["ratio_import"] <= 1.3,
        "checkout": checkout,
        "slowest_imports": slowest_imports(),
    }


def zip_import_times(zip_path: Path, runs: int = 5) -> dict:
    """The zip setting: what a Lambda cold start runs (see the module doc), for the API and
    the notifier (the lightest and the heaviest function; the checkout setting has them all)."""
    with tempfile.TemporaryDirectory(prefix="voltabuild-bench-task-") as tmp:
        task, runtime = Path(tmp) / "task", Path(tmp) / "runtime"
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(task)
        runtime.mkdir()
        for name in LAMBDA_RUNTIME:
            src = Path(__import__(name).__file__)
            src = src.parent if src.name == "__init__.py" else src
            (runtime / src.name).symlink_to(src)
        env = _env({"PYTHONPATH": f"{task}:{runtime}", "PYTHONDONTWRITEBYTECODE": "1"})
        out = _measure(task, env, runs, ("-S",), functions=("api", "notifier"))
    out["how"] = ("the deployment zip unpacked beside the Lambda runtime's packages only; no bytecode for the "
                  "zip's modules (Lambda cannot write it), boto3's cached")
    return out


def slowest_imports(top: int = 8) -> list[dict]:
    """Self import time summed by top-level package, for the API's ``import app`` (-X importtime)."""
    with tempfile.TemporaryDirectory(prefix="voltabuild-bench-pyc-") as pyc:
        env = _env({"PYTHONPYCACHEPREFIX": pyc})
        _run(_BOTO3.replace("boto3", "app"), world.ROOT, env)  # bytecode first, as measured above
        out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import app"], cwd=world.ROOT, env=env,
                             capture_output=True, text=True, check=True, timeout=120)
    by_package: dict[str, int] = {}
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            pkg = m.group(2).split(".", 1)[0]
            by_package[pkg] = by_package.get(pkg, 0) + int(m.group(1))
    best = sorted(by_package.items(), key=lambda kv: -kv[1])[:top]
    return [{"package": k, "self_ms": round(v / 1000, 1)} for k, v in best]


def deployment_zip(import_runs: int = 5) -> dict:
    """Build the deployment the way `make package` does, report its zip and time the zip's cold starts."""
    from infra.package import ZIP_LIMIT_BYTES

    with tempfile.TemporaryDirectory(prefix="voltabuild-bench-pkg-") as tmp:
        proc = subprocess.run([sys.executable, "-m", "infra.package", "--stage", "dev", "--out", tmp],
                              cwd=world.ROOT, env=_env(), capture_output=True, text=True, timeout=600)
        zip_path = Path(tmp) / "deployment.zip"
        if proc.returncode != 0 or not zip_path.exists():
            return {"built": False, "how": "python -m infra.package --stage dev (make package)",
                    "error": (proc.stderr or proc.stdout)[-1000:]}
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
        top: dict[str, int] = {}
        for info in infos:
            head = info.filename.split("/", 1)[0]
            top[head] = top.get(head, 0) + info.compress_size
        size = zip_path.stat().st_size
        return {
            "built": True, "how": "python -m infra.package --stage dev (make package)",
            "bytes": size, "files": len(infos), "target_bytes": ZIP_LIMIT_BYTES, "met": size <= ZIP_LIMIT_BYTES,
            "uncompressed_bytes": sum(i.file_size for i in infos),
            "largest_entries": [{"path": k, "compressed_bytes": v}
                                for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:6]],
            "cold_start_from_zip": zip_import_times(zip_path, import_runs),
        }


if __name__ == "__main__":  # python -m bench.coldstart: this part alone
    print(json.dumps({"cold_start": import_times(int(sys.argv[1]) if len(sys.argv) > 1 else 5),
                      "deployment_zip": deployment_zip()}, indent=2))
