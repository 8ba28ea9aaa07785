"""Run a rendered host script for real under bash, with recording shims on PATH."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from chalicelib.builds.records import BuildRecord
from chalicelib.launching.hostscript import HostConfig, render
from chalicelib.specs.catalog import Catalog, load_catalog

SHIMS = Path(__file__).resolve().parent / "shims"
BUILD_ID = "b-0123456789abcdef0123"
TOKEN = "tok_" + "A" * 40
CFG = HostConfig(api_url="https://api.example.test/api", region="us-east-1", stage="dev",
                 registry="123456789012.dkr.ecr.us-east-1.amazonaws.com", heartbeat_seconds=3600,
                 vcs_ref="0123abc", vcs_url="https://example.test/voltabuild.git")


def record_for(catalog: Catalog, framework: str = "pytorch", **over) -> dict:
    """A stored build's fields (no instance types: the script's default, the framework's first)."""
    spec = catalog.spec(framework)
    r = spec.resolve(over.pop("version", None), over.pop("cuda", None), over.pop("python", None))
    rec = {
        "id": BUILD_ID, "framework": framework, "version": r.version, "cuda": r.cuda, "python": r.python,
        "build_args": {}, "image": {"repository": f"{CFG.registry}/{spec.repository}",
                                    "tags": spec.tags_for(r, catalog.hardware)},
        "timeout_minutes": 45, "attempt": 1, "status": "LAUNCHING", "instance_types": [],
        "notify": {"slack": False}, "created_at": "2026-11-28T15:00:00Z", "updated_at": "2026-11-28T15:00:00Z",
    }
    rec.update(over)
    return rec


@dataclass
class Run:
    rc: int
    calls: list[list[str]]
    output: str
    work: Path
    logs: list[dict] = field(default_factory=list)

    def named(self, name: str) -> list[list[str]]:
        return [c[1:] for c in self.calls if c[0] == name]

    def reports(self) -> list[dict]:
        out = []
        for args in self.named("curl"):
            if "--data-binary" in args and args[-1].endswith("/events"):  # not a registry's PUT
                out.append(json.loads(args[args.index("--data-binary") + 1]))
        return out

    def result(self) -> dict:
        results = [r for r in self.reports() if r["type"] == "result"]
        assert len(results) == 1, results
        return results[0]

    def docker(self, *prefix: str) -> list[list[str]]:
        return [a for a in self.named("docker") if a[: len(prefix)] == list(prefix)]


def _calls(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [c.split("\x1f") for c in path.read_text().split("\x1e") if c]


def run_script(tmp: Path, script: str, env: dict[str, str] | None = None, *,
               term_when: str | None = None, term_group: bool = False, timeout: float = 60) -> Run:
    """Run ``script``; with ``term_when``, send SIGTERM once a recorded call contains it (to
    the script, or with ``term_group`` to its whole process group, as systemd does)."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "user-data.sh"
    path.write_text(script)
    calls = tmp / "calls"
    logs_dir = tmp / "shipped"
    logs_dir.mkdir(exist_ok=True)
    work = tmp / "work"
    full_env = {
        "PATH": f"{SHIMS}:{os.environ['PATH']}", "HOME": str(tmp), "SHIM_CALLS": str(calls),
        "SHIM_LOGS_DIR": str(logs_dir), "VOLTABUILD_WORKDIR": str(work), "VOLTABUILD_RETRY_SECONDS": "0",
        **(env or {}),
    }
    with open(tmp / "console.log", "wb") as out:
        proc = subprocess.Popen(["bash", str(path)], env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=tmp, start_new_session=True)
        if term_when:
            deadline = time.monotonic() + timeout
            while not any(term_when in "\x1f".join(c) for c in _calls(calls)):
                assert proc.poll() is None, "the script ended before the point to interrupt"
                assert time.monotonic() < deadline, "never reached the point to interrupt"
                time.sleep(0.05)
            time.sleep(0.2)
            if term_group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=timeout)
    shipped = []
    for f in sorted(logs_dir.glob("*.json")):
        shipped.extend(json.loads(f.read_text()))
    return Run(rc, _calls(calls), (tmp / "console.log").read_text(errors="replace"), work, shipped)


def render_for(record: dict, catalog: Catalog | None = None, cfg: HostConfig = CFG,
               instance_type: str | None = None) -> str:
    return render(BuildRecord.of(record), catalog or load_catalog(), cfg, token=TOKEN, build_date="2026-11-28T15:00:00Z",
                  instance_type=instance_type)


def readonly_values(script: str) -> dict[str, str | list[str]]:
    """The host script's ``readonly NAME=value`` and ``readonly -a NAME=(...)`` lines, values
    as bash reads them (a multi-line value, the unpacker, reads as ``<multi-line>``)."""
    out: dict[str, str | list[str]] = {}
    for m in re.finditer(r"^readonly (-a )?([A-Z0-9_]+)=(.*)$", script, re.M):
        if m.group(1):
            out[m.group(2)] = shlex.split(m.group(3)[1:-1])
            continue
        try:
            words = shlex.split(m.group(3))
        except ValueError:
            words = ["<multi-line>"]
        out[m.group(2)] = words[0] if words else ""
    return out
