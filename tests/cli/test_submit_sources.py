"""`voltabuild submit` for build your own (issue 20): a context folder is packed
reproducibly honouring .dockerignore, uploaded through the presigned POST (to the live
API's moto S3) only when the API does not have it, and submitted; --git and --pip/--apt/
--env make the other two kinds of request."""

from __future__ import annotations

import json
import os
import tarfile
import time

import pytest
from voltabuild_cli.context import included, pack


@pytest.fixture
def context_dir(tmp_path):
    root = tmp_path / "app"
    (root / "docker").mkdir(parents=True)
    (root / "docker" / "Dockerfile").write_text("FROM busybox AS build\nRUN true\nFROM busybox AS final\nCOPY . /app\n")
    (root / "src").mkdir()
    (root / "src" / "main.py").write_text("print('hi')\n")
    (root / "src" / "keep.bin").write_bytes(b"k")
    (root / "data").mkdir()
    (root / "data" / "weights.bin").write_bytes(b"\0" * 3_000_000)
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / ".dockerignore").write_text("# big files stay home\ndata\n**/*.bin\n!src/keep.bin\n")
    return root


def test_packing_honours_dockerignore_and_is_reproducible(context_dir, tmp_path):
    assert included(context_dir, "docker/Dockerfile") == [
        ".dockerignore", "docker", "docker/Dockerfile", "run.sh", "src", "src/keep.bin", "src/main.py"]
    first = pack(context_dir, "docker/Dockerfile", tmp_path)
    os.utime(context_dir / "src" / "main.py", (time.time() + 3600, time.time() + 3600))
    second = pack(context_dir, "docker/Dockerfile", tmp_path)
    assert first.sha256 == second.sha256 and first.size == second.size < 100_000
    with tarfile.open(first.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert "data/weights.bin" not in members and "src/keep.bin" in members
    assert {m.mtime for m in members.values()} == {0} and {m.uid for m in members.values()} == {0}
    assert members["run.sh"].mode == 0o755 and members["src/main.py"].mode == 0o644
    (context_dir / "src" / "main.py").write_text("print('changed')\n")
    assert pack(context_dir, "docker/Dockerfile", tmp_path).sha256 != first.sha256


def test_submit_a_context_uploads_once_then_builds_from_the_digest(cli, builds, live_api, context_dir):
    args = ("submit", "--context", str(context_dir), "--file", "docker/Dockerfile", "--target", "final",
            "--repository", "team/app", "--tag", "v1", "--build-arg", "GREETING=hello world",
            "--smoke-test", "python3 -c 'import sys'", "--json")
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    build = json.loads(r.stdout)
    builds.track(build["id"])
    assert ": uploading" in r.stderr and ": uploaded" in r.stderr
    digest = build["source"]["context"]
    assert build["source"] == {"kind": "context", "context": digest, "dockerfile": "docker/Dockerfile",
                               "target": "final", "smoke_test": ["python3", "-c", "import sys"]}
    assert build["image"]["repository"].endswith("/voltabuild/team/app") and build["image"]["tags"] == ["v1"]
    assert build["build_args"] == {"GREETING": "hello world"}
    s3 = live_api.session().client("s3")
    bucket = next(b["Name"] for b in s3.list_buckets()["Buckets"] if "-contexts-" in b["Name"])
    stored = s3.get_object(Bucket=bucket, Key="sha256/" + digest.removeprefix("sha256:"))["Body"].read()
    packed = pack(context_dir, "docker/Dockerfile")
    assert stored == packed.path.read_bytes()
    packed.path.unlink()

    again = cli(*args)
    assert again.exit_code == 0, again.stderr
    builds.track(json.loads(again.stdout)["id"])
    assert "already uploaded" in again.stderr and "uploading" not in again.stderr


def test_submit_a_git_repository_and_an_extension(cli, builds):
    r = cli("submit", "--git", "https://github.com/org/repo.git", "--ref", "v1.2", "--path", "services/api",
            "--json")
    assert r.exit_code == 0, r.stderr
    build = json.loads(r.stdout)
    builds.track(build["id"])
    assert build["source"]["git"] == "https://github.com/org/repo.git" and build["source"]["path"] == "services/api"
    r = cli("submit", "canary", "--env", "GREETING=hi", "--repository", "canary-plus", "--json")
    assert r.exit_code == 0, r.stderr
    build = json.loads(r.stdout)
    builds.track(build["id"])
    assert build["source"]["kind"] == "extend" and build["source"]["env"] == {"GREETING": "hi"}
    r = cli("submit", "--git", "https://github.com/org/repo.git")
    builds.track(next(w for w in r.stdout.split() if w.startswith("b-")))
    assert "your Dockerfile Dockerfile in https://github.com/org/repo.git at HEAD" in r.stdout


@pytest.mark.parametrize("args,needle", [
    ((), "exactly one of FRAMEWORK, --context DIR or --git URL"),
    (("canary", "--git", "https://x.org/r"), "got FRAMEWORK, --git"),
    (("--git", "https://x.org/r", "--pip", "torch"), "give its FRAMEWORK"),
    (("canary", "--ref", "main"), "go with --git"),
    (("canary", "--target", "x"), "go with --context or --git"),
])
def test_usage_errors_exit_2_before_anything_is_sent(cli, args, needle):
    r = cli("submit", *args)
    assert r.exit_code == 2 and needle in r.stderr


def test_a_context_without_its_dockerfile_is_a_usage_error(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    r = cli("submit", "--context", str(tmp_path / "empty"))
    assert r.exit_code == 2 and "no such file" in r.stderr


def test_the_api_refusing_a_source_exits_2_with_its_message(cli):
    r = cli("submit", "--git", "http://github.com/org/repo")
    assert r.exit_code == 2 and "only https://" in r.stderr
