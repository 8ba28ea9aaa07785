"""The whole local stack under load (``make bench``; needs buildah as root, as ``make demo``):

1. **Overhead over the physical floor**: the canary's POST -> SUCCEEDED time next to a raw
   ``buildah bud`` + ``buildah push`` of the same context, build args and tags to the same
   registry, alternated in one run (ratio of medians; target <= 1.3x). Each build's segments
   (``GET /builds/{id}``) show where the difference goes.
2. **Throughput**: N canary builds submitted at once (50; FAST=1: 10): wall time to all
   final, p50/p95 submit -> SUCCEEDED, the ratio to one build alone; every build must end
   SUCCEEDED with its digest in the registry.

    python -m bench.stack [--burst N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench import world

FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
BUILDAH = ("buildah", "--storage-driver", "vfs")


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


class _Api:
    def __init__(self, env: dict[str, str]) -> None:
        self.url = env["VOLTABUILD_API_URL"]
        self.registry = env["VOLTABUILD_REGISTRY"]
        self.http = requests.Session()
        self.http.headers["x-api-key"] = env["VOLTABUILD_API_KEY"]
        self.lock = threading.Lock()

    def submit(self, body: dict) -> str:
        resp = self.http.post(f"{self.url}/builds", json=body, timeout=120)
        if resp.status_code != 202:
            raise RuntimeError(f"submit: {resp.status_code} {resp.text[:300]}")
        return resp.json()["id"]

    def get(self, build_id: str) -> dict:
        return self.http.get(f"{self.url}/builds/{build_id}", timeout=120).json()

    def wait_final(self, ids: list[str], started: dict[str, float], timeout: float) -> dict[str, tuple[float, dict]]:
        """build id -> (seconds from its submit to when it was seen final, the build)."""
        done: dict[str, tuple[float, dict]] = {}
        deadline = time.monotonic() + timeout
        while len(done) < len(ids) and time.monotonic() < deadline:
            for bid in ids:
                if bid in done:
                    continue
                build = self.get(bid)
                if build.get("status") in FINAL:
                    done[bid] = (time.monotonic() - started[bid], build)
            if len(done) < len(ids):
                time.sleep(0.25)
        return done

    def in_registry(self, build: dict) -> bool:
        image = build.get("image") or {}
        repo = image.get("repository", "").partition("/")[2]
        digest = image.get("digest")
        if not repo or not digest:
            return False
        resp = requests.head(f"http://{self.registry}/v2/{repo}/manifests/{digest}", timeout=10, headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, "
                      "application/vnd.docker.distribution.manifest.v2+json"})
        return resp.status_code == 200


def _one_build(api: _Api, tag: str) -> tuple[float, dict]:
    t0 = time.monotonic()
    bid = api.submit({"framework": "canary", "tags": [tag]})
    got = api.wait_final([bid], {bid: t0}, timeout=300)
    if bid not in got:
        raise RuntimeError(f"build {bid} did not end within 5 minutes")
    return got[bid]


def _raw_build(api: _Api, build: dict, n: int, work: Path) -> float:
    """``buildah bud`` + ``buildah push`` of the canary's context with the build's args and
    as many tags, to the same registry (the floor any build service stands on)."""
    ctx = work / f"raw-{n}"
    shutil.copytree(world.ROOT / "dockerfiles" / "canary", ctx)
    name = f"localhost/voltabuild-bench/raw:{n}"
    bud = [*BUILDAH, "bud", "--isolation", "chroot", "--file", str(ctx / "Dockerfile"), "--tag", name]
    for k, v in sorted((build.get("build_args") or {}).items()):
        bud += ["--build-arg", f"{k}={v}"]
    t0 = time.monotonic()
    subprocess.run([*bud, str(ctx)], check=True, capture_output=True, timeout=300)
    for i, _tag in enumerate((build.get("image") or {}).get("tags") or ["latest"]):
        subprocess.run([*BUILDAH, "push", "--tls-verify=false", name,
                        f"docker://{api.registry}/voltabuild-bench/raw:{n}-{i}"],
                       check=True, capture_output=True, timeout=300)
    took = time.monotonic() - t0
    subprocess.run([*BUILDAH, "rmi", name], capture_output=True, check=False)
    return took


def overhead(api: _Api, rounds: int, work: Path) -> dict:
    service, raw, segments = [], [], []
    for r in range(rounds):  # alternated, so a slow moment of the machine hits both
        took, build = _one_build(api, f"overhead-{r}")
        if build["status"] != "SUCCEEDED":
            raise RuntimeError(f"the canary {build['id']} ended {build['status']}: {build.get('reason')}")
        service.append(took)
        segments.append(build.get("segments") or {})
        raw.append(_raw_build(api, build, r, work))
    s, f = statistics.median(service), statistics.median(raw)
    return {
        "rounds": rounds,
        "service_s": [round(x, 2) for x in service], "raw_buildah_s": [round(x, 2) for x in raw],
        "median_service_s": round(s, 2), "median_raw_buildah_s": round(f, 2),
        "ratio": round(s / f, 2), "target": "<= 1.3", "met": s / f <= 1.3,
        "segments_s": segments[-1],
        "segments_median_s": {k: round(statistics.median(sg.get(k, 0.0) for sg in segments), 2)
                              for k in sorted({k for sg in segments for k in sg})},
    }


def burst(api: _Api, n: int, alone_s: float) -> dict:
    started: dict[str, float] = {}

    def submit(i: int) -> str:
        t0 = time.monotonic()
        bid = api.submit({"framework": "canary", "tags": [f"burst-{i}"]})
        started[bid] = t0
        return bid

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=min(n, 16)) as pool:
        ids = list(pool.map(submit, range(n)))
    submitted = time.monotonic() - t0
    done = api.wait_final(ids, started, timeout=900)
    wall = time.monotonic() - t0
    ok = [bid for bid, (_, b) in done.items() if b["status"] == "SUCCEEDED" and api.in_registry(b)]
    times = [done[bid][0] for bid in ok]
    out = {
        "builds": n, "submitted_in_s": round(submitted, 2), "wall_to_all_final_s": round(wall, 2),
        "succeeded_with_digest_in_registry": len(ok),
        "not_final": [bid for bid in ids if bid not in done],
        "other_outcomes": {bid: f"{b['status']}: {(b.get('reason') or '')[:200]}" for bid, (_, b) in done.items()
                           if bid not in ok},
        "alone_s": round(alone_s, 2),
    }
    if times:
        out.update(p50_s=round(_pct(times, 50), 2), p95_s=round(_pct(times, 95), 2),
                   wall_over_alone=round(wall / alone_s, 2), per_build_wall_s=round(wall / n, 2))
    segs = [b.get("segments") or {} for _, b in done.values()]
    out["segments_p50_s"] = {k: round(_pct([sg.get(k, 0.0) for sg in segs], 50), 2)
                             for k in sorted({k for sg in segs for k in sg})} if segs else {}
    out["segments_max_s"] = {k: round(max(sg.get(k, 0.0) for sg in segs), 2)
                             for k in sorted({k for sg in segs for k in sg})} if segs else {}
    out["all_succeeded"] = len(ok) == n
    return out


def run(burst_size: int = 50, rounds: int = 2) -> dict:
    from voltabuild_local.stack import Stack
    from voltabuild_local.worker import detect_builder

    builder = detect_builder()
    if builder != "buildah":
        return {"skipped": f"needs buildah as root (found: {builder or 'neither docker nor buildah'})"}
    with tempfile.TemporaryDirectory(prefix="voltabuild-bench-stack-") as tmp:
        stack = Stack(state_dir=Path(tmp) / "stack", reaper_seconds=5, quiet=True)
        t0 = time.monotonic()
        stack.up()
        up_s = time.monotonic() - t0
        try:
            api = _Api(stack.env)
            _one_build(api, "warm-up")  # first build: the base image and the caches
            over = overhead(api, rounds, Path(tmp))
            thr = burst(api, burst_size, over["median_service_s"])
        finally:
            stack.down()
    return {"stack_up_s": round(up_s, 2), "overhead": over, "throughput": thr}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--burst", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    print(json.dumps(run(args.burst, args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
