"""The host script's driver paths, run for real under bash with recording shims.

GIVEN the user-data for an instance type, WHEN the host has a driver (a DLAMI family) or
none (stock Ubuntu, Volta's path), THEN the script uses it or installs the family's
proprietary server driver branch (apt-get update first, nvidia-utils so nvidia-smi exists),
and a failure of the host (install, module, nvidia-smi, driver too old, health check) is
reported with cause "host" while a build failure is not.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hostrun import BUILD_ID, SHIMS, record_for, render_for, run_script

from chalicelib.specs.catalog import load_catalog


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _bare_host(tmp_path: Path, missing: tuple[str, ...] = ("nvidia-smi",)) -> dict[str, str]:
    """Shims on PATH without ``missing``: a stock Ubuntu host before its driver is installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for shim in SHIMS.iterdir():
        if shim.name not in missing:
            shutil.copy2(shim, bin_dir / shim.name)
    # a system directory holding a real one (a GPU machine's nvidia-smi) is replaced by links to
    # everything else in it
    dirs = []
    for i, d in enumerate(os.environ["PATH"].split(":")):
        if d and any((Path(d) / m).exists() for m in missing):
            clean = tmp_path / f"sys{i}"
            clean.mkdir()
            for entry in Path(d).iterdir():
                if entry.name not in missing:
                    (clean / entry.name).symlink_to(entry)
            d = str(clean)
        dirs.append(d)
    path = ":".join(dirs)
    return {"PATH": f"{bin_dir}:{path}", "SHIM_DIR": str(SHIMS), "SHIM_INSTALL_DIR": str(bin_dir)}


def _host_failure(run, words: str) -> dict:
    result = run.result()
    assert result["status"] == "FAILED" and result.get("cause") == "host", result
    assert words in result["reason"], result
    assert ["-h", "now"] in run.named("shutdown")
    assert not run.docker("buildx", "build"), "nothing is built on a host that failed"
    return result


def test_a_dlami_family_uses_the_driver_it_brings(catalog, tmp_path):
    script = render_for(record_for(catalog), catalog, instance_type="g5.xlarge")
    assert "readonly DRIVER_BRANCH=580\n" in script and "readonly INSTANCE_TYPE=g5.xlarge\n" in script
    run = run_script(tmp_path, script)
    assert run.rc == 0, run.output
    assert not run.named("apt-get") and not run.named("modprobe")


def test_stock_ubuntu_installs_the_families_proprietary_branch_then_checks_the_gpu(catalog, tmp_path):
    # the default combination: a catalog build renders only with its lock (issue 19), and the
    # defaults are the locked ones
    rec = record_for(catalog, "pytorch")
    script = render_for(rec, catalog, instance_type="p3.2xlarge")
    run = run_script(tmp_path / "run", script, _bare_host(tmp_path))
    assert run.rc == 0, run.output
    apt = run.named("apt-get")
    assert apt[0] == ["update", "-q"], "the package lists are updated before the first install"
    install = apt[1]
    assert install[:3] == ["install", "-yq", "--no-install-recommends"]
    assert install[3:5] == ["nvidia-driver-580-server", "nvidia-utils-580-server"]
    assert install[5].startswith("linux-headers-")
    assert ["nvidia"] in run.named("modprobe")
    # the driver it installed is the one checked, and the health check uses a tag that exists
    assert ["--query-gpu=driver_version", "--format=csv,noheader"] in run.named("nvidia-smi")
    health = catalog.hardware.cuda[rec["cuda"]].health_image
    assert health.startswith("nvidia/cuda:12.") and health.endswith("-base-ubuntu22.04")
    assert ["run", "--rm", "--gpus", "all", health, "nvidia-smi"] in run.named("docker")
    assert run.result()["status"] == "SUCCEEDED"
    order = [c[0] for c in run.calls]
    assert order.index("apt-get") < order.index("modprobe") < order.index("nvidia-smi")


def test_stock_ubuntu_without_the_aws_cli_gets_it_before_logging_in(catalog, tmp_path):
    script = render_for(record_for(catalog, "canary"), catalog, instance_type="p3.2xlarge")
    run = run_script(tmp_path / "run", script, _bare_host(tmp_path, ("nvidia-smi", "aws")))
    assert run.rc == 0, run.output
    installs = [a for a in run.named("apt-get") if a[0] == "install"]
    assert installs[0][-1] == "awscli" and installs[1][3] == "nvidia-driver-580-server"
    assert ["ecr", "get-login-password", "--region", "us-east-1"] in run.named("aws")
    # the build's log stream is made once there is an AWS CLI to make it
    assert ["logs", "create-log-stream", "--region", "us-east-1", "--log-group-name", "/voltabuild/builds",
            "--log-stream-name", BUILD_ID] in run.named("aws")


@pytest.mark.parametrize("fail,words", [
    ("apt", "could not install the NVIDIA 580 driver on this p3.2xlarge host"),
    ("modprobe", "could not install the NVIDIA 580 driver on this p3.2xlarge host"),
])
def test_a_driver_that_does_not_install_is_a_host_failure(catalog, tmp_path, fail, words):
    script = render_for(record_for(catalog), catalog, instance_type="p3.2xlarge")
    run = run_script(tmp_path / "run", script, {**_bare_host(tmp_path), "SHIM_FAIL": fail})
    assert run.rc == 1
    _host_failure(run, words)


def test_a_driver_below_the_cuda_minimum_is_a_host_failure(catalog, tmp_path):
    run = run_script(tmp_path, render_for(record_for(catalog), catalog), {"SHIM_DRIVER": "535.183.01"})
    _host_failure(run, "NVIDIA driver 535.183.01 is too old for CUDA 12.6, which needs 560.28.03 or newer")


def test_a_gpu_the_container_cannot_see_is_a_host_failure(catalog, tmp_path):
    run = run_script(tmp_path, render_for(record_for(catalog, "mxnet"), catalog), {"SHIM_FAIL": "health"})
    result = _host_failure(run, "health check failed: nvidia-smi in nvidia/cuda:11.2.2-base-ubuntu20.04")
    assert "p3.2xlarge" in result["reason"]


@pytest.mark.parametrize("fail", ["build", "smoke", "push"])
def test_build_test_and_push_failures_carry_no_host_cause(catalog, tmp_path, fail):
    run = run_script(tmp_path, render_for(record_for(catalog), catalog), {"SHIM_FAIL": fail})
    result = run.result()
    assert result["status"] == "FAILED" and "cause" not in result, result
