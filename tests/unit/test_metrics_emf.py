"""EMF metric lines (chalicelib/metrics.py) against the EMF specification's schema
(voltabuild_local/emf.py), and where the app emits them."""

from __future__ import annotations

import json

import pytest

from chalicelib import metrics, observability
from chalicelib.builds.schemas import Build
from voltabuild_local.emf import events, problems


def emitted(capsys) -> list[dict]:
    return list(events(capsys.readouterr().out.splitlines()))


def sample_dims(metric: metrics.Metric) -> dict[str, str]:
    return {k: sorted(metric.values[k])[0] if k in metric.values else "pytorch" for k in metric.keys}


@pytest.mark.parametrize("name", sorted(metrics.METRICS))
def test_every_metric_emits_one_valid_emf_line_with_the_stage_in_every_dimension_set(name, capsys):
    metric = metrics.METRICS[name]
    observability.bind("launcher", build_id="b-emf")
    metrics.emit(name, 2, **sample_dims(metric))
    [event] = emitted(capsys)
    assert problems(event) == []
    [directive] = event["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "voltabuild"
    assert directive["Metrics"] == [{"Name": name, "Unit": metric.unit}]
    assert all(ds[0] == "Stage" for ds in directive["Dimensions"])
    assert {tuple(ds[1:]) for ds in directive["Dimensions"]} == set(metric.dimensions)
    assert event[name] == 2 and event["Stage"] == "dev"
    assert (event["function"], event["build_id"]) == ("launcher", "b-emf")


def test_a_call_with_the_wrong_dimensions_or_an_unknown_value_is_refused_before_anything_is_written(capsys):
    with pytest.raises(ValueError, match="takes dimensions"):
        metrics.emit("BuildsRefused")
    with pytest.raises(ValueError, match="not one of"):
        metrics.emit("BuildsRefused", Reason="500")
    with pytest.raises(KeyError):
        metrics.emit("NoSuchMetric")
    assert emitted(capsys) == []


@pytest.mark.parametrize("broken, why", [
    ({"_aws": {"CloudWatchMetrics": [{"Namespace": "n", "Dimensions": [], "Metrics": [{"Name": "M"}]}]},
      "M": 1}, "Timestamp"),
    ({"_aws": {"Timestamp": 1, "CloudWatchMetrics": [{"Namespace": "n", "Dimensions": [["D"]],
                                                      "Metrics": [{"Name": "M"}]}]}, "M": 1, "D": 3}, "dimension D"),
    ({"_aws": {"Timestamp": 1, "CloudWatchMetrics": [{"Namespace": "n", "Dimensions": [],
                                                      "Metrics": [{"Name": "M"}]}]}}, "metric M"),
    ({"_aws": {"Timestamp": 1, "CloudWatchMetrics": [{"Namespace": "n", "Dimensions": [],
                                                      "Metrics": [{"Name": "M", "Unit": "Hours"}]}]}, "M": 1}, "Hours"),
    ({"_aws": {"Timestamp": 1, "CloudWatchMetrics": [{"Namespace": "n", "Dimensions": [[f"d{i}" for i in range(31)]],
                                                      "Metrics": [{"Name": "M"}]}]}, "M": 1}, "too long"),
])
def test_the_schema_refuses_what_the_specification_forbids(broken, why):
    assert any(why in p for p in problems(broken)), problems(broken)


def test_segments_and_cost_of_a_finished_build_come_from_its_timeline():
    fields = {
        "id": "b-0123456789abcdef0123", "version": "1.0", "cuda": "12.6", "python": "3.12",
        "instance_types": ["g5.xlarge"], "timeout_minutes": 30, "updated_at": "2026-12-02T07:10:00Z",
        "build_args": {}, "notify": {"slack": True},
        "image": {"repository": "r/voltabuild/canary", "tags": ["1.0"]},
        "status": "SUCCEEDED", "framework": "canary", "created_at": "2026-12-02T07:00:00Z",
        "finished_at": "2026-12-02T07:10:00Z",
        "instance": {"id": "i-0abc", "type": "g5.xlarge", "lifecycle": "spot", "price": 0.9,
                     "launched_at": "2026-12-02T07:01:00Z"},
        "events": [
            {"at": "2026-12-02T07:00:00Z", "status": "QUEUED"},
            {"at": "2026-12-02T07:01:00Z", "status": "LAUNCHING"},
            {"at": "2026-12-02T07:02:00Z", "status": "RUNNING"},
            {"at": "2026-12-02T07:03:00Z", "status": "RUNNING", "phase": "PREPARING"},
            {"at": "2026-12-02T07:04:00Z", "status": "RUNNING", "phase": "BUILDING"},
            {"at": "2026-12-02T07:08:00Z", "status": "RUNNING", "phase": "TESTING"},
            {"at": "2026-12-02T07:09:00Z", "status": "RUNNING", "phase": "PUSHING"},
            {"at": "2026-12-02T07:10:00Z", "status": "SUCCEEDED"},
        ],
    }
    item = Build.model_validate(fields)
    assert metrics.build_segments(item) == {"queued": 60, "launching": 60, "booting": 60, "preparing": 60,
                                            "building": 240, "testing": 60, "pushing": 60, "total": 600}


@pytest.mark.parametrize("reason, cause", [
    ("NVIDIA driver 470.1 is too old for CUDA 12.6, which needs 525.60.13 or newer", "driver"),
    ("no nvidia-smi on this g5.xlarge host and no driver branch to install", "driver"),
    ("nvidia-smi sees no GPU on this p3.2xlarge host", "gpu"),
    ("health check failed: nvidia-smi in nvidia/cuda:12.6.3-base could not reach the GPU of this host", "gpu"),
    ("the disk is full", "other"),
])
def test_host_failure_causes_are_read_from_the_host_scripts_messages(reason, cause):
    assert metrics.host_cause(reason) == cause


# ---- where the app emits them (chalice.test.Client against moto) ----------------------
def _post(api, body: dict | str):
    raw = body if isinstance(body, str) else json.dumps(body)
    return api.http.post("/builds", headers={"Content-Type": "application/json"}, body=raw)


def test_the_api_counts_submissions_and_refusals_by_status(api, capsys):
    capsys.readouterr()
    ok = _post(api, {"framework": "canary"})
    bad = _post(api, {"framework": "no-such-thing"})
    broken = _post(api, "{not json")
    assert (ok.status_code, bad.status_code, broken.status_code) == (202, 400, 400)
    got = emitted(capsys)
    assert all(problems(e) == [] for e in got)
    submitted = [e for e in got if "BuildsSubmitted" in e]
    assert [(e["Framework"], e["build_id"], e["function"]) for e in submitted] == [
        ("canary", json.loads(ok.body)["id"], "api")]
    assert [e["Reason"] for e in got if "BuildsRefused" in e] == ["400", "400"]


def test_a_build_that_ends_is_counted_once_with_its_outcome_and_segments(api, capsys):
    build = json.loads(_post(api, {"framework": "canary"}).body)
    capsys.readouterr()
    assert api.http.delete(f"/builds/{build['id']}").status_code == 200  # QUEUED: cancelled at once
    api.http.delete(f"/builds/{build['id']}")  # a second cancel changes nothing
    got = emitted(capsys)
    finished = [e for e in got if "BuildsFinished" in e]
    assert [(e["Outcome"], e["Framework"], e["build_id"]) for e in finished] == [
        ("CANCELLED", "canary", build["id"])]
    segments = {e["Segment"]: e["BuildSegmentSeconds"] for e in got if "BuildSegmentSeconds" in e}
    assert set(segments) == {"queued", "total"} and segments["total"] >= 0
    assert not [e for e in got if "BuildCostUSD" in e]  # never launched: no price, no cost


def test_each_reaper_tick_emits_its_heartbeat_and_orphan_counts(api, capsys):
    capsys.readouterr()
    api.lambda_.invoke("reaper", api.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={},
        resources=["arn:aws:events:us-east-1:123456789012:rule/voltabuild-dev-reaper"]))
    [tick] = [e for e in emitted(capsys) if "ReaperRuns" in e]
    assert problems(tick) == []
    assert (tick["ReaperRuns"], tick["OrphansMarked"], tick["OrphansTerminated"]) == (1, 0, 0)
    assert tick["function"] == "reaper"
