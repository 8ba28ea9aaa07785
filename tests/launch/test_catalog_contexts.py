"""A catalog build's context with its lock (issue 19): packed reproducibly, named by its
digest, fetched by the instance through a presigned GET of the contexts bucket (its
user-data carries the URL and the digest, far under EC2's 16 KB), checked and unpacked
before the build; a combination without a lock is refused at render, naming `make lock`.

The images themselves cannot be built here (no GPU, no registry on the internet): what the
Dockerfiles do with the lock is held by hadolint and tests/images."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from hostrun import BUILD_ID, CFG, TOKEN, record_for, run_script

from chalicelib.builds.records import BuildRecord
from chalicelib.custom.contexts import ContextLinks
from chalicelib.launching import catalog_contexts as cc
from chalicelib.launching.hostscript import RenderError, render, script_of, user_data
from chalicelib.specs.catalog import load_catalog

SOURCES_SHIMS = Path(__file__).resolve().parents[1] / "sources" / "shims"
LAUNCH_SHIMS = Path(__file__).resolve().parent / "shims"
BUCKET = "voltabuild-dev-contexts-123456789012-us-east-1"
LOCKED = ("pytorch", "tensorflow", "mxnet")


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def links():
    # a Lambda role's credentials: a session token makes the presigned URL long
    s3 = boto3.client("s3", region_name="us-east-1", config=Config(signature_version="s3v4"),
                      aws_access_key_id="ASIA" + "A" * 16,
                      aws_secret_access_key="s" * 40, aws_session_token="T" * 900)
    return ContextLinks(s3, BUCKET, max_bytes=2 * 1024**3)


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _render(catalog, rec: dict, **source) -> str:
    return render(BuildRecord.of(rec), catalog, CFG, token=TOKEN, build_date="2026-12-02T08:00:00Z", **source)


@pytest.mark.parametrize("framework", LOCKED)
def test_a_catalog_builds_user_data_carries_a_presigned_url_and_the_digest_far_under_16_kb(catalog, links,
                                                                                             framework):
    # GIVEN the default combination (locked), WHEN the launcher's side prepares and renders it
    rec = record_for(catalog, framework)
    source = cc.CatalogContexts(catalog, links).source_for(BuildRecord.of(rec), 3600)
    data = user_data(_render(catalog, rec, **source))
    script = script_of(data)
    # THEN the digest is the one of the context tarball, the URL a presigned GET of its key
    spec = catalog.spec(framework)
    tarball = cc.catalog_tarball(catalog, spec, spec.resolve(None, None, None))
    digest = "sha256:" + hashlib.sha256(tarball).hexdigest()
    assert source["context_sha256"] == digest
    assert f"readonly CONTEXT_SHA256={digest}\n" in script
    url = source["context_url"]
    assert url.startswith(f"https://{BUCKET}.s3.amazonaws.com/catalog/sha256/{digest[7:]}?"), url[:120]
    assert "X-Amz-Signature=" in url and "X-Amz-Security-Token=" in url
    assert "readonly CONTEXT_URL=" in script and digest[7:] in script
    assert "readonly CONTEXT_B64=''\n" in script, "nothing of the context travels inline"
    # AND the user-data is far under EC2's limit, however large the lock (70-120 KB)
    assert len(tarball) > 16 * 1024
    assert len(data) < 10 * 1024, len(data)


def test_the_context_tarball_carries_the_lock_and_is_reproducible(catalog):
    for framework in LOCKED:
        spec = catalog.spec(framework)
        r = spec.resolve(None, None, None)
        data = cc.catalog_tarball(catalog, spec, r)
        assert data == cc.catalog_tarball(catalog, spec, r), "the same bytes every time (the digest names it)"
        files = members(data)
        lock = cc.lock_path(catalog, r).read_bytes()
        assert files["lock-hashed.txt"] == lock
        assert {"Dockerfile", "entrypoint.sh", "probe.py", "healthcheck.py"} <= set(files)
        assert b"--hash=sha256:" in files["lock-hashed.txt"]
    pinned = members(cc.catalog_tarball(catalog, catalog.spec("pytorch"), catalog.spec("pytorch").resolve(None, None, None)))
    assert pinned["lock-pinned.txt"].decode().splitlines() == [
        "torch==2.14.1 https://download.pytorch.org/whl/cu126",
        "torchvision==0.29.1 https://download.pytorch.org/whl/cu126",
        "torchaudio==2.11.1 https://pypi.org/simple",
    ]
    tf = members(cc.catalog_tarball(catalog, catalog.spec("tensorflow"), catalog.spec("tensorflow").resolve(None, None, None)))
    assert tf["lock-pinned.txt"] == b"", "TensorFlow's lock is hashed through"


def test_every_combination_the_catalog_accepts_launches_with_its_locked_context(catalog, links):
    # GIVEN every framework x version x CUDA x Python the catalog accepts at submit
    contexts = cc.CatalogContexts(catalog, links)
    seen = set()
    for framework in LOCKED:
        spec = catalog.spec(framework)
        for r in spec.combinations():
            rec = record_for(catalog, framework, version=r.version, cuda=r.cuda, python=r.python)
            # WHEN the launcher prepares it THEN it gets a presigned URL of a context with its own lock
            source = contexts.source_for(BuildRecord.of(rec), 3600)
            assert source["context_url"].startswith(f"https://{BUCKET}.s3.amazonaws.com/catalog/sha256/")
            seen.add(source["context_sha256"])
    assert len(seen) == sum(len(catalog.spec(fw).combinations()) for fw in LOCKED), "one context per combination"


def test_the_canary_has_no_lock_and_keeps_its_context_inline(catalog, links):
    rec = record_for(catalog, "canary")
    assert cc.CatalogContexts(catalog, links).source_for(BuildRecord.of(rec), 3600) == {}
    script = _render(catalog, rec)
    assert "readonly CONTEXT_B64=H4sI" in script and "CONTEXT_URL" not in script


def _copy_without_a_lock(catalog, root: Path):
    """The catalog copied to ``root`` with one PyTorch combination's lock removed: that combination."""
    for folder in ("buildspecs", "dockerfiles"):
        shutil.copytree(catalog.root / folder, root / folder)
    spec = catalog.spec("pytorch")
    unlocked = next(r for r in spec.combinations() if r != spec.resolve(None, None, None))
    (root / "buildspecs" / "locks" / "pytorch" / f"{cc.lock_name(unlocked)}.txt").unlink()
    return load_catalog(root), unlocked


def test_a_combination_without_a_lock_fails_the_render_naming_make_lock(catalog, links, tmp_path):
    catalog, unlocked = _copy_without_a_lock(catalog, tmp_path / "repo")
    rec = record_for(catalog, "pytorch", version=unlocked.version, cuda=unlocked.cuda, python=unlocked.python)
    name = f"buildspecs/locks/pytorch/{cc.lock_name(unlocked)}.txt"
    with pytest.raises(RenderError, match="make lock") as e:
        _render(catalog, rec)
    assert name in str(e.value)
    with pytest.raises(cc.MissingLock, match="make lock"):
        cc.CatalogContexts(catalog, links).source_for(BuildRecord.of(rec), 3600)


def test_the_bundle_manifest_names_what_the_deploy_uploads_and_the_launcher_reads_it(catalog, links, tmp_path):
    # GIVEN `make package`'s bundle (the catalog beside the manifest) and the objects it uploads
    # (one combination's lock missing, as when a buildspec gained one and `make lock` was not run)
    root, objects = tmp_path / "bundle", tmp_path / "objects"
    _, unlocked = _copy_without_a_lock(catalog, root)
    manifest = cc.write_bundle(load_catalog(root), root, objects)
    assert f"pytorch/{cc.lock_name(unlocked)}" not in manifest
    assert set(manifest) >= {f"{fw}/{cc.lock_name(catalog.spec(fw).resolve(None, None, None))}" for fw in LOCKED}
    for digest in manifest.values():
        data = (objects / cc.key_of(digest)).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    # AND the Lambda's bundle has no lock files (make package leaves them out): the manifest is enough
    shutil.rmtree(root / "buildspecs" / "locks")
    rec = BuildRecord.of(record_for(catalog, "pytorch"))
    source = cc.CatalogContexts(load_catalog(root), links).source_for(rec, 3600)
    assert source["context_sha256"] == manifest["pytorch/2.14.1-cu126-py312"]
    assert "readonly CONTEXT_URL=" in _render(load_catalog(root), record_for(catalog, "pytorch"), **source)
    with pytest.raises(cc.MissingLock, match="make lock"):
        cc.CatalogContexts(load_catalog(root), links).source_for(BuildRecord.of(record_for(
            catalog, "pytorch", version=unlocked.version, cuda=unlocked.cuda, python=unlocked.python)), 3600)
    # WHEN the bundle's manifest names another digest, THEN the launcher takes the manifest's
    # (what the deploy uploaded), not one it would compute itself
    other = {k: "sha256:" + "b" * 64 for k in manifest}
    (root / cc.MANIFEST_NAME).write_text(json.dumps(other))
    source = cc.CatalogContexts(load_catalog(root), links).source_for(rec, 3600)
    assert source["context_sha256"] == "sha256:" + "b" * 64 and "/catalog/sha256/" + "b" * 64 + "?" in source["context_url"]


def _run(tmp_path: Path, catalog, context_file: Path | None, digest: str):
    rec = record_for(catalog, "pytorch")
    url = f"https://contexts.example.test/catalog/sha256/{digest[7:]}?X-Amz-Signature=" + "f" * 64
    script = _render(catalog, rec, context_url=url, context_sha256=digest, context_max_bytes=10**7)
    env = {"PATH": f"{SOURCES_SHIMS}:{LAUNCH_SHIMS}:/usr/bin:/bin", "LAUNCH_SHIMS": str(LAUNCH_SHIMS)}
    if context_file is not None:
        env["SHIM_CONTEXT_FILE"] = str(context_file)
    return run_script(tmp_path / "run", script, env)


def test_the_instance_downloads_checks_and_builds_the_catalog_context_with_its_lock(catalog, tmp_path):
    spec = catalog.spec("pytorch")
    data = cc.catalog_tarball(catalog, spec, spec.resolve(None, None, None))
    ctx = tmp_path / "ctx.tar.gz"
    ctx.write_bytes(data)
    run = _run(tmp_path, catalog, ctx, cc.digest_of(data))
    assert run.rc == 0, run.output
    assert run.result()["status"] == "SUCCEEDED"
    context = run.work / "context"
    assert (context / "lock-hashed.txt").read_bytes() == cc.lock_path(catalog, spec.resolve(None, None, None)).read_bytes()
    build = run.docker("buildx", "build")[0]
    assert build[-1] == str(context)
    assert f"VOLTABUILD_BUILD_ID={BUILD_ID}" in build


def test_a_catalog_context_that_does_not_match_its_digest_fails_the_build_and_builds_nothing(catalog, tmp_path):
    ctx = tmp_path / "ctx.tar.gz"
    ctx.write_bytes(b"not the context")
    run = _run(tmp_path, catalog, ctx, "sha256:" + "0" * 64)
    result = run.result()
    assert result["status"] == "FAILED" and "not the sha256:" + "0" * 64 in result["reason"], result
    assert not run.docker("buildx", "build")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
