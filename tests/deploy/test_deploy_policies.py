"""Least privilege: the Lambdas' policies (.chalice/policy-<stage>.json) and the builder
instance role (infra/resources.yaml), checked against what the code actually calls."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from chalicelib.specs.catalog import load_catalog
from infra import policies
from infra.local import load_template
from infra.permissions import (
    allows,
    aws_calls,
    host_script_calls,
    missing_actions,
    resolve,
    unknown_actions,
    unscoped_pass_role,
    unscoped_resources,
    wildcard_actions,
)

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("dev", "prod")
ACCOUNT, REGION = "123456789012", "us-east-1"


def lambda_policy(stage: str) -> dict:
    return resolve(policies.policy(stage))


def builder_role(stage: str) -> dict:
    role = load_template()["Resources"]["BuilderRole"]["Properties"]
    return resolve(role, extra={"Stage": stage})


def builder_policy(stage: str) -> dict:
    (policy,) = builder_role(stage)["Policies"]
    doc = policy["PolicyDocument"]
    # {"Ref": "Stage"} in conditions
    return json.loads(json.dumps(doc).replace('{"Ref": "Stage"}', json.dumps(stage)))


def builder_role_arn(stage: str) -> str:
    role = builder_role(stage)
    return f"arn:aws:iam::{ACCOUNT}:role{role['Path']}{role['RoleName']}"


def arn(service: str, rest: str) -> str:
    return f"arn:aws:{service}:{REGION}:{ACCOUNT}:{rest}"


# ---- what the code calls ----------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_the_policy_allows_every_call_the_lambdas_make(stage):
    # GIVEN every AWS call in app.py and chalicelib/ (handlers added later included)
    calls = aws_calls()
    assert {"dynamodb:PutItem", "sqs:SendMessage"} <= {c.action for c in calls}, "the scan finds the core's calls"
    # THEN the stage's policy grants each of them
    missing = missing_actions(lambda_policy(stage), calls)
    lacking = "; ".join(f"{action} (used at {', '.join(where)})" for action, where in sorted(missing.items()))
    assert not missing, f"policy-{stage}.json lacks: {lacking}"


# what the Lambda platform does with a function's role, not the code: its own logs, the
# SQS event source mappings' polling, and handing the builder role to RunInstances
PLATFORM_ACTIONS = {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                    "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "iam:PassRole"}


@pytest.mark.parametrize("stage", STAGES)
def test_the_policy_grants_nothing_the_lambdas_do_not_use(stage):
    granted = {a for s in lambda_policy(stage)["Statement"] for a in s["Action"]}
    unused = granted - {c.action for c in aws_calls()} - PLATFORM_ACTIONS
    assert not unused, f"policy-{stage}.json grants actions no code calls: {sorted(unused)}"


def test_the_checker_catches_a_permission_the_policy_lacks(tmp_path):
    # GIVEN code as a new handler might write it
    src = tmp_path / "newhandler.py"
    src.write_text(textwrap.dedent('''
        from chalicelib import wiring

        class Janitor:
            def __init__(self, sqs, ec2, ddb):
                self._sqs, self._ec2, self._ddb = sqs, ec2, ddb

            def sweep(self, url, build_id):
                self._sqs.purge_queue(QueueUrl=url)
                for page in self._ec2.get_paginator("describe_volumes").paginate():
                    pass
                self._ddb.transact_write_items(TransactItems=[
                    {"Delete": {"TableName": "t", "Key": {}}},
                    {"ConditionCheck": {"TableName": "t", "Key": {}, "ConditionExpression": "x"}},
                ])
                self.count(build_id)   # not an AWS call

        def janitor():
            return Janitor(wiring.client("sqs"), wiring.client("ec2"), wiring.client("dynamodb"))
    '''))
    # WHEN the calls are derived
    calls = aws_calls([src], root=tmp_path)
    actions = {c.action for c in calls}
    assert actions == {"sqs:PurgeQueue", "ec2:DescribeVolumes", "dynamodb:DeleteItem",
                       "dynamodb:ConditionCheckItem"}
    assert {c.where for c in calls if c.action == "sqs:PurgeQueue"} == {"newhandler.py:9"}
    # THEN the dev policy is found lacking exactly what it does not grant
    missing = missing_actions(lambda_policy("dev"), calls)
    assert set(missing) == {"sqs:PurgeQueue", "ec2:DescribeVolumes", "dynamodb:DeleteItem",
                            "dynamodb:ConditionCheckItem"}


def test_only_services_with_a_client_count(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text("def f(x):\n    x.send_message(QueueUrl='u', MessageBody='b')\n")
    assert aws_calls([src], root=tmp_path) == []
    src.write_text("import boto3\ndef f():\n    boto3.client('sqs').send_message(QueueUrl='u', MessageBody='b')\n")
    assert [c.action for c in aws_calls([src], root=tmp_path)] == ["sqs:SendMessage"]


# ---- the shape of the Lambda policies -----------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_no_wildcard_action_and_no_mutation_on_every_resource(stage):
    policy = lambda_policy(stage)
    assert wildcard_actions(policy) == []
    assert unscoped_resources(policy) == [], "only Describe* (no resource-level permissions) may use *"


@pytest.mark.parametrize("stage", STAGES)
def test_every_granted_action_exists(stage):
    # a misspelt action grants nothing: the Lambda would fail at run time
    assert unknown_actions(lambda_policy(stage)) == []
    assert unknown_actions(builder_policy(stage)) == []
    assert unknown_actions({"Statement": [{"Effect": "Allow", "Action": ["ec2:DescribeInstance", "nope:Get"]}]}) == [
        "ec2:DescribeInstance", "nope:Get"]


@pytest.mark.parametrize("stage", STAGES)
def test_pass_role_only_for_the_builder_role_and_only_to_ec2(stage):
    policy = lambda_policy(stage)
    assert unscoped_pass_role(policy, [builder_role_arn(stage)]) == []
    assert allows(policy, "iam:PassRole", builder_role_arn(stage))
    assert not allows(policy, "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/Admin")


def test_the_checks_flag_wildcards_and_an_unscoped_pass_role():
    loose = {"Statement": [
        {"Effect": "Allow", "Action": ["ec2:*"], "Resource": "*"},
        {"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*"},
        {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"},
        {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"},
    ]}
    assert wildcard_actions(loose) == ["ec2:*", "NotAction iam:*"]
    assert "*" in unscoped_pass_role(loose, ["arn:aws:iam::1:role/voltabuild/voltabuild-dev-builder"])
    assert "sqs:SendMessage" in unscoped_resources(loose)
    unconditioned = {"Statement": [{"Effect": "Allow", "Action": "iam:PassRole", "Resource": "arn:r"}]}
    assert unscoped_pass_role(unconditioned, ["arn:r"]) == [
        "statement ? has no iam:PassedToService condition"]


@pytest.mark.parametrize("stage", STAGES)
def test_the_stages_resources_are_named_and_no_other_stages(stage):
    policy = lambda_policy(stage)
    other = "prod" if stage == "dev" else "dev"
    table = arn("dynamodb", f"table/voltabuild-{stage}-builds")
    for action in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"):
        assert allows(policy, action, table), action
    assert allows(policy, "dynamodb:Query", table + "/index/by-instance")
    assert not allows(policy, "dynamodb:GetItem", arn("dynamodb", f"table/voltabuild-{other}-builds"))
    for queue in ("launch", "notify"):
        assert allows(policy, "sqs:SendMessage", arn("sqs", f"voltabuild-{stage}-{queue}"))
        assert not allows(policy, "sqs:SendMessage", arn("sqs", f"voltabuild-{other}-{queue}"))
    assert allows(policy, "ssm:GetParameter", arn("ssm", f"parameter/voltabuild/{stage}/slack/default"))
    assert not allows(policy, "ssm:GetParameter", arn("ssm", f"parameter/voltabuild/{other}/slack/default"))
    assert allows(policy, "logs:GetLogEvents", arn("logs", "log-group:/voltabuild/builds:log-stream:b-1"))
    assert not allows(policy, "logs:GetLogEvents", arn("logs", "log-group:/aws/lambda/other:log-stream:x"))


@pytest.mark.parametrize("stage", STAGES)
def test_ec2_launch_tag_and_terminate_only_what_carries_the_stage_tag(stage):
    policy = lambda_policy(stage)
    instance = arn("ec2", "instance/*")
    for action in ("ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:DeleteTags"):
        granting = [s for s in policy["Statement"] if action in s["Action"] and instance in s["Resource"]]
        assert granting, action
        for stmt in granting:
            equals = stmt.get("Condition", {}).get("StringEquals", {})
            stage_tag = {k: v for k, v in equals.items() if k.endswith("Tag/voltabuild:stage")}
            assert stage_tag == {"aws:RequestTag/voltabuild:stage" if action == "ec2:RunInstances"
                                 else "ec2:ResourceTag/voltabuild:stage": stage} or (
                equals == {"ec2:CreateAction": "RunInstances"} and action == "ec2:CreateTags"), (action, stmt["Sid"])


@pytest.mark.parametrize("stage", STAGES)
def test_sqs_triggers_can_read_their_queues(templates, stage):
    policy = lambda_policy(stage)
    tpl = templates[stage]
    for fn in tpl["Resources"].values():
        for event in (fn.get("Properties", {}).get("Events") or {}).values():
            if event["Type"] != "SQS":
                continue
            logical = event["Properties"]["Queue"]["Fn::GetAtt"][0]
            name = tpl["Resources"][logical]["Properties"]["QueueName"]["Fn::Sub"].replace("${Stage}", stage)
            for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"):
                assert allows(policy, action, arn("sqs", name)), (logical, action)


@pytest.mark.parametrize("stage", STAGES)
def test_lambdas_may_write_their_own_logs(stage):
    stream = arn("logs", f"log-group:/aws/lambda/voltabuild-{stage}-Launcher-AbC123:log-stream:2026/11/28/x")
    assert allows(lambda_policy(stage), "logs:PutLogEvents", stream)


def test_prod_policy_is_the_dev_policy_for_prod():
    dev, prod = policies.policy_text("dev"), policies.policy_text("prod")
    as_prod = dev.replace("voltabuild-dev-", "voltabuild-prod-").replace("/voltabuild/dev/", "/voltabuild/prod/")
    assert as_prod.replace('"dev"', '"prod"') == prod
    assert "dev" not in policies.policy_text("qa").replace("voltabuild-qa", ""), "no stage name is hard-coded"


def test_the_policy_files_chalice_reads_are_generated_for_every_stage(tmp_path):
    (tmp_path / ".chalice").mkdir()
    (tmp_path / ".chalice" / "config.json").write_text((ROOT / ".chalice" / "config.json").read_text())
    written = policies.write(tmp_path)
    assert sorted(p.name for p in written) == ["policy-dev.json", "policy-prod.json"]
    assert json.loads((tmp_path / ".chalice" / "policy-prod.json").read_text()) == policies.policy("prod")


# ---- the build instance's role ------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_builder_role_pushes_only_to_voltabuilds_repositories(stage):
    policy = builder_policy(stage)
    assert wildcard_actions(policy) == []
    assert unscoped_resources(policy) == [], "only ecr:GetAuthorizationToken needs *"
    repos = {spec.repository for spec in load_catalog().frameworks.values()}
    for repo in repos:
        assert allows(policy, "ecr:PutImage", arn("ecr", f"repository/{repo}")), repo
    assert not allows(policy, "ecr:PutImage", arn("ecr", "repository/someone-else"))
    granted = {r for s in policy["Statement"] if "ecr:PutImage" in s["Action"] for r in s["Resource"]}
    # users' own repositories (issue 20) are under voltabuild/ too, made by the launcher
    assert granted == {arn("ecr", f"repository/{repo}") for repo in repos} | {arn("ecr", "repository/voltabuild/*")}
    assert allows(policy, "ecr:PutImage", arn("ecr", "repository/voltabuild/team/app"))


@pytest.mark.parametrize("stage", STAGES)
def test_builder_role_can_do_nothing_else(stage):
    policy = builder_policy(stage)
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert actions == {
        "ecr:GetAuthorizationToken", "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
        "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchDeleteImage",  # the candidate tag (issue 23)
        "logs:CreateLogStream", "logs:PutLogEvents",
    }
    assert allows(policy, "logs:PutLogEvents", arn("logs", "log-group:/voltabuild/builds:log-stream:b-1"))
    assert not allows(policy, "logs:PutLogEvents", arn("logs", "log-group:/other:log-stream:b-1"))
    assert builder_role(stage).get("ManagedPolicyArns") is None
    trust = builder_role(stage)["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "ec2.amazonaws.com"}]


@pytest.mark.parametrize("stage", STAGES)
def test_builder_role_allows_every_aws_cli_call_of_the_host_script(stage):
    calls = host_script_calls()
    assert {"logs:PutLogEvents", "ecr:GetAuthorizationToken"} <= {c.action for c in calls}
    assert missing_actions(builder_policy(stage), calls) == {}


def test_the_host_script_scan_sees_a_new_aws_cli_call(tmp_path):
    (tmp_path / "chalicelib" / "launching" / "templates").mkdir(parents=True)
    (tmp_path / "chalicelib" / "launching" / "templates" / "host.sh").write_text(
        "#!/usr/bin/env bash\n# aws s3 cp is only mentioned here\n"
        "x=$(aws ssm get-parameter --name /p)\naws ec2 describe-tags | jq .\n")
    calls = host_script_calls(tmp_path)
    assert [(c.action, c.where) for c in calls] == [
        ("ec2:DescribeTags", "chalicelib/launching/templates/host.sh:4"),
        ("ssm:GetParameter", "chalicelib/launching/templates/host.sh:3")]
    assert set(missing_actions(builder_policy("dev"), calls)) == {"ec2:DescribeTags", "ssm:GetParameter"}


@pytest.mark.parametrize("stage", STAGES)
def test_builder_has_no_ec2_permission_and_no_condition_it_does_not_need(stage):
    # the instance ends itself by halting (InstanceInitiatedShutdownBehavior=terminate), so
    # the old TerminateInstances statement (on the aws:ARN = ec2:SourceInstanceARN trick) went
    policy = builder_policy(stage)
    assert not any(a.startswith("ec2:") for s in policy["Statement"] for a in s["Action"])
    assert all("Condition" not in s for s in policy["Statement"])
    # what the host script's aws CLI calls need, plus docker's registry protocol for push/pull
    used = {c.action for c in host_script_calls()} | {
        "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
        "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:PutImage"}
    assert {a for s in policy["Statement"] for a in s["Action"]} == used


# ---- one role per function (issue 17) -----------------------------------------------------


def function_roles(template: dict, stage: str) -> dict[str, dict]:
    res = template["Resources"]
    out = {}
    for logical, fn in res.items():
        if fn["Type"] == "AWS::Serverless::Function":
            role = res[fn["Properties"]["Role"]["Fn::GetAtt"][0]]["Properties"]
            (policy,) = role["Policies"]
            out[logical] = resolve(policy["PolicyDocument"])
    return out


def granted(policy: dict) -> set[str]:
    return {a for s in policy["Statement"] for a in s["Action"]}


@pytest.mark.parametrize("stage", STAGES)
def test_each_function_has_its_own_role_with_exactly_its_own_calls(templates, stage):
    from infra.package import function_actions
    from infra.permissions import function_calls

    tpl = templates[stage]
    calls = function_calls()
    roles = {logical: fn["Properties"]["Role"]["Fn::GetAtt"][0] for logical, fn in tpl["Resources"].items()
             if fn["Type"] == "AWS::Serverless::Function"}
    assert len(set(roles.values())) == len(roles) == 8, roles
    for logical, policy in function_roles(tpl, stage).items():
        # every call its code makes is granted ...
        assert missing_actions(policy, calls[logical]) == {}, logical
        # ... and nothing else (its own logs, its queue's polling, RunInstances' tagging/PassRole)
        assert granted(policy) == function_actions(tpl, logical, calls), logical


@pytest.mark.parametrize("stage", STAGES)
def test_the_internet_facing_functions_cannot_launch_or_read_secrets(templates, stage):
    roles = function_roles(templates[stage], stage)
    api, events = granted(roles["APIHandler"]), granted(roles["EventsHandler"])
    for forbidden in ("ec2:RunInstances", "iam:PassRole", "ssm:GetParameter"):
        assert forbidden not in api and forbidden not in events, forbidden
    assert not any(a.startswith("ec2:") for a in events), "the anonymous route touches no instance"
    assert "ec2:RunInstances" in granted(roles["Launcher"]) and "iam:PassRole" in granted(roles["Launcher"])
    assert "ssm:GetParameter" in granted(roles["NotifyConsumer"])
    # a queue consumer polls its own queue only
    (poll,) = [s for s in roles["NotifyConsumer"]["Statement"] if "sqs:ReceiveMessage" in s["Action"]]
    assert poll["Resource"] == [arn("sqs", f"voltabuild-{stage}-notify")]


def test_the_call_graph_attributes_every_call_to_some_function():
    # the per-function scan must not lose a call site the whole-code scan finds (it may drop
    # the whole-code scan's guesses of another service: describe_images on the ecr client)
    from infra.permissions import function_calls

    per_function = {c.where for calls in function_calls().values() for c in calls}
    everywhere = {c.where for c in aws_calls()}
    assert everywhere - per_function == set()
    reaper = {c.action for c in function_calls()["Reaper"] if c.where.startswith("chalicelib/events/reaper.py")}
    assert "ecr:DescribeImages" in reaper and "ec2:DescribeImages" not in reaper


@pytest.mark.parametrize("stage", STAGES)
def test_run_instances_requires_imdsv2_by_iam(stage):
    policy = lambda_policy(stage)
    instance = arn("ec2", "instance/*")
    granting = [s for s in policy["Statement"] if "ec2:RunInstances" in s["Action"] and instance in s["Resource"]]
    assert granting
    for stmt in granting:
        assert stmt["Condition"]["StringEquals"]["ec2:MetadataHttpTokens"] == "required", stmt["Sid"]


def test_a_repository_for_every_framework_scanned_on_push_with_a_lifecycle():
    resources = load_template()["Resources"]
    repos = {r["Properties"]["RepositoryName"]: r["Properties"] for r in resources.values()
             if r["Type"] == "AWS::ECR::Repository"}
    assert set(repos) == {spec.repository for spec in load_catalog().frameworks.values()}
    for name, props in repos.items():
        assert props["ImageScanningConfiguration"] == {"ScanOnPush": True}, name
        rules = json.loads(props["LifecyclePolicy"]["LifecyclePolicyText"])["rules"]
        selections = [r["selection"] for r in rules]
        assert {"tagStatus": "untagged"}.items() <= selections[2].items()
        assert selections[0]["tagPrefixList"] == ["buildcache"]
        # a split build's candidate that was never promoted expires (issue 23), after longer
        # than any build may run
        assert selections[1]["tagPrefixList"] == ["candidate-"] and selections[1]["countNumber"] >= 2


def test_the_security_group_lets_nothing_in():
    sg = load_template()["Resources"]["BuilderSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in sg
    assert sg["VpcId"] == {"Ref": "VpcId"}
