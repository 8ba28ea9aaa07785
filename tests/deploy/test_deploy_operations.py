"""The packaged template's alarms, their SNS topic and the dashboard (infra/operations.py):
every alarm watches a metric that exists — one the app's code emits (chalicelib/metrics.py)
or AWS's own for a function or queue the template creates."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from chalicelib import metrics
from infra.operations import dead_letter_queues, functions

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("dev", "prod")


def _emitted_by(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(metric names in emit()/emit_many() calls, metrics.<helper>() names called)."""
    names, helpers = set(), set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        called = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
        if called in ("emit", "emit_many"):
            for arg in node.args[:1]:
                names |= {c.value for c in ast.walk(arg) if isinstance(c, ast.Constant) and c.value in metrics.METRICS}
        elif isinstance(fn, ast.Attribute) and getattr(fn.value, "id", None) == "metrics":
            helpers.add(fn.attr)
    return names, helpers


def metrics_the_code_emits() -> set[str]:
    """Read from the source: emit("Name", ...) calls in app.py and chalicelib/, and the
    helpers of chalicelib/metrics.py that those call (with the names the helpers emit)."""
    names, helpers = set(), set()
    for path in [ROOT / "app.py", *sorted((ROOT / "chalicelib").rglob("*.py"))]:
        if path.name != "metrics.py":
            n, h = _emitted_by(ast.parse(path.read_text()))
            names, helpers = names | n, helpers | h
    module = ast.parse((ROOT / "chalicelib" / "metrics.py").read_text())
    for fn in module.body:
        if isinstance(fn, ast.FunctionDef) and fn.name in helpers:
            names |= _emitted_by(fn)[0]
    return names


def alarms(template: dict) -> dict[str, dict]:
    return {k: v["Properties"] for k, v in template["Resources"].items() if v["Type"] == "AWS::CloudWatch::Alarm"}


def test_the_source_emits_every_metric_the_table_defines():
    assert metrics_the_code_emits() == set(metrics.METRICS)


@pytest.mark.parametrize("stage", STAGES)
def test_every_alarm_watches_a_metric_the_code_emits_or_a_resource_the_template_makes(templates, stage):
    tpl = templates[stage]
    emitted = metrics_the_code_emits()
    found = alarms(tpl)
    assert found
    for logical, alarm in found.items():
        dims = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}], logical
        assert alarm["AlarmName"] == {"Fn::Sub": f"voltabuild-${{Stage}}-{logical}"}
        if alarm["Namespace"] == metrics.NAMESPACE:
            assert alarm["MetricName"] in emitted, logical
            assert dims.pop(metrics.STAGE) == {"Ref": "Stage"}
            assert tuple(sorted(dims)) in {tuple(sorted(ds)) for ds in metrics.METRICS[alarm["MetricName"]].dimensions}
        elif alarm["Namespace"] == "AWS/Lambda":
            assert tpl["Resources"][dims["FunctionName"]["Ref"]]["Type"] == "AWS::Serverless::Function"
        else:
            assert alarm["Namespace"] == "AWS/SQS", logical
            queue = dims["QueueName"]["Fn::GetAtt"][0]
            assert queue.endswith("DeadLetterQueue") and tpl["Resources"][queue]["Type"] == "AWS::SQS::Queue"


@pytest.mark.parametrize("stage", STAGES)
def test_the_alarms_the_issue_asks_for_are_all_there(templates, stage):
    tpl = templates[stage]
    found = alarms(tpl)
    fns = functions(tpl)
    assert {"APIHandler", "EventsHandler", "Launcher", "Reaper", "NotifyConsumer"} <= set(fns)
    for fn in fns:  # errors and throttles of every function
        assert found[f"{fn}ErrorsAlarm"]["MetricName"] == "Errors"
        assert found[f"{fn}ThrottlesAlarm"]["MetricName"] == "Throttles"
    assert dead_letter_queues(tpl) == ["LaunchDeadLetterQueue", "NotifyDeadLetterQueue"]
    for dlq in dead_letter_queues(tpl):  # a dead-letter queue that is not empty
        a = found[f"{dlq}NotEmptyAlarm"]
        assert (a["Statistic"], a["ComparisonOperator"], a["Threshold"]) == ("Maximum", "GreaterThanThreshold", 0)
    reaper = found["ReaperSilentAlarm"]  # no reaper tick for 15 minutes, missing data included
    assert reaper["MetricName"] == "ReaperRuns" and reaper["Period"] * reaper["EvaluationPeriods"] == 15 * 60
    assert (reaper["ComparisonOperator"], reaper["Threshold"], reaper["TreatMissingData"]) == (
        "LessThanThreshold", 1, "breaching")
    orphans = found["OrphansTerminatedAlarm"]
    assert (orphans["MetricName"], orphans["ComparisonOperator"], orphans["Threshold"]) == (
        "OrphansTerminated", "GreaterThanThreshold", 0)
    host = found["HostFailuresAlarm"]
    assert (host["MetricName"], host["Threshold"]) == ("HostFailures", {"Ref": "HostFailureThreshold"})
    assert tpl["Resources"]["AlarmTopic"]["Type"] == "AWS::SNS::Topic"


@pytest.mark.parametrize("stage", STAGES)
def test_the_dashboard_shows_every_metric_and_names_only_what_exists(templates, stage):
    tpl = templates[stage]
    sub = tpl["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    refs = set(re.findall(r"\$\{([\w:.]+)\}", sub))
    for ref in refs - {"Stage", "AWS::Region"}:
        assert ref.split(".")[0] in tpl["Resources"], ref
    body = json.loads(re.sub(r"\$\{[\w:.]+\}", "x", sub))
    shown = {row[1] for w in body["widgets"] for row in w["properties"]["metrics"] if row[0] == metrics.NAMESPACE}
    assert shown == set(metrics.METRICS)


def test_the_readme_explains_every_metric_and_every_alarm(templates):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Operating voltabuild"):]
    section = section[:section.index("\n## ", 10)]
    for name in metrics.METRICS:
        assert f"| `{name}` |" in section, name
    for logical in alarms(templates["dev"]):
        generic = re.sub(r"^(?:APIHandler|EventsHandler|Launcher|Reaper|NotifyConsumer|On\w+?)(Errors|Throttles)",
                         r"<Function>\1", logical)
        assert f"| `{generic}` |" in section, logical
