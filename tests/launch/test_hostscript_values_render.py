"""Every value render() hands a whole build's host script, and the refusal an operator sees
when one cannot go in: render-only and fast.

The script reads its configuration from ``readonly`` lines at the top; here each is held to
where it comes from (the stored build, the deployment's settings, the catalog's hardware
table), and each refused value to the message that names it and the rule it broke. Each test
fails on a small change to chalicelib/launching/hostscript.py (mutation testing, see the
README's testing section).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import shlex
import shutil
import tarfile

import pytest
from hostrun import CFG, TOKEN, readonly_values, record_for

from chalicelib.builds.names import BUILD_ID, DOCKER_TAG
from chalicelib.builds.records import BuildRecord
from chalicelib.launching import catalog_contexts as cc
from chalicelib.launching import hostscript
from chalicelib.launching.hostscript import RenderError, render
from chalicelib.launching.warmcache import registry_cache_tag
from chalicelib.specs.catalog import load_catalog

AT = "2026-11-28T15:00:00Z"
BUCKET_URL = "https://contexts.example.test/catalog/sha256/" + "cd" * 32 + "?X-Amz-Signature=" + "f" * 64


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _render(catalog, rec: dict | BuildRecord, cfg=CFG, **kw) -> str:
    stored = rec if isinstance(rec, BuildRecord) else BuildRecord.of(rec)
    return render(stored, catalog, cfg, token=kw.pop("token", TOKEN), build_date=AT, **kw)


def _refusal(catalog, rec, cfg=CFG, **kw) -> str:
    with pytest.raises(RenderError) as e:
        _render(catalog, rec, cfg, **kw)
    return str(e.value)


def _with_spec(catalog, framework: str, **update):
    """The catalog with one buildspec's fields replaced (as a broken buildspec would have them)."""
    spec = catalog.spec(framework).model_copy(update=update)
    return catalog.model_copy(update={"frameworks": {**catalog.frameworks, framework: spec}})


def _with_hardware(catalog, **update):
    return catalog.model_copy(update={"hardware": catalog.hardware.model_copy(update=update)})


# ---- the values -------------------------------------------------------------------------------

def test_a_catalog_build_carries_the_values_of_its_record_settings_and_hardware(catalog):
    cfg = dataclasses.replace(CFG, log_group="/voltabuild/dev/builds", heartbeat_seconds=45)
    rec = record_for(catalog, "pytorch", timeout_minutes=90, attempt=2, instance_types=["g5.xlarge"])
    v = readonly_values(_render(catalog, rec, cfg))
    spec, hw = catalog.spec("pytorch"), catalog.hardware
    resolved = spec.resolve(rec["version"], rec["cuda"], rec["python"])
    release = hw.cuda[resolved.cuda]
    args = {**spec.docker_build_args(resolved, hw, {}), "BUILD_DATE": AT, "VOLTABUILD_BUILD_ID": rec["id"],
            "VCS_REF": CFG.vcs_ref, "VCS_URL": CFG.vcs_url}
    assert v == {
        "BUILD_ID": rec["id"], "ATTEMPT": "2", "STAGE_ROLE": "all", "CANDIDATE_TAG": "", "CANDIDATE_DIGEST": "",
        "STAGE": "dev", "API_URL": CFG.api_url, "TOKEN": TOKEN, "REGION": "us-east-1", "REGISTRY": CFG.registry,
        "REPOSITORY": "voltabuild/pytorch", "LOG_GROUP": "/voltabuild/dev/builds", "CUDA": resolved.cuda,
        "MIN_DRIVER": release.min_driver, "HEALTH_IMAGE": f"nvidia/cuda:{release.full}-base-{release.os}",
        "INSTANCE_TYPE": "g5.xlarge", "DRIVER_BRANCH": hw.ami_of("g5.xlarge").driver_branch,
        # the instance's watchdog outlives the build's own timeout by five minutes
        "WATCHDOG_MINUTES": "95", "MAX_IMAGE_BYTES": str(int(spec.max_image_gb * 10**9)), "HEARTBEAT_SECONDS": "45",
        "TAGS": rec["image"]["tags"], "CACHE_TAG": registry_cache_tag(args),
        "BUILD_ARGS": [f"{k}={val}" for k, val in args.items()], "SMOKE_TEST": list(spec.smoke_test),
        "CONTEXT_B64": v["CONTEXT_B64"], "DOCKERFILE": "Dockerfile", "TARGET": "", "SMOKE_GPUS": "0", "GIT_URL": "",
    }
    assert v["CONTEXT_B64"]  # packed in: no context URL was given
    assert v["MAX_IMAGE_BYTES"] == "8000000000" and spec.max_image_gb == 8.0  # GB, as the buildspec says


def test_the_build_date_and_the_deployments_commit_go_to_the_image_labels(catalog):
    cfg = dataclasses.replace(CFG, vcs_ref="feedc0de", vcs_url="https://git.example.test/vb.git")
    args = dict(a.split("=", 1) for a in readonly_values(_render(catalog, record_for(catalog, "canary"), cfg))["BUILD_ARGS"])
    assert (args["BUILD_DATE"], args["VOLTABUILD_BUILD_ID"], args["VCS_REF"], args["VCS_URL"]) == (
        AT, record_for(catalog)["id"], "feedc0de", "https://git.example.test/vb.git")


def test_the_instance_type_is_the_one_asked_for_else_the_builds_first_else_the_frameworks_first(catalog):
    rec = record_for(catalog, "pytorch", instance_types=["g6.xlarge", "g5.xlarge"])
    assert readonly_values(_render(catalog, rec))["INSTANCE_TYPE"] == "g6.xlarge"
    assert readonly_values(_render(catalog, rec, instance_type="g5.xlarge"))["INSTANCE_TYPE"] == "g5.xlarge"
    first = catalog.spec("pytorch").instance_types[0]
    assert readonly_values(_render(catalog, record_for(catalog, "pytorch")))["INSTANCE_TYPE"] == first


def test_the_driver_branch_is_the_instance_familys_ami(catalog):
    hw = catalog.hardware
    # every AMI of the table on its own branch: the script gets its family's, not any other's
    amis = {name: ami.model_copy(update={"driver_branch": str(570 + 10 * i)})
            for i, (name, ami) in enumerate(hw.amis.items())}
    changed = _with_hardware(catalog, amis=amis)
    for itype in ("g5.xlarge", "p3.2xlarge"):
        rec = record_for(catalog, "canary", instance_types=[itype])
        assert readonly_values(_render(changed, rec))["DRIVER_BRANCH"] == amis[hw.family(itype).ami].driver_branch
    assert hw.family("g5.xlarge").ami != hw.family("p3.2xlarge").ami  # two AMIs, two branches


def test_a_build_without_cuda_has_no_health_image(catalog):
    v = readonly_values(_render(catalog, record_for(catalog, "canary")))
    assert (v["CUDA"], v["HEALTH_IMAGE"]) == ("none", "")


# ---- a catalog context from the contexts bucket (issue 19) -----------------------------------

def test_a_catalog_context_from_the_bucket_carries_its_url_and_digest_and_the_unpacker(catalog):
    digest = "sha256:" + "cd" * 32
    script = _render(catalog, record_for(catalog, "pytorch"), context_url=BUCKET_URL, context_sha256=digest,
                     context_max_bytes=10**7)
    v = readonly_values(script)
    assert (v["CONTEXT_B64"], v["SOURCE_KIND"], v["CONTEXT_URL"], v["CONTEXT_SHA256"], v["CONTEXT_MAX_BYTES"]) == (
        "", "catalog", BUCKET_URL, digest, "10000000")
    assert f"\nreadonly UNPACKER={shlex.quote(hostscript.UNPACKER.read_text())}\n" in script
    assert "fetch_context() {" in script


@pytest.mark.parametrize("digest", ["", "sha256:" + "CD" * 32, "sha256:" + "c" * 63, "md5:" + "c" * 64])
def test_a_catalog_context_from_the_bucket_without_its_digest_is_refused(catalog, digest):
    kw = {"context_sha256": digest} if digest else {}
    assert _refusal(catalog, record_for(catalog, "pytorch"), context_url=BUCKET_URL, **kw) == (
        f"context digest: {digest!r} is not sha256:<64 hex>")


def test_a_combination_without_its_lock_is_refused_naming_make_lock(catalog, tmp_path):
    for folder in ("buildspecs", "dockerfiles"):
        shutil.copytree(catalog.root / folder, tmp_path / folder)
    spec = catalog.spec("pytorch")
    resolved = spec.resolve(None, None, None)
    (tmp_path / "buildspecs" / "locks" / "pytorch" / f"{cc.lock_name(resolved)}.txt").unlink()
    unlocked = load_catalog(tmp_path)
    with pytest.raises(cc.MissingLock) as lock_error:
        cc.catalog_tarball(unlocked, unlocked.spec("pytorch"), resolved)
    message = _refusal(unlocked, record_for(catalog, "pytorch"))
    assert message == str(lock_error.value) and "make lock" in message


# ---- refusals: each names the value and the rule ----------------------------------------------

def _pattern_message(field: str, value, pattern) -> str:
    return f"{field}: {value!r} cannot go into the host script (must match {pattern.pattern})"


@pytest.mark.parametrize("setting,value,field,pattern", [
    ("stage", "Dev", "stage", re.compile(r"^[a-z0-9-]{1,32}$")),
    ("api_url", "ftp://api.example.test", "api url", hostscript._URL),
    ("region", "moon-1", "region", hostscript._REGION),
    ("registry", "registry example", "registry", hostscript._REGISTRY),
    ("log_group", "builds log", "log group", hostscript._LOG_GROUP),
])
def test_a_bad_deployment_setting_is_refused_naming_it(catalog, setting, value, field, pattern):
    cfg = dataclasses.replace(CFG, **{setting: value})
    assert _refusal(catalog, record_for(catalog, "canary"), cfg) == _pattern_message(field, value, pattern)


def test_a_deployment_without_a_public_api_url_is_refused_saying_so(catalog):
    cfg = dataclasses.replace(CFG, api_url="")
    assert _refusal(catalog, record_for(catalog, "canary"), cfg) == (
        "PUBLIC_API_URL is not set: the instance would have nowhere to report")


def test_a_bad_token_is_refused_naming_it(catalog):
    assert _refusal(catalog, record_for(catalog, "canary"), token="short") == _pattern_message(
        "token", "short", hostscript._TOKEN)


def test_a_bad_build_id_or_tag_of_the_stored_record_is_refused_naming_it(catalog):
    rec = BuildRecord.of(record_for(catalog, "canary"))
    rec.id = "b-NOT-AN-ID"
    assert _refusal(catalog, rec) == _pattern_message("build id", "b-NOT-AN-ID", BUILD_ID)
    rec = BuildRecord.of(record_for(catalog, "canary"))
    rec.image.tags = ["v1", "v 2"]
    assert _refusal(catalog, rec) == _pattern_message("tag", "v 2", DOCKER_TAG)
    rec.image.tags = []
    assert _refusal(catalog, rec) == "image.tags: a build needs at least one tag"


def test_an_instance_type_no_ami_boots_is_refused(catalog):
    hw = catalog.hardware
    family = hw.families["g5"].model_copy(update={"ami": None, "no_ami": "no driver for it yet"})
    changed = _with_hardware(catalog, families={**hw.families, "g5": family})
    assert _refusal(changed, record_for(catalog, "canary", instance_types=["g5.xlarge"])) == (
        "instance type 'g5.xlarge': not in the hardware table, or no AMI boots it")


def test_bad_catalog_values_are_refused_naming_them(catalog):
    # a buildspec or the hardware table edited wrongly: the render checks every value again
    rec = record_for(catalog, "canary")
    assert _refusal(_with_spec(catalog, "canary", repository="Voltabuild/Canary"), rec) == _pattern_message(
        "repository", "Voltabuild/Canary", hostscript._REPOSITORY)
    assert _refusal(_with_spec(catalog, "canary", smoke_test=["check", "a\tb"]), rec) == (
        "smoke_test: control characters or over 1024 characters")
    hw = catalog.hardware
    release = hw.cuda["none"].model_copy(update={"min_driver": "580.x"})
    assert _refusal(_with_hardware(catalog, cuda={**hw.cuda, "none": release}), rec) == _pattern_message(
        "min driver", "580.x", re.compile(r"^[0-9]+(\.[0-9]+)*$"))
    amis = {name: ami.model_copy(update={"driver_branch": "58"}) for name, ami in hw.amis.items()}
    assert _refusal(_with_hardware(catalog, amis=amis), rec) == _pattern_message(
        "driver branch", "58", re.compile(r"^[0-9]{3}$"))


def test_a_bad_build_arg_name_from_the_catalog_is_refused_naming_it(catalog, monkeypatch):
    spec = catalog.spec("canary")
    monkeypatch.setattr(type(spec), "docker_build_args", lambda self, *a, **k: {"lower": "x"})
    assert _refusal(catalog, record_for(catalog, "canary")) == _pattern_message(
        "build arg name", "lower", hostscript._ARG_NAME)


def test_a_cache_tag_that_is_not_a_docker_tag_is_refused_naming_it(catalog, monkeypatch):
    monkeypatch.setattr(hostscript, "registry_cache_tag", lambda args: "cache:bad")
    assert _refusal(catalog, record_for(catalog, "canary")) == _pattern_message("cache tag", "cache:bad", DOCKER_TAG)


def test_an_instance_type_of_the_hardware_table_that_is_no_ec2_name_is_refused_naming_it(catalog):
    # a family added to _hardware.yaml under a name EC2 never uses (upper case): the render
    # refuses it rather than hand the script a type EC2 would not know
    hw = catalog.hardware
    family = hw.families["g5"].model_copy(update={"sizes": {"G5.xlarge": 1}})
    changed = _with_hardware(catalog, families={**hw.families, "G5": family})
    assert changed.hardware.is_known_instance_type("G5.xlarge")
    assert _refusal(changed, record_for(catalog, "canary"), instance_type="G5.xlarge") == _pattern_message(
        "instance type", "G5.xlarge", hostscript._INSTANCE_TYPE)


def test_a_build_of_a_non_default_combination_builds_that_cuda_and_python_with_its_lock(catalog):
    # the record's own CUDA and Python, not the version's defaults (12.6, 3.12)
    rec = record_for(catalog, "pytorch", version="2.13.0", cuda="13.0", python="3.10")
    spec = catalog.spec("pytorch")
    default = spec.resolve("2.13.0", None, None)
    assert (default.cuda, default.python) != ("13.0", "3.10")
    v = readonly_values(_render(catalog, rec))
    args = dict(a.split("=", 1) for a in v["BUILD_ARGS"])
    assert (v["CUDA"], args["CUDA_VERSION"], args["PYTHON_VERSION"], args["PYTORCH_VERSION"]) == (
        "13.0", "13.0", "3.10", "2.13.0")
    assert v["MIN_DRIVER"] == catalog.hardware.cuda["13.0"].min_driver
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(v["CONTEXT_B64"])), mode="r:gz") as tar:
        lock = tar.extractfile("lock-hashed.txt").read()
    assert lock == cc.lock_path(catalog, spec.resolve("2.13.0", "13.0", "3.10")).read_bytes()


def test_the_health_image_is_pinned_where_the_catalog_records_its_digest(catalog):
    # GIVEN the default PyTorch build's health image with a digest recorded (make lock, issue 19)
    rec = record_for(catalog)
    health = catalog.hardware.cuda[rec["cuda"]].health_image
    digest = "sha256:" + "ab" * 32
    spec = catalog.frameworks["pytorch"]
    pinned = catalog.model_copy(update={"frameworks": {
        **catalog.frameworks, "pytorch": spec.model_copy(update={"base_digests": {health: digest}})}})
    # THEN the host's GPU check starts from exactly that image; without the record, by tag
    assert readonly_values(_render(pinned, rec))["HEALTH_IMAGE"] == f"{health}@{digest}"
    assert readonly_values(_render(catalog, rec))["HEALTH_IMAGE"] == health
