"""The rendered host script, run for real under bash with recording shims on PATH.

GIVEN a build's user-data, WHEN it runs with docker/nvidia-smi/aws/curl/shutdown shims that
record their calls (and fail on demand), THEN it reports what happened and always ends the
instance.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from hostrun import BUILD_ID, CFG, TOKEN, record_for, render_for, run_script

from chalicelib.builds.records import BuildRecord
from chalicelib.launching.catalog_contexts import lock_path, uses_lock
from chalicelib.launching.hostscript import RenderError, pack_context, render, script_of, strip_comments, user_data
from chalicelib.specs.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]
SHELLCHECK = ROOT / ".venv" / "bin" / "shellcheck"
DIGEST = "sha256:" + "a" * 64


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _ends_the_instance(run) -> None:
    assert ["-h", "now"] in run.named("shutdown"), run.output


def _failed_with(run, words: str) -> dict:
    result = run.result()
    assert result["status"] == "FAILED", result
    assert words in result["reason"], result
    _ends_the_instance(run)
    return result


# ---- rendering ----------------------------------------------------------------------
def test_every_catalog_entry_fits_ec2_user_data_and_is_shellcheck_clean(catalog, tmp_path):
    # a locked combination's context comes through a presigned URL (issue 19), a framework
    # without a lock (the canary) has its context inline; a combination without its lock is
    # refused at render, naming `make lock`
    url = "https://contexts.example.test/catalog/sha256/" + "a" * 64 + "?X-Amz-Signature=" + "f" * 64
    for name, spec in catalog.frameworks.items():
        for resolved in spec.combinations():
            rec = record_for(catalog, name, version=resolved.version, cuda=resolved.cuda, python=resolved.python)
            if uses_lock(catalog, spec) and not lock_path(catalog, resolved).is_file():
                with pytest.raises(RenderError, match="make lock"):
                    render_for(rec, catalog)
                continue
            fetched = dict(context_url=url, context_sha256=DIGEST) if uses_lock(catalog, spec) else {}
            data = user_data(render(BuildRecord.of(rec), catalog, CFG, token=TOKEN, build_date="2026-12-02T08:00:00Z",
                                    context_max_bytes=10**6, **fetched))
            assert len(data) <= 16 * 1024, (name, resolved, len(data))
        script = script_of(data)
        path = tmp_path / f"{name}.sh"
        path.write_text(script)
        lint = subprocess.run([str(SHELLCHECK), "-s", "bash", str(path)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


def test_the_build_context_travels_inside_the_script(catalog, tmp_path):
    rec = record_for(catalog, "canary")
    script = render_for(rec, catalog)
    blob = pack_context(catalog.context_dir(catalog.spec("canary")))
    assert f"readonly CONTEXT_B64={blob}" in script
    assert blob == pack_context(catalog.context_dir(catalog.spec("canary"))), "packing is deterministic"
    run = run_script(tmp_path, script)
    assert run.rc == 0, run.output
    unpacked = run.work / "context" / "Dockerfile"
    # full-line comments stay behind (user-data is limited to 16 KB)
    assert unpacked.read_bytes() == strip_comments(
        (catalog.context_dir(catalog.spec("canary")) / "Dockerfile").read_bytes())


def test_render_refuses_values_that_are_not_what_they_claim(catalog):
    rec = record_for(catalog, "canary")
    for bad in [dict(id="b-1; reboot"), dict(image={**rec["image"], "tags": ["ok", "$(reboot)"]}),
                dict(image={**rec["image"], "tags": []})]:
        with pytest.raises(RenderError):
            render_for({**rec, **bad}, catalog)
    with pytest.raises(RenderError):
        render(BuildRecord.of(rec), catalog, CFG, token="short", build_date="x")
    with pytest.raises(RenderError):
        render(BuildRecord.of(rec), catalog, CFG.__class__(**{**CFG.__dict__, "api_url": "https://x/$(id)"}),
               token=TOKEN, build_date="x")


# ---- the paths through the script ------------------------------------------------------
def test_success_builds_tests_pushes_and_reports_the_digest(catalog, tmp_path):
    rec = record_for(catalog, "pytorch", build_args={"MAX_JOBS": "4"})
    run = run_script(tmp_path, render_for(rec, catalog))
    assert run.rc == 0, run.output

    phases = [r["phase"] for r in run.reports() if r["type"] == "phase"]
    assert phases == ["PREPARING", "BUILDING", "TESTING", "PUSHING"]
    # the compressed size (the stand-in layers: 1000 + 2000 bytes) and the base image's digest
    # (the label names the base; the registry says what it resolves to) go with the result
    assert run.result() == {"type": "result", "status": "SUCCEEDED", "digest": DIGEST,
                            "image_size_bytes": 3000, "base_image_digest": "sha256:" + "c" * 64,
                            "message": "pushed 2.14.1-cu126-py312 latest"}
    # every report carries the build's token, in a header file (never on the command line)
    assert ["Authorization: Bearer " + TOKEN] in run.named("header-file")
    assert all(TOKEN not in " ".join(a) for a in run.named("curl"))
    imds = "http://169.254.169.254/"  # the instance id it names in its reports (issue 16)
    assert all(a[-1] == f"{CFG.api_url}/builds/{BUILD_ID}/events" for a in run.named("curl")
               if not a[-1].startswith(imds))

    # the watchdog came first, the instance ended last
    assert run.calls[0][0] == "shutdown" and run.calls[0][1:] == ["-h", "+50"]
    assert run.calls[-1] == ["shutdown", "-h", "now"]
    # host checks: GPU, driver version, health check in a CUDA container, ECR login
    assert ["--query-gpu=driver_version", "--format=csv,noheader"] in run.named("nvidia-smi")
    assert ["run", "--rm", "--gpus", "all", "nvidia/cuda:12.6.3-base-ubuntu22.04", "nvidia-smi"] in run.named("docker")
    assert ["ecr", "get-login-password", "--region", "us-east-1"] in run.named("aws")
    assert ["login", "--username", "AWS", "--password-stdin", CFG.registry] in run.named("docker")

    image = f"{CFG.registry}/voltabuild/pytorch"
    builds = run.docker("buildx", "build")
    assert len(builds) == 3
    build, measure, push = builds
    assert measure[-3:-1] == ["--output", f"type=oci,dest={run.work}/measure,tar=false"]
    assert ["buildx", "imagetools", "inspect", "nvidia/cuda:12.6.3-base-ubuntu22.04"] in run.named("docker")
    assert "--load" in build and "--push" not in build
    cache = f"{image}:buildcache-"  # its base's cache (tests/launch/test_registry_cache.py)
    assert build[build.index("--cache-to") + 1].startswith(f"type=registry,ref={cache}")
    assert build[build.index("--cache-to") + 1].endswith(",mode=max,image-manifest=true,oci-mediatypes=true")
    assert build[build.index("--cache-from") + 1].startswith(f"type=registry,ref={cache}")
    args = [build[i + 1] for i, a in enumerate(build) if a == "--build-arg"]
    assert "MAX_JOBS=4" in args and "PYTORCH_VERSION=2.14.1" in args
    assert f"VOLTABUILD_BUILD_ID={BUILD_ID}" in args and "BUILD_DATE=2026-11-28T15:00:00Z" in args
    assert "VCS_REF=0123abc" in args and "VCS_URL=https://example.test/voltabuild.git" in args
    assert [build[i + 1] for i, a in enumerate(build) if a == "--tag"] == [
        f"{image}:2.14.1-cu126-py312", f"{image}:latest"]
    assert "--push" in push
    smoke = ["run", "--rm", "--gpus", "all", f"{image}:2.14.1-cu126-py312", "/usr/local/bin/entrypoint.sh", "--check"]
    order = [c[1:] for c in run.calls if c[0] == "docker"]
    assert order.index(build) < order.index(smoke) < order.index(measure) < order.index(push)
    # the log went to CloudWatch Logs, one stream per build
    assert ["logs", "create-log-stream", "--region", "us-east-1", "--log-group-name", "/voltabuild/builds",
            "--log-stream-name", BUILD_ID] in run.named("aws")
    messages = [e["message"] for e in run.logs]
    assert any("pushed" in m and DIGEST in m for m in messages)


def test_failed_build_reports_failure_with_the_log_and_nothing_is_pushed(catalog, tmp_path):
    run = run_script(tmp_path, render_for(record_for(catalog), catalog), {"SHIM_FAIL": "build"})
    assert run.rc == 1
    result = _failed_with(run, "the image build failed")
    assert "RUN step failed (shim)" in result["log_tail"]
    assert not [b for b in run.docker("buildx", "build") if "--push" in b]
    assert [r["phase"] for r in run.reports() if r["type"] == "phase"] == ["PREPARING", "BUILDING"]


def test_failed_smoke_test_pushes_nothing(catalog, tmp_path):
    run = run_script(tmp_path, render_for(record_for(catalog), catalog), {"SHIM_FAIL": "smoke"})
    assert run.rc == 1
    result = _failed_with(run, "the smoke test failed: nothing was pushed")
    assert "is_available() is False" in result["log_tail"]
    assert not [b for b in run.docker("buildx", "build") if "--push" in b]


def test_failed_push_reports_failure(catalog, tmp_path):
    run = run_script(tmp_path, render_for(record_for(catalog), catalog), {"SHIM_FAIL": "push"})
    assert run.rc == 1
    _failed_with(run, "pushing 123456789012.dkr.ecr.us-east-1.amazonaws.com/voltabuild/pytorch failed")
    pushes = [c for c in run.named("docker") if "--push" in c]
    assert len(pushes) == 3  # tried three times before giving the build up


def test_a_push_that_fails_once_is_retried_and_the_build_succeeds(catalog, tmp_path):
    run = run_script(tmp_path, render_for(record_for(catalog), catalog), {"SHIM_FAIL_ONCE": "push"})
    assert run.rc == 0
    assert run.result()["status"] == "SUCCEEDED"
    assert len([c for c in run.named("docker") if "--push" in c]) == 2


def test_sigterm_in_the_middle_of_the_build_reports_and_ends_the_instance(catalog, tmp_path):
    run = run_script(tmp_path, render_for(record_for(catalog), catalog), {"SHIM_BUILD_SLEEP": "300"},
                     term_when="--load", timeout=30)
    assert run.rc == 143
    _failed_with(run, "interrupted by SIGTERM during BUILDING")


def test_sigterm_to_the_whole_process_group_still_reports_and_ends_the_instance(catalog, tmp_path):
    run = run_script(tmp_path, render_for(record_for(catalog), catalog), {"SHIM_BUILD_SLEEP": "300"},
                     term_when="--load", term_group=True, timeout=30)
    assert run.rc == 143
    _failed_with(run, "interrupted by SIGTERM during BUILDING")
    assert "shutting the instance down" in (run.work / "build.log").read_text()


def test_too_old_driver_fails_fast_before_building(catalog, tmp_path):
    run = run_script(tmp_path, render_for(record_for(catalog), catalog), {"SHIM_DRIVER": "535.183.01"})
    assert run.rc == 1
    _failed_with(run, "NVIDIA driver 535.183.01 is too old for CUDA 12.6, which needs 560.28.03 or newer")
    assert not run.docker("buildx", "build")


def test_unreachable_api_still_ends_the_instance(catalog, tmp_path):
    run = run_script(tmp_path, render_for(record_for(catalog), catalog), {"SHIM_CURL_RC": "7"})
    assert run.rc == 1
    _ends_the_instance(run)


# ---- the local executor's mode ------------------------------------------------------------
def test_local_mode_with_buildah_skips_only_cloud_steps(catalog, tmp_path):
    rec = record_for(catalog, "canary")
    env = {"VOLTABUILD_LOCAL": "1", "VOLTABUILD_BUILDER": "buildah",
           "VOLTABUILD_REGISTRY_OVERRIDE": "127.0.0.1:5055",
           "VOLTABUILD_BUILD_ARG_OVERRIDES": "BASE_IMAGE=localhost/voltabuild/busybox:local\n"}
    run = run_script(tmp_path, render_for(rec, catalog), env)
    assert run.rc == 0, run.output
    assert not run.named("shutdown") and not run.named("nvidia-smi")
    assert not run.named("docker")
    # no ECR login; the log goes to CloudWatch Logs as on an instance (the emulated one locally)
    assert {tuple(a[:2]) for a in run.named("aws")} == {("logs", "create-log-stream"), ("logs", "put-log-events")}
    assert any("voltabuild[PUSHING]" in ev["message"] for ev in run.logs)
    bud = next(a for a in run.named("buildah") if "bud" in a)
    assert bud[:5] == ["--storage-driver", "vfs", "bud", "--isolation", "chroot"]
    assert "BASE_IMAGE=localhost/voltabuild/busybox:local" in bud
    # one image store serves every build on the machine: the build names its image for this
    # attempt alone, never by the shared tags (another build could re-point those before the push)
    built = f"127.0.0.1:5055/voltabuild/canary:build-{BUILD_ID}-1"
    assert bud[bud.index("--tag") + 1] == built and bud.count("--tag") == 1
    assert ["--storage-driver", "vfs", "run", "--isolation", "chroot", "shim-container", "--",
            "/usr/local/bin/entrypoint.sh", "--check"] in run.named("buildah")
    measured = [a for a in run.named("buildah") if "push" in a and a[-1].startswith("oci:")]
    assert measured == [["--storage-driver", "vfs", "push", "--quiet", built, f"oci:{run.work}/measure"]]
    pushes = [a for a in run.named("buildah") if "push" in a and not a[-1].startswith("oci:")]
    assert [p[-1] for p in pushes] == ["docker://127.0.0.1:5055/voltabuild/canary:1.0",
                                       "docker://127.0.0.1:5055/voltabuild/canary:latest"]
    assert {p[-2] for p in pushes} == {built}  # every tag gets this attempt's own image
    assert all("--tls-verify=false" in p for p in pushes)
    assert run.result()["digest"] == "sha256:" + "b" * 64
    assert run.result()["image_size_bytes"] == 3000
    assert run.result()["base_image_digest"] == "sha256:" + "d" * 64  # buildah's annotation


def test_local_mode_pushes_only_while_holding_the_push_lock(catalog, tmp_path):
    # GIVEN another instance of the local executor holds the registry's push lock
    lock = tmp_path / "push.lock"
    holder = open(lock, "a")  # noqa: SIM115 — held across the run on purpose
    fcntl.flock(holder, fcntl.LOCK_EX)
    env = {"VOLTABUILD_LOCAL": "1", "VOLTABUILD_BUILDER": "buildah", "VOLTABUILD_PUSH_LOCK": str(lock)}
    done: list = []
    runner = threading.Thread(target=lambda: done.append(run_script(tmp_path / "run", render_for(
        record_for(catalog, "canary"), catalog), env)))
    runner.start()
    try:
        # WHEN this build reaches its push  THEN it waits: nothing is pushed while the lock is held
        console = tmp_path / "run" / "console.log"
        deadline = time.monotonic() + 60
        while "waiting for the push lock" not in (console.read_text() if console.exists() else ""):
            assert runner.is_alive() and time.monotonic() < deadline, "never reached the push"
            time.sleep(0.05)
        time.sleep(1.0)
        calls = [c.split("\x1f") for c in (tmp_path / "run" / "calls").read_text().split("\x1e") if c]
        assert [c for c in calls if c[0] == "buildah" and "push" in c and c[-1].startswith("docker://")] == []
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        holder.close()
    # AND once the lock is free it pushes and succeeds
    runner.join(timeout=60)
    (run,) = done
    assert run.rc == 0, run.output
    assert [a for a in run.named("buildah") if "push" in a]


def test_local_mode_smoke_failure_pushes_nothing(catalog, tmp_path):
    env = {"VOLTABUILD_LOCAL": "1", "VOLTABUILD_BUILDER": "buildah", "SHIM_FAIL": "smoke"}
    run = run_script(tmp_path, render_for(record_for(catalog, "canary"), catalog), env)
    assert run.rc == 1
    assert run.result()["status"] == "FAILED"
    assert not [a for a in run.named("buildah") if "push" in a]
    assert not run.named("shutdown")


@pytest.mark.parametrize("overrides", [
    "BASE_IMAGE=$(touch PWNED)",
    "BASE_IMAGE=x`touch PWNED`",
    "BASE_IMAGE=x;touch PWNED",
    "base_image=x",
    "NOT_AN_ARG=x",
    "BASE_IMAGE=x y",
])
def test_build_arg_overrides_are_validated(catalog, tmp_path, overrides):
    env = {"VOLTABUILD_LOCAL": "1", "VOLTABUILD_BUILDER": "buildah", "VOLTABUILD_BUILD_ARG_OVERRIDES": overrides}
    run = run_script(tmp_path, render_for(record_for(catalog, "canary"), catalog), env)
    assert run.rc == 1
    assert "VOLTABUILD_BUILD_ARG_OVERRIDES" in run.result()["reason"]
    assert not run.named("buildah")
    assert not list(tmp_path.rglob("PWNED"))


def test_overrides_are_refused_on_a_real_instance(catalog, tmp_path):
    env = {"VOLTABUILD_BUILD_ARG_OVERRIDES": "BASE_IMAGE=evil.example/busybox"}
    run = run_script(tmp_path, render_for(record_for(catalog, "canary"), catalog), env)
    assert run.rc == 1
    _failed_with(run, "only honoured with VOLTABUILD_LOCAL=1")


# ---- adversarial request values -------------------------------------------------------------
ADVERSARIAL = [
    "$(touch PWNED)", "`touch PWNED`", "x; touch PWNED", "x' ; touch PWNED ; '", 'x" ; touch PWNED ; "',
    "${IFS}touch${IFS}PWNED", "x && touch PWNED", "| touch PWNED", "$((1+1))", "\\", "--push",
]


@pytest.fixture()
def permissive_catalog(tmp_path):
    """A catalog whose canary accepts ANY build arg value: validation is bypassed on purpose,
    so only the quoting stands between a value and the shell."""
    root = tmp_path / "repo"
    (root / "buildspecs").mkdir(parents=True)
    shutil.copy(ROOT / "buildspecs" / "_hardware.yaml", root / "buildspecs")
    shutil.copytree(ROOT / "dockerfiles" / "canary", root / "dockerfiles" / "canary")
    spec = yaml.safe_load((ROOT / "buildspecs" / "canary.yaml").read_text())
    spec["build_args"]["CANARY_FAIL"]["pattern"] = "^[\\s\\S]{0,256}$"
    (root / "buildspecs" / "canary.yaml").write_text(yaml.safe_dump(spec))
    return load_catalog(root)


def test_adversarial_values_never_execute(permissive_catalog, tmp_path):
    for i, value in enumerate(ADVERSARIAL):
        rec = record_for(permissive_catalog, "canary", build_args={"CANARY_FAIL": value})
        run = run_script(tmp_path / str(i), render_for(rec, permissive_catalog))
        assert run.rc == 0, (value, run.output)
        assert not list(tmp_path.rglob("PWNED")), value
        build = run.docker("buildx", "build")[0]
        assert f"CANARY_FAIL={value}" in build, "the value arrives verbatim, as one argument"


def test_control_characters_are_refused_at_render(permissive_catalog):
    for value in ["x\ntouch PWNED", "x\rtouch", "x\x00y", "x\x1b[2J"]:
        rec = record_for(permissive_catalog, "canary", build_args={"CANARY_FAIL": value})
        with pytest.raises(RenderError):
            render_for(rec, permissive_catalog)


def test_heartbeats_and_log_shipping_while_the_build_runs(catalog, tmp_path):
    cfg = CFG.__class__(**{**CFG.__dict__, "heartbeat_seconds": 1})
    rec = record_for(catalog)
    script = render(BuildRecord.of(rec), catalog, cfg, token=TOKEN, build_date="2026-11-28T15:00:00Z")
    run = run_script(tmp_path, script, {"SHIM_BUILD_SLEEP": "4"})
    assert run.rc == 0, run.output
    assert any(r["type"] == "heartbeat" for r in run.reports())
    puts = [a for a in run.named("aws") if a[:2] == ["logs", "put-log-events"]]
    assert len(puts) >= 2, "shipped during the build and again at the end"
    messages = [e["message"] for e in run.logs]
    assert len(messages) == len(set(messages)), "no line is shipped twice"
    assert any("building" in m for m in messages) and any("pushed" in m for m in messages)
