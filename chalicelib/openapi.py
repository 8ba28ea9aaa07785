"""The OpenAPI 3.1 document of the API, generated from the pydantic models."""

from __future__ import annotations

from pydantic.json_schema import models_json_schema

from chalicelib.schemas import Build, BuildList, BuildRequest, ErrorBody


def _err(desc: str) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


def _ok(desc: str, ref: str, headers: dict | None = None) -> dict:
    out = {"description": desc, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}
    if headers:
        out["headers"] = headers
    return out


def document() -> dict:
    _, defs = models_json_schema(
        [(m, "validation" if m is BuildRequest else "serialization") for m in (BuildRequest, Build, BuildList, ErrorBody)],
        ref_template="#/components/schemas/{model}",
    )
    schemas = defs["$defs"]
    bid = {"name": "build_id", "in": "path", "required": True, "schema": {"type": "string"}}
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
        "paths": {
            "/health": {"get": {"security": [], "responses": {"200": {"description": "alive"}}}},
            "/frameworks": {"get": {"summary": "The buildspec catalog", "responses": {
                "200": {"description": "frameworks, versions, defaults, build args, instance types"}, **errors}}},
            "/builds": {
                "post": {
                    "summary": "Submit a build",
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"}}],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/BuildRequest"}}}},
                    "responses": {
                        "202": _ok("accepted and queued", "Build", {"Location": {"schema": {"type": "string"}}}),
                        "200": _ok("an Idempotency-Key replay: the earlier build", "Build"),
                        **errors,
                        "409": _err("Idempotency-Key reused with another body"),
                        "413": _err("body over 64 KiB"),
                        "415": _err("not application/json"),
                        "429": _err("too many active builds"),
                    },
                },
                "get": {
                    "summary": "List builds, newest first",
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string"}},
                        {"name": "framework", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                        {"name": "next", "in": "query", "schema": {"type": "string"}},
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
        },
    }
