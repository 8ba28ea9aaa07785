"""What the Lambdas call in AWS, derived from the code, and what an IAM policy allows.

The deployment's Lambda policies are hand-kept (``infra/policy.template.json``, written out
as ``.chalice/policy-<stage>.json`` by infra/policies.py; ``autogen_policy: false``); this
module keeps them honest:

* :func:`aws_calls` reads app.py and chalicelib/ (a static AST scan, so handlers added
  later are covered without anyone registering them): every service a client is made for
  (``wiring.client("ssm")``, ``session.client("ec2")``, ``boto3.client(...)``) and every
  method call whose name is an operation of one of those services in botocore's service
  model (``terminate_instances`` -> ``ec2:TerminateInstances``), paginators included.
  The scan cannot tell which client a call is made on, so a name that several used
  services share is required of each: over-asking shows up as a failing test, never as a
  Lambda without a permission.
* :func:`missing_actions`, :func:`wildcard_actions`, :func:`unscoped_pass_role`,
  :func:`allows` judge a policy (after :func:`resolve` has filled in CloudFormation's
  ``Fn::Sub`` pseudo parameters).

    python -m infra.permissions [policy.json]   # lists calls and what the dev policy (or that one) lacks
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"
REGION = "us-east-1"

# IAM action prefix where it is not the boto3 service name
_IAM_PREFIX = {"stepfunctions": "states", "cloudwatch": "cloudwatch", "apigateway": "apigateway"}
# operations whose IAM action has another name (AWS's service authorization reference)
_IAM_ACTION = {
    ("sqs", "SendMessageBatch"): ("sqs:SendMessage",),
    ("sqs", "DeleteMessageBatch"): ("sqs:DeleteMessage",),
    ("sqs", "ChangeMessageVisibilityBatch"): ("sqs:ChangeMessageVisibility",),
    ("dynamodb", "TransactGetItems"): ("dynamodb:GetItem",),
    ("s3", "ListObjectsV2"): ("s3:ListBucket",),
    ("s3", "HeadObject"): ("s3:GetObject",),
}
# TransactWriteItems is authorised per item: Put -> PutItem, Update -> UpdateItem, ...
_TRANSACT_ITEM_ACTIONS = {"Put": "dynamodb:PutItem", "Update": "dynamodb:UpdateItem",
                          "Delete": "dynamodb:DeleteItem", "ConditionCheck": "dynamodb:ConditionCheckItem"}
# actions IAM cannot scope to a resource (so Resource "*" is the only way to grant them)
RESOURCE_WILDCARD_OK = re.compile(r"^(ec2:Describe\w+|ecr:GetAuthorizationToken|xray:PutTraceSegments|"
                                  r"xray:PutTelemetryRecords|cloudwatch:PutMetricData)$")


def lambda_sources(root: Path = ROOT) -> list[Path]:
    """What is packaged into the Lambdas: app.py and chalicelib/ (not its _bundle copies)."""
    files = [root / "app.py", *sorted((root / "chalicelib").rglob("*.py"))]
    return [f for f in files if "_bundle" not in f.parts and f.exists()]


@dataclass(frozen=True, order=True)
class Call:
    action: str
    service: str
    operation: str
    where: str


@cache
def _operations(service: str) -> dict[str, str]:
    """snake_case method name -> operation name, from botocore's service model."""
    import botocore.session
    from botocore import xform_name

    model = botocore.session.get_session().get_service_model(service)
    return {xform_name(op): op for op in model.operation_names} | _PRESIGNED.get(service, {})


# Presigned requests (issue 20) are made by whoever receives them, authorised as the role
# that signed: the signer's role needs the operation. voltabuild presigns S3 POST uploads
# (PutObject) and GETs of get_object only.
_PRESIGNED = {"s3": {"generate_presigned_post": "PutObject", "generate_presigned_url": "GetObject"}}


def _literal_arg(call: ast.Call) -> str | None:
    if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        return call.args[0].value
    for kw in call.keywords:
        if kw.arg in ("service_name", "operation_name") and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    if isinstance(call.func, ast.Name):
        return call.func.id
    return None


def client_services(trees: Iterable[ast.AST]) -> set[str]:
    """Every service a client is created for: any ``client("<service>")`` call."""
    out = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called_name(node) == "client":
                name = _literal_arg(node)
                if name:
                    out.add(name)
    return out


def iam_actions(service: str, operation: str) -> tuple[str, ...]:
    if (service, operation) in _IAM_ACTION:
        return _IAM_ACTION[(service, operation)]
    return (f"{_IAM_PREFIX.get(service, service)}:{operation}",)


def _dict_keys(node: ast.AST) -> set[str]:
    return {k.value for d in ast.walk(node) if isinstance(d, ast.Dict)
            for k in d.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def _parse(files: Iterable[Path]) -> dict[Path, ast.AST]:
    return {f: ast.parse(f.read_text(), filename=str(f)) for f in files}


def aws_calls(files: Iterable[Path] | None = None, *, root: Path = ROOT) -> list[Call]:
    """Every AWS API call the code makes, with the IAM action(s) it needs."""
    trees = _parse(lambda_sources(root) if files is None else files)
    services = sorted(client_services(trees.values()))
    ops = {svc: _operations(svc) for svc in services}
    calls: set[Call] = set()
    for path, tree in trees.items():
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        # a transaction's item kinds are looked for in its class (the items may be built by
        # the class's other methods), else in its function
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)]

        def enclosing(node: ast.AST, functions=functions) -> ast.AST | None:
            inner = [f for f in functions if f.lineno <= node.lineno <= (f.end_lineno or f.lineno)]
            classes = [f for f in inner if isinstance(f, ast.ClassDef)]
            return max(classes or inner, key=lambda f: f.lineno) if inner else None

        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            method = node.func.attr
            if method in ("get_paginator", "can_paginate"):
                method = _literal_arg(node) or ""
            for svc in services:
                op = ops[svc].get(method)
                if op is None:
                    continue
                where = f"{rel}:{node.lineno}"
                if (svc, op) == ("dynamodb", "TransactWriteItems"):
                    scope = enclosing(node) or tree
                    kinds = [k for k in _TRANSACT_ITEM_ACTIONS if k in _dict_keys(scope)]
                    actions = [_TRANSACT_ITEM_ACTIONS[k] for k in kinds or _TRANSACT_ITEM_ACTIONS]
                else:
                    actions = iam_actions(svc, op)
                for action in actions:
                    calls.add(Call(action, svc, op, where))
    return sorted(calls)


# ---- per function (issue 17): which handler reaches which calls ----------------------
_HANDLER_DECORATORS = {"route", "on_sqs_message", "on_cw_event", "schedule", "middleware"}
# the route Chalice's API handler serves but infra/package.py gives a function of its own
SPLIT_ROUTES = {"/builds/{build_id}/events": "EventsHandler"}


def _cfn_name(name: str) -> str:
    """Chalice's logical id for a function name (``notify_consumer`` -> ``NotifyConsumer``)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _handler_function(fn: ast.FunctionDef) -> str | None:
    """The logical id of the Lambda function that runs ``fn`` (None: not a handler)."""
    for dec in fn.decorator_list:
        if not (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute)
                and dec.func.attr in _HANDLER_DECORATORS):
            continue
        if dec.func.attr in ("route", "middleware"):
            path = _literal_arg(dec) if dec.func.attr == "route" else None
            return SPLIT_ROUTES.get(path or "", "APIHandler")
        name = next((k.value.value for k in dec.keywords if k.arg == "name" and isinstance(k.value, ast.Constant)),
                    fn.name)
        return _cfn_name(name)
    return None


def _getter_calls(node: ast.AST, getters: set[str], *, qualified: bool) -> set[str]:
    """Names of wiring getters called in ``node``: ``wiring.x()`` (app.py) or ``x()`` (wiring.py)."""
    out = set()
    for n in ast.walk(node):
        if not isinstance(n, ast.Call):
            continue
        f = n.func
        if qualified and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "wiring":
            out.add(f.attr)
        elif not qualified and isinstance(f, ast.Name) and f.id in getters:
            out.add(f.id)
    return out & getters


def _constructed(getter: ast.FunctionDef) -> list[tuple[str, set[str]]]:
    """(class name, services of the clients passed to it) for each object a getter makes."""
    out = []
    for n in ast.walk(getter):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id[:1].isupper():
            services = {_literal_arg(a) for a in [*n.args, *(k.value for k in n.keywords)]
                        if isinstance(a, ast.Call) and _called_name(a) == "client"}
            out.append((n.func.id, {x for x in services if x}))
    return out


def function_calls(root: Path = ROOT) -> dict[str, list[Call]]:
    """Lambda function (logical id) -> the AWS calls its code can make.

    From each handler in app.py: the wiring getters it calls (and app.py helpers it calls),
    the getters those call, the chalicelib objects they make and the clients each object
    is given; an object's calls are the operations of *its* clients' services in its class
    and in its module's functions. Over-approximates within a class, never across: a
    function gets no permission for an object it never makes."""
    trees = _parse(lambda_sources(root))
    app_tree, wiring_tree = trees[root / "app.py"], trees[root / "chalicelib" / "wiring.py"]
    getters = {f.name: f for f in wiring_tree.body if isinstance(f, ast.FunctionDef)}
    classes: dict[str, tuple[Path, ast.ClassDef]] = {}
    for path, tree in trees.items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, (path, node))
    app_functions = {f.name: f for f in app_tree.body if isinstance(f, ast.FunctionDef)}

    def reached_getters(fn: ast.FunctionDef) -> set[str]:
        seen_fns, todo, found = set(), [fn], set()
        while todo:
            f = todo.pop()
            if f.name in seen_fns:
                continue
            seen_fns.add(f.name)
            found |= _getter_calls(f, set(getters), qualified=True)
            todo += [app_functions[n.func.id] for n in ast.walk(f) if isinstance(n, ast.Call)
                     and isinstance(n.func, ast.Name) and n.func.id in app_functions]
        todo, out = list(found), set()
        while todo:
            g = todo.pop()
            if g in out:
                continue
            out.add(g)
            todo += _getter_calls(getters[g], set(getters), qualified=False)
        return out

    def calls_of(cls: str, services: set[str]) -> set[Call]:
        if cls not in classes or not services:
            return set()
        path, node = classes[cls]
        scopes = [node, *(f for f in trees[path].body if isinstance(f, ast.FunctionDef))]
        rel = path.relative_to(root)
        out = set()
        for scope in scopes:
            for n in ast.walk(scope):
                if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)):
                    continue
                method = n.func.attr
                if method in ("get_paginator", "can_paginate"):
                    method = _literal_arg(n) or ""
                for svc in services:
                    op = _operations(svc).get(method)
                    if op is None:
                        continue
                    if (svc, op) == ("dynamodb", "TransactWriteItems"):
                        kinds = [k for k in _TRANSACT_ITEM_ACTIONS if k in _dict_keys(scope)]
                        actions = [_TRANSACT_ITEM_ACTIONS[k] for k in kinds or _TRANSACT_ITEM_ACTIONS]
                    else:
                        actions = list(iam_actions(svc, op))
                    out |= {Call(a, svc, op, f"{rel}:{n.lineno}") for a in actions}
        return out

    result: dict[str, set[Call]] = {}
    for fn in app_functions.values():
        logical = _handler_function(fn)
        if logical is None:
            continue
        calls = result.setdefault(logical, set())
        for g in reached_getters(fn):
            for cls, services in _constructed(getters[g]):
                calls |= calls_of(cls, services)
    return {k: sorted(v) for k, v in result.items()}


# AWS CLI commands that are client-side customisations over an API operation
_CLI_CUSTOM = {("ecr", "get-login-password"): "GetAuthorizationToken"}
_AWS_CLI = re.compile(r"(?:^|[\s;|&(])aws\s+(?P<service>[a-z0-9-]+)\s+(?P<command>[a-z0-9-]+)")


def host_script_calls(root: Path = ROOT) -> list[Call]:
    """Every ``aws <service> <command>`` the build instance runs (chalicelib/launching/templates/*.sh),
    with its IAM action: what the builder role must allow."""
    from botocore import xform_name

    calls = set()
    for path in sorted((root / "chalicelib" / "launching" / "templates").glob("*.sh")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            for m in _AWS_CLI.finditer(line):
                svc, command = m["service"], m["command"]
                op = _CLI_CUSTOM.get((svc, command)) or {
                    xform_name(o, "-"): o for o in _operations(svc).values()}.get(command)
                if op is None:
                    raise ValueError(f"{path.name}:{lineno}: unknown AWS CLI command 'aws {svc} {command}'")
                for action in iam_actions(svc, op):
                    calls.add(Call(action, svc, op, f"{path.relative_to(root)}:{lineno}"))
    return sorted(calls)


# ---- policies ------------------------------------------------------------------------


def resolve(value: Any, *, account: str = ACCOUNT, region: str = REGION, extra: dict | None = None) -> Any:
    """Fill in ``Fn::Sub`` pseudo parameters (as CloudFormation will) so ARNs can be compared."""
    params = {"AWS::Partition": "aws", "AWS::Region": region, "AWS::AccountId": account,
              "AWS::URLSuffix": "amazonaws.com", **(extra or {})}
    if isinstance(value, dict) and list(value) == ["Fn::Sub"] and isinstance(value["Fn::Sub"], str):
        return re.sub(r"\$\{([\w:]+)\}", lambda m: params.get(m.group(1), m.group(0)), value["Fn::Sub"])
    if isinstance(value, dict):
        return {k: resolve(v, account=account, region=region, extra=extra) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, account=account, region=region, extra=extra) for v in value]
    return value


def _list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def statements(policy: dict) -> list[dict]:
    return _list(policy.get("Statement", []))


def _allow(policy: dict) -> list[dict]:
    return [s for s in statements(policy) if s.get("Effect") == "Allow"]


def _matches(pattern: str, value: str, *, case: bool = True) -> bool:
    if not case:
        pattern, value = pattern.lower(), value.lower()
    return fnmatch.fnmatchcase(value, pattern)


def allows(policy: dict, action: str, resource: str | None = None) -> bool:
    """True when some Allow statement grants ``action`` (on ``resource``). Conditions are not
    evaluated, Deny statements (voltabuild's policies have none) neither. Policies must be
    :func:`resolve`-d first."""
    for stmt in _allow(policy):
        if "NotAction" in stmt or "NotResource" in stmt:
            return True  # grants by exclusion: wildcard_actions flags it
        if not any(_matches(a, action, case=False) for a in _list(stmt.get("Action", []))):
            continue
        if resource is None or any(_matches(r, resource) for r in _list(stmt.get("Resource", []))):
            return True
    return False


def missing_actions(policy: dict, calls: Iterable[Call]) -> dict[str, list[str]]:
    """IAM action -> where the code needs it, for every action no Allow statement grants."""
    out: dict[str, list[str]] = {}
    for call in calls:
        if not allows(policy, call.action):
            out.setdefault(call.action, []).append(call.where)
    return out


def wildcard_actions(policy: dict) -> list[str]:
    """Allowed actions containing a wildcard, and any NotAction/NotResource (which grant by exclusion)."""
    out = []
    for stmt in _allow(policy):
        out += [a for a in _list(stmt.get("Action", [])) if "*" in a or "?" in a]
        out += [f"{key} {stmt[key]}" for key in ("NotAction", "NotResource") if key in stmt]
    return out


def unscoped_pass_role(policy: dict, allowed_roles: Iterable[str]) -> list[str]:
    """Resources iam:PassRole is granted on beyond ``allowed_roles`` (exact ARNs), and
    PassRole grants without an ``iam:PassedToService`` condition."""
    allowed = set(allowed_roles)
    out = []
    for stmt in _allow(policy):
        if not any(_matches(a, "iam:PassRole", case=False) for a in _list(stmt.get("Action", []))):
            continue
        out += [r for r in _list(stmt.get("Resource", [])) if r not in allowed]
        if "iam:PassedToService" not in json.dumps(stmt.get("Condition", {})):
            out.append(f"statement {stmt.get('Sid', '?')} has no iam:PassedToService condition")
    return out


def unscoped_resources(policy: dict) -> list[str]:
    """Actions granted on Resource "*" that IAM could have scoped to a resource."""
    return [a for s in _allow(policy) if "*" in _list(s.get("Resource", []))
            for a in _list(s.get("Action", [])) if not RESOURCE_WILDCARD_OK.match(a)]


# IAM actions that are no API operation of their own
_IAM_ONLY = {"dynamodb:ConditionCheckItem", "iam:PassRole", "ecr:BatchImportUpstreamImage"}
_SERVICE_OF_PREFIX = {"cloudwatch": "cloudwatch", "states": "stepfunctions"}


def unknown_actions(policy: dict) -> list[str]:
    """Allowed actions that name no operation of their service (a typo grants nothing)."""
    from botocore.exceptions import UnknownServiceError

    out = []
    for stmt in _allow(policy):
        for action in _list(stmt.get("Action", [])):
            if action in _IAM_ONLY or "*" in action:
                continue
            prefix, _, name = action.partition(":")
            try:
                ops = set(_operations(_SERVICE_OF_PREFIX.get(prefix, prefix)).values())
            except UnknownServiceError:
                ops = set()
            if name not in ops:
                out.append(action)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from infra import policies

    name = Path(argv[0]).name if argv else "the dev policy"
    policy = json.loads(Path(argv[0]).read_text()) if argv else policies.policy("dev")
    calls = aws_calls()
    for c in calls:
        print(f"{c.action:45} {c.where}")
    missing = missing_actions(resolve(policy), calls)
    for action, where in sorted(missing.items()):
        print(f"MISSING in {name}: {action} (needed at {', '.join(where)})", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
