"""Markdown tables from bench/results.json, for the README's Performance section.

    python -m bench.report [bench/results.json]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from bench.run import OUT


def _calls(sequence: list[str]) -> str:
    """``dynamodb.GetItem, 2x dynamodb.UpdateItem`` -> ``GetItem, 2 UpdateItem`` (in call order)."""
    counts = Counter(sequence)
    seen: list[str] = []
    for call in sequence:
        if call not in seen:
            seen.append(call)
    return ", ".join((f"{counts[c]} " if counts[c] > 1 else "") + c.split(".", 1)[1] for c in seen) or "none"


def markdown(results: dict) -> str:
    api = results["api_calls"]
    out = ["| operation | calls | target | met | calls made |", "|---|---|---|---|---|"]
    for op in api["operations"]:
        cold = f" ({op['runs'][0]} cold)" if op["runs"][0] != op["calls"] else ""
        met = "" if op["met"] is None else ("yes" if op["met"] else "**no**")
        out.append(f"| {op['operation']} | {op['calls']}{cold} | {op['target'] or ''} | {met} | "
                   f"{_calls(op['sequence'])} |")
    out += ["", "| active | finished | calls | calls made |", "|---|---|---|---|"]
    for t in api["reaper_ticks"]:
        seq = [k for k, n in t["breakdown"].items() for _ in range(n)]
        out.append(f"| {t['active']:,} | {t['finished']:,} | {t['calls']} | {_calls(seq)} |")
    lat = results["latency"]
    out += ["", "| | p50 | p99 |", "|---|---|---|"]
    for k, r in lat["ratios"].items():
        out.append(f"| {k} | {r['p50']:.2f}x | {r['p99']:.2f}x |")
    sc = results["scale"]
    sizes = sorted(int(n) for n in sc["sizes"])
    out += ["", f"| {sizes[-1]:,} vs {sizes[0]:,} builds | p50 | p99 |", "|---|---|---|"]
    for k, r in sc["growth"].items():
        out.append(f"| {k} | {r['p50']:.2f}x | {r['p99']:.2f}x |")
    targets = results["targets"]
    met = sum(1 for t in targets if t["met"])
    out += ["", f"targets met: {met} of {len(targets)}",
            f"cold start: import app {results['cold_start']['median_ms']['app']} ms, import boto3 "
            f"{results['cold_start']['median_ms']['boto3']} ms, ratio {results['cold_start']['ratio_app_to_boto3']}x",
            f"zip: {results['deployment_zip'].get('bytes', 0) / 1e6:.2f} MB", f"generated: {results['generated_at']}"]
    return "\n".join(out)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    print(markdown(json.loads(path.read_text())))
