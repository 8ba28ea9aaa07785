"""Build a deployment: one CloudFormation/SAM template and the Lambda zip (`make package`).

    python -m infra.package --stage dev --out dist/dev

1. The project is copied into a scratch directory (the checkout is never changed) and
   ``chalicelib/_bundle/`` there receives ``buildspecs/`` and ``dockerfiles/``: the Lambda
   needs the catalog and the build contexts, and only app.py, chalicelib/ and the
   requirements are packaged. Each locked combination's catalog context (its Dockerfile and
   lock, issue 19) is packed into ``<out>/contexts/catalog/sha256/<hex>`` for
   ``scripts/deploy.sh`` to upload into the stage's contexts bucket, and the bundle gets the
   manifest of their digests (``catalog-contexts.json``) the launcher presigns them by.
2. ``chalice package --merge-template`` merges ``infra/resources.yaml`` + ``infra/deploy.yaml``
   (with the ``Stage`` parameter pinned to the packaged stage, because the stage's
   ``.chalice/config.json`` names are literal) into Chalice's SAM template.
3. Queue triggers are wired to the queues the template creates: Chalice writes an
   ``on_sqs_message(queue=NAME)`` source as an ARN string, which CloudFormation cannot order
   after the queue's creation; it becomes ``Fn::GetAtt [<Queue>, Arn]``. A handler reading a
   queue the template does not create, or a queue whose visibility timeout is shorter than
   the function's timeout (AWS refuses that mapping), fails the packaging here, not the
   deployment.
4. ``POST /builds/{build_id}/events``, the one route without an API key, gets a function
   of its own with reserved concurrency (:func:`split_events_handler`).
5. Each function gets a role of its own granting only what its code calls
   (:func:`scope_function_roles`).
6. The zip is slimmed (:func:`slim_zip`: parts of dependencies no function imports left
   out) and checked: boto3/botocore come with the Lambda runtime and must not be in it, and
   PyYAML is not needed (the catalog is compiled to JSON, ``chalicelib/specs/catalog_compiled.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from chalicelib.launching import catalog_contexts
from chalicelib.specs import catalog_compiled
from chalicelib.specs.catalog import load_catalog
from infra import policies
from infra.local import load_template
from infra.operations import add_operations

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_OVERLAY = Path(__file__).with_name("deploy.yaml")
BUNDLED = ("buildspecs", "dockerfiles")
# boto3 comes with the Lambda runtime; PyYAML is not needed (the catalog is compiled to JSON)
FORBIDDEN_IN_ZIP = ("boto3", "botocore", "s3transfer", "yaml", "_yaml", "pyyaml", "PyYAML")
_ARN_SUB = re.compile(r"^arn:\$\{AWS::Partition\}:sqs:\$\{AWS::Region\}:\$\{AWS::AccountId\}:(?P<name>[\w-]+)$")
_ARN_LITERAL = re.compile(r"^arn:aws[\w-]*:sqs:[\w-]+:\d{12}:(?P<name>[\w-]+)$")


# Parts of the dependencies no function imports, left out of the zip (Lambda's cold start
# unpacks and its size limit counts every byte). tests/deploy/test_deploy_size.py imports
# every chalicelib module and sends a Slack webhook from the slimmed zip.
PRUNED = (
    "pydantic/v1/",  # pydantic 1's API, kept in pydantic 2 for migrations; nothing here uses it
    "pydantic/mypy.py",  # the mypy plugin (a type checker's, never the runtime's)
    "pydantic/experimental/", "pydantic/color.py",  # experimental APIs and the deprecated Color type: unused
    "slack/",  # slackclient 2's deprecated package name; the code imports slack_sdk
    "slack_sdk/socket_mode/", "slack_sdk/oauth/", "slack_sdk/audit_logs/", "slack_sdk/scim/",
    "slack_sdk/rtm/", "slack_sdk/rtm_v2/",  # Slack APIs other than incoming webhooks
    "slack_sdk/web/async_", "slack_sdk/web/legacy_", "slack_sdk/signature/",  # async and legacy clients,
    "slack_sdk/aiohttp_version_checker.py",  # request signing: the webhook client imports none of them
    # packaging: requirements, markers, specifiers and versions are used (chalicelib/custom/sources.py)
    "packaging/licenses/", "packaging/pylock.py", "packaging/metadata.py", "packaging/dependency_groups.py",
    "packaging/direct_url.py", "packaging/ranges.py",
)
ZIP_LIMIT_BYTES = 3_000_000  # issue 21: the deployment zip's target


def slim_zip(path: Path) -> None:
    """Rewrite the zip without :data:`PRUNED`, type stubs, the installers' RECORD lists and the wheels' SBOMs, with each package's METADATA cut to its
    headers (the long description is its README and changelog; name, version and license
    stay), compressed at zlib's best level."""
    tmp = path.with_suffix(".slim.zip")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for info in src.infolist():
            if info.filename.startswith(PRUNED) or "/__pycache__/" in f"/{info.filename}":
                continue  # bytecode too: timestamp-checked against the zip's 1980 dates, it is never used
            if info.filename.endswith((".pyi", "/py.typed")):
                continue  # type stubs and PEP 561 markers: read by type checkers, never imported (13 KB)
            if info.filename.endswith(".dist-info/RECORD"):
                continue  # the installer's file list (for uninstalling): nothing runs it in a Lambda
            if ".dist-info/sboms/" in info.filename:
                continue  # a wheel's build SBOM (pydantic-core's: 15 KB): for scanning wheels, not read at run time
            data = src.read(info)
            if info.filename.endswith(".dist-info/METADATA"):
                data = data.split(b"\n\n", 1)[0] + b"\n"
            info.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(info, data, compresslevel=9)
    tmp.replace(path)


class PackagingError(RuntimeError):
    pass


@dataclass(frozen=True)
class Package:
    stage: str
    template: Path
    zip: Path

    @property
    def zip_bytes(self) -> int:
        return self.zip.stat().st_size

    def load_template(self) -> dict:
        return json.loads(self.template.read_text())


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_template(stage: str) -> dict:
    """resources.yaml + deploy.yaml, with the Stage parameter fixed to ``stage``."""
    import yaml

    tpl = _deep_merge(load_template(), yaml.safe_load(DEPLOY_OVERLAY.read_text()))
    tpl["Parameters"]["Stage"].update(Default=stage, AllowedValues=[stage])
    tpl["Parameters"]["Stage"].pop("AllowedPattern", None)
    return tpl


def _copy_project(src: Path, dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_bundle")
    shutil.copy2(src / "app.py", dest / "app.py")
    shutil.copy2(src / "requirements.txt", dest / "requirements.txt")
    shutil.copytree(src / "chalicelib", dest / "chalicelib", ignore=ignore)
    (dest / ".chalice").mkdir()
    for f in (src / ".chalice").glob("*.json"):
        shutil.copy2(f, dest / ".chalice" / f.name)
    cache = src / ".chalice" / "deployments"  # chalice's dependency cache: keeps repeats fast
    if cache.is_dir():
        shutil.copytree(cache, dest / ".chalice" / "deployments")
    bundle = dest / "chalicelib" / "_bundle"
    # the images' lock files and READMEs are for people and `make lock`: no function reads them
    leave_out = shutil.ignore_patterns("__pycache__", "*.pyc", "_bundle", "locks", "README.md")
    for name in BUNDLED:
        shutil.copytree(src / name, bundle / name, ignore=leave_out)
    catalog_compiled.write(bundle)  # the Lambda reads the catalog from JSON: no YAML parser in the zip


def _write_catalog_contexts(project: Path, bundle: Path, objects: Path) -> dict[str, str]:
    """The catalog contexts (packed from the project: the bundle has no lock files) into
    ``objects``, their manifest into the bundle."""
    return catalog_contexts.write_bundle(load_catalog(project), bundle, objects)


def _keep_cache(scratch: Path, src: Path) -> None:
    made = scratch / ".chalice" / "deployments"
    if not made.is_dir():
        return
    keep = src / ".chalice" / "deployments"
    keep.mkdir(parents=True, exist_ok=True)
    for f in made.iterdir():
        if not (keep / f.name).exists():
            shutil.copy2(f, keep / f.name)


def _chalice_package(project: Path, stage: str, merge: Path, out: Path, region: str) -> None:
    chalice = Path(sys.executable).with_name("chalice")
    # chalice imports app.py from the scratch copy: no bytecode may land there (and in the zip)
    env = {**os.environ, "AWS_DEFAULT_REGION": region, "VOLTABUILD_STAGE": stage, "PYTHONDONTWRITEBYTECODE": "1"}
    # app.py is imported while packaging: its queue names follow VOLTABUILD_STAGE
    cmd = [str(chalice), "--project-dir", str(project), "package", "--stage", stage,
           "--merge-template", str(merge), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PackagingError(f"chalice package failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def _queue_name(queue) -> str | None:
    if isinstance(queue, dict) and list(queue) == ["Fn::Sub"] and isinstance(queue["Fn::Sub"], str):
        m = _ARN_SUB.match(queue["Fn::Sub"])
        return m["name"] if m else None
    if isinstance(queue, str):
        m = _ARN_LITERAL.match(queue)
        return m["name"] if m else None
    return None


def wire_queue_triggers(template: dict, stage: str) -> dict[str, str]:
    """Point every SQS event source at its queue resource; returns function -> queue logical id."""
    resources = template["Resources"]
    queues = {
        res["Properties"]["QueueName"]["Fn::Sub"].replace("${Stage}", stage): logical
        for logical, res in resources.items()
        if res["Type"] == "AWS::SQS::Queue"
    }
    wired = {}
    for fn_name, fn in resources.items():
        if fn["Type"] != "AWS::Serverless::Function":
            continue
        for event in (fn["Properties"].get("Events") or {}).values():
            if event["Type"] != "SQS":
                continue
            queue = event["Properties"]["Queue"]
            if isinstance(queue, dict) and "Fn::GetAtt" in queue:
                wired[fn_name] = queue["Fn::GetAtt"][0]
                continue
            name = _queue_name(queue)
            if name not in queues:
                raise PackagingError(
                    f"{fn_name} consumes SQS queue {name or queue!r}, which the template does not create "
                    f"for stage {stage!r}; queues: {sorted(queues)}"
                )
            logical = queues[name]
            event["Properties"]["Queue"] = {"Fn::GetAtt": [logical, "Arn"]}
            wired[fn_name] = logical
            visibility = int(resources[logical]["Properties"].get("VisibilityTimeout", 30))
            timeout = int(fn["Properties"].get("Timeout", 3))
            if visibility < timeout:
                raise PackagingError(
                    f"{fn_name} runs up to {timeout}s but {logical} hides a message for only {visibility}s; "
                    "SQS triggers need VisibilityTimeout >= the function timeout"
                )
    return wired


EVENTS_PATH = "/builds/{build_id}/events"
EVENTS_FUNCTION = "EventsHandler"


def split_events_handler(template: dict) -> str:
    """Serve ``POST /builds/{build_id}/events`` (no API key: anyone can call it) from a
    function of its own, a copy of Chalice's API handler (same code: the app routes by
    path) with reserved concurrency, so a flood of it cannot take the concurrency the
    other functions need. Returns the new function's logical id."""
    resources = template["Resources"]
    api_fn = resources["APIHandler"]
    paths = resources["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    integration = paths[EVENTS_PATH]["post"]["x-amazon-apigateway-integration"]
    if "${APIHandler.Arn}" not in integration["uri"]["Fn::Sub"]:
        raise PackagingError(f"{EVENTS_PATH} is not served by APIHandler: cannot split it off")
    fn = json.loads(json.dumps(api_fn))
    fn["Properties"]["ReservedConcurrentExecutions"] = {
        "Fn::If": ["ReserveEventsConcurrency", {"Ref": "EventsConcurrency"}, {"Ref": "AWS::NoValue"}]}
    resources[EVENTS_FUNCTION] = fn
    integration["uri"] = {"Fn::Sub": integration["uri"]["Fn::Sub"].replace("${APIHandler.Arn}",
                                                                           f"${{{EVENTS_FUNCTION}.Arn}}")}
    resources[f"{EVENTS_FUNCTION}InvokePermission"] = {
        "Type": "AWS::Lambda::Permission",
        "Properties": {
            "FunctionName": {"Ref": EVENTS_FUNCTION},
            "Action": "lambda:InvokeFunction",
            "Principal": "apigateway.amazonaws.com",
            "SourceArn": {"Fn::Sub": ["arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:"
                                      "${RestAPIId}/*/POST/builds/*/events", {"RestAPIId": {"Ref": "RestAPI"}}]},
        },
    }
    return EVENTS_FUNCTION


# what the Lambda platform does with a function's role, not its code
OWN_LOGS = {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"}
SQS_POLLING = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
# what an action needs besides itself: RunInstances tags what it makes and passes the builder role
IMPLIED = {"ec2:RunInstances": {"ec2:CreateTags", "iam:PassRole"}}


def function_actions(template: dict, logical: str, calls: dict[str, list]) -> set[str]:
    """Every IAM action function ``logical`` needs: its code's calls, what they imply, its
    own logs and, for a queue consumer, the polling of its queue."""
    fn = template["Resources"][logical]
    actions = {c.action for c in calls.get(logical, [])}
    for a in list(actions):
        actions |= IMPLIED.get(a, set())
    actions |= OWN_LOGS
    if any(e["Type"] == "SQS" for e in (fn["Properties"].get("Events") or {}).values()):
        actions |= SQS_POLLING
    return actions


def _consumed_queue_names(template: dict, fn: dict, stage: str) -> set[str]:
    names = set()
    for e in (fn["Properties"].get("Events") or {}).values():
        if e["Type"] == "SQS":
            logical = e["Properties"]["Queue"]["Fn::GetAtt"][0]
            names.add(template["Resources"][logical]["Properties"]["QueueName"]["Fn::Sub"].replace("${Stage}", stage))
    return names


def scope_function_roles(template: dict, stage: str) -> dict[str, str]:
    """One role per function, each granting only the actions that function's code calls
    (``infra.permissions.function_calls``), cut from the stage's policy (which keeps the
    resources and conditions): the internet-facing API cannot launch instances or pass
    the builder role, the reports function cannot touch EC2. Returns function -> role."""
    from infra.permissions import function_calls

    calls = function_calls()
    resources = template["Resources"]
    # the stage's roles as written, before any is cut down: a copied function's role starts
    # from these, not from another function's already scoped role
    stage_roles = {k: json.loads(json.dumps(v)) for k, v in resources.items() if v["Type"] == "AWS::IAM::Role"}
    roles = {}
    for logical, fn in list(resources.items()):
        if fn["Type"] != "AWS::Serverless::Function":
            continue
        role = fn["Properties"]["Role"]["Fn::GetAtt"][0]
        if role in roles.values():  # a copied function (EventsHandler): a role of its own
            new = f"{logical}Role"
            resources[new] = json.loads(json.dumps(stage_roles[role]))
            fn["Properties"]["Role"] = {"Fn::GetAtt": [new, "Arn"]}
            role = new
        roles[logical] = role
        needed = function_actions(template, logical, calls)
        queues = _consumed_queue_names(template, fn, stage)
        for policy in resources[role]["Properties"]["Policies"]:
            kept = []
            for stmt in policy["PolicyDocument"]["Statement"]:
                actions = [a for a in stmt["Action"] if a in needed]
                if not actions:
                    continue
                stmt = {**stmt, "Action": actions}
                if set(actions) <= SQS_POLLING:  # a consumer polls its own queue only
                    stmt["Resource"] = [r for r in stmt["Resource"]
                                        if any(r["Fn::Sub"].endswith(f":{q}") for q in queues)]
                kept.append(stmt)
            policy["PolicyDocument"]["Statement"] = kept
        granted = {a for p in resources[role]["Properties"]["Policies"]
                   for st in p["PolicyDocument"]["Statement"] for a in st["Action"]}
        if needed - granted:
            raise PackagingError(f"{logical} needs {sorted(needed - granted)}, which policy-{stage}.json "
                                 "does not grant")
    return roles


def check_zip(path: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    bad = sorted({n.split("/")[0] for n in names if n.split("/")[0].split("-")[0] in FORBIDDEN_IN_ZIP})
    if bad:
        raise PackagingError(f"{path.name} contains {bad}: the Lambda runtime brings boto3 and the catalog is "
                             "compiled to JSON (no PyYAML); keep them out of "
                             "requirements.txt")
    for name in BUNDLED:
        if not any(n.startswith(f"chalicelib/_bundle/{name}/") for n in names):
            raise PackagingError(f"{path.name} lacks chalicelib/_bundle/{name}/")
    for name in (catalog_compiled.FILE_NAME, catalog_contexts.MANIFEST_NAME):
        if f"chalicelib/_bundle/{name}" not in names:
            raise PackagingError(f"{path.name} lacks chalicelib/_bundle/{name}")


def package(stage: str, out_dir: Path, *, project: Path = ROOT, region: str | None = None) -> Package:
    region = region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    out_dir = Path(out_dir).resolve()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    with tempfile.TemporaryDirectory(prefix="voltabuild-package-") as tmp:
        scratch = Path(tmp) / "project"
        scratch.mkdir()
        _copy_project(Path(project), scratch)
        objects = Path(tmp) / "contexts"
        _write_catalog_contexts(Path(project), scratch / "chalicelib" / "_bundle", objects)
        policies.write(scratch, [stage])  # generated from infra/policy.template.json
        merge = Path(tmp) / "merge-template.json"
        merge.write_text(json.dumps(merge_template(stage), indent=2))
        _chalice_package(scratch, stage, merge, out_dir, region)
        _keep_cache(scratch, Path(project))
        shutil.copytree(objects, out_dir / "contexts")
    template_path = out_dir / "sam.json"
    template = json.loads(template_path.read_text())
    wire_queue_triggers(template, stage)
    split_events_handler(template)
    scope_function_roles(template, stage)
    add_operations(template)  # alarms, their SNS topic, the dashboard (infra/operations.py)
    template_path.write_text(json.dumps(template, indent=2) + "\n")
    result = Package(stage=stage, template=template_path, zip=out_dir / "deployment.zip")
    slim_zip(result.zip)
    check_zip(result.zip)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--out", type=Path, default=None, help="default: dist/<stage>")
    parser.add_argument("--region", default=None)
    args = parser.parse_args(argv)
    try:
        result = package(args.stage, args.out or ROOT / "dist" / args.stage, region=args.region)
    except PackagingError as e:
        print(f"package: {e}", file=sys.stderr)
        return 1
    print(f"template: {result.template}")
    print(f"zip:      {result.zip} ({result.zip_bytes / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
