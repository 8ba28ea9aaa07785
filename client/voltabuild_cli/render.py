"""Human-readable output. Scripts use ``--json`` instead; nothing here is a contract."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from voltabuild_cli.clock import human_duration, parse_time


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True)


def _t(value: str | None) -> str:
    dt = parse_time(value)
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC") if dt else "-"


def hms(value: str | None) -> str:
    dt = parse_time(value)
    return dt.strftime("%H:%M:%S") if dt else "-"


def image_refs(build: dict) -> list[str]:
    image = build.get("image") or {}
    repo = image.get("repository", "")
    refs = [f"{repo}:{t}" for t in image.get("tags") or []]
    if image.get("digest"):
        refs.append(f"{repo}@{image['digest']}")
    return refs


def human_size(n: int | None) -> str | None:
    """Bytes in decimal units, as registries show image sizes: 2.15 MB, 4.31 GB."""
    if n is None:
        return None
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def image_size(build: dict) -> str | None:
    """The image's compressed size line, with the base it started from, when measured."""
    image = build.get("image") or {}
    size = human_size(image.get("compressed_size_bytes"))
    if size is None:
        return None
    base = image.get("base_image_digest")
    return f"{size} compressed" + (f" (base {base})" if base else "")


def state_of(build: dict) -> str:
    s = build.get("status", "?")
    if build.get("phase"):
        s += f" ({build['phase']})"
    if build.get("cancel_requested") and s.split()[0] not in ("CANCELLED", "SUCCEEDED", "FAILED", "TIMED_OUT"):
        s += ", cancel requested"
    return s


def combo(build: dict) -> str:
    source = build.get("source") or {}
    if source.get("kind") == "context":
        return f"your Dockerfile {source.get('dockerfile')} in context {str(source.get('context'))[:19]}…"
    if source.get("kind") == "git":
        return f"your Dockerfile {source.get('dockerfile')} in {source.get('git')} at {source.get('ref') or 'HEAD'}"
    extended = " + your packages" if source.get("kind") == "extend" else ""
    return (f"{build.get('framework')} {build.get('version')}, CUDA {build.get('cuda')}, "
            f"Python {build.get('python')}{extended}")


def build_detail(build: dict, now: datetime) -> str:
    rows: list[tuple[str, str]] = [
        ("status", state_of(build)),
        ("build", combo(build)),
        ("image", "\n".join(image_refs(build)) or "-"),
    ]
    if image_size(build):
        rows.append(("size", image_size(build)))
    inst = build.get("instance")
    if inst:
        bits = [inst.get("id", "?"), inst.get("type", "?"), inst.get("az") or "", inst.get("lifecycle") or ""]
        if inst.get("price") is not None:
            bits.append(f"${inst['price']:.3f}/h")
        rows.append(("instance", " ".join(b for b in bits if b)))
    rows.append(("attempt", f"{build.get('attempt', 1)} of {build.get('max_attempts', '?')}"))
    created = parse_time(build.get("created_at"))
    finished = parse_time(build.get("finished_at"))
    rows.append(("created", _t(build.get("created_at"))))
    if finished and created:
        rows.append(("finished", f"{_t(build.get('finished_at'))} (took {human_duration((finished - created).total_seconds())})"))
    elif created:
        rows.append(("elapsed", human_duration((now - created).total_seconds())))
        if build.get("deadline_at"):
            rows.append(("deadline", _t(build.get("deadline_at"))))
    if build.get("reason"):
        rows.append(("reason", build["reason"]))
    if split_saving(build):  # issue 23
        rows.append(("split", split_saving(build)))
    for w in build.get("warnings") or []:
        rows.append(("warning", w))
    out = [build.get("id", "?")]
    for k, v in rows:
        lines = str(v).splitlines() or [""]
        out.append(f"  {k:<9} {lines[0]}")
        out.extend(f"  {'':<9} {ln}" for ln in lines[1:])
    out.extend(segments_chart(build.get("segments") or {}))
    events = build.get("events") or []
    if events:
        out.append("  timeline")
        for ev in events:
            state = ev.get("status", "")
            if ev.get("phase"):
                state += f"/{ev['phase']}"
            out.append(f"    {hms(ev.get('at'))}  {state:<20} {ev.get('message', '')}".rstrip())
    return "\n".join(out)


def split_saving(build: dict) -> str | None:
    """A split build's cost and wall time against the same build on its GPU instance alone
    (issue 23), from its recorded cost (both instances' prices and billed seconds) and its
    timeline; None for an unsplit build or one not yet priced.

    The estimate keeps the build stage's billed time and moves it to the GPU's price; the
    wall time leaves out the handover (from BUILT to the test stage's first report). It does
    not count that the GPU instance, with fewer cores, would compile slower: the real saving
    of a source build is larger."""
    if not build.get("split"):
        return None
    cost = build.get("cost") or {}
    parts = cost.get("instances") or []
    if len(parts) != 2:
        return None
    cpu, gpu = parts
    try:
        gpu_price = float(gpu["price_per_hour"])
        split_usd = float(cost["usd"])
        unsplit_usd = split_usd - float(cpu["compute_usd"]) + int(cpu["billed_seconds"]) * gpu_price / 3600
    except (KeyError, TypeError, ValueError):
        return None
    stages = build.get("stages") or {}
    cpu_type = ((stages.get("build") or {}).get("instance") or {}).get("type", "CPU")
    gpu_type = ((stages.get("test") or {}).get("instance") or {}).get("type", "GPU")
    saved = unsplit_usd - split_usd
    share = f" ({saved / unsplit_usd:.0%})" if unsplit_usd > 0 else ""
    line = (f"${split_usd:.2f} (build {cpu_type} ${float(cpu['usd']):.2f} + test {gpu_type} ${float(gpu['usd']):.2f}); "
            f"unsplit on {gpu_type} ~${unsplit_usd:.2f}: {'saves' if saved >= 0 else 'costs'} ~${abs(saved):.2f}{share}")
    created, finished = parse_time(build.get("created_at")), parse_time(build.get("finished_at"))
    events = build.get("events") or []
    built = next((parse_time(e.get("at")) for e in events if e.get("stage") == "test" and not e.get("phase")), None)
    tested = next((parse_time(e.get("at")) for e in events if e.get("stage") == "test" and e.get("phase")), None)
    if created and finished and built and tested and tested >= built:
        wall = (finished - created).total_seconds()
        handover = (tested - built).total_seconds()
        line += (f"\nwall {human_duration(wall)} vs ~{human_duration(wall - handover)} unsplit (the handover to the "
                 f"GPU instance took {human_duration(handover)}; a slower compile there is not counted)")
    return line


SEGMENT_ORDER = ("queued", "launching", "booting", "preparing", "building", "testing", "pushing", "terminate_lag")


def segments_chart(segments: dict[str, float], width: int = 30) -> list[str]:
    """Where the build's time went, one bar per segment scaled to the longest (``width``
    cells); a segment that took any time gets at least a sliver. Unknown names follow the
    known ones, so a newer API's segment is still shown."""
    names = [n for n in SEGMENT_ORDER if n in segments] + sorted(set(segments) - set(SEGMENT_ORDER))
    values = {n: max(0.0, float(segments[n])) for n in names}
    if not values:
        return []
    longest = max(values.values())
    out = ["  time spent"]
    for n in names:
        cells = round(values[n] / longest * width) if longest > 0 else 0
        bar = "█" * cells if cells else ("▏" if values[n] > 0 else "")
        out.append(f"    {n.replace('_', ' '):<13} {bar:<{width}} {human_duration(values[n])}")
    return out


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def build_table(builds: list[dict]) -> str:
    return table(
        ["ID", "STATUS", "PHASE", "FRAMEWORK", "VERSION", "CUDA", "PYTHON", "CREATED"],
        [[b.get("id", ""), b.get("status", ""), b.get("phase") or "-", b.get("framework", ""),
          b.get("version", ""), b.get("cuda", ""), b.get("python", ""), _t(b.get("created_at"))]
         for b in builds],
    )


def frameworks_text(catalog: dict) -> str:
    out: list[str] = []
    for fw in catalog.get("frameworks", []):
        if out:
            out.append("")
        d = fw.get("defaults") or {}
        title = f"{fw.get('framework')} — {fw.get('description', '')}".rstrip(" —")
        out.append(title)
        if fw.get("deprecated"):
            out.append(f"  DEPRECATED: {fw['deprecated']}")
        out.append(f"  default    {d.get('version')}  CUDA {d.get('cuda')}  Python {d.get('python')}"
                   f"   (voltabuild submit {fw.get('framework')})")
        out.append("  versions   (* = default; released on; GPU families that run each CUDA build)")
        for v in fw.get("versions", []):
            mark = "*" if v.get("version") == d.get("version") else " "
            notes = [f"released {v['released']}" if v.get("released") else "release date unknown"]
            if v.get("newest"):
                notes.append("newest")
            if v.get("deprecated"):
                notes.append("deprecated")
            out.append(f"   {mark}{v.get('version'):<10} Python {', '.join(v.get('python', []))}"
                       f"   ({', '.join(notes)})")
            if v.get("deprecated"):
                out.append(f"      {v['deprecated']}")
            families = v.get("instance_families") or {}
            for cuda in v.get("cuda", []):
                cmark = "*" if mark == "*" and cuda == d.get("cuda") else " "
                fams = ", ".join(families.get(cuda, [])) or "-"
                out.append(f"     {cmark}CUDA {cuda:<6} runs on {fams}")
        if fw.get("instance_types"):
            out.append(f"  instances  {', '.join(fw['instance_types'])} (tried in order)")
        t = fw.get("timeout_minutes") or {}
        if t:
            out.append(f"  timeout    {t.get('default')} min (at most {t.get('max')})")
        for name, arg in (fw.get("build_args") or {}).items():
            out.append(f"  --build-arg {name}=…  default {arg.get('default')!r}; must match {arg.get('pattern')}")
            if arg.get("help"):
                out.append(f"      {arg['help']}")
        if fw.get("tags"):
            out.append(f"  tags       {', '.join(fw['tags'])}")
    families = (catalog.get("hardware") or {}).get("families") or {}
    if families:
        out += ["", "GPU families — the AMI each instance family boots and its NVIDIA driver branch"]
        rows = []
        for name, fam in families.items():
            ami = fam.get("ami")
            if ami:
                how = "in the AMI" if ami.get("driver") == "preinstalled" else "installed by the host script"
                rows.append([name, fam.get("gpu", ""), f"R{ami.get('driver_branch')} ({how})", ami.get("parameter", "")])
            else:
                rows.append([name, fam.get("gpu", ""), "-", f"no AMI: {fam.get('no_ami', '')}"])
        out += ["  " + line for line in table(["FAMILY", "GPU", "DRIVER", "AMI"], rows).splitlines()]
    return "\n".join(out)
