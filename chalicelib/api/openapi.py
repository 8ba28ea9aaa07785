"""The OpenAPI 3.1 document of the API, generated from the pydantic models."""

from __future__ import annotations

from pydantic.json_schema import models_json_schema

from chalicelib.builds.groups import Group
from chalicelib.builds.matrix import MatrixRequest
from chalicelib.builds.schemas import Build, BuildList, BuildRequest, ErrorBody
from chalicelib.custom.contexts import ContextRequest, ContextUpload


def _err(desc: str) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


def _ok(desc: str, ref: str, headers: dict | None = None) -> dict:
    out = {"description": desc, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}
    if headers:
        out["headers"] = headers
    return out


_LOG_PAGE = {
    "type": "object",
    "required": ["build_id", "status", "lines", "next"],
    "properties": {
        "build_id": {"type": "string"},
        "status": {"type": "string"},
        "lines": {"type": "array", "items": {"type": "object", "required": ["at", "message"], "properties": {
            "at": {"type": "string"}, "message": {"type": "string"}}}},
        "next": {"type": ["string", "null"], "description": "pass as ?next= to read on (also when no line came)"},
    },
}
_REPORT_ACK = {
    "type": "object",
    "required": ["id", "status"],
    "properties": {"id": {"type": "string"}, "status": {"type": "string"}, "phase": {"type": ["string", "null"]}},
}


def _inline(desc: str, schema: dict) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


# operationId of each operation, and where a new build's id leads (OpenAPI links: clients
# and the fuzzer's stateful tests follow them)
_OPERATION_IDS = {
    ("/health", "get"): "health", ("/frameworks", "get"): "listFrameworks", ("/openapi.json", "get"): "openapi",
    ("/builds", "post"): "submitBuild", ("/builds", "get"): "listBuilds", ("/builds/{build_id}", "get"): "getBuild",
    ("/builds/{build_id}", "delete"): "cancelBuild", ("/builds/{build_id}/events", "post"): "reportEvent",
    ("/builds/{build_id}/logs", "get"): "buildLogs", ("/contexts", "post"): "uploadContext",
    ("/groups/{group_id}", "get"): "getGroup", ("/groups/{group_id}", "delete"): "cancelGroup",
    ("/costs", "get"): "getCosts",
}
_COST_REPORT = {
    "type": "object",
    "required": ["from", "to", "by", "total_usd", "rows"],
    "properties": {
        "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"},
        "by": {"type": "string", "enum": ["framework", "day", "key", "group"]},
        "total_usd": {"type": "string", "description": "exact decimal USD"},
        "rows": {"type": "array", "items": {"type": "object", "required": ["value", "usd", "builds", "billed_seconds"],
                                            "properties": {"value": {"type": "string"}, "usd": {"type": "string"},
                                                           "builds": {"type": "integer"},
                                                           "billed_seconds": {"type": "integer"}}}},
    },
}


def _build_or_group(desc: str, headers: dict | None = None) -> dict:
    out = _inline(desc, {"anyOf": [{"$ref": "#/components/schemas/Build"}, {"$ref": "#/components/schemas/Group"}]})
    if headers:
        out["headers"] = headers
    return out
_BUILD_LINKS = {
    name: {"operationId": op, "parameters": {"build_id": "$response.body#/id"}}
    for name, op in (("GetBuild", "getBuild"), ("CancelBuild", "cancelBuild"), ("BuildLogs", "buildLogs"))
}


def _with_common_errors(paths: dict) -> dict:
    """Chalice answers 415 itself, on every route, when Content-Type is not JSON. Every
    operation gets its operationId; a new build's response links to its other operations."""
    for path, ops in paths.items():
        for method, op in ops.items():
            op["responses"].setdefault("415", _err("Content-Type is not application/json"))
            op.setdefault("operationId", _OPERATION_IDS[(path, method)])
    for code in ("200", "202"):
        paths["/builds"]["post"]["responses"][code]["links"] = _BUILD_LINKS
    return paths


def document(frameworks: list[str] | None = None) -> dict:
    """The OpenAPI document. ``frameworks`` (default: the catalog's) become the enum of
    ``BuildRequest.framework``, so generated requests can name a real one."""
    if frameworks is None:
        from chalicelib.specs.catalog import load_catalog

        frameworks = sorted(load_catalog().frameworks)
    _, defs = models_json_schema(
        [(m, "validation" if m in (BuildRequest, ContextRequest, MatrixRequest) else "serialization")
         for m in (BuildRequest, Build, BuildList, ErrorBody, ContextRequest, ContextUpload, MatrixRequest, Group)],
        ref_template="#/components/schemas/{model}",
    )
    schemas = defs["$defs"]
    framework = schemas["BuildRequest"]["properties"]["framework"]
    for alt in framework.get("anyOf", [framework]):  # optional since issue 20 (a source build has none)
        if alt.get("type") == "string":
            alt["enum"] = list(frameworks)
    bid = {"name": "build_id", "in": "path", "required": True, "schema": {"type": "string"}}
    gid = {"name": "group_id", "in": "path", "required": True, "schema": {"type": "string"}}
    errors = {"400": _err("bad request"), "403": _err("missing or wrong API key")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "voltabuild", "version": "1.0.0",
                 "description": "Build GPU deep-learning images on spot instances, pushed to ECR."},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
        },
        "security": [{"apiKey": []}],
        "paths": _with_common_errors({
            "/health": {"get": {"security": [], "responses": {"200": {"description": "alive"}}}},
            "/frameworks": {"get": {"summary": "The buildspec catalog", "responses": {
                "200": {"description": "frameworks, versions, defaults, build args, instance types"}, **errors}}},
            "/contexts": {"post": {
                "summary": "An upload target for a build context (content-addressed; issue 20)",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ContextRequest"}}}},
                "responses": {
                    "200": _ok("already uploaded: nothing to send", "ContextUpload"),
                    "201": _ok("a presigned S3 POST to send the tarball with", "ContextUpload"),
                    **errors, "413": _err("over the deployment's context size limit")}}},
            "/builds": {
                "post": {
                    "summary": "Submit a build, or a matrix of builds (a group: one build per cell)",
                    "description": ("With `matrix`, every cell is a build with `group_id`, all written in one "
                                    "transaction or none; the answer is the Group. A refused cell is a 400 listing "
                                    "each, unless `skip_invalid`."),
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"}}],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"anyOf": [
                        {"$ref": "#/components/schemas/BuildRequest"},
                        {"$ref": "#/components/schemas/MatrixRequest"}]}}}},
                    "responses": {
                        "202": _build_or_group("accepted and queued: the build, or the matrix's group",
                                               {"Location": {"schema": {"type": "string"}}}),
                        "200": _build_or_group("an Idempotency-Key replay: the earlier build or group"),
                        **errors,
                        "409": _err("Idempotency-Key reused with another body"),
                        "413": _err("body over 64 KiB"),
                        "415": _err("not application/json"),
                        "429": _err("too many active builds (every cell counts), or over MONTHLY_BUDGET_USD"),
                        "503": _err("a burst of concurrent submissions outlasted the retries: retry"),
                    },
                },
                "get": {
                    "summary": "List builds, newest first",
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string"}},
                        {"name": "framework", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                        {"name": "next", "in": "query", "schema": {"type": "string"}},
                        {"name": "group", "in": "query", "schema": {"type": "string"},
                         "description": "a group's cells (one page; not with the other parameters)"},
                    ],
                    "responses": {"200": _ok("a page of builds", "BuildList"), **errors},
                },
            },
            "/builds/{build_id}": {
                "get": {"parameters": [bid], "responses": {
                    "200": _ok("the build", "Build"), **errors, "404": _err("no such build")}},
                "delete": {"parameters": [bid], "responses": {
                    "200": _ok("cancelled", "Build"), "202": _ok("cancel recorded; the instance is stopping", "Build"),
                    **errors, "404": _err("no such build"), "409": _err("already finished")}},
            },
            "/groups/{group_id}": {
                "get": {"summary": "A matrix's group: its cells and aggregate status", "parameters": [gid],
                        "responses": {"200": _ok("the group", "Group"), **errors, "404": _err("no such group")}},
                "delete": {"summary": "Cancel every cell not yet final", "parameters": [gid], "responses": {
                    "200": _ok("every cell is final now", "Group"),
                    "202": _ok("cancels recorded; some instances are stopping", "Group"),
                    **errors, "404": _err("no such group"), "409": _err("every cell already finished")}},
            },
            "/costs": {"get": {
                "summary": "What builds cost, from the per-day aggregates (no scan)",
                "parameters": [{"name": "from", "in": "query", "schema": {"type": "string", "format": "date"}},
                               {"name": "to", "in": "query", "schema": {"type": "string", "format": "date"}},
                               {"name": "by", "in": "query", "schema": {
                                   "type": "string", "enum": ["framework", "day", "key", "group"]}}],
                "responses": {"200": _inline("costs per value of `by`", _COST_REPORT), **errors}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": {"description": "the OpenAPI 3.1 document", "content": {"application/json": {
                    "schema": {"type": "object"}}}}, **errors}}},
            "/builds/{build_id}/events": {"post": {
                "summary": "A build instance's report (phase, heartbeat, result)",
                "description": "Authenticated by the build attempt's token (Authorization: Bearer), not the API key.",
                "security": [],
                "parameters": [bid, {"name": "Authorization", "in": "header", "required": False,
                                     "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {
                    "202": _inline("applied", _REPORT_ACK),
                    "400": _err("bad report"),
                    "403": _err("missing, wrong or stale build token"),
                    "409": _err("the build moved on; not applied"),
                    "413": _err("body over 64 KiB"),
                }}},
            "/builds/{build_id}/logs": {"get": {
                "summary": "A page of the build's log (CloudWatch Logs)",
                "parameters": [bid,
                               {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                               {"name": "next", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": _inline("a page of log lines", _LOG_PAGE), **errors,
                              "404": _err("no such build")}}},
        }),
    }
