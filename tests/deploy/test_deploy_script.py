"""scripts/deploy.sh against a recording stand-in for the AWS CLI (no account is reached)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHELLCHECK = Path(sys.executable).with_name("shellcheck")
URL = "https://abc123.execute-api.eu-west-1.amazonaws.com/api/"

# The fake `aws`: records argv, answers like the CLI for what deploy.sh asks.
FAKE_AWS = r'''#!/usr/bin/env python3
import json, os, sys
from pathlib import Path
state = Path(os.environ["FAKE_AWS_STATE"])
calls = state / "calls.jsonl"
with calls.open("a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
args = sys.argv[1:]
cmd = " ".join(args[:2])
deployed = (state / "deployed").exists()
def out(s):
    print(s)
    sys.exit(0)
def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(254)
if cmd == "sts get-caller-identity":
    out("111122223333")
if cmd == "ec2 describe-vpcs":
    out("vpc-0abc")
if cmd == "ec2 describe-subnets":
    out("subnet-a\tsubnet-b\tsubnet-c")
if cmd == "s3api head-bucket":
    fail("Not Found")
if cmd in ("s3api create-bucket", "s3api put-public-access-block", "iam create-service-linked-role"):
    out("{}")
if cmd == "iam get-role":
    fail("NoSuchEntity")
if cmd == "cloudformation package":
    Path(args[args.index("--output-template-file") + 1]).write_text("{}")
    out("")
if cmd == "cloudformation describe-stacks":
    if not deployed:
        fail("Stack with id voltabuild-dev does not exist")
    query = args[args.index("--query") + 1]
    if "ContextsBucketName" in query:
        out("voltabuild-dev-contexts-111122223333-eu-west-1")
    out(os.environ["FAKE_API_URL"] if "EndpointURL" in query else "key-1" if "ApiKeyId" in query else "None")
if cmd == "cloudformation deploy":
    (state / "deployed").touch()
    out("Successfully created/updated stack")
if cmd == "s3 sync":
    out("")
if cmd == "ssm get-parameter":
    fail("ParameterNotFound")
fail("fake aws: unexpected call " + " ".join(args))
'''


@pytest.fixture
def project(tmp_path):
    """A copy of the script with a package in dist/dev and the fake aws first on PATH."""
    proj = tmp_path / "proj"
    (proj / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "deploy.sh", proj / "scripts" / "deploy.sh")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "aws"
    fake.write_text(FAKE_AWS)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    state = tmp_path / "state"
    state.mkdir()
    return proj, bindir, state


def run(proj: Path, bindir: Path, state: Path, **env) -> subprocess.CompletedProcess:
    full = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(state), "FAKE_AWS_STATE": str(state),
            "FAKE_API_URL": URL, "AWS_REGION": "eu-west-1", **env}
    return subprocess.run(["bash", str(proj / "scripts" / "deploy.sh")], env=full, capture_output=True,
                          text=True, check=False, timeout=60)


def calls(state: Path) -> list[list[str]]:
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


def package(proj: Path, stage: str = "dev") -> None:
    dist = proj / "dist" / stage
    dist.mkdir(parents=True)
    (dist / "sam.json").write_text("{}")
    (dist / "deployment.zip").write_bytes(b"PK")
    objects = dist / "contexts" / "catalog" / "sha256"
    objects.mkdir(parents=True)
    (objects / ("a" * 64)).write_bytes(b"a catalog context")


def overrides(call: list[str]) -> dict[str, str]:
    i = call.index("--parameter-overrides")
    return dict(a.split("=", 1) for a in call[i + 1:])


def test_first_deployment_creates_the_stack_then_tells_the_lambdas_their_url(project):
    proj, bindir, state = project
    package(proj)
    proc = run(proj, bindir, state)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == URL
    made = calls(state)
    deploys = [c for c in made if c[:2] == ["cloudformation", "deploy"]]
    assert len(deploys) == 2
    first, second = overrides(deploys[0]), overrides(deploys[1])
    key = first.pop("CursorKey")
    assert first.pop("VcsRef") and first.pop("VcsUrl") == ""  # the test project has no https origin
    assert first == {"Stage": "dev", "VpcId": "vpc-0abc", "SubnetIds": "subnet-a,subnet-b,subnet-c",
                     "SharedResources": "create", "LogRetentionDays": "30", "PublicApiUrl": ""}
    assert second["PublicApiUrl"] == URL
    # a random 256-bit cursor-signing key, never the guessable default
    assert len(key) == 64 and int(key, 16) and second["CursorKey"] == key
    caps = deploys[0][deploys[0].index("--capabilities") + 1:deploys[0].index("--no-fail-on-empty-changeset")]
    assert caps == ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
    assert deploys[0][deploys[0].index("--stack-name") + 1] == "voltabuild-dev"
    # the zip went to the account's own bucket, created private outside us-east-1
    create = next(c for c in made if c[:2] == ["s3api", "create-bucket"])
    assert "voltabuild-deploy-111122223333-eu-west-1" in create
    assert "LocationConstraint=eu-west-1" in create
    assert ["iam", "create-service-linked-role", "--aws-service-name", "spot.amazonaws.com"] in made
    # the Slack webhook cannot be made by CloudFormation: the user is told how
    assert "aws ssm put-parameter --type SecureString --name /voltabuild/dev/slack/default" in proc.stderr
    # the stack's API key: the user is shown how to read it
    assert "aws apigateway get-api-key --api-key key-1 --include-value" in proc.stderr


def test_the_catalog_contexts_are_uploaded_to_the_stages_bucket(project):
    # GIVEN a first deployment (no bucket yet), THEN the contexts go up once the stack made it
    proj, bindir, state = project
    package(proj)
    assert run(proj, bindir, state).returncode == 0
    made = calls(state)
    sync = ["s3", "sync", f"{proj}/dist/dev/contexts/catalog/",
            "s3://voltabuild-dev-contexts-111122223333-eu-west-1/catalog/", "--only-show-errors"]
    assert made.count(sync) == 1
    last_deploy = max(i for i, c in enumerate(made) if c[:2] == ["cloudformation", "deploy"])
    assert made.index(sync) > last_deploy
    # WHEN it deploys again (the bucket is there), THEN before the new code too
    (state / "calls.jsonl").unlink()
    assert run(proj, bindir, state).returncode == 0
    made = calls(state)
    syncs = [i for i, c in enumerate(made) if c == sync]
    first_deploy = min(i for i, c in enumerate(made) if c[:2] == ["cloudformation", "deploy"])
    assert len(syncs) == 2 and syncs[0] < first_deploy


def test_a_package_without_its_catalog_contexts_is_refused(project):
    proj, bindir, state = project
    package(proj)
    shutil.rmtree(proj / "dist" / "dev" / "contexts")
    proc = run(proj, bindir, state)
    assert proc.returncode != 0 and "run make package STAGE=dev" in proc.stderr


def test_a_redeployment_passes_the_known_url_at_once(project):
    proj, bindir, state = project
    package(proj)
    (state / "deployed").touch()
    proc = run(proj, bindir, state, VPC_ID="vpc-1", SUBNET_IDS="subnet-9")
    assert proc.returncode == 0, proc.stderr
    deploys = [c for c in calls(state) if c[:2] == ["cloudformation", "deploy"]]
    assert len(deploys) == 1
    assert overrides(deploys[0])["PublicApiUrl"] == URL
    assert overrides(deploys[0])["SubnetIds"] == "subnet-9"
    assert not [c for c in calls(state) if c[:2] in (["ec2", "describe-vpcs"], ["ec2", "describe-subnets"])]


@pytest.mark.parametrize("env, message", [
    ({}, "no package in"),
    ({"STAGE": "Prod!"}, "STAGE must be"),
    ({"AWS_REGION": ""}, "set AWS_REGION"),
])
def test_refuses_to_start_without_what_it_needs(project, env, message):
    proj, bindir, state = project
    proc = run(proj, bindir, state, **env)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert not (state / "calls.jsonl").exists() or not [c for c in calls(state) if c[:2] == ["cloudformation",
                                                                                             "deploy"]]


def test_deploy_script_is_shellcheck_clean():
    proc = subprocess.run([str(SHELLCHECK), str(ROOT / "scripts" / "deploy.sh")], capture_output=True, text=True,
                          check=False, env={**os.environ})
    assert proc.returncode == 0, proc.stdout


def test_the_alarm_settings_are_passed_only_when_given(project):
    # GIVEN ALARM_EMAIL and HOST_FAILURE_THRESHOLD  WHEN deploying  THEN both reach the stack
    proj, bindir, state = project
    package(proj)
    (state / "deployed").touch()
    proc = run(proj, bindir, state, ALARM_EMAIL="ops@example.com", HOST_FAILURE_THRESHOLD="5")
    assert proc.returncode == 0, proc.stderr
    [deploy] = [c for c in calls(state) if c[:2] == ["cloudformation", "deploy"]]
    assert (overrides(deploy)["AlarmEmail"], overrides(deploy)["HostFailureThreshold"]) == ("ops@example.com", "5")
