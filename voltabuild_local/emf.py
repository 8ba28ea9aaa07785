"""CloudWatch Embedded Metric Format (EMF): the JSON schema of one EMF log event, written
from the specification, and a checker for what JSON Schema cannot say (the references
from the metric directives to the root's members).

Specification (read 2026-12-02):
https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html
- the root is a JSON object with a member ``_aws`` (the metadata object);
- ``_aws`` MUST hold ``Timestamp`` (a number: milliseconds since the epoch) and
  ``CloudWatchMetrics`` (an array of MetricDirective objects);
- a MetricDirective holds ``Namespace`` (a string), ``Dimensions`` (an array of
  DimensionSets: arrays of strings, each naming a root member; at most 30 keys per set)
  and ``Metrics`` (an array of MetricDefinitions, at most 100); nothing else;
- a MetricDefinition holds ``Name`` (a string naming a root member), optionally ``Unit``
  (a CloudWatch unit) and ``StorageResolution`` (1 or 60); nothing else;
- every member a directive names MUST be on the root: a dimension's value a string, a
  metric's value a number or an array of at most 100 numbers.
The limits (30 dimension keys per set, 100 metrics per event, 100 values per metric) and
the unit names are those of AWS's own client, awslabs/aws-embedded-metrics-python
(``constants.py``, ``unit.py``); name lengths are CloudWatch's (``Dimension``: name
1-255, value 1-1024; ``MetricDatum``: name 1-255; namespace 1-255).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

UNITS = [
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
    "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
    "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
    "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
]

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "CloudWatch Embedded Metric Format log event",
    "type": "object",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "type": "object",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "properties": {
                "Timestamp": {"type": "integer", "minimum": 0},
                "CloudWatchMetrics": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/MetricDirective"}},
                "LogGroupName": {"type": "string"},
                "LogStreamName": {"type": "string"},
            },
        },
    },
    "$defs": {
        "MetricDirective": {
            "type": "object",
            "required": ["Namespace", "Dimensions", "Metrics"],
            "additionalProperties": False,
            "properties": {
                "Namespace": {"type": "string", "minLength": 1, "maxLength": 255},
                "Dimensions": {"type": "array", "items": {"$ref": "#/$defs/DimensionSet"}},
                "Metrics": {"type": "array", "minItems": 1, "maxItems": 100,
                            "items": {"$ref": "#/$defs/MetricDefinition"}},
            },
        },
        "DimensionSet": {
            "type": "array", "maxItems": 30, "uniqueItems": True,
            "items": {"type": "string", "minLength": 1, "maxLength": 255},
        },
        "MetricDefinition": {
            "type": "object",
            "required": ["Name"],
            "additionalProperties": False,
            "properties": {
                "Name": {"type": "string", "minLength": 1, "maxLength": 255},
                "Unit": {"enum": UNITS},
                "StorageResolution": {"enum": [1, 60]},
            },
        },
    },
}


def problems(event: Any) -> list[str]:
    """What makes ``event`` not an EMF event (empty: it is one)."""
    from jsonschema import Draft202012Validator

    found = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
             for e in Draft202012Validator(SCHEMA).iter_errors(event)]
    if found:
        return found
    for directive in event["_aws"]["CloudWatchMetrics"]:
        for dims in directive["Dimensions"]:
            for key in dims:
                value = event.get(key)
                if not isinstance(value, str) or not 1 <= len(value) <= 1024:
                    found.append(f"dimension {key}: the root needs a string of 1-1024 characters, has {value!r}")
        for metric in directive["Metrics"]:
            value = event.get(metric["Name"])
            values = value if isinstance(value, list) else [value]
            if not values or len(values) > 100 or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                found.append(f"metric {metric['Name']}: the root needs a number or 1-100 numbers, has {value!r}")
    return found


def events(lines: Iterable[str]) -> Iterator[dict]:
    """The EMF events among log lines (a JSON object with ``_aws``); other lines are skipped."""
    for line in lines:
        line = line.strip()
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "_aws" in obj:
            yield obj
