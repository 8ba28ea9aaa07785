"""The host script's stage roles (issue 23): a split build's CPU build stage and GPU test stage.

GIVEN a build rendered with STAGE_ROLE=build or test, WHEN the script runs (with recording
shims for the cloud path, or in local mode against a real Debian docker-registry with
buildah), THEN the build stage pushes only the candidate and reports BUILT without touching
the GPU, and the test stage smoke-tests exactly the candidate's digest, promotes the
requested tags to that same digest, and leaves them untouched when the smoke test fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from hostrun import CFG, SHIMS, TOKEN, record_for, run_script

from chalicelib.builds.records import BuildRecord
from chalicelib.launching.hostscript import RenderError, candidate_tag, render, script_of, user_data
from chalicelib.specs.catalog import load_catalog
from voltabuild_local.registry import MANIFEST_TYPES, digest_of

ROOT = Path(__file__).resolve().parents[2]
SHELLCHECK = ROOT / ".venv" / "bin" / "shellcheck"
MANIFEST = b'{\n   "schemaVersion": 2,\n   "mediaType": "application/vnd.oci.image.manifest.v1+json"\n}\n'
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def render_role(record: dict, catalog, role: str, *, digest: str = "", instance_type: str | None = None,
                cfg=CFG, attempt: int | None = None) -> str:
    rec = BuildRecord.of(record)
    return render(rec, catalog, cfg, token=TOKEN, build_date="2026-11-28T15:00:00Z", instance_type=instance_type,
                  stage_role=role, candidate=candidate_tag(rec.id, attempt or rec.attempt), candidate_digest=digest,
                  attempt=attempt)


# ---- rendering ---------------------------------------------------------------------------
def test_each_role_renders_a_shellcheck_clean_script_under_the_user_data_limit(catalog, tmp_path):
    rec = record_for(catalog, "canary")
    for role, kw in [("build", {"instance_type": "c7i.8xlarge"}), ("test", {"digest": MANIFEST_DIGEST})]:
        data = user_data(render_role(rec, catalog, role, **kw))
        assert len(data) <= 16 * 1024
        path = tmp_path / f"{role}.sh"
        path.write_text(script_of(data))
        lint = subprocess.run([str(SHELLCHECK), "-s", "bash", str(path)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout
    # the test stage builds nothing: it carries no build context
    assert "readonly CONTEXT_B64=''" in render_role(rec, catalog, "test", digest=MANIFEST_DIGEST)


def test_render_refuses_a_role_without_its_candidate(catalog):
    rec = BuildRecord.of(record_for(catalog, "canary"))
    kw = dict(token=TOKEN, build_date="x")
    with pytest.raises(RenderError, match="stage role"):
        render(rec, catalog, CFG, stage_role="deploy", **kw)
    with pytest.raises(RenderError, match="candidate tag"):
        render(rec, catalog, CFG, stage_role="build", instance_type="c7i.8xlarge", **kw)
    with pytest.raises(RenderError, match="candidate digest"):
        render(rec, catalog, CFG, stage_role="test", candidate=candidate_tag(rec.id, 1), candidate_digest="sha256:x",
               **kw)
    with pytest.raises(RenderError, match="candidate tag"):
        render(rec, catalog, CFG, stage_role="build", candidate="latest; reboot", instance_type="c7i.8xlarge", **kw)
    # the test stage runs on a GPU type of the hardware table, never on a CPU type
    with pytest.raises(RenderError, match="hardware table"):
        render(rec, catalog, CFG, stage_role="test", candidate=candidate_tag(rec.id, 1),
               candidate_digest=MANIFEST_DIGEST, instance_type="c7i.8xlarge", **kw)


# ---- the cloud path, with shims ------------------------------------------------------------
def test_the_build_stage_builds_on_a_cpu_host_and_pushes_only_the_candidate(catalog, tmp_path):
    rec = record_for(catalog, "pytorch", attempt=2)
    run = run_script(tmp_path, render_role(rec, catalog, "build", instance_type="c7i.8xlarge", attempt=1))
    assert run.rc == 0, run.output
    # no NVIDIA preparation, no GPU check, no health check; the ECR login still happens
    assert run.named("nvidia-smi") == [] and run.named("nvidia-ctk") == [] and run.named("apt-get") == []
    assert not any("--gpus" in a for a in run.named("docker"))
    assert ["ecr", "get-login-password", "--region", "us-east-1"] in run.named("aws")
    image = f"{CFG.registry}/voltabuild/pytorch"
    cand = candidate_tag(rec["id"], 1)
    build, _measure, push = run.docker("buildx", "build")
    for call in (build, push):
        tags = [call[i + 1] for i, a in enumerate(call) if a == "--tag"]
        assert tags == [f"{image}:{cand}"], "only the candidate tag is pushed"
    assert run.docker("run") == [], "no smoke test without a GPU"
    phases = [r["phase"] for r in run.reports() if r["type"] == "phase"]
    assert phases == ["PREPARING", "BUILDING", "PUSHING"]
    result = run.result()
    assert result["status"] == "BUILT" and result["digest"] == "sha256:" + "a" * 64
    assert result["image_size_bytes"] == 3000
    assert "attempt 1 (dev, stage role build)" in run.output
    assert run.calls[-1] == ["shutdown", "-h", "now"]


def _test_env(tmp_path: Path, **extra) -> dict:
    manifest = tmp_path / "ecr-manifest.json"
    manifest.write_bytes(MANIFEST)
    return {"SHIM_ECR_MANIFEST": str(manifest), "SHIM_ECR_MEDIA_TYPE": "application/vnd.oci.image.manifest.v1+json",
            **extra}


def test_the_test_stage_tests_the_candidate_digest_and_promotes_that_manifest(catalog, tmp_path):
    rec = record_for(catalog, "pytorch")
    run = run_script(tmp_path, render_role(rec, catalog, "test", digest=MANIFEST_DIGEST), _test_env(tmp_path))
    assert run.rc == 0, run.output
    image = f"{CFG.registry}/voltabuild/pytorch"
    ref = f"{image}@{MANIFEST_DIGEST}"
    # the GPU host is checked as today, then the candidate is pulled by digest and tested
    assert ["--query-gpu=driver_version", "--format=csv,noheader"] in run.named("nvidia-smi")
    assert ["run", "--rm", "--gpus", "all", "nvidia/cuda:12.6.3-base-ubuntu22.04", "nvidia-smi"] in run.named("docker")
    assert ["pull", ref] in run.named("docker")
    assert run.docker("buildx", "build") == [], "the test stage builds nothing"
    smoke = [a for a in run.docker("run") if "nvidia-smi" not in a]
    assert len(smoke) == 1 and smoke[0][:5] == ["run", "--rm", "--gpus", "all", ref]
    # every requested tag gets the very manifest (by digest) of the candidate, then the
    # candidate tag goes
    aws = run.named("aws")
    puts = [a for a in aws if a[:2] == ["ecr", "put-image"]]
    assert sorted(a[a.index("--image-tag") + 1] for a in puts) == sorted(rec["image"]["tags"])
    for a in puts:
        assert a[a.index("--image-digest") + 1] == MANIFEST_DIGEST
        assert a[a.index("--repository-name") + 1] == "voltabuild/pytorch"
        assert a[a.index("--image-manifest") + 1] == f"file://{run.work}/manifest"
    assert (run.work / "manifest").read_bytes() == MANIFEST, "byte for byte, so the digest is the same"
    deletes = [a for a in aws if a[:2] == ["ecr", "batch-delete-image"]]
    assert len(deletes) == 1 and deletes[0][-1] == f"imageTag={candidate_tag(rec['id'], 1)}"
    assert aws.index(puts[-1]) < aws.index(deletes[0])
    assert run.result() == {"type": "result", "status": "SUCCEEDED", "digest": MANIFEST_DIGEST,
                            "message": "tested and promoted " + " ".join(rec["image"]["tags"])}
    phases = [r["phase"] for r in run.reports() if r["type"] == "phase"]
    assert phases == ["PREPARING", "TESTING", "PUSHING"]


def test_a_failed_smoke_test_in_the_test_stage_touches_no_tag(catalog, tmp_path):
    rec = record_for(catalog, "pytorch")
    run = run_script(tmp_path, render_role(rec, catalog, "test", digest=MANIFEST_DIGEST),
                     _test_env(tmp_path, SHIM_FAIL="smoke"))
    assert run.rc != 0
    result = run.result()
    assert result["status"] == "FAILED" and "no requested tag was touched" in result["reason"]
    assert [a for a in run.named("aws") if a[:1] == ["ecr"] and a[1] != "get-login-password"] == []
    assert run.calls[-1] == ["shutdown", "-h", "now"]


def test_promoted_tags_but_a_candidate_tag_that_stays_fails_the_build_saying_so(catalog, tmp_path):
    # ECR expires an image any of whose tags the candidate- lifecycle rule selects: a promoted
    # image that kept its candidate tag would vanish in three days
    rec = record_for(catalog, "pytorch")
    run = run_script(tmp_path, render_role(rec, catalog, "test", digest=MANIFEST_DIGEST),
                     _test_env(tmp_path, SHIM_FAIL="untag"))
    result = run.result()
    assert result["status"] == "FAILED" and "could not remove the candidate tag" in result["reason"]
    assert len([a for a in run.named("aws") if a[:2] == ["ecr", "batch-delete-image"]]) == 3, "tried 3 times"


def test_the_test_stage_refuses_a_manifest_that_is_not_the_candidates(catalog, tmp_path):
    rec = record_for(catalog, "pytorch")
    other = "sha256:" + "d" * 64
    run = run_script(tmp_path, render_role(rec, catalog, "test", digest=other), _test_env(tmp_path))
    result = run.result()
    assert result["status"] == "FAILED" and f"no manifest {other}" in result["reason"]
    assert [a for a in run.named("aws") if a[:2] == ["ecr", "put-image"]] == []


def test_a_gpu_host_failure_in_the_test_stage_is_a_host_failure(catalog, tmp_path):
    rec = record_for(catalog, "pytorch")
    run = run_script(tmp_path, render_role(rec, catalog, "test", digest=MANIFEST_DIGEST),
                     _test_env(tmp_path, SHIM_FAIL="health"))
    result = run.result()
    assert result["status"] == "FAILED" and result.get("cause") == "host"
    assert ["pull", f"{CFG.registry}/voltabuild/pytorch@{MANIFEST_DIGEST}"] not in run.named("docker")


# ---- local mode: buildah and a real registry ------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Debian's docker-registry on a free loopback port (deletes enabled, as the local stack)."""
    from voltabuild_local.stack import free_port

    if not (shutil.which("buildah") and os.geteuid() == 0 and Path("/usr/bin/docker-registry").exists()):
        pytest.skip("needs buildah as root and Debian's docker-registry")
    from voltabuild_local.stack import prepare_local_base

    prepare_local_base()
    d = tmp_path_factory.mktemp("registry")
    port = free_port()
    cfg = d / "registry.yml"
    cfg.write_text(f"version: 0.1\nlog: {{level: warn}}\n"
                   f"storage: {{filesystem: {{rootdirectory: {d / 'data'}}}, delete: {{enabled: true}}}}\n"
                   f"http: {{addr: '127.0.0.1:{port}'}}\n")
    proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    host = f"127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if requests.get(f"http://{host}/v2/", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cloud_shims(tmp_path_factory) -> Path:
    """Only the shims of what the cloud has and this machine must not do (report to the API,
    CloudWatch Logs, shutdown): buildah, the registry and curl to it are real."""
    d = tmp_path_factory.mktemp("shims")
    for name in ("_record.sh", "aws", "curl", "shutdown"):
        shutil.copy2(SHIMS / name, d / name)
    return d


def _local(registry: str, shims: Path, **extra) -> dict:
    return {"PATH": f"{shims}:{os.environ['PATH']}", "VOLTABUILD_LOCAL": "1", "VOLTABUILD_BUILDER": "buildah",
            "VOLTABUILD_REGISTRY_OVERRIDE": registry, "SHIM_CURL_REAL": f"http://{registry}/", **extra}


def _manifest(registry: str, repo: str, ref: str) -> requests.Response:
    return requests.get(f"http://{registry}/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_TYPES}, timeout=5)


def test_local_split_build_pushes_a_candidate_then_promotes_the_tested_digest(catalog, tmp_path, registry, cloud_shims):
    # GIVEN a canary build with tags of its own
    rec = record_for(catalog, "canary", id="b-00000000000000a23a01",
                     image={"repository": f"{CFG.registry}/voltabuild/canary", "tags": ["split-1", "split-1b"]})
    repo, cand = "voltabuild/canary", candidate_tag(rec["id"], 1)
    # WHEN the build stage runs
    built = run_script(tmp_path / "build", render_role(rec, catalog, "build", instance_type="c7i.8xlarge"),
                       _local(registry, cloud_shims), timeout=300)
    assert built.rc == 0, built.output
    result = built.result()
    assert result["status"] == "BUILT", result
    digest = result["digest"]
    # THEN the registry holds the candidate, by that digest, and none of the requested tags
    assert digest_of(registry, repo, cand) == digest
    assert [digest_of(registry, repo, t) for t in rec["image"]["tags"]] == [None, None]

    # WHEN the test stage pulls that digest, smoke-tests it and promotes it
    tested = run_script(tmp_path / "test", render_role(rec, catalog, "test", digest=digest), _local(registry, cloud_shims),
                        timeout=300)
    assert tested.rc == 0, tested.output
    assert tested.result()["status"] == "SUCCEEDED" and tested.result()["digest"] == digest
    # THEN every requested tag points at the tested digest, with the candidate's very bytes
    candidate_bytes = _manifest(registry, repo, digest).content
    for t in rec["image"]["tags"]:
        resp = _manifest(registry, repo, t)
        assert resp.headers["Docker-Content-Digest"] == digest
        assert resp.content == candidate_bytes
    # AND docker/distribution 2.x cannot delete a tag: the candidate tag stays, on the same
    # digest, and the log says so (ECR's batch-delete-image removes it; see the shim test)
    assert digest_of(registry, repo, cand) == digest
    assert f"the candidate tag {cand} stays, on the promoted digest" in tested.output
    assert ["-h", "now"] not in tested.named("shutdown"), "local mode never shuts the machine down"


def test_local_test_stage_smoke_failure_leaves_the_requested_tags_untouched(catalog, tmp_path, registry, cloud_shims):
    # GIVEN a candidate that cannot pass the canary's smoke test (plain busybox: no entrypoint.sh)
    # and a requested tag that already points at another image
    base = catalog.frameworks["canary"].build_args["BASE_IMAGE"].default
    repo = "voltabuild/canary"
    rec = record_for(catalog, "canary", id="b-00000000000000a23b02",
                     image={"repository": f"{CFG.registry}/{repo}", "tags": ["split-2"]})
    cand = candidate_tag(rec["id"], 1)
    digestfile = tmp_path / "digest"
    for ref in (cand, "split-2"):
        subprocess.run(["buildah", "--storage-driver", "vfs", "push", "--quiet", "--tls-verify=false",
                        "--digestfile", str(digestfile), base, f"docker://{registry}/{repo}:{ref}"], check=True,
                       capture_output=True)
    digest = digestfile.read_text().strip()
    before = digest_of(registry, repo, "split-2")
    # WHEN the test stage runs on that candidate
    run = run_script(tmp_path / "run", render_role(rec, catalog, "test", digest=digest), _local(registry, cloud_shims),
                     timeout=300)
    # THEN it fails saying so, and no tag moved
    result = run.result()
    assert result["status"] == "FAILED" and "no requested tag was touched" in result["reason"], result
    assert digest_of(registry, repo, "split-2") == before
    assert not any(a[:2] == ["-X", "PUT"] or "PUT" in a for a in run.named("curl"))
