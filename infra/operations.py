"""Alarms, the SNS topic they notify and a CloudWatch dashboard, added to the packaged
template by infra/package.py (``make package``). Generated rather than written out in
YAML because they follow what the template holds: one errors alarm and one throttles alarm
per Lambda function (Chalice names them; infra/package.py adds EventsHandler), one alarm per
dead-letter queue. The voltabuild metrics they watch are defined once, in
chalicelib/metrics.py (emitted as EMF log lines); tests/deploy/test_deploy_operations.py
checks that every alarm watches a metric the code emits.

What each alarm means and what to do: README, "Operating voltabuild".
"""

from __future__ import annotations

import json
from typing import Any

from chalicelib import metrics

TOPIC = "AlarmTopic"
DASHBOARD = "Dashboard"
# builds FAILED or relaunched because their host failed, in one hour, before the alarm fires
HOST_FAILURE_THRESHOLD = 3
REAPER_SCHEDULE_MINUTES = 5  # app.py: @app.schedule("rate(5 minutes)")
REAPER_SILENT_MINUTES = 15

PARAMETERS = {
    "AlarmEmail": {
        "Type": "String", "Default": "",
        "AllowedPattern": r"^([^@\s]+@[^@\s]+\.[^@\s]+)?$",
        "Description": "an e-mail address subscribed to the alarms' SNS topic (empty: none; subscribe later)",
    },
    "HostFailureThreshold": {
        "Type": "Number", "Default": HOST_FAILURE_THRESHOLD, "MinValue": 1,
        "Description": "host failures (driver, GPU, instance lost) in one hour that raise the HostFailures alarm",
    },
}
CONDITIONS = {"HasAlarmEmail": {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]}}


def _alarm(description: str, metric: dict[str, Any], *, threshold: Any, comparison: str, statistic: str = "Sum",
           period: int = 300, periods: int = 1, missing: str = "notBreaching") -> dict:
    return {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmDescription": description,
            **metric,
            "Statistic": statistic,
            "Period": period,
            "EvaluationPeriods": periods,
            "Threshold": threshold,
            "ComparisonOperator": comparison,
            "TreatMissingData": missing,
            "AlarmActions": [{"Ref": TOPIC}],
            "OKActions": [{"Ref": TOPIC}],
        },
    }


def _ours(name: str, **dims: Any) -> dict:
    """A voltabuild metric (chalicelib/metrics.py) of this stage."""
    if name not in metrics.METRICS:
        raise KeyError(f"{name} is not a metric chalicelib/metrics.py defines")
    dimensions = [{"Name": metrics.STAGE, "Value": {"Ref": "Stage"}}]
    dimensions += [{"Name": k, "Value": v} for k, v in dims.items()]
    return {"Namespace": metrics.NAMESPACE, "MetricName": name, "Dimensions": dimensions}


def functions(template: dict) -> list[str]:
    return sorted(k for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function")


def dead_letter_queues(template: dict) -> list[str]:
    res = template["Resources"]
    return sorted({q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
                   for q in res.values()
                   if q["Type"] == "AWS::SQS::Queue" and "RedrivePolicy" in q.get("Properties", {})})


def alarms(template: dict) -> dict[str, dict]:
    """Logical id -> alarm resource (named ``voltabuild-<stage>-<logical id>``)."""
    out: dict[str, dict] = {}
    for dlq in dead_letter_queues(template):
        out[f"{dlq}NotEmptyAlarm"] = _alarm(
            f"{dlq} holds messages that failed every retry: see README, Operating voltabuild",
            {"Namespace": "AWS/SQS", "MetricName": "ApproximateNumberOfMessagesVisible",
             "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": [dlq, "QueueName"]}}]},
            threshold=0, comparison="GreaterThanThreshold", statistic="Maximum")
    for fn in functions(template):
        for what in ("Errors", "Throttles"):
            out[f"{fn}{what}Alarm"] = _alarm(
                f"the {fn} function reported {what.lower()}: see README, Operating voltabuild",
                {"Namespace": "AWS/Lambda", "MetricName": what,
                 "Dimensions": [{"Name": "FunctionName", "Value": {"Ref": fn}}]},
                threshold=0, comparison="GreaterThanThreshold")
    out["ReaperSilentAlarm"] = _alarm(
        f"the reaper has not finished a tick for {REAPER_SILENT_MINUTES} minutes: stuck builds and orphan "
        "instances go unnoticed", _ours("ReaperRuns"), threshold=1, comparison="LessThanThreshold",
        period=REAPER_SCHEDULE_MINUTES * 60, periods=REAPER_SILENT_MINUTES // REAPER_SCHEDULE_MINUTES,
        missing="breaching")
    out["OrphansTerminatedAlarm"] = _alarm(
        "the reaper terminated instances no build owned: something launched or kept instances it lost track of",
        _ours("OrphansTerminated"), threshold=0, comparison="GreaterThanThreshold")
    out["HostFailuresAlarm"] = _alarm(
        "builds failed or were relaunched because their host failed (driver, GPU, instance lost)",
        _ours("HostFailures"), threshold={"Ref": "HostFailureThreshold"},
        comparison="GreaterThanOrEqualToThreshold", period=3600)
    for logical, alarm in out.items():
        alarm["Properties"] = {"AlarmName": {"Fn::Sub": f"voltabuild-${{Stage}}-{logical}"}, **alarm["Properties"]}
    return out


def _widget(title: str, rows: list[list], *, stat: str = "Sum", x: int = 0, y: int = 0, period: int = 300) -> dict:
    return {"type": "metric", "x": x, "y": y, "width": 12, "height": 6,
            "properties": {"title": title, "region": "${AWS::Region}", "stat": stat, "period": period,
                           "view": "timeSeries", "metrics": rows}}


def _rows(name: str, key: str | None = None, values: list[str] | None = None) -> list[list]:
    base = [metrics.NAMESPACE, name, metrics.STAGE, "${Stage}"]
    if key is None:
        return [base]
    return [[*base, key, v] for v in values or []]


def dashboard_body(template: dict) -> str:
    """The dashboard's JSON, for Fn::Sub (``${Stage}``, ``${AWS::Region}``, function names)."""
    m = metrics
    widgets = [
        ("Builds submitted and refused", _rows("BuildsSubmitted")
         + _rows("BuildsRefused", "Reason", sorted(m.REFUSALS)), "Sum"),
        ("Builds finished, by outcome", _rows("BuildsFinished", "Outcome", sorted(m.FINAL_OUTCOMES)), "Sum"),
        ("Where a build's time goes (p50 seconds)", _rows("BuildSegmentSeconds", "Segment", sorted(m.SEGMENTS)),
         "p50"),
        ("Instance cost (USD)", _rows("BuildCostUSD"), "Sum"),
        ("Spot interruptions, relaunches, host failures", _rows("SpotInterruptions") + _rows("Relaunches")
         + _rows("HostFailures", "Cause", sorted(m.HOST_CAUSES)), "Sum"),
        ("Reaper ticks and orphans", _rows("ReaperRuns") + _rows("OrphansMarked") + _rows("OrphansTerminated"),
         "Sum"),
        ("Slack deliveries", _rows("SlackDeliveries", "Outcome", sorted(m.SLACK_OUTCOMES)), "Sum"),
        ("Lambda errors and throttles", [["AWS/Lambda", what, "FunctionName", f"${{{fn}}}"]
                                         for fn in functions(template) for what in ("Errors", "Throttles")], "Sum"),
        ("Dead-letter queues (messages)", [["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName",
                                            f"${{{q}.QueueName}}"] for q in dead_letter_queues(template)], "Maximum"),
    ]
    body = {"widgets": [_widget(title, rows, stat=stat, x=12 * (i % 2), y=6 * (i // 2))
                        for i, (title, rows, stat) in enumerate(widgets)]}
    return json.dumps(body, separators=(",", ":"))


def add_operations(template: dict) -> list[str]:
    """Add the topic, the alarms and the dashboard; returns the alarms' logical ids."""
    res = template["Resources"]
    template.setdefault("Parameters", {}).update(PARAMETERS)
    template.setdefault("Conditions", {}).update(CONDITIONS)
    res[TOPIC] = {"Type": "AWS::SNS::Topic",
                  "Properties": {"TopicName": {"Fn::Sub": "voltabuild-${Stage}-alarms"},
                                 "DisplayName": {"Fn::Sub": "voltabuild ${Stage} alarms"}}}
    res["AlarmEmailSubscription"] = {"Type": "AWS::SNS::Subscription", "Condition": "HasAlarmEmail",
                                     "Properties": {"TopicArn": {"Ref": TOPIC}, "Protocol": "email",
                                                    "Endpoint": {"Ref": "AlarmEmail"}}}
    made = alarms(template)
    res.update(made)
    res[DASHBOARD] = {"Type": "AWS::CloudWatch::Dashboard",
                      "Properties": {"DashboardName": {"Fn::Sub": "voltabuild-${Stage}"},
                                     "DashboardBody": {"Fn::Sub": dashboard_body(template)}}}
    outputs = template.setdefault("Outputs", {})
    outputs["AlarmTopicArn"] = {"Value": {"Ref": TOPIC}}
    outputs["DashboardName"] = {"Value": {"Fn::Sub": "voltabuild-${Stage}"}}
    return sorted(made)
