"""Loopback registries for the base-digest tests: Debian's docker-registry on a free
127.0.0.1 port, images uploaded into it through the v2 API (no builder needed), and a tiny
token-auth registry (http.server in a thread) that answers 401 with a Bearer challenge."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

from voltabuild_local.stack import free_port

REGISTRY_BIN = Path("/usr/bin/docker-registry")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@contextmanager
def docker_registry(workdir: Path) -> Iterator[str]:
    """Debian's docker-registry serving on 127.0.0.1:<free port>; yields host:port."""
    port = free_port()
    cfg = workdir / "registry.yml"
    cfg.write_text(f"version: 0.1\nlog: {{level: warn}}\n"
                   f"storage: {{filesystem: {{rootdirectory: {workdir / 'data'}}}, delete: {{enabled: true}}}}\n"
                   f"http: {{addr: '127.0.0.1:{port}'}}\n")
    proc = subprocess.Popen([str(REGISTRY_BIN), "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    host = f"127.0.0.1:{port}"
    try:
        for _ in range(300):  # until it answers (it starts in well under a second)
            try:
                if requests.get(f"http://{host}/v2/", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.05)
        else:
            raise RuntimeError("docker-registry did not start")
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def push_blob(registry: str, repo: str, data: bytes) -> dict:
    started = requests.post(f"http://{registry}/v2/{repo}/blobs/uploads/", timeout=10)
    assert started.status_code == 202, started.text
    url = urljoin(f"http://{registry}/", started.headers["Location"])
    done = requests.put(url, params={"digest": sha256(data)}, data=data,
                        headers={"Content-Type": "application/octet-stream"}, timeout=10)
    assert done.status_code == 201, done.text
    return {"digest": sha256(data), "size": len(data)}


def _layer(marker: str) -> bytes:
    """A one-file layer: /marker holding ``marker`` (uncompressed tar)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        body = marker.encode() + b"\n"
        info = tarfile.TarInfo("marker")
        info.size, info.mtime, info.mode = len(body), 0, 0o644
        tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def put_manifest(registry: str, repo: str, ref: str, body: bytes, media_type: str) -> str:
    """Upload a manifest; the digest the registry says it stored it under (checked against its hash)."""
    resp = requests.put(f"http://{registry}/v2/{repo}/manifests/{ref}", data=body,
                        headers={"Content-Type": media_type}, timeout=10)
    assert resp.status_code == 201, resp.text
    assert resp.headers["Docker-Content-Digest"] == sha256(body)
    return resp.headers["Docker-Content-Digest"]


def push_image(registry: str, repo: str, tag: str, marker: str, base_layers: list[bytes] = ()) -> str:
    """A tiny linux/amd64 OCI image (``base_layers`` then a layer with /marker) under ``tag``;
    returns its manifest digest as the registry reports it."""
    layers = [*base_layers, _layer(marker)]
    descs = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **push_blob(registry, repo, x)} for x in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [sha256(x) for x in layers]}}).encode()
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **push_blob(registry, repo, config)},
                "layers": descs}
    return put_manifest(registry, repo, tag, json.dumps(manifest).encode(), OCI_MANIFEST)


def push_index(registry: str, repo: str, tag: str, marker: str) -> tuple[str, str]:
    """A multi-platform tag (an OCI index over one linux/amd64 image); (index digest, image digest)."""
    image = push_image(registry, repo, f"{tag}-amd64", marker)
    size = len(requests.get(f"http://{registry}/v2/{repo}/manifests/{image}", headers={"Accept": OCI_MANIFEST},
                            timeout=10).content)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": image, "size": size,
                            "platform": {"architecture": "amd64", "os": "linux"}}]}
    return put_manifest(registry, repo, tag, json.dumps(index).encode(), OCI_INDEX), image


class TokenRegistry:
    """A registry that wants a bearer token, as Docker Hub does: a manifest request without
    ``Authorization: Bearer <token>`` gets 401 and a challenge naming /token on the same server,
    which hands out the token for the scope asked. ``requests`` records what each request sent."""

    TOKEN = "tok-" + "a" * 32

    def __init__(self, manifest: bytes, *, digest_header: str | None = "real", token_key: str = "token"):
        self.manifest = manifest
        self.digest_header = sha256(manifest) if digest_header == "real" else digest_header
        self.token_key = token_key
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, with_body: bool):
                url = urlsplit(self.path)
                outer.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                       "headers": dict(self.headers)})
                if url.path == "/token":
                    body = json.dumps({outer.token_key: outer.TOKEN}).encode()
                    self._send(200, {"Content-Type": "application/json"}, body, with_body)
                elif url.path == "/v2/team/base/manifests/1":
                    if self.headers.get("Authorization") != f"Bearer {outer.TOKEN}":
                        challenge = (f'Bearer realm="http://127.0.0.1:{outer.port}/token",service="loopback.test",'
                                     f'scope="repository:team/base:pull"')
                        self._send(401, {"WWW-Authenticate": challenge}, b"{}", with_body)
                        return
                    headers = {"Content-Type": OCI_MANIFEST}
                    if outer.digest_header:
                        headers["Docker-Content-Digest"] = outer.digest_header
                    self._send(200, headers, outer.manifest, with_body)
                else:
                    self._send(404, {}, b"", with_body)

            def _send(self, status, headers, body, with_body):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_HEAD(self):
                self._answer(False)

            def do_GET(self):
                self._answer(True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def reference(self) -> str:
        return f"127.0.0.1:{self.port}/team/base:1"

    def __enter__(self) -> TokenRegistry:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
