"""The launcher's settings, as a deployment writes them."""

from __future__ import annotations

import pytest

from chalicelib.settings import Settings


def test_defaults_launch_spot_only_from_the_hardware_tables_amis():
    s = Settings.from_env({})
    assert s.ami_parameter == "" and s.ami_id == "" and s.ami_overrides == ()
    assert s.on_demand_fallback is False and s.launch_max_retries == 5
    assert dict(s.spot_price_table)["p3.2xlarge"] > 0
    assert s.build_log_group == "/voltabuild/builds"


def test_every_launch_setting_is_read():
    s = Settings.from_env({
        "AMI_ID": "ami-1", "AMI_PARAMETER": "/x/ami", "SUBNET_IDS": "subnet-a, subnet-b,", "SECURITY_GROUP_ID": "sg-1",
        "INSTANCE_PROFILE": "arn:aws:iam::1:instance-profile/p", "ON_DEMAND_FALLBACK": "on",
        "LAUNCH_MAX_RETRIES": "2", "SPOT_PRICE_TABLE": "g5.xlarge=0.5", "HEARTBEAT_SECONDS": "30",
        "VCS_REF": "abc123", "VCS_URL": "https://example.test/voltabuild", "BUILD_LOG_GROUP": "/x/logs",
    })
    assert (s.ami_id, s.ami_parameter, s.subnet_ids, s.security_group_id) == ("ami-1", "/x/ami",
                                                                              ("subnet-a", "subnet-b"), "sg-1")
    assert s.instance_profile.endswith("instance-profile/p") and s.on_demand_fallback is True
    assert (s.launch_max_retries, s.spot_price_table, s.heartbeat_seconds) == (2, (("g5.xlarge", 0.5),), 30)
    assert (s.vcs_ref, s.vcs_url, s.build_log_group) == ("abc123", "https://example.test/voltabuild", "/x/logs")


def test_a_malformed_price_table_is_a_deployment_error():
    with pytest.raises(ValueError):
        Settings.from_env({"SPOT_PRICE_TABLE": "g5.xlarge=cheap"})
