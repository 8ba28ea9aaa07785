"""`make bench`: measure the control plane against its limits; print a table and write
bench/results.json.

    python -m bench.run [--quick] [--out bench/results.json]

1. AWS API calls per operation (botocore ``before-call`` hooks, moto in-process): every
   route and event handler of the app, and reaper ticks with 10 / 1,000 active builds and
   0 / 100 / 10,000 finished ones (``--quick``: 2,000).
2. Latency through the app against moto server, as ratios to raw DynamoDB calls (interleaved).
3. Scale: list page and get with 100 and 10,000 builds in the table (``--quick``: 2,000).
4. Cold start per function (``import app`` and first use vs ``import boto3``, from the checkout
   and from the unpacked zip) and the deployment zip.
5. Crash points (tests/crash): how many, and whether every one recovers.
6. The local stack (bench/stack.py): the canary's overhead over a raw ``buildah bud`` + push,
   its segments, and a burst of canaries submitted at once (``--quick``/FAST=1: a smaller one).

Targets are judged on the counts as measured; a missed one is reported as missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench import calls, coldstart, crash, latency, stack, world

OUT = Path(__file__).resolve().parent / "results.json"


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- 1. API calls -------------------------------------------------------------------------
def measure_calls(many: int = 10_000) -> tuple[list[calls.Measured], list[dict]]:
    sink = world.SlackSink()
    try:
        with world.moto_in_process(slack_url=sink.url) as resources, world.api_client() as api:
            counter = calls.CallCounter()
            counter.attach()
            b = calls.Bench(api, counter, resources)
            calls.operations(b)
            ops = list(b.results.values())
    finally:
        sink.close()
    log(f"API calls: {len(ops)} operations measured")
    with world.moto_in_process() as resources, world.api_client() as api:
        counter = calls.CallCounter()
        counter.attach()
        ticks = calls.reaper_ticks(calls.Bench(api, counter, resources), log, many)
    return ops, ticks


def unmeasured(ops: list[calls.Measured]) -> list[str]:
    """Routes and event handlers of app.py that no benchmark exercised (a new one appeared)."""
    import app as app_module

    handlers = {m.handler for m in ops} | {"reaper"}
    names = {s.name for s in app_module.app.event_sources}
    names |= {entry.view_name for methods in app_module.app.routes.values() for entry in methods.values()}
    return sorted(names - handlers)


def reaper_verdict(ticks: list[dict]) -> dict:
    by = {(t["active"], t["finished"]): t for t in ticks}
    n = max(t["finished"] for t in ticks)  # 10,000 (2,000 in a quick run)
    base, some, many, big = by[(10, 0)], by[(10, 100)], by[(10, n)], by[(1_000, n)]
    return {
        "target": "a tick does not grow with finished builds",
        "most_finished": n,
        "calls_10_active_0_finished": base["calls"],
        "calls_10_active_100_finished": some["calls"],
        "calls_10_active_most_finished": many["calls"],
        "calls_1000_active_most_finished": big["calls"],
        "growth_100_to_most_finished": many["calls"] - some["calls"],
        "growth_0_to_100_finished": some["calls"] - base["calls"],
        "growth_10_to_1000_active": big["calls"] - many["calls"],
        "met": many["calls"] == some["calls"],
    }


# ---- the table ----------------------------------------------------------------------------
def _yes(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "NO")


def _breakdown(c: dict) -> str:
    return ", ".join(f"{n}x {k}" if n > 1 else k for k, n in c.items()) or "(none)"


def table(results: dict) -> str:
    lines = ["", "AWS API calls per operation (moto in-process; warm count, cold first call in brackets)", ""]
    lines.append(f"{'operation':<52} {'calls':>5}  {'target':<7} {'met':<4} calls made")
    for op in results["api_calls"]["operations"]:
        cold = f" [{op['runs'][0]}]" if op["runs"][0] != op["calls"] else ""
        lines.append(f"{op['operation']:<52} {str(op['calls']) + cold:>5}  {op['target'] or '-':<7} "
                     f"{_yes(op['met']):<4} {_breakdown(op['breakdown'])}")
    for t in results["api_calls"]["reaper_ticks"]:
        name = f"reaper tick: {t['active']:,} active, {t['finished']:,} finished"
        lines.append(f"{name:<52} {t['calls']:>5}  {'-':<7} {'-':<4} {_breakdown(t['breakdown'])}")
    v = results["api_calls"]["reaper_verdict"]
    lines.append(f"reaper tick does not grow with finished builds: {_yes(v['met'])} "
                 f"(100 -> {v['most_finished']:,} finished: {v['growth_100_to_most_finished']:+d} calls; "
                 f"0 -> 100: {v['growth_0_to_100_finished']:+d}; 10 -> 1,000 active: {v['growth_10_to_1000_active']:+d})")
    if results["api_calls"]["unmeasured_handlers"]:
        lines.append(f"NOT MEASURED (new handlers?): {', '.join(results['api_calls']['unmeasured_handlers'])}")

    lat = results["latency"]
    lines += ["", f"Latency through the app vs raw DynamoDB on moto server ({lat['samples']['PutItem']['n']} "
              "interleaved samples each)", ""]
    for k, s in lat["samples"].items():
        lines.append(f"  {k:<32} p50 {s['p50_ms']:8.2f} ms   p99 {s['p99_ms']:8.2f} ms")
    for k, r in lat["ratios"].items():
        lines.append(f"  ratio {k:<34} p50 {r['p50']:6.2f}x   p99 {r['p99']:6.2f}x")

    sc = results["scale"]
    sizes = sorted(int(n) for n in sc["sizes"])
    lines += ["", f"Scale: {sizes[0]:,} vs {sizes[-1]:,} builds in the table (moto server)", ""]
    for k, r in sc["growth"].items():
        lines.append(f"  {k:<40} p50 {r['p50']:6.2f}x   p99 {r['p99']:6.2f}x")
    for n, rs in sc["app_over_raw"].items():
        lines.append(f"  app / raw at {int(n):>6,} builds: list / Query p50 {rs['list / Query']['p50']:.2f}x, "
                     f"get / GetItem p50 {rs['get / GetItem']['p50']:.2f}x")

    cs = results["cold_start"]
    ck = cs["checkout"]
    lines += ["", f"Cold start per function (median of {cs['runs']} fresh processes each, interleaved; "
              f"import boto3 {ck['boto3_ms']:.1f} ms)", "",
              f"  {'function':<16} {'import app':>10} {'ratio':>6}   {'+ first use':>11} {'ratio':>6}   imports"]
    for name, f in ck["functions"].items():
        lines.append(f"  {name:<16} {f['import_ms']:8.1f}ms {f['ratio_import']:5.2f}x   "
                     f"{f['import_and_first_use_ms']:9.1f}ms {f['ratio_import_and_first_use']:5.2f}x   "
                     f"{', '.join(f['imports']) or '-'}")
    lines.append(f"  target: {cs['target']}: {_yes(cs['met'])}")
    lines.append("  slowest packages (self time): " + ", ".join(
        f"{r['package']} {r['self_ms']} ms" for r in cs["slowest_imports"][:5]))
    z = results["deployment_zip"]
    if z.get("built"):
        lines.append(f"  deployment zip {z['bytes'] / 1e6:.2f} MB ({z['files']} files; {z['how']}); "
                     f"target <= {z['target_bytes'] / 1e6:.1f} MB: {_yes(z['met'])}")
        zc = z["cold_start_from_zip"]
        for name, f in zc["functions"].items():
            lines.append(f"  from the zip, as Lambda (no bytecode): {name} {f['import_and_first_use_ms']:.1f} ms = "
                         f"{f['ratio_import_and_first_use']:.2f}x import boto3 ({zc['boto3_ms']:.1f} ms)")
    else:
        lines.append(f"  deployment zip: not built ({z.get('error', '')[:200]})")
    st = results.get("local_stack") or {}
    if st.get("skipped"):
        lines += ["", f"Local stack: skipped ({st['skipped']})"]
    elif st:
        ov, th = st["overhead"], st["throughput"]
        lines += ["", "Local stack (moto server, chalice local, worker, buildah, registry)", "",
                  f"  canary POST -> SUCCEEDED {ov['median_service_s']:.2f} s vs raw buildah bud + push "
                  f"{ov['median_raw_buildah_s']:.2f} s: {ov['ratio']:.2f}x (target {ov['target']}: {_yes(ov['met'])})",
                  "  segments of a canary: " + ", ".join(f"{k} {v:.2f} s" for k, v in ov["segments_s"].items()),
                  f"  {th['builds']} canaries at once: all final in {th['wall_to_all_final_s']:.1f} s, "
                  f"{th['succeeded_with_digest_in_registry']} SUCCEEDED with the digest in the registry; "
                  f"submit -> SUCCEEDED p50 {th.get('p50_s', 0):.1f} s, p95 {th.get('p95_s', 0):.1f} s; "
                  f"wall / one alone {th.get('wall_over_alone', 0):.2f}x"]
    cp = results["crash_points"]
    lines += ["", "Crash points (a Lambda dying between two AWS calls; tests/crash)", "",
              f"  {cp['crash_points']} crash points, {cp['recovered']} recovered: "
              f"{'all recover' if cp['all_recover'] else 'NOT ALL RECOVER'} ({cp['seconds']} s; {cp['pytest']})"]
    for name, sc_ in cp["scenarios"].items():
        lines.append(f"  {name:<12} {sc_['crash_points']:>3} new crash points, {sc_['recovered']:>3} recovered")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run; figures are rougher)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    world.base_environment()
    started = time.perf_counter()
    rounds, scale_rounds, imports = (30, 10, 3) if args.quick else (200, 40, 5)
    many = 2_000 if args.quick else 10_000  # builds in the table for the reaper ticks and the scale

    sections: dict[str, float] = {}  # seconds each part took: where `make bench`'s own time goes

    def timed(name: str, fn, *a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            sections[name] = round(time.perf_counter() - t, 1)

    log("counting API calls (moto in-process)")
    ops, ticks = timed("api_calls", measure_calls, many)
    log(f"latency: POST/GET vs PutItem/GetItem on moto server, {rounds} rounds")
    lat = timed("latency", latency.request_latency, rounds)
    log(f"scale: 100 and {many:,} builds, {scale_rounds} rounds")
    sc = timed("scale", latency.scale, scale_rounds, (100, many), on_progress=log)
    log(f"cold start: {imports} fresh imports each")
    cold = timed("cold_start", coldstart.import_times, imports)
    log("deployment zip (infra.package)")
    zip_info = timed("deployment_zip", coldstart.deployment_zip)
    log("crash points (tests/crash)")
    crashes = timed("crash_points", crash.crash_points)
    burst_size, stack_rounds = (10, 1) if args.quick else (50, 2)
    log(f"local stack: canary overhead ({stack_rounds} rounds) and {burst_size} canaries at once")
    local_stack = timed("local_stack", stack.run, burst_size, stack_rounds)

    results = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "make bench" + (" (--quick)" if args.quick else ""),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": {p: metadata.version(p) for p in ("boto3", "botocore", "moto", "chalice", "pydantic")},
        "api_calls": {
            "how": "botocore before-call events on the app's clients, moto in-process, through chalice.test.Client",
            "operations": [m.as_dict() for m in ops],
            "reaper_ticks": ticks,
            "reaper_verdict": reaper_verdict(ticks),
            "unmeasured_handlers": unmeasured(ops),
        },
        "latency": lat,
        "scale": sc,
        "cold_start": cold,
        "deployment_zip": zip_info,
        "crash_points": crashes,
        "local_stack": local_stack,
        "elapsed_seconds": round(time.perf_counter() - started, 1),
        "section_seconds": sections,
    }
    results["targets"] = [
        {"what": m.name, "target": f"<= {m.target}", "measured": m.count, "met": m.met}
        for m in ops if m.target is not None and m.target > 0
    ] + [{"what": "reaper tick vs finished builds", "target": "no growth",
          "measured": results["api_calls"]["reaper_verdict"]["growth_100_to_most_finished"],
          "met": results["api_calls"]["reaper_verdict"]["met"]},
        {"what": "every crash point recovers", "target": "all",
         "measured": f"{crashes['recovered']} of {crashes['crash_points']}", "met": crashes["all_recover"]},
        {"what": "cold start: API import app / import boto3", "target": "<= 1.3",
         "measured": cold["ratio_app_to_boto3"], "met": cold["met"]},
        {"what": "deployment zip bytes", "target": f"<= {zip_info.get('target_bytes')}",
         "measured": zip_info.get("bytes"), "met": bool(zip_info.get("met"))}]
    if not local_stack.get("skipped"):
        ov, th = local_stack["overhead"], local_stack["throughput"]
        results["targets"] += [
            {"what": "canary POST->SUCCEEDED / raw buildah bud+push", "target": "<= 1.3",
             "measured": ov["ratio"], "met": ov["met"]},
            {"what": f"{th['builds']} canaries at once all SUCCEEDED with their digest", "target": "all",
             "measured": f"{th['succeeded_with_digest_in_registry']} of {th['builds']}", "met": th["all_succeeded"]}]
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    missed = [t["what"] for t in results["targets"] if not t["met"]]
    print(f"targets met: {len(results['targets']) - len(missed)} of {len(results['targets'])}"
          + (f"; missed: {', '.join(missed)}" if missed else ""))
    log(f"wrote {args.out} in {results['elapsed_seconds']} s ("
        + ", ".join(f"{k} {v} s" for k, v in sections.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
