"""Issue 17 in the packaged template: what throttles, isolates and limits the deployment."""

from __future__ import annotations

import pytest

STAGES = ("dev", "prod")


def _uri(template, path, method):
    op = template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["paths"][path][method]
    return op["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]


@pytest.mark.parametrize("stage", STAGES)
def test_the_stage_and_the_anonymous_route_are_throttled(templates, stage):
    settings = templates[stage]["Resources"]["RestAPI"]["Properties"]["MethodSettings"]
    by_path = {(s["ResourcePath"], s["HttpMethod"]): s for s in settings}
    stage_wide = by_path[("/*", "*")]
    events = by_path[("/~1builds~1{build_id}~1events", "POST")]
    assert 0 < events["ThrottlingRateLimit"] < stage_wide["ThrottlingRateLimit"]
    assert 0 < events["ThrottlingBurstLimit"] <= stage_wide["ThrottlingBurstLimit"]


@pytest.mark.parametrize("stage", STAGES)
def test_the_reports_route_has_its_own_function_with_reserved_concurrency(templates, stage):
    res = templates[stage]["Resources"]
    assert "${EventsHandler.Arn}" in _uri(templates[stage], "/builds/{build_id}/events", "post")
    # every other route stays on the API handler
    assert "${APIHandler.Arn}" in _uri(templates[stage], "/builds", "post")
    assert "${APIHandler.Arn}" in _uri(templates[stage], "/builds/{build_id}", "get")
    events = res["EventsHandler"]["Properties"]
    assert events["ReservedConcurrentExecutions"]["Fn::If"][1] == {"Ref": "EventsConcurrency"}
    assert "ReservedConcurrentExecutions" not in res["APIHandler"]["Properties"]
    param = templates[stage]["Parameters"]["EventsConcurrency"]
    assert param["Default"] >= 1 and param["MinValue"] == 0
    # API Gateway may invoke it for that route only
    perm = res["EventsHandlerInvokePermission"]["Properties"]
    assert perm["FunctionName"] == {"Ref": "EventsHandler"}
    assert perm["SourceArn"]["Fn::Sub"][0].endswith("/*/POST/builds/*/events")
