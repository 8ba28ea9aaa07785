"""The emulated AWS (moto) the local stack, the benchmarks and the tests run on: voltabuild's
resources from infra/resources.yaml, the EC2 prerequisites of a launch, and moto in-process.

The same definitions a deployment uses: the local stack and the tests call
:func:`create_resources`; nothing here is a second hand-written copy.

Created: the table (TTL, point-in-time recovery), the queues (with their dead-letter
queues), the ECR repositories (scan on push, lifecycle policy), the build log group
(retention) and the Slack webhook SecureString parameters named in the template's
``Voltabuild::SecureStringParameters`` metadata (CloudFormation cannot create those).
The builder role, instance profile and security group are left to whoever needs them
(the local stack makes its own): pass ``only={"AWS::IAM::Role", ...}`` to get them here.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.loaders
import botocore.session
import yaml

TEMPLATE = Path(__file__).with_name("resources.yaml")
ACCOUNT_ID = "123456789012"
SECURE_PARAMETERS = "Voltabuild::SecureStringParameters"
SSM_PARAMETER = "AWS::SSM::Parameter"
# created only when asked for by type: they need a VPC / IAM, which most tests never touch
_ON_REQUEST = {"AWS::IAM::Role", "AWS::IAM::InstanceProfile", "AWS::EC2::SecurityGroup"}
# the value a Slack parameter gets until someone sets the real webhook URL
UNSET_WEBHOOK = "unset"


class _Clients:
    """One client per service for a whole create_resources call (creating clients is slow)."""

    def __init__(self, session) -> None:
        self._session = session
        self._made: dict[str, Any] = {}
        self.region_name = session.region_name
        # Loading botocore's service models is most of the time a fresh session spends
        # here (the tests make one per test): share one loader, whose data never changes.
        core = getattr(session, "_session", None)
        if isinstance(core, botocore.session.Session):
            core.register_component("data_loader", _shared_loader())

    def client(self, name: str):
        if name not in self._made:
            self._made[name] = self._session.client(name)
        return self._made[name]


@functools.cache
def _shared_loader():
    return botocore.loaders.create_loader()


def load_template() -> dict:
    """The parsed template (a fresh copy: callers may change it)."""
    return copy.deepcopy(_parsed(TEMPLATE.stat().st_mtime_ns))


@functools.cache
def _parsed(_mtime_ns: int) -> dict:
    return yaml.safe_load(TEMPLATE.read_text())


def parameter_defaults(tpl: dict, stage: str, region: str) -> dict[str, Any]:
    params = {name: p.get("Default") for name, p in tpl.get("Parameters", {}).items()}
    params.update({"Stage": stage, "AWS::Region": region, "AWS::AccountId": ACCOUNT_ID,
                   "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"})
    return params


def _sub(value: Any, params: dict[str, Any]) -> Any:
    """Resolve the intrinsics this template uses: Fn::Sub and Ref on parameters."""
    if isinstance(value, dict) and list(value) == ["Fn::Sub"]:
        return re.sub(r"\$\{([\w:]+)\}", lambda m: str(params[m.group(1)]), value["Fn::Sub"])
    if isinstance(value, dict) and list(value) == ["Ref"] and value["Ref"] in params:
        return params[value["Ref"]]
    if isinstance(value, dict):
        return {k: _sub(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [_sub(v, params) for v in value]
    return value


def secure_parameters(tpl: dict, stage: str) -> dict[str, str]:
    """Logical id -> SSM parameter name for every SecureString the template's metadata names."""
    out = {}
    for spec in tpl.get("Metadata", {}).get(SECURE_PARAMETERS, []):
        for channel in spec.get("Channels", [None]):
            name = spec["Name"].replace("<stage>", stage)
            if channel is not None:
                name = name.replace("<channel>", channel)
            logical = "SlackWebhook" + "".join(p.capitalize() for p in re.split(r"[^A-Za-z0-9]", channel or ""))
            out[logical] = name
    return out


def _table_kwargs(props: dict) -> dict:
    kwargs = {k: props[k] for k in ("TableName", "AttributeDefinitions", "KeySchema", "BillingMode")}
    if props.get("GlobalSecondaryIndexes"):
        kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    return kwargs


def _create_table(session, props: dict) -> str:
    ddb = session.client("dynamodb")
    name = props["TableName"]
    try:
        ddb.create_table(**_table_kwargs(props))
    except ddb.exceptions.ResourceInUseException:
        return name
    ttl = props.get("TimeToLiveSpecification")
    if ttl:
        ddb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
    pitr = props.get("PointInTimeRecoverySpecification")
    if pitr:
        ddb.update_continuous_backups(TableName=name, PointInTimeRecoverySpecification=pitr)
    return name


def _create_queue(session, props: dict, arns: dict[str, str]) -> tuple[str, str]:
    sqs = session.client("sqs")
    attrs = {}
    for key in ("VisibilityTimeout", "MessageRetentionPeriod"):
        if key in props:
            attrs[key] = str(props[key])
    redrive = props.get("RedrivePolicy")
    if redrive:
        target = redrive["deadLetterTargetArn"]
        if isinstance(target, dict):  # {"Fn::GetAtt": [Logical, "Arn"]}: created earlier
            target = arns[target["Fn::GetAtt"][0]]
        attrs["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": target,
                                             "maxReceiveCount": str(redrive["maxReceiveCount"])})
    url = sqs.create_queue(QueueName=props["QueueName"], Attributes=attrs)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def _create_repository(session, props: dict) -> str:
    ecr = session.client("ecr")
    name = props["RepositoryName"]
    try:
        ecr.create_repository(
            repositoryName=name,
            imageTagMutability=props.get("ImageTagMutability", "MUTABLE"),
            imageScanningConfiguration={"scanOnPush": props.get("ImageScanningConfiguration", {}).get("ScanOnPush",
                                                                                                     False)},
        )
    except ecr.exceptions.RepositoryAlreadyExistsException:
        return name
    policy = props.get("LifecyclePolicy", {}).get("LifecyclePolicyText")
    if policy:
        ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=policy)
    return name


def _create_log_group(session, props: dict) -> str:
    logs = session.client("logs")
    name = props["LogGroupName"]
    try:
        logs.create_log_group(logGroupName=name)
    except logs.exceptions.ResourceAlreadyExistsException:
        return name
    if props.get("RetentionInDays"):
        logs.put_retention_policy(logGroupName=name, retentionInDays=int(props["RetentionInDays"]))
    return name


def _create_bucket(session, props: dict) -> str:
    """The contexts bucket (issue 20): encryption, public access block and lifecycle as in
    the template (moto keeps them; nothing local enforces them)."""
    s3 = session.client("s3")
    name = props["BucketName"]
    try:
        s3.create_bucket(Bucket=name)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        return name
    if props.get("BucketEncryption"):
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": r["ServerSideEncryptionByDefault"],
             "BucketKeyEnabled": r.get("BucketKeyEnabled", False)}
            for r in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]]})
    if props.get("PublicAccessBlockConfiguration"):
        s3.put_public_access_block(Bucket=name,
                                   PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"])
    rules = props.get("LifecycleConfiguration", {}).get("Rules", [])
    if rules:
        s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": [{
            "ID": r["Id"], "Status": r["Status"], "Filter": {"Prefix": r.get("Prefix", "")},
            "Expiration": {"Days": int(r["ExpirationInDays"])},
            "AbortIncompleteMultipartUpload": r["AbortIncompleteMultipartUpload"]} for r in rules]})
    return name


def _create_secure_parameter(session, name: str) -> str:
    ssm = session.client("ssm")
    try:
        ssm.put_parameter(Name=name, Type="SecureString", Value=UNSET_WEBHOOK, Overwrite=False,
                          Description="Slack incoming-webhook URL (voltabuild)")
    except ssm.exceptions.ParameterAlreadyExists:
        pass  # keep what is set
    return name


def _create_on_request(session, kind: str, props: dict, out: dict[str, str]) -> str:
    if kind == "AWS::IAM::Role":
        iam = session.client("iam")
        name = props["RoleName"]
        try:
            iam.create_role(RoleName=name, Path=props.get("Path", "/"),
                            AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"]))
        except iam.exceptions.EntityAlreadyExistsException:
            return name
        for policy in props.get("Policies", []):
            iam.put_role_policy(RoleName=name, PolicyName=policy["PolicyName"],
                                PolicyDocument=json.dumps(policy["PolicyDocument"]))
        return name
    if kind == "AWS::IAM::InstanceProfile":
        iam = session.client("iam")
        name = props["InstanceProfileName"]
        try:
            iam.create_instance_profile(InstanceProfileName=name, Path=props.get("Path", "/"))
        except iam.exceptions.EntityAlreadyExistsException:
            return name
        for role in props.get("Roles", []):
            role_name = out[role["Ref"]] if isinstance(role, dict) else role
            iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role_name)
        return name
    # AWS::EC2::SecurityGroup, in the default VPC: no inbound rule, as in the template
    ec2 = session.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    found = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [props["GroupName"]]},
                                                  {"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"]
    if found:
        return found[0]["GroupId"]
    return ec2.create_security_group(GroupName=props["GroupName"], Description=props["GroupDescription"],
                                     VpcId=vpc)["GroupId"]


def create_resources(session, stage: str = "dev", only: set[str] | None = None) -> dict[str, str]:
    """Create every supported resource; returns logical id -> name, URL (queues) or id (security
    group). Idempotent. ``only`` limits it to these CloudFormation types (the Slack parameters
    count as ``AWS::SSM::Parameter``)."""
    tpl = load_template()
    session = _Clients(session)
    params = parameter_defaults(tpl, stage, session.region_name)
    out: dict[str, str] = {}
    arns: dict[str, str] = {}
    wanted = (lambda kind: kind in only) if only else (lambda kind: kind not in _ON_REQUEST)
    # dead-letter queues before the queues that name them
    ordered = sorted(tpl["Resources"].items(), key=lambda kv: "RedrivePolicy" in kv[1].get("Properties", {}))
    for logical, res in ordered:
        kind = res["Type"]
        if not wanted(kind):
            continue
        props = _sub(res.get("Properties", {}), params)
        if kind == "AWS::DynamoDB::Table":
            out[logical] = _create_table(session, props)
        elif kind == "AWS::SQS::Queue":
            out[logical], arns[logical] = _create_queue(session, props, arns)
        elif kind == "AWS::ECR::Repository":
            out[logical] = _create_repository(session, props)
        elif kind == "AWS::Logs::LogGroup":
            out[logical] = _create_log_group(session, props)
        elif kind == "AWS::S3::Bucket":
            out[logical] = _create_bucket(session, props)
        elif kind in _ON_REQUEST:
            out[logical] = _create_on_request(session, kind, props, out)
    if wanted(SSM_PARAMETER):
        for logical, name in secure_parameters(tpl, stage).items():
            out[logical] = _create_secure_parameter(session, name)
    return out


def stage_environment(resources: dict[str, str], stage: str = "dev") -> dict[str, str]:
    """The app's environment variables for resources made by :func:`create_resources`."""
    env = {
        "VOLTABUILD_STAGE": stage,
        "BUILDS_TABLE": resources["BuildsTable"],
        "LAUNCH_QUEUE_URL": resources["LaunchQueue"],
        "NOTIFY_QUEUE_URL": resources["NotifyQueue"],
        # a fresh random key per stack: the app refuses to start without one (issue 17)
        "CURSOR_KEY": secrets.token_hex(32),
    }
    if "BuildLogGroup" in resources:
        env["BUILD_LOG_GROUP"] = resources["BuildLogGroup"]
    if "ContextsBucket" in resources:
        env["CONTEXTS_BUCKET"] = resources["ContextsBucket"]
    return env


def prepare_ec2(session, name: str, *, subnets: int = 2) -> dict[str, str]:
    """What an account has before the first launch, in the emulation: an AMI, subnets of
    the default VPC, the builder security group (no inbound rules) and an instance profile
    named ``name``; returned as the launcher's environment variables."""
    ec2 = session.client("ec2")
    iam = session.client("iam")
    ami = ec2.register_image(Name=f"{name}-dlami", RootDeviceName="/dev/sda1", Architecture="x86_64")["ImageId"]
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    # the first zones by name (us-east-1a, -1b), never by subnet id: moto's ids are random, and
    # its spot price history has no entry in us-east-1e, so an instance there had no price
    found = [s["SubnetId"] for s in sorted(ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"],
                                           key=lambda s: (s["AvailabilityZone"], s["SubnetId"]))][:subnets]
    sg = ec2.create_security_group(GroupName=name, Description="voltabuild builders", VpcId=vpc)["GroupId"]
    rules = ec2.describe_security_groups(GroupIds=[sg])["SecurityGroups"][0].get("IpPermissions", [])
    if rules:
        ec2.revoke_security_group_ingress(GroupId=sg, IpPermissions=rules)
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"Service": "ec2.amazonaws.com"}}]}))
    iam.create_instance_profile(InstanceProfileName=name)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return {"AMI_ID": ami, "SUBNET_IDS": ",".join(found), "SECURITY_GROUP_ID": sg, "INSTANCE_PROFILE": name}


@contextlib.contextmanager
def emulated_aws(region: str = "us-east-1", *,
                 prepare: Callable[[Any], dict[str, str]] | None = None) -> Iterator[tuple[Any, dict[str, str]]]:
    """moto's in-process AWS with voltabuild's resources created, the app's environment
    pointing at them (plus what ``prepare(session)`` returns) and every lazy object of
    ``chalicelib.wiring`` reset. Yields ``(session, resources)``."""
    import boto3
    from moto import mock_aws

    from chalicelib import wiring

    with mock_aws():
        session = boto3.session.Session(region_name=region)
        resources = create_resources(session)
        env = {**stage_environment(resources), **(prepare(session) if prepare else {})}
        with wiring.environment(env):
            yield session, resources
