"""The crash-point suite (tests/crash) run for `make bench`: how many crash points the
handlers have (a crash between every pair of consecutive AWS calls of every handler
invocation, generated from the recorded call sequences) and whether every one recovers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def crash_points() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "crash.json"
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/crash"],
            cwd=ROOT, env={**os.environ, "VOLTABUILD_CRASH_REPORT": str(report)},
            capture_output=True, text=True, check=False)
        scenarios = json.loads(report.read_text()) if report.exists() else {}
    total = sum(s["crash_points"] for s in scenarios.values())
    recovered = sum(s["recovered"] for s in scenarios.values())
    return {
        "how": "tests/crash: the Lambda dies before the 2nd..nth AWS call of each handler invocation "
               "(botocore before-call), then SQS redelivers, events arrive, the reaper ticks",
        "scenarios": scenarios,
        "crash_points": total,
        "recovered": recovered,
        "all_recover": proc.returncode == 0 and total > 0 and recovered == total,
        "pytest": (proc.stdout.strip().splitlines() or [""])[-1],
        "seconds": round(time.perf_counter() - started, 1),
    }
