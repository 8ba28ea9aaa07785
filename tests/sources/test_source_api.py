"""Build your own (issue 20) through the API: POST /contexts, and POST /builds with a
source (an uploaded context, a git repository) or a catalog image extended.

One moto AWS for the module (creating it is most of a test's time); every test that
expects a refusal checks that no build was written and nothing was queued."""

from __future__ import annotations

import hashlib
import json

import pytest
import requests

from chalicelib import wiring

JSON = {"Content-Type": "application/json"}
DATA = b"FROM scratch\n" * 10
DIGEST = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def api(api_module):
    return api_module


@pytest.fixture
def aws(aws_module):
    return aws_module


def call(api, path, body):
    resp = api.http.post(path, headers=JSON, body=json.dumps(body))
    return resp.status_code, json.loads(resp.body) if resp.body else None


def builds(aws):
    return [i for i in aws.items() if i.get("kind") == "build"]


@pytest.fixture(scope="module")
def uploaded(api_module, aws_module):
    """DATA uploaded through POST /contexts and the presigned POST it answers."""
    status, body = call(api_module, "/contexts", {"sha256": DIGEST, "size": len(DATA)})
    assert status == 201 and body["uploaded"] is False
    post = body["upload"]
    resp = requests.post(post["url"], data=post["fields"], files={"file": ("context.tar", DATA)}, timeout=10)
    assert resp.status_code in (200, 201, 204), resp.text
    return "sha256:" + DIGEST


def test_upload_target_is_a_presigned_post_pinning_size_digest_and_expiry(api, aws):
    data = b"another context"
    digest = hashlib.sha256(data).hexdigest()
    status, body = call(api, "/contexts", {"sha256": digest, "size": len(data)})
    assert status == 201
    assert body["context"] == "sha256:" + digest and body["expires_in"] == 300
    fields = body["upload"]["fields"]
    assert fields["key"] == "sha256/" + digest
    policy = json.loads(__import__("base64").b64decode(fields["policy"]))
    assert ["content-length-range", len(data), len(data)] in policy["conditions"]
    assert {"x-amz-checksum-sha256": fields["x-amz-checksum-sha256"]} in policy["conditions"]
    assert "expiration" in policy


def test_a_known_context_is_not_uploaded_again(api, aws, uploaded):
    status, body = call(api, "/contexts", {"sha256": DIGEST, "size": len(DATA)})
    assert status == 200
    assert body == {"context": uploaded, "uploaded": True, "upload": None, "expires_in": None,
                    "max_size": wiring.settings().context_max_bytes}


@pytest.mark.parametrize("body,status,needle", [
    ({"sha256": "ab" * 32, "size": 3 * 1024**3}, 413, "at most"),
    ({"sha256": "AB" * 32, "size": 10}, 400, "sha256"),
    ({"sha256": "ab" * 32, "size": 0}, 400, "size"),
    ({"sha256": "ab" * 32, "size": "10"}, 400, "size"),
    ({"sha256": "ab" * 32, "size": 10, "key": "../x"}, 400, "unknown field"),
])
def test_bad_context_requests(api, aws, body, status, needle):
    got, err = call(api, "/contexts", body)
    assert got == status and needle in err["Message"]


def test_a_context_build_is_queued_with_its_source_and_own_repository(api, aws, uploaded):
    before = len(builds(aws))
    status, build = call(api, "/builds", {
        "source": {"context": uploaded, "dockerfile": "docker/Dockerfile", "target": "runtime"},
        "build_args": {"http_proxy": "", "VERSION": "1.2 beta"}, "repository": "team/app", "tags": ["v1"],
        "smoke_test": ["python3", "-c", "import torch"], "cuda": "12.4"})
    assert status == 202, build
    assert build["framework"] == "custom" and build["cuda"] == "12.4"
    assert build["image"]["repository"].endswith("/voltabuild/team/app")
    assert build["image"]["tags"] == ["v1"]
    assert build["source"] == {"kind": "context", "context": uploaded, "dockerfile": "docker/Dockerfile",
                               "target": "runtime", "smoke_test": ["python3", "-c", "import torch"]}
    assert set(build["instance_types"]) <= {"g4dn.xlarge", "g5.xlarge", "g6.xlarge"}
    assert len(builds(aws)) == before + 1
    # the launch message carries the build's timeout (issue 21's launch-first path)
    assert aws.messages("LaunchQueue") == [{"build_id": build["id"], "attempt": 1,
                                            "timeout_minutes": build["timeout_minutes"]}]


def test_defaults_of_a_git_build(api, aws):
    status, build = call(api, "/builds", {"source": {"git": "https://github.com/org/repo.git"}})
    assert status == 202, build
    assert build["image"]["repository"].endswith("/voltabuild/custom")
    assert build["image"]["tags"] == [build["id"]]
    assert build["source"]["smoke_test"] == ["nvidia-smi"] and build["source"]["ref"] is None
    assert aws.messages("LaunchQueue")


def test_an_extension_builds_from_the_catalog_images_canonical_tag(api, aws):
    status, build = call(api, "/builds", {"framework": "canary", "extend": {"env": {"GREETING": "hi there"}},
                                          "repository": "voltabuild/canary-plus"})
    assert status == 202, build
    assert build["framework"] == "canary" and build["version"] == "1.0"
    assert build["source"]["kind"] == "extend"
    assert build["source"]["base"] == f"{wiring.settings().registry}/voltabuild/canary:1.0"
    aws.messages("LaunchQueue")


BAD = [
    ({"source": {"context": "sha256:" + "0" * 64}}, "no context sha256:0000"),
    ({"source": {"context": "sha256:abc"}}, "context digest"),
    ({"source": {"git": "http://github.com/org/repo"}}, "only https://"),
    ({"source": {"git": "https://user:pw@github.com/org/repo"}}, "no credentials"),
    ({"source": {"git": "ssh://git@github.com/org/repo"}}, "https repository URL"),
    ({"source": {"git": "https://github.com/org/repo", "ref": "--upload-pack=evil"}}, "not a git ref"),
    ({"source": {"git": "https://github.com/org/repo", "ref": "main..x"}}, "not a git ref"),
    ({"source": {"git": "https://github.com/org/repo", "path": "../etc"}}, "not a relative path"),
    ({"source": {"git": "https://github.com/org/repo", "dockerfile": "/etc/passwd"}}, "not a relative path"),
    ({"source": {"git": "https://x.org/r", "context": "sha256:" + "0" * 64}}, "exactly one of context"),
    ({"source": {"context": "sha256:" + "0" * 64, "ref": "main"}}, "belong to a git source"),
    ({"source": {"git": "https://x.org/r"}, "framework": "canary"}, "exactly one of framework"),
    ({"tags": ["x"]}, "framework: Field required"),
    ({"source": {"git": "https://x.org/r"}, "repository": "../pytorch"}, "inside voltabuild/"),
    ({"source": {"git": "https://x.org/r"}, "repository": "Team/App"}, "inside voltabuild/"),
    ({"source": {"git": "https://x.org/r"}, "repository": "voltabuild/pytorch"}, "belongs to the catalog"),
    ({"source": {"git": "https://x.org/r"}, "tags": ["buildcache"]}, "reserved"),
    ({"source": {"git": "https://x.org/r"}, "tags": ["dev__x"]}, "marks a stage"),
    ({"source": {"git": "https://x.org/r"}, "build_args": {"A": "line\nbreak"}}, "printable"),
    ({"source": {"git": "https://x.org/r"}, "build_args": {"1A": "x"}}, "build_args"),
    ({"source": {"git": "https://x.org/r"}, "smoke_test": ["--help"]}, "the first word is the program"),
    ({"source": {"git": "https://x.org/r"}, "smoke_test": []}, "argv list"),
    ({"source": {"git": "https://x.org/r"}, "cuda": "9.9"}, "not in the GPU table"),
    ({"source": {"git": "https://x.org/r"}, "version": "1.0"}, "belong to catalog builds"),
    ({"source": {"git": "https://x.org/r"}, "instance_types": ["t3.micro"]}, "t3.micro not allowed"),
    ({"framework": "canary", "extend": {"pip": ["--index-url=https://evil"]}}, "not a pip requirement"),
    ({"framework": "canary", "extend": {"pip": ["torch @ https://evil/torch.whl"]}}, "direct URL"),
    ({"framework": "canary", "extend": {"apt": ["Bad_Name"]}}, "Debian Policy"),
    ({"framework": "canary", "extend": {"apt": ["-y"]}}, "Debian Policy"),
    ({"framework": "canary", "extend": {"env": {"X": "$(id)"}}}, "no quotes, $"),
    ({"framework": "canary", "extend": {}}, "at least one of pip"),
    ({"framework": "canary", "extend": {"pip": ["requests==2.32.3"]}}, "busybox, with no pip or apt"),
    ({"framework": "canary", "extend": {"apt": ["ffmpeg"], "env": {"A": "b"}}}, "busybox, with no pip or apt"),
    ({"framework": "canary", "extend": {"env": {"A": "b"}}, "build_args": {"CANARY_FAIL": "1"}}, "no build args"),
    ({"extend": {"env": {"A": "b"}}, "source": {"git": "https://x.org/r"}}, "needs the framework"),
    ({"framework": "canary", "smoke_test": ["true"]}, "belong to source and extend"),
]


@pytest.mark.parametrize("body,needle", BAD, ids=[json.dumps(b[0])[:70] for b in BAD])
def test_bad_source_requests_are_a_400_and_change_nothing(api, aws, body, needle):
    before = len(builds(aws))
    status, err = call(api, "/builds", body)
    assert status == 400, err
    assert needle in err["Message"]
    assert len(builds(aws)) == before
    assert aws.messages("LaunchQueue") == []


def test_plain_http_git_only_to_loopback_and_only_where_allowed(api, aws, monkeypatch):
    body = {"source": {"git": "http://127.0.0.1:8123/repo.git"}}
    assert call(api, "/builds", body)[0] == 400
    monkeypatch.setenv("GIT_ALLOW_LOOPBACK_HTTP", "1")
    wiring.settings.cache_clear()
    wiring.builds.cache_clear()
    try:
        assert call(api, "/builds", {"source": {"git": "http://10.0.0.1:8123/repo.git"}})[0] == 400
        status, build = call(api, "/builds", body)
        assert status == 202, build
    finally:
        monkeypatch.delenv("GIT_ALLOW_LOOPBACK_HTTP")
        wiring.settings.cache_clear()
        wiring.builds.cache_clear()
    aws.messages("LaunchQueue")
