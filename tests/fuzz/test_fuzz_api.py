"""API fuzzing: schemathesis takes the OpenAPI document the API serves (``GET /openapi.json``,
checked equal to ``chalicelib.api.openapi.document()``) and sends generated requests, valid and
invalid, to every operation on a local stack of its own (moto server + ``chalice local``),
then follows the document's links from new builds in stateful workflows.

Every response must be a non-5xx with a status code, content type, headers and body that
the document declares. Bounded for ``make test`` (``FUZZ_MAX_EXAMPLES`` per operation,
derandomized so a failure reproduces); ``make fuzz`` runs many more examples.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chalicelib.api.openapi import document

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "12"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


# The document the app serves, built here too so pytest can collect one test per operation
# (schemathesis's lazy fixture loader breaks on pytest 9); the first test checks that the
# live API serves exactly this document.
DOCUMENT = document()
# Requests with a method a route does not have are part of the run, except TRACE and QUERY:
# `chalice local` (Python's http.server) answers those itself with a 501 HTML page before
# the app sees them; in AWS, API Gateway answers them (403), not the Lambda.
CONFIG = SchemathesisConfig.from_dict({"phases": {"coverage": {
    "unexpected-methods": ["get", "put", "post", "delete", "options", "patch"]}}})
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


@pytest.fixture(scope="module")
def live_api(tmp_path_factory):
    """A local stack of its own (moto server + `chalice local`): the fuzzer's accepted builds
    take quota slots that nothing gives back without a worker, so it must not share the
    session's `live_api` with the CLI tests."""
    from types import SimpleNamespace

    from voltabuild_local.stack import Stack

    stack = Stack(state_dir=tmp_path_factory.mktemp("fuzz-api"), services=("moto", "api"), quiet=True)
    stack.up()
    try:
        env = stack.env
        yield SimpleNamespace(url=env["VOLTABUILD_API_URL"], api_key=env["VOLTABUILD_API_KEY"])
    finally:
        stack.down()


@pytest.fixture(scope="module")
def http(live_api):
    import requests

    with requests.Session() as s:
        yield s


def test_the_live_api_serves_the_document_that_is_fuzzed(live_api, http):
    resp = http.get(f"{live_api.url}/openapi.json", headers={"x-api-key": live_api.api_key}, timeout=30)
    assert resp.status_code == 200
    assert resp.json() == json.loads(json.dumps(DOCUMENT))


def test_the_document_describes_every_route_of_the_app():
    """An undocumented route is never fuzzed: the document must list every HTTP route."""
    import app as app_module

    routes = {(path, method.lower()) for path, entry in app_module.app.routes.items() for method in entry}
    documented = {(path, method) for path, ops in DOCUMENT["paths"].items() for method in ops}
    assert routes - documented == set(), "routes missing from chalicelib/api/openapi.py"


def _operation_test(method: str, path: str):
    @schema.include(method=method, path=path).parametrize()
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    def test(case, live_api, http):
        # the key is sent on every request; the 403 without it is checked in tests/api
        case.call_and_validate(base_url=live_api.url, session=http, headers={"x-api-key": live_api.api_key},
                               checks=CHECKS, timeout=30)

    test.__doc__ = f"Every response of {method} {path} is declared, and none is a 5xx."
    return test


# One test function per operation (test_fuzz_get_builds_build_id, ...): schemathesis's own
# `schema.parametrize()` gives its per-operation items one shared node id, which pytest-xdist
# (`make test` runs with it) collapses into a single test.
for _op in (result.ok() for result in schema.get_all_operations()):
    _name = "test_fuzz_" + re.sub(r"[^a-z0-9]+", "_", f"{_op.method} {_op.path}".lower()).strip("_")
    globals()[_name] = _operation_test(_op.method.upper(), _op.path)
    globals()[_name].__name__ = globals()[_name].__qualname__ = _name


def test_workflows_following_the_documents_links(live_api, http):
    """Stateful: submit builds, then follow the 202's links (get, cancel, logs) with the
    real ids, in random sequences, every response checked as above."""
    workflow = schema.as_state_machine()
    headers = {"x-api-key": live_api.api_key}

    class Workflow(workflow):
        def get_call_kwargs(self, case):
            return {"base_url": live_api.url, "session": http, "headers": headers, "timeout": 30}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, checks=CHECKS, headers=headers, transport_kwargs=kwargs)

    Workflow.run(settings=settings(max_examples=max(3, MAX_EXAMPLES // 2), derandomize=True, deadline=None,
                                   stateful_step_count=6, suppress_health_check=list(HealthCheck)))
