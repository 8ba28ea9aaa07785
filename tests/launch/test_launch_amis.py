"""The AMI per instance family: the launcher resolves the AMI for the type it is about to try
(from buildspecs/_hardware.yaml, or a deployment's AMI_OVERRIDES / AMI_ID / AMI_PARAMETER),
so a fallback list that mixes families gets one AMI and one user-data per type.

moto lacks p3.2xlarge and cannot hold /aws/service parameters: launches here use g5/g4dn and
AMIs the tests register; the table's own parameters are checked by name.
"""

from __future__ import annotations

import pytest
import test_launch_launcher as launch_tests
from test_launch_launcher import Ec2Faults, instances, record, submit

from chalicelib import wiring
from chalicelib.launching.hostscript import script_of
from chalicelib.settings import Settings

ec2_env = launch_tests.ec2_env  # the fixture: a deployment's AMI, subnets, security group, profile
DLAMI = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
UBUNTU = "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id"


def _user_data(ec2, iid: str) -> str:
    import base64

    attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
    return script_of(base64.b64decode(attr["UserData"]["Value"]))


def test_without_overrides_each_family_gets_the_tables_ami(aws, monkeypatch):
    for k in ("AMI_ID", "AMI_PARAMETER", "AMI_OVERRIDES"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PUBLIC_API_URL", "https://api.example.test/api")
    wiring.reset()
    launcher = wiring.launcher()
    assert launcher.ami_source("p3.2xlarge") == UBUNTU
    assert launcher.ami_source("p3dn.24xlarge") == UBUNTU
    assert launcher.ami_source("g4dn.xlarge") == DLAMI and launcher.ami_source("p5.48xlarge") == DLAMI


def test_a_missing_table_parameter_fails_the_launch_naming_it(aws, ec2_env, monkeypatch):
    # GIVEN no deployment override: g5 resolves the DLAMI's public parameter (absent in moto)
    monkeypatch.delenv("AMI_ID")
    wiring.reset()
    build_id, msg = submit(aws)
    assert wiring.launcher().handle(msg).action == "failed"
    reason = record(build_id)["reason"]
    assert "g5.xlarge" in reason and DLAMI in reason
    assert instances(ec2_env["ec2"]) == []


def test_a_fallback_list_that_mixes_families_gets_one_ami_per_type(aws, ec2_env, monkeypatch):
    # GIVEN g4dn overridden to its own AMI (an SSM parameter), the rest on AMI_ID
    ec2 = ec2_env["ec2"]
    other = ec2.register_image(Name="voltabuild-test-g4dn", RootDeviceName="/dev/xvda",
                               Architecture="x86_64")["ImageId"]
    aws.client("ssm").put_parameter(Name="/voltabuild/test/g4dn-ami", Value=other, Type="String")
    monkeypatch.setenv("AMI_OVERRIDES", "g4dn=/voltabuild/test/g4dn-ami")
    wiring.reset()
    launcher = wiring.launcher()
    # WHEN g5 has no capacity anywhere and the launcher moves on to g4dn
    launcher.ec2 = faults = Ec2Faults(launcher.ec2, fail={
        ("g5.xlarge", s, "spot"): "InsufficientInstanceCapacity" for s in ec2_env["subnets"]})
    build_id, msg = submit(aws)
    assert launcher.handle(msg).action == "launched"
    # THEN g5 was tried with AMI_ID and g4dn launched with its own AMI and user-data
    assert [c[0] for c in faults.calls] == ["g5.xlarge", "g5.xlarge", "g4dn.xlarge"]
    (inst,) = instances(ec2)
    assert (inst["InstanceType"], inst["ImageId"]) == ("g4dn.xlarge", other)
    script = _user_data(ec2, inst["InstanceId"])
    assert "readonly INSTANCE_TYPE=g4dn.xlarge\n" in script and "readonly DRIVER_BRANCH=580\n" in script


def test_a_family_override_beats_ami_id(aws, ec2_env, monkeypatch):
    ec2 = ec2_env["ec2"]
    other = ec2.register_image(Name="voltabuild-test-g5", RootDeviceName="/dev/sda1",
                               Architecture="x86_64")["ImageId"]
    monkeypatch.setenv("AMI_OVERRIDES", f"g5={other}")
    wiring.reset()
    _, msg = submit(aws)
    assert wiring.launcher().handle(msg).action == "launched"
    assert instances(ec2)[0]["ImageId"] == other


def test_ami_overrides_are_read_and_checked():
    s = Settings.from_env({"AMI_OVERRIDES": "p3=ami-0123456789abcdef0, g5=/aws/service/x/ami-id"})
    assert s.ami_overrides == (("p3", "ami-0123456789abcdef0"), ("g5", "/aws/service/x/ami-id"))
    assert Settings.from_env({}).ami_overrides == () and Settings.from_env({}).ami_parameter == ""
    for bad in ("p3", "p3=", "p3=ubuntu", "P3=ami-0123456789abcdef0", "p3=ami-xyz"):
        with pytest.raises(ValueError, match="AMI_OVERRIDES"):
            Settings.from_env({"AMI_OVERRIDES": bad})
