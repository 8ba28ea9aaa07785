"""Base images pinned by digest (issue 19): `make lock` learns the digest each base's tag points
to from its registry (scripts/base_digests.py) into buildspecs/facts/base-digests.yaml, and the
catalog passes such a base as name:tag@digest. Registries here are loopback only: Debian's
docker-registry (images uploaded through its v2 API) and a tiny token-auth server."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from registrykit import REGISTRY_BIN, TokenRegistry, docker_registry, push_image, push_index, sha256

from chalicelib.builds.records import BuildRecord
from chalicelib.errors import CatalogError
from chalicelib.launching.hostscript import HostConfig, render
from chalicelib.specs import catalog_compiled
from chalicelib.specs.catalog import BaseDigest, load_catalog
from scripts import base_digests as bd
from voltabuild_local.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(ROOT)
TODAY = datetime.date(2026, 12, 2)
LATER = datetime.date(2026, 12, 9)
DIGEST = "sha256:" + "5" * 64
OTHER = "sha256:" + "6" * 64


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    if not REGISTRY_BIN.exists():
        pytest.skip("needs Debian's docker-registry (bash scripts/system-deps.sh)")
    with docker_registry(tmp_path_factory.mktemp("registry")) as host:
        yield host


def _learn(refs, facts, **kw) -> tuple[bool, list[str]]:
    said: list[str] = []
    changed = bd.refresh(refs, facts, say=said.append, **{"today": TODAY, **kw})
    return changed, said


def _entries(**digests: str) -> dict[str, BaseDigest]:
    return {ref: BaseDigest(digest=d, source="https://registry.example/v2/x/manifests/1", recorded=TODAY)
            for ref, d in digests.items()}


# ---- learning a digest from a registry ------------------------------------------------------
def test_the_digest_recorded_is_the_one_the_registry_reports_and_a_rerun_changes_nothing(registry, tmp_path):
    # GIVEN a tag in a registry
    pushed = push_image(registry, "base/tiny", "1", "one")
    ref, facts = f"{registry}/base/tiny:1", tmp_path / "base-digests.yaml"
    # WHEN its digest is learnt
    changed, said = _learn([ref], facts)
    # THEN the file records what the registry answers for the tag, with where and when
    url = f"http://{registry}/v2/base/tiny/manifests/1"
    reported = requests.head(url, headers={"Accept": bd.ACCEPT}, timeout=5).headers["Docker-Content-Digest"]
    entry = bd.read(facts)[ref]
    assert changed and entry.digest == pushed == reported
    assert (entry.source, entry.recorded) == (url, TODAY)
    assert said[0] == f"{ref}: {pushed} recorded"
    # AND a second run, a week later, changes nothing (not even the date)
    before = facts.read_bytes()
    changed, said = _learn([ref], facts, today=LATER)
    assert not changed and facts.read_bytes() == before
    assert said[0] == f"{ref}: {pushed} unchanged"


def test_a_multi_platform_tag_is_pinned_to_its_index_not_to_one_platform(registry, tmp_path):
    # GIVEN a tag that is an OCI index (as multi-platform tags are): a client that asks for
    # single-image manifests only gets no digest (docker-registry) or one platform's (others)
    index, image = push_index(registry, "base/multi", "1", "multi")
    ref, facts = f"{registry}/base/multi:1", tmp_path / "base-digests.yaml"
    single = requests.head(f"http://{registry}/v2/base/multi/manifests/1", timeout=5, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"})
    assert single.headers.get("Docker-Content-Digest") != index
    # WHEN its digest is learnt, THEN the pin is the index's: every platform's image stays pinned
    _learn([ref], facts)
    assert bd.read(facts)[ref].digest == index != image


def test_a_moved_tag_keeps_the_recorded_digest_unless_forced(registry, tmp_path):
    first = push_image(registry, "base/moving", "1", "first")
    ref, facts = f"{registry}/base/moving:1", tmp_path / "base-digests.yaml"
    _learn([ref], facts)
    # WHEN the tag is pushed again with another image
    second = push_image(registry, "base/moving", "1", "second")
    assert second != first
    changed, said = _learn([ref], facts, today=LATER)
    # THEN the pin holds and the run says what the tag points to now
    assert not changed and bd.read(facts)[ref].digest == first
    assert said[0] == (f"{ref}: the tag now points to {second}; kept {first} (recorded {TODAY}); "
                       "--force takes the new one")
    # AND --force takes the new digest, dated the day it was read
    changed, said = _learn([ref], facts, today=LATER, force=True)
    assert changed and (bd.read(facts)[ref].digest, bd.read(facts)[ref].recorded) == (second, LATER)
    assert said[0] == f"{ref}: {second} replaces {first} (--force)"


def test_a_tag_the_registry_does_not_have_records_nothing(registry, tmp_path):
    facts = tmp_path / "base-digests.yaml"
    changed, said = _learn([f"{registry}/base/absent:1"], facts)
    assert bd.read(facts) == {}
    assert said[0] == (f"{registry}/base/absent:1: http://{registry}/v2/base/absent/manifests/1: HTTP 404; "
                       "no digest recorded: builds by tag")


def test_an_unreachable_registry_records_nothing_and_keeps_what_was_recorded(tmp_path):
    # GIVEN a registry that does not answer (nothing listens on its port), one of whose images
    # has a digest recorded from an earlier run
    dead = f"127.0.0.1:{free_port()}"
    kept, new = f"{dead}/a/kept:1", f"{dead}/a/new:1"
    facts = tmp_path / "base-digests.yaml"
    facts.write_text(bd.render(_entries(**{kept: DIGEST})))
    before = facts.read_bytes()
    # WHEN digests are learnt
    changed, said = _learn([kept, new], facts, force=True)
    # THEN nothing is invented or removed, even forced, and the file is untouched
    assert not changed and facts.read_bytes() == before and bd.read(facts) == _entries(**{kept: DIGEST})
    # AND one line per image says so
    assert said[0].startswith(f"{kept}: http://{dead}/v2/a/kept/manifests/1: no answer (ConnectionError); ")
    assert said[0].endswith(f"; kept {DIGEST} (recorded {TODAY})")
    assert said[1] == f"{new}: {dead} could not be reached; no digest recorded: builds by tag"
    assert said[2] == "base digests: 1 of 2 bases pinned by digest; base-digests.yaml unchanged"


def test_a_base_the_catalog_no_longer_renders_is_dropped(tmp_path):
    # GIVEN a digest recorded for a tag the buildspecs no longer use (their CUDA moved on)
    facts = tmp_path / "base-digests.yaml"
    facts.write_text(bd.render(_entries(**{"nvidia/cuda:12.0.0-base-ubuntu22.04": DIGEST})))
    changed, said = _learn([], facts, lookup=lambda ref: pytest.fail(f"asked for {ref}"))
    assert changed and bd.read(facts) == {}
    assert said[0] == f"nvidia/cuda:12.0.0-base-ubuntu22.04: no longer a base the catalog renders: {DIGEST} dropped"


# ---- a registry that wants a token (Docker Hub's way) ---------------------------------------
def test_a_token_registry_is_answered_with_an_anonymous_bearer_token(tmp_path):
    manifest = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
    with TokenRegistry(manifest) as reg:
        _learn([reg.reference], tmp_path / "base-digests.yaml")
    assert bd.read(tmp_path / "base-digests.yaml")[reg.reference].digest == sha256(manifest)
    first, token, manifest_req = reg.requests
    # the manifest asked for without a token, then the token for the challenge's service and scope
    assert (first["method"], first["path"]) == ("HEAD", "/v2/team/base/manifests/1")
    assert "Authorization" not in first["headers"]
    assert (token["method"], token["path"]) == ("GET", "/token")
    assert token["query"] == {"service": ["loopback.test"], "scope": ["repository:team/base:pull"]}
    # then HEAD (no download) with the token, asking for an index or a list first
    assert manifest_req["method"] == "HEAD" and manifest_req["headers"]["Authorization"] == f"Bearer {reg.TOKEN}"
    assert manifest_req["headers"]["Accept"].split(", ")[:2] == [
        "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"]


def test_a_registry_that_gives_no_digest_header_is_pinned_to_the_hash_of_what_it_serves(tmp_path):
    manifest = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
    with TokenRegistry(manifest, digest_header=None, token_key="access_token") as reg:
        _learn([reg.reference], tmp_path / "base-digests.yaml")
    assert bd.read(tmp_path / "base-digests.yaml")[reg.reference].digest == sha256(manifest)
    assert [r["method"] for r in reg.requests if r["path"] != "/token"] == ["HEAD", "HEAD", "GET"]


@pytest.mark.parametrize("header", ["md5:" + "0" * 32, "sha256:" + "0" * 63, "sha256:" + "A" * 64])
def test_a_registry_that_answers_with_no_real_digest_records_nothing(tmp_path, header):
    with TokenRegistry(b"{}", digest_header=header) as reg:
        changed, said = _learn([reg.reference], tmp_path / "base-digests.yaml")
    assert bd.read(tmp_path / "base-digests.yaml") == {}
    assert f"Docker-Content-Digest {header!r} is not sha256 and 64 hex digits" in said[0]


@pytest.mark.parametrize("reference,url", [
    ("nvidia/cuda:12.6.3-base-ubuntu22.04", "https://registry-1.docker.io/v2/nvidia/cuda/manifests/12.6.3-base-ubuntu22.04"),
    ("busybox:1.36", "https://registry-1.docker.io/v2/library/busybox/manifests/1.36"),
    ("public.ecr.aws/docker/library/busybox:1.36", "https://public.ecr.aws/v2/docker/library/busybox/manifests/1.36"),
    ("localhost:5000/a/b:1", "http://localhost:5000/v2/a/b/manifests/1"),
    ("127.0.0.1:5000/a:1", "http://127.0.0.1:5000/v2/a/manifests/1"),
])
def test_where_each_reference_is_asked(reference, url):
    assert bd.ImageRef.parse(reference).manifest_url == url


# ---- the catalog pins what is recorded -------------------------------------------------------
def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "buildspecs", root / "buildspecs")
    shutil.copytree(ROOT / "dockerfiles", root / "dockerfiles")
    return root


def _facts(root: Path) -> Path:
    return root / "buildspecs" / "facts" / "base-digests.yaml"


def test_the_catalog_pins_a_recorded_base_and_keeps_the_others_by_tag(tmp_path):
    # GIVEN a digest recorded for PyTorch's default BASE_IMAGE only
    spec = CATALOG.frameworks["pytorch"]
    r = spec.resolve(None, None, None)
    plain = spec.docker_build_args(r, CATALOG.hardware)
    root = _copy(tmp_path)
    _facts(root).write_text(bd.render(_entries(**{plain["BASE_IMAGE"]: DIGEST})))
    catalog = load_catalog(root)
    # WHEN the default build's arguments are rendered
    args = catalog.frameworks["pytorch"].docker_build_args(r, catalog.hardware)
    # THEN that base is name:tag@digest, the devel base (no digest) stays by tag, nothing else moves
    assert args["BASE_IMAGE"] == f"{plain['BASE_IMAGE']}@{DIGEST}"
    assert args["DEVEL_IMAGE"] == plain["DEVEL_IMAGE"] and "@" not in plain["DEVEL_IMAGE"]
    assert {k: v for k, v in args.items() if k != "BASE_IMAGE"} == {k: v for k, v in plain.items() if k != "BASE_IMAGE"}
    # AND the host script passes the pinned base to the build
    record = {"id": "b-0123456789abcdef0123", "framework": "pytorch", "version": r.version, "cuda": r.cuda,
              "python": r.python, "build_args": {}, "timeout_minutes": 45, "attempt": 1,
              "image": {"repository": spec.repository, "tags": spec.tags_for(r, catalog.hardware)},
              "status": "LAUNCHING", "instance_types": [], "notify": {"slack": False},
              "created_at": "2026-12-02T05:00:00Z", "updated_at": "2026-12-02T05:00:00Z"}
    cfg = HostConfig(api_url="https://api.example.test/api", region="us-east-1", stage="dev",
                     registry="123456789012.dkr.ecr.us-east-1.amazonaws.com")
    script = render(BuildRecord.of(record), catalog, cfg, token="tok_" + "A" * 40, build_date="2026-12-02T05:00:00Z")
    assert f"BUILD_ARGS=(BASE_IMAGE={plain['BASE_IMAGE']}@{DIGEST} " in script
    # AND the GPU health check on the host starts from the same pinned image (its tag is the base's)
    assert catalog.hardware.cuda[r.cuda].health_image == plain["BASE_IMAGE"]
    assert f"readonly HEALTH_IMAGE={plain['BASE_IMAGE']}@{DIGEST}\n" in script


def test_the_lambda_pins_from_the_compiled_catalog_without_yaml(tmp_path, monkeypatch):
    # GIVEN a deployment bundle whose facts record a digest for TensorFlow's default base
    spec = CATALOG.frameworks["tensorflow"]
    r = spec.resolve(None, None, None)
    base = spec.docker_build_args(r, CATALOG.hardware)["BASE_IMAGE"]
    root = _copy(tmp_path)
    _facts(root).write_text(bd.render(_entries(**{base: DIGEST})))
    catalog_compiled.write(root)
    # WHEN the catalog is loaded as the Lambda loads it: from the compiled JSON, no PyYAML
    monkeypatch.setitem(sys.modules, "yaml", None)
    catalog = load_catalog(root)
    # THEN the base is pinned there too
    assert catalog.frameworks["tensorflow"].docker_build_args(r, catalog.hardware)["BASE_IMAGE"] == f"{base}@{DIGEST}"


def test_a_base_a_request_chooses_is_pinned_by_its_buildspec_not_by_the_facts_file(tmp_path):
    # the canary's BASE_IMAGE is a request's choice from an allow-list (issue 17), with its own digest field
    canary = CATALOG.frameworks["canary"]
    default = canary.build_args["BASE_IMAGE"].default
    root = _copy(tmp_path)
    _facts(root).write_text(bd.render(_entries(**{default: DIGEST})))
    catalog = load_catalog(root)
    r = canary.resolve(None, None, None)
    assert catalog.frameworks["canary"].docker_build_args(r, catalog.hardware)["BASE_IMAGE"] == default
    assert default not in bd.references(catalog)


def test_every_base_the_catalog_renders_is_looked_up_and_the_committed_file_holds_only_those():
    refs = bd.references(CATALOG)
    assert "nvidia/cuda:12.6.3-base-ubuntu22.04" in refs and refs["nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04"] == [
        "mxnet"]
    assert all("@" not in ref for ref in refs)
    assert set(bd.read(bd.FACTS)) <= set(refs)


@pytest.mark.parametrize("entry", [
    {"digest": "sha256:abc", "source": "https://r.example/v2/a/manifests/1", "recorded": TODAY},
    {"digest": "sha256:" + "A" * 64, "source": "https://r.example/v2/a/manifests/1", "recorded": TODAY},
    {"digest": "md5:" + "0" * 32, "source": "https://r.example/v2/a/manifests/1", "recorded": TODAY},
    {"digest": "sha256:" + "0" * 64 + " ", "source": "https://r.example/v2/a/manifests/1", "recorded": TODAY},
    {"digest": DIGEST, "recorded": TODAY},
    {"digest": DIGEST, "source": "https://r.example/v2/a/manifests/1"},
], ids=["short", "upper-case", "md5", "trailing-space", "no-source", "no-date"])
def test_a_forged_or_incomplete_entry_fails_the_catalog_naming_the_file(tmp_path, entry):
    spec = CATALOG.frameworks["tensorflow"]
    base = spec.docker_build_args(spec.resolve(None, None, None), CATALOG.hardware)["BASE_IMAGE"]
    root = _copy(tmp_path)
    _facts(root).write_text(yaml.safe_dump({"digests": {base: entry}}))
    with pytest.raises(CatalogError) as err:
        load_catalog(root)
    assert "base-digests.yaml" in str(err.value) and f"digests.{base}" in str(err.value)


@pytest.mark.parametrize("key", [f"nvidia/cuda:12.6.3-base-ubuntu22.04@{OTHER}", "nvidia/cuda", "Nvidia/cuda:1"])
def test_an_entry_not_keyed_by_name_and_tag_fails_the_catalog(tmp_path, key):
    root = _copy(tmp_path)
    _facts(root).write_text(yaml.safe_dump({"digests": {key: {"digest": DIGEST, "source": "https://r.example/v2/a",
                                                              "recorded": TODAY}}}))
    with pytest.raises(CatalogError, match="base-digests.yaml"):
        load_catalog(root)


# ---- `make lock` runs it first ---------------------------------------------------------------
@pytest.fixture
def lock_module(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("voltabuild_lock_digests", ROOT / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "voltabuild_lock_digests", module)
    spec.loader.exec_module(module)
    return module


def loopback_only(real):
    """The real lookup for a loopback registry; every other registry (Docker Hub) is not asked."""
    def lookup(ref):
        if not ref.registry.startswith("127.0.0.1:"):
            raise bd.Unreachable(f"{ref.manifest_url}: not asked (the tests stay on loopback)")
        return real(ref)
    return lookup


def test_make_lock_learns_the_digests_and_the_catalog_then_pins_them(registry, tmp_path, monkeypatch, lock_module,
                                                                     capsys):
    # GIVEN TensorFlow's base served by a (loopback) registry
    root = _copy(tmp_path)
    path = root / "buildspecs" / "tensorflow.yaml"
    data = yaml.safe_load(path.read_text())
    data["fixed_args"]["BASE_IMAGE"] = f"{registry}/lockstep/cuda:{{cuda_full}}-base"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    catalog = load_catalog(root)
    tf = catalog.frameworks["tensorflow"]
    cudas = sorted({catalog.hardware.cuda[r.cuda].full for r in tf.combinations()})
    pushed = {c: push_image(registry, "lockstep/cuda", f"{c}-base", c) for c in cudas}
    monkeypatch.setattr(lock_module, "ROOT", root)
    monkeypatch.setattr(bd, "manifest_digest", loopback_only(bd.manifest_digest))
    # WHEN `make lock` runs its digest step
    assert lock_module.main(["--digests-only"]) == 0
    out = capsys.readouterr().out
    # THEN each TensorFlow base is pinned by the digest the registry holds; Docker Hub's say why not
    pinned = load_catalog(root).frameworks["tensorflow"]
    for r in tf.combinations():
        full = catalog.hardware.cuda[r.cuda].full
        assert pinned.docker_build_args(r, catalog.hardware)["BASE_IMAGE"] == (
            f"{registry}/lockstep/cuda:{full}-base@{pushed[full]}")
    assert "nvidia/cuda:12.6.3-cudnn-devel-ubuntu22.04: https://registry-1.docker.io/v2/nvidia/cuda/manifests/" \
           "12.6.3-cudnn-devel-ubuntu22.04: not asked (the tests stay on loopback); no digest recorded: builds by tag" in out
    # AND a second run changes nothing
    before = _facts(root).read_bytes()
    assert lock_module.main(["--digests-only"]) == 0
    assert _facts(root).read_bytes() == before and "base-digests.yaml unchanged" in capsys.readouterr().out


# ---- a real build from a pinned base (buildah, as the local stack builds) --------------------
BUILDAH = ["buildah", "--storage-driver", "vfs"]
LOCAL_BASE = "localhost/voltabuild/busybox:local"


def _buildah(*args: str) -> str:
    done = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"buildah {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def _has_file(image: str, path: str) -> bool:
    ctr = _buildah("from", "--pull=never", image)
    try:
        return (Path(_buildah("mount", ctr)) / path).exists()
    finally:
        _buildah("rm", ctr)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("buildah") is None or os.geteuid() != 0 or not Path("/bin/busybox").exists(),
                    reason="needs buildah as root and Debian's busybox-static (bash scripts/system-deps.sh)")
def test_a_build_from_a_pinned_base_starts_from_the_recorded_image_after_the_tag_moved(registry, tmp_path):
    # GIVEN the local busybox base in the registry as pinned/busybox:1
    subprocess.run(["bash", str(ROOT / "dockerfiles/canary/make-local-base.sh"), LOCAL_BASE], check=True,
                   capture_output=True, timeout=120)
    ref = f"{registry}/pinned/busybox:1"
    _buildah("push", "--tls-verify=false", LOCAL_BASE, f"docker://{ref}")
    # AND a catalog whose canary builds FROM it as a fixed argument, its digest learnt
    root = _copy(tmp_path)
    path = root / "buildspecs" / "canary.yaml"
    data = yaml.safe_load(path.read_text())
    del data["build_args"]["BASE_IMAGE"]
    data["fixed_args"]["BASE_IMAGE"] = ref
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    bd.learn(load_catalog(root), _facts(root), lookup=loopback_only(bd.manifest_digest), say=lambda line: None)
    first = bd.read(_facts(root))[ref].digest
    catalog = load_catalog(root)
    spec = catalog.frameworks["canary"]
    args = spec.docker_build_args(spec.resolve(None, None, None), catalog.hardware)
    assert args["BASE_IMAGE"] == f"{ref}@{first}"
    # WHEN the tag moves to another image (the base plus /moved)
    marker = tmp_path / "moved"
    marker.write_text("moved\n")
    ctr = _buildah("from", "--pull=never", LOCAL_BASE)
    moved = f"localhost/voltabuild-test/moved:{tmp_path.name.lower()}"
    try:
        _buildah("copy", ctr, str(marker), "/moved")
        _buildah("commit", "--quiet", ctr, moved)
    finally:
        _buildah("rm", ctr)
    _buildah("push", "--tls-verify=false", moved, f"docker://{ref}")
    # AND the canary is built with the catalog's arguments, and once by the bare tag
    built = []
    try:
        for name, base in (("pinned", args["BASE_IMAGE"]), ("by-tag", ref)):
            tag = f"localhost/voltabuild-test/canary-{name}:{tmp_path.name.lower()}"
            build_args = {**args, "BASE_IMAGE": base, "BUILD_DATE": "2026-12-02T12:00:00Z",
                          "VOLTABUILD_BUILD_ID": "b-test", "VCS_REF": "0123abcd"}
            _buildah("bud", "--isolation", "chroot", "--tls-verify=false", "--pull-always", "--quiet",
                     *(f"--build-arg={k}={v}" for k, v in build_args.items()), "-t", tag,
                     str(catalog.context_dir(spec)))
            built.append(tag)
        # THEN the pinned build started from the image recorded, the one by tag from the moved tag
        assert not _has_file(built[0], "moved")
        assert _has_file(built[1], "moved")
    finally:
        for image in (*built, moved, ref, f"{registry}/pinned/busybox@{first}"):  # and the bases pulled
            subprocess.run([*BUILDAH, "rmi", image], capture_output=True, timeout=120)
