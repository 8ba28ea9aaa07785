"""Metrics as CloudWatch Embedded Metric Format (EMF) log lines: no API call, no
permission, nothing to wait for — CloudWatch Logs extracts the metrics from the function's
log stream. Specification:
https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html
(voltabuild_local/emf.py holds a JSON schema written from it; the tests hold every line to it).

:data:`METRICS` is the one definition of each metric (name, unit, dimensions, meaning,
where it is emitted); the README's "Operating voltabuild" table and the template's alarms
and dashboard (infra/operations.py) are made from, or checked against, it. Every metric
carries the ``Stage`` dimension. Call sites are one line: ``metrics.emit("Name", value,
Dim=...)`` or one of the helpers below.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chalicelib import clock, observability
from chalicelib.builds.segments import segment_durations

if TYPE_CHECKING:  # the models: imported by whoever hands them over, never at a cold start
    from chalicelib.builds.schemas import Build
    from chalicelib.costs.billing import Cost

NAMESPACE = "voltabuild"
STAGE = "Stage"


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str  # a CloudWatch unit (EMF "Unit")
    what: str
    where: str
    # dimension sets besides Stage (each set is one CloudWatch metric): () = Stage alone
    dimensions: tuple[tuple[str, ...], ...] = ((),)
    # the values a dimension may take, where the set is closed (keeps the metric count bounded)
    values: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def keys(self) -> set[str]:
        return {d for ds in self.dimensions for d in ds}


FINAL_OUTCOMES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"})
REFUSALS = frozenset({"400", "409", "413", "429"})
SEGMENTS = frozenset({"queued", "launching", "booting", "preparing", "building", "testing", "pushing", "terminate_lag",
                      "total"})
HOST_CAUSES = frozenset({"driver", "gpu", "instance-lost", "other"})
SLACK_OUTCOMES = frozenset({"sent", "retried", "failed", "abandoned"})

METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("BuildsSubmitted", "Count", "builds accepted by POST /builds (a new build, not an idempotent replay)",
           "app.py submit_build", ((), ("Framework",))),
    Metric("BuildsRefused", "Count", "POST /builds refused: 400 bad request, 409 conflict, 413 too large, "
           "429 over a quota", "app.py http middleware", (("Reason",),), {"Reason": REFUSALS}),
    Metric("BuildsFinished", "Count", "builds that reached a final state (counted once: the winning write)",
           "chalicelib/builds/transitions.py Transitions.move", (("Outcome",), ("Outcome", "Framework")),
           {"Outcome": FINAL_OUTCOMES}),
    Metric("BuildSegmentSeconds", "Seconds", "time a finished build spent in each segment of its life "
           "(queued, launching, booting, preparing, building, testing, pushing, chalicelib/builds/segments.py; "
           "total: accepted to final; terminate_lag: final to the instance's termination)",
           "chalicelib/builds/transitions.py Transitions.move (final); chalicelib/events/lifecycle.py (terminate_lag)",
           (("Segment",),), {"Segment": SEGMENTS}),
    Metric("BuildCostUSD", "None", "a finished build's cost in USD, once its instance is terminated: the very "
           "figure GET /builds/{id} shows and the per-day aggregates book (chalicelib/costs/build_costs.py: every "
           "attempt's instance, per second with the 60 s minimum, launch to terminated, root volume included); "
           "a build whose instance's price is unknown is not counted",
           "chalicelib/events/lifecycle.py Lifecycle._note_terminated", ((), ("Framework",))),
    Metric("SpotInterruptions", "Count", "spot interruption warnings and reclaimed spot instances",
           "chalicelib/events/lifecycle.py Lifecycle.relaunch"),
    Metric("Relaunches", "Count", "builds queued again as a new attempt (spot interruption, host failure)",
           "chalicelib/events/lifecycle.py Lifecycle.relaunch"),
    Metric("HostFailures", "Count", "an instance failed the build rather than the build failing: the driver, "
           "the GPU, or the instance lost before it reported", "chalicelib/launching/reports.py, chalicelib/events/lifecycle.py",
           ((), ("Cause",)), {"Cause": HOST_CAUSES}),
    Metric("OrphansMarked", "Count", "instances tagged ours with no live build, marked for termination",
           "chalicelib/events/reaper.py Reaper.tick"),
    Metric("OrphansTerminated", "Count", "orphan instances terminated on a later reaper tick",
           "chalicelib/events/reaper.py Reaper.tick"),
    Metric("ReaperRuns", "Count", "reaper ticks that completed (a heartbeat: none for 15 minutes alarms)",
           "chalicelib/events/reaper.py Reaper.tick"),
    Metric("SlackDeliveries", "Count", "Slack messages by outcome: sent, retried (a failed try that will be "
           "tried again), failed (out of tries), abandoned (a worker died mid-post)",
           "chalicelib/notifications/notify.py Notifier", (("Outcome",),), {"Outcome": SLACK_OUTCOMES}),
)}


class _Settings:
    stage = "dev"


def configure(stage: str) -> None:
    """The deployment's stage (app.py, once, from chalicelib/wiring)."""
    _Settings.stage = stage


def _check(metric: Metric, dims: Mapping[str, str]) -> None:
    if set(dims) != metric.keys:
        raise ValueError(f"{metric.name} takes dimensions {sorted(metric.keys)}, got {sorted(dims)}")
    for key, value in dims.items():
        allowed = metric.values.get(key)
        if allowed is not None and value not in allowed:
            raise ValueError(f"{metric.name}: {key}={value!r} is not one of {sorted(allowed)}")


def record(values: Mapping[str, float], dims: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One EMF object for ``values`` (metric name -> value) that share ``dims``."""
    dims = {k: str(v) for k, v in (dims or {}).items()}
    defs = [METRICS[name] for name in values]
    for m in defs:
        _check(m, dims)
    dimension_sets = sorted({(STAGE, *ds) for m in defs for ds in m.dimensions})
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [list(ds) for ds in dimension_sets],
                "Metrics": [{"Name": m.name, "Unit": m.unit} for m in defs],
            }],
        },
        **observability.context(),  # function, request_id, build_id: searchable, not dimensions
        STAGE: _Settings.stage,
        **dims,
        **{name: float(v) for name, v in values.items()},
    }


def emit(name: str, value: float = 1, **dims: Any) -> None:
    """Write one metric value as an EMF line on stdout."""
    emit_many({name: value}, **dims)


def emit_many(values: Mapping[str, float], **dims: Any) -> None:
    """Several metrics with the same dimensions in one EMF line."""
    if values:
        sys.stdout.write(json.dumps(record(values, dims), separators=(",", ":")) + "\n")
        sys.stdout.flush()


# ---- helpers for the call sites that need more than one value ----------------------
def host_cause(reason: str) -> str:
    """The cause of a host failure, from the host script's message (templates/host.sh)."""
    text = reason.lower()
    if "driver" in text:
        return "driver"
    if "gpu" in text or "nvidia-smi" in text:
        return "gpu"
    if "instance lost" in text or "before the build finished" in text:
        return "instance-lost"
    return "other"


def build_finished(item: Build) -> None:
    """A build reached a final state: its outcome and its segments. Its cost is counted when
    its instance is terminated (:func:`instance_terminated`): only then is it final."""
    outcome, framework = item.status.value, item.framework or "unknown"
    emit("BuildsFinished", Outcome=outcome, Framework=framework)
    segments = build_segments(item)
    for name, seconds in segments.items():
        emit("BuildSegmentSeconds", seconds, Segment=name)


def _seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return max(0.0, (clock.parse(b) - clock.parse(a)).total_seconds())


def build_segments(item: Build) -> dict[str, float]:
    """Seconds per segment of a finished build (chalicelib/builds/segments.py reads its timeline),
    and ``total``: accepted -> final."""
    out = {k: v for k, v in segment_durations(item).items() if k != "terminate_lag"}
    total = _seconds(item.created_at, item.finished_at)
    if total is not None:
        out["total"] = total
    return out


def instance_terminated(item: Build, cost: Cost | None = None) -> None:
    """A final build's instance is gone (``instance_terminated_at`` set): its terminate lag,
    and its final ``cost`` (``BuildCosts.cost``, the one booked; None: unknown, not counted)."""
    lag = segment_durations(item).get("terminate_lag")
    if lag is not None:
        emit("BuildSegmentSeconds", lag, Segment="terminate_lag")
    if cost is not None:
        emit("BuildCostUSD", float(cost.usd), Framework=item.framework or "unknown")


def reaper_ran(orphans_marked: int, orphans_terminated: int) -> None:
    """One reaper tick finished (the heartbeat the reaper alarm watches), with its orphans."""
    emit_many({"ReaperRuns": 1, "OrphansMarked": orphans_marked, "OrphansTerminated": orphans_terminated})


def refused(status: int) -> None:
    """POST /builds answered ``status``: counted when it is one of the refusals."""
    if str(status) in REFUSALS:
        emit("BuildsRefused", Reason=str(status))
