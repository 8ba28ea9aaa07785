"""Create voltabuild's resources in an emulated AWS (moto) from infra/resources.yaml.

The same definitions a deployment uses: the local stack and the tests call
:func:`create_resources`; nothing here is a second hand-written copy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).with_name("resources.yaml")


def load_template() -> dict:
    return yaml.safe_load(TEMPLATE.read_text())


def _sub(value: Any, params: dict[str, str]) -> Any:
    """Resolve the JSON-style intrinsics this template uses (Fn::Sub on parameters)."""
    if isinstance(value, dict) and list(value) == ["Fn::Sub"]:
        return re.sub(r"\$\{(\w+)\}", lambda m: params[m.group(1)], value["Fn::Sub"])
    if isinstance(value, dict):
        return {k: _sub(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [_sub(v, params) for v in value]
    return value


def _table_kwargs(props: dict) -> dict:
    kwargs = {k: props[k] for k in ("TableName", "AttributeDefinitions", "KeySchema", "BillingMode")}
    if props.get("GlobalSecondaryIndexes"):
        kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    return kwargs


def create_resources(session, stage: str = "dev", only: set[str] | None = None) -> dict[str, str]:
    """Create every supported resource; returns logical id -> name or URL. Idempotent."""
    tpl = load_template()
    params = {"Stage": stage, "AWS::Region": session.region_name, "AWS::AccountId": "123456789012"}
    out: dict[str, str] = {}
    for logical, res in tpl["Resources"].items():
        if only and res["Type"] not in only:
            continue
        props = _sub(res.get("Properties", {}), params)
        kind = res["Type"]
        if kind == "AWS::DynamoDB::Table":
            ddb = session.client("dynamodb")
            try:
                ddb.create_table(**_table_kwargs(props))
            except ddb.exceptions.ResourceInUseException:
                pass
            out[logical] = props["TableName"]
        elif kind == "AWS::SQS::Queue":
            sqs = session.client("sqs")
            attrs = {}
            if "VisibilityTimeout" in props:
                attrs["VisibilityTimeout"] = str(props["VisibilityTimeout"])
            out[logical] = sqs.create_queue(QueueName=props["QueueName"], Attributes=attrs)["QueueUrl"]
    return out


def stage_environment(resources: dict[str, str], stage: str = "dev") -> dict[str, str]:
    """The app's environment variables for resources made by :func:`create_resources`."""
    return {
        "VOLTABUILD_STAGE": stage,
        "BUILDS_TABLE": resources["BuildsTable"],
        "LAUNCH_QUEUE_URL": resources["LaunchQueue"],
        "NOTIFY_QUEUE_URL": resources["NotifyQueue"],
    }
