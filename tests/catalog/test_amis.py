"""AMI per instance family in the hardware table: a family with no AMI that boots it is in no
default list, and a request for it is a 400 that says why; GET /frameworks shows each
family's AMI path and driver branch."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from chalicelib.errors import BadRequest, CatalogError
from chalicelib.specs.catalog import load_catalog
from chalicelib.specs.gpu import place
from infra import policies

ROOT = Path(__file__).resolve().parents[2]
WHY = "Maxwell M60: no current DLAMI lists g3 and voltabuild has no driver path for it"


@pytest.fixture
def root_with_g3(tmp_path):
    """The real catalog plus a g3 family that no AMI boots."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "buildspecs", root / "buildspecs")
    shutil.copytree(ROOT / "dockerfiles", root / "dockerfiles")
    path = root / "buildspecs" / "_hardware.yaml"
    hw = yaml.safe_load(path.read_text())
    hw["families"]["g3"] = {"gpu": "NVIDIA M60", "compute_capability": "5.2", "ami": None, "no_ami": WHY,
                            "gpu_memory_gib": 8, "sizes": {"g3.4xlarge": 1}}
    path.write_text(yaml.safe_dump(hw, sort_keys=False))
    return root


def test_every_family_of_the_real_table_names_an_ami_with_its_driver_branch():
    hw = load_catalog(ROOT).hardware
    for name, fam in hw.families.items():
        assert fam.ami in hw.amis, name
    assert hw.ami_of("p3.2xlarge").driver == "install" and hw.ami_of("p3.2xlarge").driver_branch == "580"
    assert hw.ami_of("g5.xlarge").driver == "preinstalled"


def test_a_family_without_an_ami_is_refused_with_the_reason(root_with_g3):
    catalog = load_catalog(root_with_g3)
    spec = catalog.spec("canary")
    with pytest.raises(BadRequest) as e:
        place(catalog.hardware, spec, "none", ["g5.xlarge", "g3.4xlarge"], {})
    assert "g3.4xlarge (NVIDIA M60)" in str(e.value) and WHY in str(e.value)
    assert "instance families it can boot: p3, p3dn, g4dn" in str(e.value)
    assert "g3" not in catalog.hardware.families_for("none")
    assert catalog.summary["hardware"]["families"]["g3"]["ami"] is None
    assert catalog.summary["hardware"]["families"]["g3"]["no_ami"] == WHY


def test_a_buildspec_that_lists_a_family_without_an_ami_fails_to_load(root_with_g3):
    path = root_with_g3 / "buildspecs" / "canary.yaml"
    data = yaml.safe_load(path.read_text())
    data["instance_types"].append("g3.4xlarge")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(CatalogError, match=r"canary.yaml: instance_types: no AMI boots g3.4xlarge: Maxwell"):
        load_catalog(root_with_g3)


def test_a_family_must_name_an_ami_or_say_why_not(root_with_g3):
    path = root_with_g3 / "buildspecs" / "_hardware.yaml"
    hw = yaml.safe_load(path.read_text())
    del hw["families"]["g3"]["no_ami"]
    path.write_text(yaml.safe_dump(hw, sort_keys=False))
    with pytest.raises(CatalogError, match="families.g3: name its ami"):
        load_catalog(root_with_g3)


def test_frameworks_shows_each_familys_ami_path_and_driver_branch():
    fams = load_catalog(ROOT).summary["hardware"]["families"]
    assert fams["p3"]["ami"] == {
        "name": "ubuntu-22.04-r580",
        "parameter": "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id",
        "driver_branch": "580", "driver": "install",
        "description": "stock Ubuntu 22.04; the host script installs the proprietary R580 server driver "
                       "(the last branch for Volta)"}
    assert fams["g6e"]["ami"]["name"] == "dlami-base-oss-ubuntu-22.04"


def test_the_cli_shows_each_familys_ami_and_driver(root_with_g3):
    from voltabuild_cli.render import frameworks_text

    text = frameworks_text(load_catalog(root_with_g3).summary)
    lines = text.splitlines()
    p3 = next(line for line in lines if line.strip().startswith("p3 "))
    assert "NVIDIA V100" in p3 and "R580 (installed by the host script)" in p3
    assert "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id" in p3
    g5 = next(line for line in lines if line.strip().startswith("g5 "))
    assert "R580 (in the AMI)" in g5 and "base-oss-nvidia-driver-gpu-ubuntu-22.04" in g5
    g3 = next(line for line in lines if line.strip().startswith("g3 "))
    assert f"no AMI: {WHY}" in g3


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_the_launcher_may_read_every_ami_parameter_of_the_table(stage):
    import fnmatch

    policy = policies.policy(stage)
    readable = []
    for st in policy["Statement"]:
        if "ssm:GetParameter" in st["Action"]:
            for res in st["Resource"]:
                arn = res["Fn::Sub"] if isinstance(res, dict) else res
                readable.append(arn.split(":parameter", 1)[1])
    for name, ami in load_catalog(ROOT).hardware.amis.items():
        assert any(fnmatch.fnmatch(ami.parameter, pattern) for pattern in readable), (name, ami.parameter)
