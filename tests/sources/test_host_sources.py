"""The host script's source part (issue 20), run for real under bash with recording shims:
an uploaded context is downloaded through its presigned URL, checked against its digest
and unpacked safely before the build, which uses the request's Dockerfile path, target
and build args as separate arguments; what only the instance can see (a digest that does
not match, a hostile tarball) fails the build with the reason and builds nothing."""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "launch"))
from hostrun import CFG, SHIMS, TOKEN, run_script  # noqa: E402

from chalicelib.builds.records import BuildRecord  # noqa: E402
from chalicelib.custom.custom_builds import extend_dockerfile  # noqa: E402
from chalicelib.launching.hostscript import render as _render  # noqa: E402
from chalicelib.launching.hostscript import script_of, user_data  # noqa: E402
from chalicelib.specs.catalog import load_catalog  # noqa: E402

HERE_SHIMS = Path(__file__).resolve().parent / "shims"
BUILD_ID = "b-0123456789abcdef0123"
URL = ("https://contexts.example.test/sha256/abc?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2026"
       "&X-Amz-Signature=" + "f" * 64 + "&X-Amz-Security-Token=" + "A" * 900)


def render(record: dict, *args, **kwargs) -> str:
    """hostscript.render takes the stored build (a BuildRecord since issue 18); these records
    are its fields, with the ones the host script does not read filled in."""
    stored = {"status": "LAUNCHING", "notify": {"slack": False}, "created_at": "2026-12-02T08:00:00Z",
              "updated_at": "2026-12-02T08:00:00Z", **record}
    return _render(BuildRecord.of(stored), *args, **kwargs)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def tarball(path: Path, files: dict[str, bytes]) -> tuple[Path, str]:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def context_record(digest: str, **source) -> dict:
    return {
        "id": BUILD_ID, "framework": "custom", "version": "custom", "cuda": "12.4", "python": "none",
        "build_args": {"http_proxy": "", "NOTE": "two words; $(not a command)"},
        "image": {"repository": f"{CFG.registry}/voltabuild/team/app", "tags": ["v1"]},
        "instance_types": ["g5.xlarge"], "timeout_minutes": 45, "attempt": 1,
        "source": {"kind": "context", "context": digest, "dockerfile": "docker/Dockerfile", "target": "runtime",
                   "smoke_test": ["python3", "-c", "print('ok')"], **source},
    }


def run_context(tmp_path: Path, catalog, record: dict, context_file: Path | None):
    script = render(record, catalog, CFG, token=TOKEN, build_date="2026-12-02T08:00:00Z", context_url=URL,
                    context_max_bytes=100_000)
    env = {"PATH": f"{HERE_SHIMS}:{SHIMS}:/usr/bin:/bin", "LAUNCH_SHIMS": str(SHIMS)}
    if context_file is not None:
        env["SHIM_CONTEXT_FILE"] = str(context_file)
    return run_script(tmp_path / "run", script, env)


def test_a_context_build_uses_the_requests_dockerfile_target_args_and_smoke_test(catalog, tmp_path):
    ctx, digest = tarball(tmp_path / "ctx.tar.gz", {"docker/Dockerfile": b"FROM base AS runtime\n", "app.py": b"1"})
    run = run_context(tmp_path, catalog, context_record(digest), ctx)
    assert run.rc == 0, run.output
    assert run.result()["status"] == "SUCCEEDED"
    build = run.docker("buildx", "build")[0]
    context = str(run.work / "context")
    assert build[build.index("--file") + 1] == context + "/docker/Dockerfile"
    assert build[build.index("--target") + 1] == "runtime"
    assert "http_proxy=" in build and "NOTE=two words; $(not a command)" in build
    assert build[-1] == context and (run.work / "context/app.py").read_bytes() == b"1"
    smoke = [c for c in run.docker("run") if c[-3:] == ["python3", "-c", "print('ok')"]]
    assert smoke and smoke[0][:4] == ["run", "--rm", "--gpus", "all"], run.docker("run")


def test_the_user_data_with_a_long_presigned_url_fits_ec2s_limit(catalog):
    script = render(context_record("sha256:" + "0" * 64), catalog, CFG, token=TOKEN, build_date="2026-12-02T08:00:00Z",
                    context_url=URL, context_max_bytes=100_000)
    assert len(user_data(script)) <= 16 * 1024
    assert script_of(user_data(script)) == script


def test_a_context_that_does_not_match_its_digest_fails_the_build_and_builds_nothing(catalog, tmp_path):
    ctx, _ = tarball(tmp_path / "ctx.tar.gz", {"docker/Dockerfile": b"FROM x\n"})
    run = run_context(tmp_path, catalog, context_record("sha256:" + "0" * 64), ctx)
    result = run.result()
    assert result["status"] == "FAILED" and "not the sha256:" + "0" * 64 in result["reason"], result
    assert not run.docker("buildx", "build")


def test_a_hostile_tarball_fails_the_build_with_the_reason(catalog, tmp_path):
    ctx, digest = tarball(tmp_path / "ctx.tar.gz", {"docker/Dockerfile": b"FROM x\n", "../../escape": b"x"})
    run = run_context(tmp_path, catalog, context_record(digest), ctx)
    result = run.result()
    assert result["status"] == "FAILED" and "'..' are not allowed" in result["reason"], result
    assert not run.docker("buildx", "build")
    assert not (tmp_path / "escape").exists()


def test_a_context_without_the_named_dockerfile_fails_saying_so(catalog, tmp_path):
    ctx, digest = tarball(tmp_path / "ctx.tar.gz", {"Dockerfile": b"FROM x\n"})
    run = run_context(tmp_path, catalog, context_record(digest), ctx)
    assert "no docker/Dockerfile in the build context" in run.result()["reason"]


def test_a_download_that_fails_fails_the_build(catalog, tmp_path):
    run = run_context(tmp_path, catalog, context_record("sha256:" + "0" * 64), None)
    assert "could not download the build context" in run.result()["reason"]


def test_an_extension_dockerfile_passes_every_value_as_json_or_a_checked_env_line():
    text = extend_dockerfile({"kind": "extend", "base": "r/voltabuild/pytorch:2.5.1", "apt": ["ffmpeg", "libsm6"],
                              "pip": ['transformers==4.46.0', 'numpy<2; python_version < "3.12"'],
                              "env": {"HF_HOME": "/data/hf"}})
    assert 'RUN ["/bin/sh", "-c", "apt-get update' in text and '"apt-install", "ffmpeg", "libsm6"]' in text
    assert ('RUN ["python3", "-m", "pip", "install", "--no-cache-dir", "transformers==4.46.0", '
            '"numpy<2; python_version < \\"3.12\\""]') in text
    assert 'ENV HF_HOME="/data/hf"' in text and text.startswith("# generated")
    assert "FROM ${BASE_IMAGE}" in text
    lines = text.splitlines()
    apt = next(i for i, line in enumerate(lines) if "apt-get" in line)
    assert lines[apt - 1] == "USER 0" and lines[apt + 1] == "USER 1000"  # pip and the image run as the user


def test_every_catalog_image_runs_as_the_user_an_extension_returns_to():
    from chalicelib.custom.custom_builds import CATALOG_UID

    for dockerfile in (Path(__file__).resolve().parents[2] / "dockerfiles").glob("*/Dockerfile"):
        assert f"ARG NB_UID={CATALOG_UID}" in dockerfile.read_text(), dockerfile


# ---- git: a real shallow clone from a bare repository served on loopback ------------------
@pytest.fixture(scope="module")
def git_server(tmp_path_factory):
    """A bare repository with two commits served by voltabuild_local.gitserver (git http-backend)."""
    import subprocess

    from voltabuild_local.gitserver import serve

    base = tmp_path_factory.mktemp("git")
    work, bare = base / "work", base / "repos" / "app.git"
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.test", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.test", "HOME": str(base), "PATH": "/usr/bin:/bin"}

    def git(*args, cwd=work):
        return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout

    (work / "svc").mkdir(parents=True)
    git("init", "-q", "-b", "main")
    (work / "svc" / "Dockerfile").write_text("FROM busybox\n")
    git("add", ".")
    git("commit", "-qm", "one")
    (work / "svc" / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    git("commit", "-qam", "two")
    head = git("rev-parse", "HEAD").strip()
    git("tag", "v1", "HEAD~1")
    first = git("rev-parse", "HEAD~1").strip()
    bare.parent.mkdir(parents=True)
    git("clone", "-q", "--bare", str(work), str(bare), cwd=base)
    server = serve(base / "repos")
    yield f"http://127.0.0.1:{server.server_port}/app.git", head, first
    server.shutdown()


def git_record(url: str, **source) -> dict:
    rec = context_record("sha256:" + "0" * 64)
    rec["source"] = {"kind": "git", "git": url, "ref": None, "path": "svc", "dockerfile": "Dockerfile",
                     "target": None, "smoke_test": ["true"], **source}
    return rec


def run_git(tmp_path, catalog, record):
    script = render(record, catalog, CFG, token=TOKEN, build_date="2026-12-02T08:00:00Z")
    env = {"PATH": f"{SHIMS}:/usr/bin:/bin", "VOLTABUILD_LOCAL": "1", "VOLTABUILD_REGISTRY_OVERRIDE": "127.0.0.1:9"}
    return run_script(tmp_path / "run", script, env)


@pytest.mark.parametrize("ref,which", [(None, "head"), ("main", "head"), ("v1", "first"), ("sha", "first")])
def test_a_git_build_clones_the_ref_shallowly_and_records_the_commit(catalog, tmp_path, git_server, ref, which):
    url, head, first = git_server
    run = run_git(tmp_path, catalog, git_record(url, ref=first if ref == "sha" else ref))
    commit = head if which == "head" else first
    building = [r for r in run.reports() if r.get("phase") == "BUILDING"]
    assert building and f"commit {commit}" in building[0]["message"], run.output
    build = run.docker("buildx", "build")[0]
    assert build[-1] == str(run.work / "src" / "svc")
    assert build[build.index("--file") + 1] == str(run.work / "src" / "svc" / "Dockerfile")
    depth = (run.work / "src" / ".git" / "shallow").read_text().split()
    assert depth == [commit]


def test_a_git_ref_that_does_not_exist_fails_the_build_saying_so(catalog, tmp_path, git_server):
    run = run_git(tmp_path, catalog, git_record(git_server[0], ref="no-such-branch"))
    assert "could not fetch no-such-branch" in run.result()["reason"]
    assert not run.docker("buildx", "build")


def test_plain_http_git_is_refused_on_a_real_instance(catalog, tmp_path, git_server):
    script = render(git_record(git_server[0]), catalog, CFG, token=TOKEN, build_date="2026-12-02T08:00:00Z")
    run = run_script(tmp_path / "run", script, {"PATH": f"{SHIMS}:/usr/bin:/bin"})
    assert "only https repository URLs" in run.result()["reason"]


def test_the_presigned_url_downloads_with_real_curl_from_the_emulated_s3(catalog, tmp_path, serial_moto):
    # GIVEN a context in the contexts bucket of moto server (as on the local stack)
    import boto3
    from botocore.config import Config

    from chalicelib.custom.contexts import ContextLinks
    from infra.local import create_resources

    bucket = create_resources(serial_moto, only={"AWS::S3::Bucket"})["ContextsBucket"]
    ctx, digest = tarball(tmp_path / "ctx.tar.gz", {"docker/Dockerfile": b"FROM x AS runtime\n"})
    s3 = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing").client(
        "s3", region_name="us-east-1", endpoint_url=serial_moto.endpoint, config=Config(signature_version="s3v4"))
    s3.put_object(Bucket=bucket, Key="sha256/" + digest.removeprefix("sha256:"), Body=ctx.read_bytes())
    url = ContextLinks(s3, bucket, max_bytes=100_000).download_url(digest, 3600)
    # WHEN the host script downloads it with the real curl, as the local executor's instance does
    script = render(context_record(digest), catalog, CFG, token=TOKEN, build_date="2026-12-02T08:00:00Z",
                    context_url=url, context_max_bytes=100_000)
    run = run_script(tmp_path / "run", script, {
        "PATH": f"{HERE_SHIMS}:{SHIMS}:/usr/bin:/bin", "LAUNCH_SHIMS": str(SHIMS), "SHIM_REAL_DOWNLOAD": "1",
        "VOLTABUILD_LOCAL": "1", "VOLTABUILD_REGISTRY_OVERRIDE": "127.0.0.1:9"})
    # THEN it is checked, unpacked and built
    assert (run.work / "context/docker/Dockerfile").read_bytes() == b"FROM x AS runtime\n", run.output
    assert run.docker("buildx", "build")


def extend_record() -> dict:
    base = f"{CFG.registry}/voltabuild/canary:1.0"
    return {
        "id": BUILD_ID, "framework": "canary", "version": "1.0", "cuda": "none", "python": "none", "build_args": {},
        "image": {"repository": f"{CFG.registry}/voltabuild/canary-plus", "tags": ["v1"]},
        "instance_types": ["g5.xlarge"], "timeout_minutes": 15, "attempt": 1,
        "source": {"kind": "extend", "base": base, "pip": [], "apt": ["ffmpeg"], "env": {"GREETING": "hi"}},
    }


@pytest.mark.parametrize("pull_fails", [False, True])
def test_an_extension_pulls_its_catalog_image_first_then_builds_the_generated_dockerfile(catalog, tmp_path,
                                                                                         pull_fails):
    record = extend_record()
    script = render(record, catalog, CFG, token=TOKEN, build_date="2026-12-02T08:00:00Z")
    env = {"PATH": f"{HERE_SHIMS}:{SHIMS}:/usr/bin:/bin", "LAUNCH_SHIMS": str(SHIMS)}
    if pull_fails:
        env["SHIM_PULL_FAIL"] = "1"
    run = run_script(tmp_path / "run", script, env)
    if pull_fails:
        reason = run.result()["reason"]
        assert record["source"]["base"] in reason and "build it first" in reason
        assert not run.docker("buildx", "build")
        return
    assert run.result()["status"] == "SUCCEEDED", run.output
    assert run.docker("pull", "--quiet") == [["pull", "--quiet", record["source"]["base"]]]
    build = run.docker("buildx", "build")[0]
    assert f"BASE_IMAGE={record['source']['base']}" in build
    assert (run.work / "context" / "Dockerfile").read_text() == extend_dockerfile(record["source"])
    assert any(c[-2:] == ["/usr/local/bin/entrypoint.sh", "--check"] for c in run.docker("run"))


def test_every_kind_of_source_renders_a_shellcheck_clean_script_under_the_user_data_limit(catalog, tmp_path):
    import subprocess

    shellcheck = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "shellcheck"
    records = {"context": context_record("sha256:" + "0" * 64), "git": git_record("https://github.com/org/r.git"),
               "extend": extend_record()}
    for kind, record in records.items():
        record["build_args"] = {"http_proxy": ""} if kind != "extend" else {}  # a user's `$` is data SC2016 flags
        script = render(record, catalog, CFG, token=TOKEN, build_date="2026-12-02T08:00:00Z",
                        context_url=URL if kind == "context" else "", context_max_bytes=100_000)
        assert len(user_data(script)) <= 16 * 1024, kind
        # the size budget: half the 100 GB root volume for your own image, the catalog's plus half for an extension
        budget = "75000000" if kind == "extend" else "50000000000"
        assert f"readonly MAX_IMAGE_BYTES={budget}\n" in script, kind
        path = tmp_path / f"{kind}.sh"
        path.write_text(script)
        lint = subprocess.run([str(shellcheck), "-s", "bash", str(path)], capture_output=True, text=True)
        assert lint.returncode == 0, (kind, lint.stdout)
