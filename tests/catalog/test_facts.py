"""The catalog against the vendored facts (buildspecs/facts/): every combination of every
buildspec, for every instance type it may run on, names only base images, health-check
images, AMIs and drivers the facts files hold; every fact says where it came from and when."""

from __future__ import annotations

import datetime
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from factcheck import entries, entry_problems, host_problems, load_facts, problems

from chalicelib.builds.records import BuildRecord
from chalicelib.launching.hostscript import HostConfig, render
from chalicelib.specs.catalog import Catalog, load_catalog

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(ROOT)
FACTS = load_facts(ROOT)
TODAY = datetime.date(2026, 12, 2)
SPECS = sorted(CATALOG.frameworks)
CFG = HostConfig(api_url="https://api.example.test/api", region="us-east-1", stage="dev",
                 registry="123456789012.dkr.ecr.us-east-1.amazonaws.com")
TOKEN = "tok_" + "A" * 40


def record_for(catalog: Catalog, framework: str, **over) -> dict:
    spec = catalog.spec(framework)
    r = spec.resolve(over.get("version"), over.get("cuda"), over.get("python"))
    return {"id": "b-0123456789abcdef0123", "framework": framework, "version": r.version, "cuda": r.cuda,
            "python": r.python, "build_args": {}, "timeout_minutes": 45, "attempt": 1,
            "image": {"repository": spec.repository, "tags": spec.tags_for(r, catalog.hardware)},
            "status": "LAUNCHING", "instance_types": [], "notify": {"slack": False},
            "created_at": "2026-12-02T05:00:00Z", "updated_at": "2026-12-02T05:00:00Z"}


@pytest.mark.parametrize("framework", SPECS)
def test_every_combination_names_only_facts(framework):
    # GIVEN one buildspec, WHEN every combination is rendered for every instance type that
    # may run it, THEN each base image, health image, AMI and driver is a vendored fact
    found = [p for p in problems(CATALOG, FACTS) if p.startswith(f"buildspecs/{framework}.yaml")]
    assert not found, "\n".join(found)


def test_the_hardware_table_agrees_with_the_facts():
    found = [p for p in problems(CATALOG, FACTS) if p.startswith("_hardware.yaml")]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("file,where,entry", entries(ROOT), ids=lambda x: x if isinstance(x, str) else "")
def test_every_fact_has_a_source_and_the_date_it_was_read(file, where, entry):
    assert not entry_problems(f"{file}: {where}", entry, TODAY)


def test_an_unconfirmed_fact_without_a_note_is_refused():
    assert entry_problems("x", {"source": "s", "checked": TODAY, "confirmed": False}, TODAY)
    assert not entry_problems("x", {"source": "s", "checked": TODAY, "confirmed": True}, TODAY)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "buildspecs", root / "buildspecs")
    shutil.copytree(ROOT / "dockerfiles", root / "dockerfiles")
    return root


def test_a_new_buildspec_line_with_a_tag_that_does_not_exist_fails_naming_file_and_combination(tmp_path):
    # GIVEN a new PyTorch line whose CUDA 12.1 base image would use the bare cudnn suffix
    root = _copy(tmp_path)
    path = root / "buildspecs" / "pytorch.yaml"
    data = yaml.safe_load(path.read_text())
    data["versions"].append({"version": "2.3.1", "cuda": ["12.1"], "python": ["3.11"]})
    data["fixed_args"]["BASE_IMAGE"] = "nvidia/cuda:{cuda_full}-cudnn-devel-{cuda_os}"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    # WHEN the catalog is checked against the facts
    found = problems(load_catalog(root), load_facts(root))
    # THEN the failure names the file, the combination and the missing tag
    assert ("buildspecs/pytorch.yaml: pytorch 2.3.1 cuda 12.1 python 3.11: BASE_IMAGE "
            "nvidia/cuda:12.1.1-cudnn-devel-ubuntu22.04 is not in facts/cuda-images.yaml") in found


def test_a_volta_family_on_the_open_driver_ami_fails(tmp_path):
    # GIVEN p3 moved to the DLAMI with NVIDIA's open kernel modules
    root = _copy(tmp_path)
    path = root / "buildspecs" / "_hardware.yaml"
    path.write_text(path.read_text().replace(
        'compute_capability: "7.0", ami: ubuntu-22.04-r580', 'compute_capability: "7.0", ami: dlami-base-oss-ubuntu-22.04'))
    found = problems(load_catalog(root), load_facts(root))
    assert any("on p3.2xlarge: AMI dlami-base-oss-ubuntu-22.04 does not list family p3" in p for p in found)
    assert any("open kernel modules, which do not support volta" in p for p in found)


def test_a_driver_branch_newer_than_voltas_last_fails(tmp_path):
    root = _copy(tmp_path)
    path = root / "buildspecs" / "_hardware.yaml"
    text = path.read_text()
    text = text.replace('driver_branch: "580"\n    driver: install', 'driver_branch: "595"\n    driver: install')
    path.write_text(text)
    found = problems(load_catalog(root), load_facts(root))
    assert any("canary 1.0 cuda none python none on p3.2xlarge: driver branch 595 is newer than volta's "
               "last branch 580" in p for p in found)


def test_a_health_image_that_does_not_exist_fails(tmp_path):
    # the seed's MXNet bug: CUDA 11.2 on ubuntu22.04
    root = _copy(tmp_path)
    path = root / "buildspecs" / "_hardware.yaml"
    path.write_text(path.read_text().replace("cudnn: cudnn8, os: ubuntu20.04", "cudnn: cudnn8, os: ubuntu22.04"))
    found = problems(load_catalog(root), load_facts(root))
    assert any(p.startswith("buildspecs/mxnet.yaml: mxnet 1.9.1 cuda 11.2 python 3.8: health-check image "
                            "nvidia/cuda:11.2.2-base-ubuntu22.04 is not in") for p in found)


# ---- done when: three builds' user-data name real AMIs, tags and drivers -------------------

@pytest.mark.parametrize("framework,over,instance_type,ami,base,health,driver", [
    ("canary", {}, "p3.2xlarge", "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id",
     None, "", "580"),
    # the default combination: a catalog build renders only with its lock (issue 19)
    ("pytorch", {}, "p3.2xlarge",
     "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id",
     "nvidia/cuda:12.6.3-base-ubuntu22.04", "nvidia/cuda:12.6.3-base-ubuntu22.04", "580"),
    ("mxnet", {}, "g5.xlarge",
     "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id",
     "nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04", "nvidia/cuda:11.2.2-base-ubuntu20.04", "580"),
    ("mxnet", {}, "p3.2xlarge", "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp2/ami-id",
     "nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04", "nvidia/cuda:11.2.2-base-ubuntu20.04", "580"),
])
def test_rendered_user_data_names_a_real_ami_real_tags_and_a_driver_that_supports_the_gpu(
        framework, over, instance_type, ami, base, health, driver):
    rec = record_for(CATALOG, framework, **over)
    script = render(BuildRecord.of(rec), CATALOG, CFG, token=TOKEN, build_date="2026-12-02T05:00:00Z", instance_type=instance_type)
    hw = CATALOG.hardware
    # the AMI the launcher resolves for this type is a vendored fact that boots this family
    path = hw.ami_of(instance_type)
    assert path.parameter == ami and ami in FACTS.amis
    # the image tags in the script are vendored facts
    if base:
        assert f"BASE_IMAGE={base}" in script and base in FACTS.images
    assert f"readonly HEALTH_IMAGE={shlex.quote(health)}\n" in script
    if health:
        assert health in FACTS.images
    # the driver branch the host installs or finds supports the GPU and the CUDA release
    assert f"readonly DRIVER_BRANCH={driver}\n" in script
    assert host_problems(CATALOG, FACTS, instance_type, rec["cuda"]) == []
