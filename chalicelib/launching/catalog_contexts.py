"""A catalog build's context (issue 19): one reproducible tar.gz, named by its digest.

The context of a catalog build is the framework's folder (``dockerfiles/<framework>/``), the
shared files it does not have itself (``dockerfiles/common/``) and, for a framework whose
Dockerfile installs from a lock, the combination's lock (``buildspecs/locks/<framework>/
<version>-cu<cuda>-py<python>.txt``, made by ``make lock``) as two files:

- ``lock-hashed.txt``: the lock as it is, for ``uv pip install --require-hashes -r``;
- ``lock-pinned.txt``: its "pinned, not hashed" lines (PyTorch's CUDA wheels, from an index
  the lock step cannot reach), one ``<name>==<version> <index URL>`` a line.

A hashed lock is 70-120 KB: such a context cannot travel inside EC2's 16 KB of user-data. It
goes into the stage's contexts bucket under ``catalog/sha256/<hex>`` (``make package`` writes
the tarballs and a manifest of their digests, ``scripts/deploy.sh`` uploads them; the local
stack uploads them on ``up``), and the launcher presigns a GET for it (no AWS call). Those
objects do not expire (the bucket's expiry rule covers users' ``sha256/`` uploads only).

The packing is the host script's since the beginning (the CLI's ``context.pack`` reads a user's
folder with its .dockerignore and is not part of the Lambda bundle): full-line comments of the
Dockerfile and shell scripts stay behind, entries are sorted, owners and times zeroed.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path, PurePosixPath

from chalicelib.errors import CatalogError

LOCK_HASHED = "lock-hashed.txt"
LOCK_PINNED = "lock-pinned.txt"
MANIFEST_NAME = "catalog-contexts.json"  # in the bundle (chalicelib/_bundle/), next to buildspecs/
KEY_PREFIX = "catalog/sha256/"
# "#   torch==2.14.1 --index-url https://download.pytorch.org/whl/cu126" in a lock's header
_PINNED = re.compile(r"^#   ([A-Za-z0-9_.-]+==[A-Za-z0-9_.+!-]+) --index-url (https://[A-Za-z0-9./_~-]+)$", re.M)


class MissingLock(CatalogError):
    """A combination whose framework installs from a lock has none (run ``make lock``)."""


# ---- packing (moved here from hostscript.py; hostscript re-exports it) ------------------
_HEREDOC = re.compile(r"<<-?\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)['\"]?")
_DIRECTIVE = re.compile(r"^#\s*(syntax|escape|check)\s*=|^#!|^#\s*shellcheck\s", re.I)


def strip_comments(data: bytes) -> bytes:
    """A Dockerfile or shell script without its full-line comments (user-data is limited to
    16 KB). Kept: the shebang, Dockerfile parser directives, shellcheck directives, and every
    line inside a heredoc (there a ``#`` line is content, not a comment)."""
    out, end = [], None
    for line in data.decode().splitlines(keepends=True):
        if end is not None:
            out.append(line)
            if line.strip() == end:
                end = None
            continue
        text = line.lstrip()
        if not text.startswith("#") or _DIRECTIVE.match(text):
            out.append(line)
            opener = _HEREDOC.search(line) if not text.startswith("#") else None
            end = opener.group(1) if opener else None
    return "".join(out).encode()


def _named_in(dockerfile: str, rel: str) -> bool:
    """Whether the Dockerfile names ``rel`` (a COPY source: ``x``, ``./x``, ``["x", ...]``)."""
    return any(token.removeprefix("./") == rel for token in re.split(r"[\s\"'\[\],]+", dockerfile))


def context_files(context_dir: Path, common_dir: Path | None) -> dict[str, Path]:
    """The build context's files by path: the framework's folder, plus each file of the
    shared folder (the GPU images' entrypoint, health check and architecture rule) that the
    folder does not have itself and its Dockerfile names: a context carries no shared file
    its image does not copy (the canary's travels in user-data, 16 KB at most)."""
    files: dict[str, Path] = {}
    dockerfile = context_dir / "Dockerfile"
    text = dockerfile.read_text() if dockerfile.is_file() else ""
    for folder in (context_dir, common_dir):
        if folder is None or not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            rel = path.relative_to(folder)
            if not path.is_file() or any(part.startswith(".") for part in rel.parts) or rel.name == "README.md":
                continue
            if folder == common_dir and not _named_in(text, rel.as_posix()):
                continue
            files.setdefault(rel.as_posix(), path)
    return files


def tarball(context_dir: Path, common_dir: Path | None = None, extra: dict[str, bytes] | None = None) -> bytes:
    """A deterministic tar.gz of the build context (see :func:`context_files`) plus ``extra``
    files (generated: the lock's two parts), sorted, mode 0644 or 0755, no owners, no times."""
    entries: dict[str, tuple[bytes, int]] = {}
    for rel, path in context_files(context_dir, common_dir).items():
        data = path.read_bytes()
        if PurePosixPath(rel).name == "Dockerfile" or rel.endswith(".sh"):
            data = strip_comments(data)
        entries[rel] = (data, 0o755 if path.stat().st_mode & 0o111 else 0o644)
    for rel, data in (extra or {}).items():
        entries[rel] = (data, 0o644)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, (data, mode) in sorted(entries.items()):
            info = tarfile.TarInfo(rel)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def pack_context(context_dir: Path, common_dir: Path | None = None) -> str:
    """:func:`tarball` in base64 on one line (the host script's CONTEXT_B64)."""
    return base64.b64encode(tarball(context_dir, common_dir)).decode()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def key_of(digest: str) -> str:
    """The catalog context's object key in the contexts bucket."""
    return KEY_PREFIX + digest.removeprefix("sha256:")


# ---- locks -------------------------------------------------------------------------------
def lock_name(resolved) -> str:
    """``<version>-cu<cuda>-py<python>`` (scripts/lock.py's file name, without ``.txt``)."""
    return f"{resolved.version}-cu{resolved.cuda.replace('.', '')}-py{resolved.python.replace('.', '')}"


def lock_path(catalog, resolved) -> Path:
    return catalog.root / "buildspecs" / "locks" / resolved.framework / f"{lock_name(resolved)}.txt"


def uses_lock(catalog, spec) -> bool:
    """Whether the framework's Dockerfile installs from a lock (it copies ``lock-hashed.txt``)."""
    return LOCK_HASHED in (catalog.context_dir(spec) / "Dockerfile").read_text()


def lock_files(lock_text: str) -> dict[str, bytes]:
    """The lock as the context carries it: the whole lock (its hashed requirements; the
    pinned lines are comments there) and the pinned lines, ``name==version index``."""
    pinned = "".join(f"{req} {index}\n" for req, index in _PINNED.findall(lock_text))
    return {LOCK_HASHED: lock_text.encode(), LOCK_PINNED: pinned.encode()}


def require_lock(catalog, spec, resolved) -> Path | None:
    """The combination's lock (None for a framework without one); :class:`MissingLock`
    naming ``make lock`` when its framework installs from a lock and it has none."""
    if not uses_lock(catalog, spec):
        return None
    path = lock_path(catalog, resolved)
    if not path.is_file():
        raise MissingLock(_missing(spec, resolved))
    return path


def _missing(spec, resolved) -> str:
    return (f"{spec.framework} {resolved.version} (CUDA {resolved.cuda}, Python {resolved.python}) has no lock "
            f"file buildspecs/locks/{combination_key(resolved)}.txt, and its image installs from one: run "
            "`make lock` (`python scripts/lock.py --all` for every combination, not just the defaults), commit "
            "the lock, `make package` and deploy again")


def catalog_tarball(catalog, spec, resolved) -> bytes:
    """The context of one combination; :class:`MissingLock` when its lock is missing."""
    path = require_lock(catalog, spec, resolved)
    extra = lock_files(path.read_text()) if path is not None else None
    return tarball(catalog.context_dir(spec), catalog.common_context_dir, extra)


def combination_key(resolved) -> str:
    """The manifest's key of a combination: ``<framework>/<version>-cu<cuda>-py<python>``."""
    return f"{resolved.framework}/{lock_name(resolved)}"


def locked_tarballs(catalog) -> dict[str, bytes]:
    """Every combination with a lock (of a framework that installs from one): its context."""
    out = {}
    for spec in sorted(catalog.frameworks.values(), key=lambda s: s.framework):
        if not uses_lock(catalog, spec):
            continue
        for r in spec.combinations():
            if lock_path(catalog, r).is_file():
                out[combination_key(r)] = catalog_tarball(catalog, spec, r)
    return out


def manifest_of(tarballs: dict[str, bytes]) -> dict[str, str]:
    return {key: digest_of(data) for key, data in sorted(tarballs.items())}


def write_bundle(catalog, bundle: Path, objects_dir: Path) -> dict[str, str]:
    """``make package``: the manifest into the bundle, each tarball into ``objects_dir``
    under its object key (``scripts/deploy.sh`` copies that folder into the contexts bucket)."""
    tarballs = locked_tarballs(catalog)
    manifest = manifest_of(tarballs)
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    for key, data in tarballs.items():
        target = objects_dir / key_of(manifest[key])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return manifest


class CatalogContexts:
    """The launcher's side: a catalog build's context digest and a presigned GET for it.

    The digests come from the bundle's manifest (``make package``); a checkout without one
    (the local stack, the tests) packs the combination asked for itself, once (every
    combination is locked: packing them all up front would take seconds). ``links`` is the
    launcher's ``contexts.ContextLinks`` (its boto3 S3 client presigns; presigning is no AWS call)."""

    def __init__(self, catalog, links) -> None:
        self.catalog = catalog
        self.links = links
        self._bundled: tuple[dict[str, str], ...] | None = None  # (): read, there is none
        self._packed: dict[str, str | None] = {}

    def bundled(self) -> dict[str, str] | None:
        """The bundle's manifest (``make package``), None in a checkout without one."""
        if self._bundled is None:
            path = self.catalog.root / MANIFEST_NAME
            self._bundled = (json.loads(path.read_text()),) if path.is_file() else ()
        return self._bundled[0] if self._bundled else None

    def digest(self, spec, resolved) -> str | None:
        """The digest of a combination's context: the bundle's manifest's, or (a checkout
        without one) that of the context packed here; None when it has no lock."""
        key = combination_key(resolved)
        bundled = self.bundled()
        if bundled is not None:
            return bundled.get(key)
        if key not in self._packed:
            try:
                self._packed[key] = digest_of(catalog_tarball(self.catalog, spec, resolved))
            except MissingLock:
                self._packed[key] = None
        return self._packed[key]

    def source_for(self, record, expires_seconds: int) -> dict:
        """``hostscript.render``'s keyword arguments for a catalog build: a presigned URL and
        the digest when its context carries a lock, nothing (the context goes inline) when not.
        The manifest decides (a deployment's bundle holds no lock files, only their contexts'
        digests): a locked framework's combination it lacks is :class:`MissingLock`."""
        spec = self.catalog.spec(record.framework)
        resolved = spec.resolve(record.version, record.cuda, record.python)
        if not uses_lock(self.catalog, spec):
            return {}
        digest = self.digest(spec, resolved)
        if digest is None:
            raise MissingLock(_missing(spec, resolved))
        if self.links is None or not self.links.bucket:
            raise CatalogError("a catalog build's context travels through the contexts bucket, and this "
                               "deployment has none (CONTEXTS_BUCKET)")
        url = self.links.object_url(key_of(digest), expires_seconds)
        return {"context_url": url, "context_sha256": digest, "context_max_bytes": self.links.max_bytes}
