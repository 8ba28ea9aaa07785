"""`make metrics`: the local stack's EMF lines, read back from its process logs and summed."""

from __future__ import annotations

import json

from chalicelib import metrics
from voltabuild_local import __main__ as cli
from voltabuild_local.metrics import read_logs
from voltabuild_local.stack import Stack


def emf(values: dict, **dims) -> str:
    return json.dumps(metrics.record(values, dims))


def write_logs(log_dir) -> None:
    log_dir.mkdir(parents=True)
    (log_dir / "api.log").write_text("\n".join([
        "127.0.0.1 - - [02/Dec/2026 07:00:00] \"POST /builds HTTP/1.1\" 202 -",
        json.dumps({"level": "INFO", "message": "not a metric", "function": "api"}),
        emf({"BuildsSubmitted": 1}, Framework="canary"),
        emf({"BuildsSubmitted": 1}, Framework="canary"),
        emf({"BuildsRefused": 1}, Reason="400"),
        "{broken json with \"_aws\"",
    ]) + "\n")
    (log_dir / "worker.log").write_text("\n".join([
        emf({"BuildsFinished": 1}, Outcome="SUCCEEDED", Framework="canary"),
        emf({"BuildSegmentSeconds": 12.5}, Segment="building"),
        emf({"BuildSegmentSeconds": 7.5}, Segment="building"),
        emf({"ReaperRuns": 1, "OrphansMarked": 0, "OrphansTerminated": 0}),
        emf({"SlackDeliveries": 1}, Outcome="sent"),
        # a line that claims to be EMF but names a metric the root lacks
        json.dumps({"_aws": {"Timestamp": 1, "CloudWatchMetrics": [
            {"Namespace": "voltabuild", "Dimensions": [["Stage"]], "Metrics": [{"Name": "Lost"}]}]}, "Stage": "dev"}),
    ]) + "\n")


def test_the_summary_sums_each_metric_by_its_dimensions_and_names_lines_that_break_the_spec(tmp_path):
    write_logs(tmp_path / "logs")
    summary = read_logs(tmp_path / "logs")
    assert summary.value("BuildsSubmitted") == 2
    assert summary.value("BuildsSubmitted", Framework="canary") == 2
    assert summary.value("BuildsRefused", Reason="400") == 1
    assert summary.value("BuildsFinished", Outcome="SUCCEEDED") == 1
    assert summary.value("BuildSegmentSeconds", Segment="building") == 20
    assert summary.value("ReaperRuns") == 1 and summary.value("SlackDeliveries", Outcome="sent") == 1
    assert len(summary.invalid) == 1 and "metric Lost" in summary.invalid[0]
    table = summary.table()
    assert "BuildSegmentSeconds  Segment=building" in table and "20.0s" in table
    assert "1 EMF line(s) break the specification" in table


def test_python_m_voltabuild_local_metrics_prints_the_table(tmp_path, monkeypatch, capsys):
    write_logs(tmp_path / "logs")
    monkeypatch.setattr(cli, "Stack", lambda: Stack(state_dir=tmp_path))
    assert cli.main(["metrics"]) == 0
    out = capsys.readouterr().out
    assert "BuildsSubmitted      Framework=canary" in out
    assert str(tmp_path / "logs") in out


def test_no_logs_yet_says_so(tmp_path):
    assert "no metrics yet" in read_logs(tmp_path / "logs").table()
