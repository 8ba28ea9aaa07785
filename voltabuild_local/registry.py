"""Reading images back from the local OCI registry (Docker Registry HTTP API v2)."""

from __future__ import annotations

import requests

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


def digest_of(registry: str, repo: str, tag: str) -> str | None:
    resp = requests.head(f"http://{registry}/v2/{repo}/manifests/{tag}",
                         headers={"Accept": MANIFEST_TYPES}, timeout=5)
    return resp.headers.get("Docker-Content-Digest") if resp.status_code == 200 else None


def image_summary(registry: str, repo: str, tag: str) -> dict | None:
    """Digest, labels, environment and size of one tag, or None when the tag is not there."""
    resp = requests.get(f"http://{registry}/v2/{repo}/manifests/{tag}",
                        headers={"Accept": MANIFEST_TYPES}, timeout=5)
    if resp.status_code != 200:
        return None
    manifest = resp.json()
    config = requests.get(f"http://{registry}/v2/{repo}/blobs/{manifest['config']['digest']}", timeout=5).json()
    return {
        "digest": resp.headers["Docker-Content-Digest"],
        "labels": (config.get("config") or {}).get("Labels") or {},
        "env": (config.get("config") or {}).get("Env") or [],
        "size": sum(layer["size"] for layer in manifest.get("layers", [])),
    }
