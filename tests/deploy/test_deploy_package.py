"""`make package`: chalice package + the merged template, cfn-lint, the zip's contents."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from infra import policies
from infra.local import load_template
from infra.package import PackagingError, check_zip, wire_queue_triggers

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("dev", "prod")
CFN_LINT = Path(sys.executable).with_name("cfn-lint")


def policy_file(stage: str) -> dict:
    return policies.policy(stage)


def _functions(template: dict) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}


@pytest.mark.parametrize("stage", STAGES)
def test_package_makes_a_template_and_a_zip_without_boto3(packages, stage, capsys):
    # GIVEN `make package STAGE=<stage>` WHEN it ran THEN the template and the zip are there
    pkg = packages[stage]
    assert pkg.template.is_file() and pkg.zip.is_file()
    with capsys.disabled():  # shown in every run, not only with -s
        print(f"\n{stage}: deployment.zip is {pkg.zip_bytes / 1e6:.2f} MB ({pkg.zip_bytes} bytes)")
    with zipfile.ZipFile(pkg.zip) as zf:
        names = zf.namelist()
    tops = {n.split("/")[0] for n in names}
    assert not {t for t in tops if t.startswith(("boto3", "botocore", "s3transfer"))}, sorted(tops)
    assert "app.py" in names
    assert pkg.zip_bytes < 50 * 1024 * 1024, "Lambda's zipped upload limit is 50 MB"


def test_cfn_lint_passes_on_the_merged_templates(packages):
    proc = subprocess.run([str(CFN_LINT), *(str(p.template) for p in packages.values())],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("stage", STAGES)
def test_the_lambda_finds_the_catalog_and_build_contexts_in_its_zip(packages, stage, tmp_path):
    # GIVEN the zip unpacked the way Lambda does WHEN the catalog loads from it, with no
    # checkout around and nothing but the zip on the path THEN it reads its _bundle copy
    with zipfile.ZipFile(packages[stage].zip) as zf:
        zf.extractall(tmp_path)
    probe = (
        "import chalicelib.specs.catalog as c\n"
        "cat = c.load_catalog()\n"
        "print(c.ROOT)\n"
        "print(' '.join(sorted(cat.frameworks)))\n"
        "print(all(cat.context_dir(s).joinpath('Dockerfile').is_file() for s in cat.frameworks.values()))\n"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, check=False)
    assert proc.returncode == 0, proc.stderr
    root, frameworks, contexts = proc.stdout.split("\n")[:3]
    assert root == str(tmp_path / "chalicelib" / "_bundle")
    assert set(frameworks.split()) == {p.stem for p in (ROOT / "buildspecs").glob("[!_]*.yaml")}
    assert contexts == "True"


@pytest.mark.parametrize("stage", STAGES)
def test_the_package_holds_each_catalog_context_under_the_digest_its_manifest_names(packages, stage, tmp_path):
    # GIVEN the package WHEN the Lambda reads its bundle's manifest THEN every locked default
    # combination is named, and dist/<stage>/contexts holds exactly those tarballs, each under
    # the SHA-256 of its bytes, with its lock inside (what scripts/deploy.sh uploads)
    with zipfile.ZipFile(packages[stage].zip) as zf:
        manifest = json.loads(zf.read("chalicelib/_bundle/catalog-contexts.json"))
    locks = {f"{p.parent.name}/{p.stem}" for p in (ROOT / "buildspecs" / "locks").glob("*/*.txt")}
    assert set(manifest) == locks and {"pytorch/2.14.1-cu126-py312", "tensorflow/2.21.0-cu125-py312"} <= locks
    objects = packages[stage].zip.parent / "contexts"
    stored = sorted(p.relative_to(objects).as_posix() for p in objects.rglob("*") if p.is_file())
    assert stored == sorted(f"catalog/sha256/{d.removeprefix('sha256:')}" for d in manifest.values())
    for key, digest in manifest.items():
        data = (objects / "catalog" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            lock = tar.extractfile("lock-hashed.txt").read()
        assert lock == (ROOT / "buildspecs" / "locks" / f"{key}.txt").read_bytes()


# what the Lambda Python runtime brings besides the standard library
LAMBDA_RUNTIME = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")


def test_the_app_imports_from_the_zip_with_only_what_the_lambda_runtime_adds(packages, tmp_path):
    # GIVEN the zip unpacked and, beside it, only the packages the Lambda runtime provides
    code = tmp_path / "task"
    with zipfile.ZipFile(packages["dev"].zip) as zf:
        zf.extractall(code)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for name in LAMBDA_RUNTIME:
        mod = __import__(name)
        src = Path(mod.__file__)
        src = src.parent if src.name == "__init__.py" else src
        (runtime / src.name).symlink_to(src)
    # WHEN Lambda imports the handler module THEN every import resolves (a dependency missing
    # from requirements.txt fails here, not in AWS) and every handler is registered
    probe = "import app\nprint(' '.join(sorted(app.app.handler_map)))\n"
    proc = subprocess.run([sys.executable, "-S", "-c", probe], cwd=code, capture_output=True, text=True,
                          env={"PYTHONPATH": f"{code}:{runtime}", "PATH": "/usr/bin:/bin",
                               "AWS_DEFAULT_REGION": "us-east-1", "VOLTABUILD_STAGE": "dev"}, check=False)
    assert proc.returncode == 0, proc.stderr
    import app as checkout_app

    assert set(proc.stdout.split()) == set(checkout_app.app.handler_map)


@pytest.mark.parametrize("stage", STAGES)
def test_merged_template_holds_every_resource_and_pins_the_stage(templates, stage):
    tpl = templates[stage]
    assert set(load_template()["Resources"]) <= set(tpl["Resources"])
    assert tpl["Parameters"]["Stage"]["AllowedValues"] == [stage]
    assert tpl["Transform"] == "AWS::Serverless-2016-10-31"


@pytest.mark.parametrize("stage", STAGES)
def test_every_lambda_runs_with_a_cut_of_the_stage_policy_and_the_deployments_resources(templates, stage):
    tpl = templates[stage]
    env = tpl["Globals"]["Function"]["Environment"]["Variables"]
    assert env["LAUNCH_QUEUE_URL"] == {"Ref": "LaunchQueue"}
    assert env["NOTIFY_QUEUE_URL"] == {"Ref": "NotifyQueue"}
    assert env["SECURITY_GROUP_ID"] == {"Ref": "BuilderSecurityGroup"}
    assert env["INSTANCE_PROFILE"] == {"Ref": "BuilderInstanceProfile"}
    functions = _functions(tpl)
    assert "APIHandler" in functions
    for name, fn in functions.items():
        variables = fn["Properties"]["Environment"]["Variables"]
        assert variables["VOLTABUILD_STAGE"] == stage, name
        assert variables["BUILDS_TABLE"] == f"voltabuild-{stage}-builds", name
        role = tpl["Resources"][fn["Properties"]["Role"]["Fn::GetAtt"][0]]
        # its own cut of the stage policy: only statements of it, each narrowed (issue 17)
        (doc,) = [p["PolicyDocument"] for p in role["Properties"]["Policies"]]
        stage_statements = {st["Sid"]: st for st in policy_file(stage)["Statement"]}
        for st in doc["Statement"]:
            whole = stage_statements[st["Sid"]]
            assert set(st["Action"]) <= set(whole["Action"]), (name, st["Sid"])
            assert st.get("Condition") == whole.get("Condition"), (name, st["Sid"])
            assert all(r in whole["Resource"] for r in st["Resource"]), (name, st["Sid"])
        assert not role["Properties"].get("ManagedPolicyArns"), name


@pytest.mark.parametrize("stage", STAGES)
def test_queue_triggers_point_at_the_queues_the_template_creates(templates, stage):
    tpl = templates[stage]
    sources = [e for fn in _functions(tpl).values() for e in (fn["Properties"].get("Events") or {}).values()
               if e["Type"] == "SQS"]
    assert sources, "app.py consumes the launch and notify queues"
    for event in sources:
        logical = event["Properties"]["Queue"]["Fn::GetAtt"][0]
        queue = tpl["Resources"][logical]
        assert queue["Type"] == "AWS::SQS::Queue"
        assert queue["Properties"]["QueueName"] == {"Fn::Sub": f"voltabuild-${{Stage}}-{logical[:-5].lower()}"}


@pytest.mark.parametrize("stage", STAGES)
def test_the_usage_plan_covers_the_apis_stage(templates, stage):
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    api_stage = config["stages"][stage].get("api_gateway_stage", config.get("api_gateway_stage", "api"))
    resources = templates[stage]["Resources"]
    assert resources["RestAPI"]["Properties"]["StageName"] == api_stage
    plan = resources["UsagePlan"]
    # SAM names the stage it makes for an AWS::Serverless::Api "<api logical id><stage name>Stage"
    assert plan["DependsOn"] == f"RestAPI{api_stage}Stage"
    assert plan["Properties"]["ApiStages"] == [{"ApiId": {"Ref": "RestAPI"}, "Stage": api_stage}]
    assert resources["DefaultApiKeyOnPlan"]["Properties"] == {
        "KeyId": {"Ref": "DefaultApiKey"}, "KeyType": "API_KEY", "UsagePlanId": {"Ref": "UsagePlan"}}


# ---- the post-processing, on templates made up for the purpose ----------------------------


def _template(queue_ref, timeout=60, visibility=120) -> dict:
    return {"Resources": {
        "LaunchQueue": {"Type": "AWS::SQS::Queue",
                        "Properties": {"QueueName": {"Fn::Sub": "voltabuild-${Stage}-launch"},
                                       "VisibilityTimeout": visibility}},
        "Launcher": {"Type": "AWS::Serverless::Function", "Properties": {
            "Timeout": timeout,
            "Events": {"LauncherSqsEventSource": {"Type": "SQS", "Properties": {"Queue": queue_ref}}}}},
    }}


ARN = "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:"


def test_a_queue_arn_string_becomes_a_reference_to_the_queue():
    tpl = _template({"Fn::Sub": ARN + "voltabuild-prod-launch"})
    assert wire_queue_triggers(tpl, "prod") == {"Launcher": "LaunchQueue"}
    event = tpl["Resources"]["Launcher"]["Properties"]["Events"]["LauncherSqsEventSource"]
    assert event["Properties"]["Queue"] == {"Fn::GetAtt": ["LaunchQueue", "Arn"]}


def test_a_handler_on_a_queue_the_template_lacks_fails_the_packaging():
    # app.py imported for the wrong stage: it names dev's queue while prod is packaged
    tpl = _template({"Fn::Sub": ARN + "voltabuild-dev-launch"})
    with pytest.raises(PackagingError, match="voltabuild-dev-launch.*does not create"):
        wire_queue_triggers(copy.deepcopy(tpl), "prod")


def test_a_visibility_timeout_shorter_than_the_function_fails_the_packaging():
    tpl = _template({"Fn::Sub": ARN + "voltabuild-dev-launch"}, timeout=300, visibility=120)
    with pytest.raises(PackagingError, match="VisibilityTimeout"):
        wire_queue_triggers(tpl, "dev")


def test_a_zip_with_boto3_is_refused(tmp_path):
    bad = tmp_path / "deployment.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("app.py", "")
        zf.writestr("boto3/__init__.py", "")
        zf.writestr("chalicelib/_bundle/buildspecs/x.yaml", "")
        zf.writestr("chalicelib/_bundle/dockerfiles/x/Dockerfile", "")
    with pytest.raises(PackagingError, match="boto3"):
        check_zip(bad)


def test_the_api_url_chalice_reports_is_a_valid_public_api_url_parameter():
    # scripts/deploy.sh passes the stack's EndpointURL output back as PublicApiUrl
    import re

    import yaml

    pattern = yaml.safe_load((ROOT / "infra" / "deploy.yaml").read_text())["Parameters"]["PublicApiUrl"]["AllowedPattern"]
    assert re.fullmatch(pattern, "https://abc123defg.execute-api.eu-west-1.amazonaws.com/api/")
    assert re.fullmatch(pattern, "")
    assert not re.fullmatch(pattern, "http://evil.example/$(reboot)")
