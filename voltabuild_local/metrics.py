"""The local stack's metrics: the EMF lines its processes (the API under ``chalice local``,
the worker running the other handlers) wrote to their logs, summed up as CloudWatch would
(``python -m voltabuild_local metrics``, ``make metrics``; ``make demo`` ends with it).

In AWS, CloudWatch Logs extracts the same lines into metrics (chalicelib/metrics.py);
here they are read back from ``<state>/logs/*.log``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from voltabuild_local.emf import events, problems


@dataclass
class Series:
    values: list[float] = field(default_factory=list)
    unit: str = ""

    @property
    def total(self) -> float:
        return sum(self.values)


@dataclass
class Summary:
    series: dict[tuple[str, tuple[tuple[str, str], ...]], Series] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)  # EMF lines that break the specification
    lines: int = 0

    def add(self, event: dict) -> None:
        self.lines += 1
        bad = problems(event)
        if bad:
            self.invalid.append("; ".join(bad))
            return
        for directive in event["_aws"]["CloudWatchMetrics"]:
            keys = sorted({k for ds in directive["Dimensions"] for k in ds} - {"Stage"})
            dims = tuple((k, str(event[k])) for k in keys)
            for metric in directive["Metrics"]:
                value = event[metric["Name"]]
                s = self.series.setdefault((metric["Name"], dims), Series(unit=metric.get("Unit", "None")))
                s.values.extend(value if isinstance(value, list) else [value])

    def value(self, name: str, **dims: str) -> float:
        """The sum of ``name`` over every series whose dimensions include ``dims``."""
        return sum(s.total for (n, d), s in self.series.items()
                   if n == name and set(dims.items()) <= set(d))

    def table(self) -> str:
        if not self.series:
            return "no metrics yet: the local stack's processes wrote no EMF line"
        rows = [("metric", "dimensions", "n", "sum", "max")]
        for (name, dims), s in sorted(self.series.items()):
            seconds = s.unit == "Seconds"
            rows.append((name, " ".join(f"{k}={v}" for k, v in dims) or "-", str(len(s.values)),
                         _num(s.total, seconds), _num(max(s.values), seconds)))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        out = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
               for r in rows]
        out.insert(1, "  ".join("-" * w for w in widths))
        if self.invalid:
            out.append(f"\n{len(self.invalid)} EMF line(s) break the specification; the first: {self.invalid[0]}")
        return "\n".join(out)


def _num(value: float, seconds: bool) -> str:
    if seconds:
        return f"{value:.1f}s"
    return f"{value:g}" if value == int(value) else f"{value:.4f}"


def summarize(lines: Iterable[str]) -> Summary:
    summary = Summary()
    for event in events(lines):
        summary.add(event)
    return summary


def read_logs(log_dir: Path) -> Summary:
    """Every EMF line in the stack's process logs."""
    def lines():
        for path in sorted(Path(log_dir).glob("*.log")):
            with open(path, encoding="utf-8", errors="replace") as f:
                yield from f

    return summarize(lines())
