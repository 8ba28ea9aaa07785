"""The local stack's resources come from the same template a deployment uses."""

from __future__ import annotations

import json

import pytest

from infra.local import UNSET_WEBHOOK, create_resources, load_template, stage_environment


@pytest.fixture
def session():
    import boto3
    from moto import mock_aws

    with mock_aws():
        yield boto3.session.Session(region_name="us-east-1")


def test_everything_the_template_defines_is_created_with_its_settings(session):
    # GIVEN an empty emulated account WHEN the resources are created for stage dev
    res = create_resources(session, "dev")
    # THEN the table keeps old builds for TTL and has point-in-time recovery
    ddb = session.client("dynamodb")
    assert ddb.describe_time_to_live(TableName=res["BuildsTable"])["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
    backups = ddb.describe_continuous_backups(TableName=res["BuildsTable"])["ContinuousBackupsDescription"]
    assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
    # AND a message that keeps failing ends in the queue's dead-letter queue
    sqs = session.client("sqs")
    for queue, dlq, receives in (("LaunchQueue", "LaunchDeadLetterQueue", 5),
                                 ("NotifyQueue", "NotifyDeadLetterQueue", 8)):
        attrs = sqs.get_queue_attributes(QueueUrl=res[queue], AttributeNames=["RedrivePolicy"])["Attributes"]
        redrive = json.loads(attrs["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"].endswith(res[dlq].rsplit("/", 1)[1])
        assert int(redrive["maxReceiveCount"]) == receives
    # AND the repositories scan on push and expire stale build caches, split builds' unpromoted
    # candidates and untagged images
    ecr = session.client("ecr")
    repos = {r["repositoryName"]: r for r in ecr.describe_repositories()["repositories"]}
    assert set(repos) == {"voltabuild/pytorch", "voltabuild/tensorflow", "voltabuild/mxnet", "voltabuild/canary"}
    assert all(r["imageScanningConfiguration"]["scanOnPush"] for r in repos.values())
    rules = json.loads(ecr.get_lifecycle_policy(repositoryName="voltabuild/canary")["lifecyclePolicyText"])["rules"]
    assert [(r["selection"]["tagStatus"], r["selection"].get("tagPrefixList")) for r in rules] == [
        ("tagged", ["buildcache"]), ("tagged", ["candidate-"]), ("untagged", None)]
    # AND the build log group keeps logs for the template's default retention
    (group,) = session.client("logs").describe_log_groups(logGroupNamePrefix="/voltabuild/builds")["logGroups"]
    assert group["retentionInDays"] == load_template()["Parameters"]["LogRetentionDays"]["Default"]
    # AND the Slack webhook parameter exists as a SecureString, waiting for its URL
    param = session.client("ssm").get_parameter(Name="/voltabuild/dev/slack/default", WithDecryption=True)
    assert param["Parameter"]["Type"] == "SecureString" and param["Parameter"]["Value"] == UNSET_WEBHOOK
    assert res["SlackWebhookDefault"] == "/voltabuild/dev/slack/default"
    assert stage_environment(res)["BUILD_LOG_GROUP"] == "/voltabuild/builds"


def test_creating_twice_keeps_what_is_there(session):
    first = create_resources(session, "dev")
    ssm = session.client("ssm")
    ssm.put_parameter(Name="/voltabuild/dev/slack/default", Type="SecureString", Value="http://127.0.0.1:9/hook",
                      Overwrite=True)
    assert create_resources(session, "dev") == first
    assert ssm.get_parameter(Name="/voltabuild/dev/slack/default", WithDecryption=True)["Parameter"]["Value"] == (
        "http://127.0.0.1:9/hook")


def test_stage_names_follow_the_stage(session):
    res = create_resources(session, "prod", only={"AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::SSM::Parameter"})
    assert res["BuildsTable"] == "voltabuild-prod-builds"
    assert res["LaunchQueue"].endswith("/voltabuild-prod-launch")
    assert res["SlackWebhookDefault"] == "/voltabuild/prod/slack/default"
    assert "CanaryRepository" not in res


def test_builder_role_profile_and_security_group_on_request(session):
    # the local stack makes its own; tests of the launch path can ask for the template's
    res = create_resources(session, "dev", only={"AWS::IAM::Role", "AWS::IAM::InstanceProfile",
                                                 "AWS::EC2::SecurityGroup"})
    iam = session.client("iam")
    profile = iam.get_instance_profile(InstanceProfileName=res["BuilderInstanceProfile"])["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == ["voltabuild-dev-builder"]
    assert profile["Path"] == "/voltabuild/"
    assert iam.list_role_policies(RoleName="voltabuild-dev-builder")["PolicyNames"] == ["build"]
    (sg,) = session.client("ec2").describe_security_groups(GroupIds=[res["BuilderSecurityGroup"]])["SecurityGroups"]
    assert sg["IpPermissions"] == []
