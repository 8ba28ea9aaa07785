"""Cold start: ``import app`` in fresh interpreters as a ratio to ``import boto3`` alone
(median of repeated, interleaved runs), the slowest imports under ``-X importtime``, and the
deployment zip's size (built by ``infra.package``, the same as ``make package``)."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import world

_TIMED = "import time; t = time.perf_counter(); import {mod}; print(time.perf_counter() - t)"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VOLTABUILD_"))}
    env.update(AWS_DEFAULT_REGION=world.REGION, AWS_REGION=world.REGION, PYTHONDONTWRITEBYTECODE="1")
    return env


def _import_seconds(mod: str) -> float:
    out = subprocess.run([sys.executable, "-c", _TIMED.format(mod=mod)], cwd=world.ROOT, env=_env(),
                         capture_output=True, text=True, check=True, timeout=120)
    return float(out.stdout.strip().splitlines()[-1])


def import_times(runs: int = 10) -> dict:
    """Median seconds to import ``app`` and ``boto3`` in fresh processes, interleaved."""
    samples: dict[str, list[float]] = {"app": [], "boto3": []}
    _import_seconds("app")  # byte-compile once: a Lambda's zip carries no .pyc either way, but be fair
    for i in range(runs):
        for mod in (("app", "boto3") if i % 2 == 0 else ("boto3", "app")):
            samples[mod].append(_import_seconds(mod))
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "runs": runs,
        "median_ms": {k: round(v * 1000, 1) for k, v in med.items()},
        "samples_ms": {k: [round(x * 1000, 1) for x in v] for k, v in samples.items()},
        "ratio_app_to_boto3": round(med["app"] / med["boto3"], 2),
        "slowest_imports": slowest_imports(),
    }


def slowest_imports(top: int = 8) -> list[dict]:
    """Self import time summed by top-level package, for ``import app`` (one -X importtime run)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import app"], cwd=world.ROOT, env=_env(),
                         capture_output=True, text=True, check=True, timeout=120)
    by_package: dict[str, int] = {}
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            pkg = m.group(2).split(".", 1)[0]
            by_package[pkg] = by_package.get(pkg, 0) + int(m.group(1))
    best = sorted(by_package.items(), key=lambda kv: -kv[1])[:top]
    return [{"package": k, "self_ms": round(v / 1000, 1)} for k, v in best]


def deployment_zip() -> dict:
    """Build the deployment the way `make package` does and report its zip."""
    with tempfile.TemporaryDirectory(prefix="voltabuild-bench-pkg-") as tmp:
        proc = subprocess.run([sys.executable, "-m", "infra.package", "--stage", "dev", "--out", tmp],
                              cwd=world.ROOT, env=_env(), capture_output=True, text=True, timeout=600)
        zip_path = Path(tmp) / "deployment.zip"
        if proc.returncode != 0 or not zip_path.exists():
            return {"built": False, "how": "python -m infra.package --stage dev (make package)",
                    "error": (proc.stderr or proc.stdout)[-1000:]}
        import zipfile

        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
        top: dict[str, int] = {}
        for info in infos:
            head = info.filename.split("/", 1)[0]
            top[head] = top.get(head, 0) + info.compress_size
        return {
            "built": True, "how": "python -m infra.package --stage dev (make package)",
            "bytes": zip_path.stat().st_size, "files": len(infos),
            "uncompressed_bytes": sum(i.file_size for i in infos),
            "largest_entries": [{"path": k, "compressed_bytes": v}
                                for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:6]],
        }
