"""Build your own (issue 20) through the whole local stack, two real builds: a user's
context folder (a multi-stage Dockerfile, a .dockerignore that leaves a large file out)
submitted with the CLI, built with the instance's own download-check-unpack path, pushed
to the local registry with the recorded digest, and not uploaded again on a second
submit; then a git source cloned from a bare repository served on loopback; then the canary
catalog image extended (built first, then extended FROM its canonical tag)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voltabuild_local.registry import image_summary

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
# the base the local stack already holds (the canary's, made from Debian's busybox-static)
BASE = "public.ecr.aws/docker/library/busybox:1.36"
DOCKERFILE = f"""FROM {BASE} AS build
COPY src/ /src/
RUN cat /src/message.txt > /built.txt
FROM {BASE} AS final
COPY --from=build /built.txt /built.txt
CMD ["cat", "/built.txt"]
"""


def voltabuild(stack, *args: str) -> subprocess.CompletedProcess:
    """The CLI of this checkout, as a user runs it, against the stack."""
    env = {**os.environ, **stack.env, "PYTHONPATH": str(ROOT / "client")}
    return subprocess.run([sys.executable, "-c", "from voltabuild_cli.main import main; main()", *args],
                          env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_a_context_folder_builds_lands_in_the_registry_and_uploads_once(stack, tmp_path):
    ctx = tmp_path / "app"
    (ctx / "src").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "src" / "message.txt").write_text("built from your own context\n")
    (ctx / "weights.bin").write_bytes(os.urandom(8 * 1024 * 1024))  # 8 MB that never leaves
    (ctx / ".dockerignore").write_text("*.bin\n")
    args = ("submit", "--context", str(ctx), "--target", "final", "--repository", "e2e/app", "--tag", "v1",
            "--smoke-test", "cat /built.txt", "--json")
    first = voltabuild(stack, *args)
    assert first.returncode == 0, first.stderr
    assert "uploading" in first.stderr
    build = stack.wait_final(json.loads(first.stdout)["id"])
    assert build["status"] == "SUCCEEDED", build.get("reason")
    summary = image_summary(stack.registry, "voltabuild/e2e/app", "v1")
    assert summary is not None and summary["digest"] == build["image"]["digest"]
    assert summary["size"] < 4 * 1024 * 1024  # the excluded 8 MB did not get in

    second = voltabuild(stack, *args)
    assert second.returncode == 0, second.stderr
    assert "already uploaded" in second.stderr and "uploading" not in second.stderr
    stack.wait_final(json.loads(second.stdout)["id"])


def test_a_git_source_builds_from_a_bare_repository_on_loopback(stack, tmp_path):
    from voltabuild_local.gitserver import serve

    work, repos = tmp_path / "work", tmp_path / "repos"
    (work / "svc" / "src").mkdir(parents=True)
    (work / "svc" / "Dockerfile").write_text(DOCKERFILE)
    (work / "svc" / "src" / "message.txt").write_text("built from git\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@example.test",
           "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@example.test"}
    for cmd in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "e2e"]):
        subprocess.run(["git", *cmd], cwd=work, env=env, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(repos / "app.git")], check=True)
    server = serve(repos)
    try:
        resp = stack.post({"source": {"git": f"http://127.0.0.1:{server.server_port}/app.git", "ref": "main",
                                      "path": "svc", "target": "final"},
                           "repository": "e2e/git", "smoke_test": ["cat", "/built.txt"]})
        assert resp.status_code == 202, resp.text
        build = stack.wait_final(resp.json()["id"])
    finally:
        server.shutdown()
    assert build["status"] == "SUCCEEDED", build.get("reason")
    assert any(f"commit {commit}" in e["message"] for e in build["events"])
    summary = image_summary(stack.registry, "voltabuild/e2e/git", build["id"])
    assert summary is not None and summary["digest"] == build["image"]["digest"]


def test_an_extension_of_the_canary_builds_from_its_catalog_image_and_passes_its_smoke_test(stack):
    # GIVEN the canary catalog image under its canonical tag (an extension never builds it for you)
    base = stack.wait_final(stack.post({"framework": "canary"}).json()["id"])
    assert base["status"] == "SUCCEEDED", base.get("reason")
    base_image = image_summary(stack.registry, "voltabuild/canary", "1.0")
    assert base_image is not None
    # WHEN a user extends it with their own environment, into their own repository
    resp = stack.post({"framework": "canary", "extend": {"env": {"TEAM_GREETING": "hello from the extension"}},
                       "repository": "e2e/canary-plus", "tags": ["v1"]})
    assert resp.status_code == 202, resp.text
    build = stack.wait_final(resp.json()["id"])
    # THEN it builds FROM the catalog image, the canary's own smoke test passes in it, and it lands
    # in the user's repository with the recorded digest, carrying the extension's environment
    assert build["status"] == "SUCCEEDED", build.get("reason")
    ext = image_summary(stack.registry, "voltabuild/e2e/canary-plus", "v1")
    assert ext is not None and ext["digest"] == build["image"]["digest"]
    assert ext["labels"]["io.voltabuild.framework"] == "canary"  # the catalog image's labels, inherited
    assert "TEAM_GREETING=hello from the extension" in ext["env"]
    logs = stack.get(f"/builds/{build['id']}/logs").json()["lines"]
    assert any("smoke test passed" in line["message"] for line in logs)
    # AND the catalog repository's tag is untouched
    assert image_summary(stack.registry, "voltabuild/canary", "1.0")["digest"] == base_image["digest"]
