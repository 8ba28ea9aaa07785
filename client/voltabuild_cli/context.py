"""A build context as voltabuild uploads it (issue 20): DIR packed as a reproducible
tar.gz honouring ``.dockerignore`` with Docker's own semantics (the Docker SDK's
``exclude_paths``: ``**``, ``!`` exceptions, the Dockerfile always kept), then sent
through the presigned S3 POST that ``POST /contexts`` answers, unless the API already
has that digest.

Reproducible: entries sorted, mtimes 0, owners root with no names, modes 0755 (folders
and executables) or 0644, gzip without a timestamp, so the same files always give the
same sha256 and a second submit of an unchanged folder uploads nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import secrets
import stat
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from docker.utils.build import exclude_paths


class ContextError(Exception):
    """The folder cannot be packed (not a folder, no Dockerfile, unreadable)."""


@dataclass(frozen=True)
class Packed:
    path: Path  # the tar.gz (a temporary file: the caller removes it)
    sha256: str  # hex
    size: int
    entries: int

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256


def dockerignore(root: Path) -> list[str]:
    """The patterns of ROOT/.dockerignore, read as the Docker SDK reads them."""
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [x for x in lines if x and not x.startswith("#")]


def included(root: Path, dockerfile: str = "Dockerfile") -> list[str]:
    """The relative paths that go into the context, sorted."""
    return sorted(exclude_paths(str(root), dockerignore(root), dockerfile=dockerfile))


def _info(root: Path, rel: str) -> tuple[tarfile.TarInfo, Path]:
    path = root / rel
    st = path.lstat()
    info = tarfile.TarInfo(rel.replace(os.sep, "/"))
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if stat.S_ISLNK(st.st_mode):
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(path), 0o777
    elif stat.S_ISDIR(st.st_mode):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif stat.S_ISREG(st.st_mode):
        info.size, info.mode = st.st_size, 0o755 if st.st_mode & 0o111 else 0o644
    else:
        raise ContextError(f"{rel}: only files, folders and symbolic links can go into a build context")
    return info, path


def pack(root: Path | str, dockerfile: str = "Dockerfile", out_dir: Path | None = None) -> Packed:
    """Pack ROOT into a reproducible tar.gz (see the module's docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise ContextError(f"{root}: not a folder")
    if not (root / dockerfile).is_file():
        raise ContextError(f"{root / dockerfile}: no such file (--file names the Dockerfile, relative to the context)")
    rels = included(root, dockerfile)
    fd, name = tempfile.mkstemp(prefix="voltabuild-context-", suffix=".tar.gz", dir=out_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel in rels:
                info, src = _info(root, rel)
                if info.isreg():
                    with open(src, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    except OSError as e:
        path.unlink(missing_ok=True)
        raise ContextError(f"cannot pack {root}: {e}") from None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return Packed(path, h.hexdigest(), path.stat().st_size, len(rels))


class MultipartFile:
    """An S3 POST body (the policy's fields, then the file, last as S3 wants it), read in
    chunks so a large context is never in memory; ``on_read(sent, total)`` sees progress.
    Has a length, so requests sends Content-Length (S3 refuses chunked uploads)."""

    def __init__(self, fields: dict[str, str], path: Path,
                 on_read: Callable[[int, int], None] | None = None) -> None:
        self.boundary = "voltabuild" + secrets.token_hex(16)
        head = b"".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items())
        head += (f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; filename="context.tar.gz"\r\n'
                 "Content-Type: application/gzip\r\n\r\n").encode()
        self._parts = [head, None, f"\r\n--{self.boundary}--\r\n".encode()]
        self._file = open(path, "rb")  # noqa: SIM115 — closed when read to the end or by close()
        self.total = len(head) + path.stat().st_size + len(self._parts[2])
        self.sent = 0
        self.on_read = on_read
        self._i = 0
        self._pos = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self.total

    def read(self, n: int = -1) -> bytes:
        n = self.total if n is None or n < 0 else n
        out = b""
        while len(out) < n and self._i < 3:
            part = self._parts[self._i]
            if part is None:
                chunk = self._file.read(n - len(out))
                if not chunk:
                    self._file.close()
                    self._i += 1
                    continue
            else:
                chunk = part[self._pos:self._pos + n - len(out)]
                self._pos += len(chunk)
                if self._pos >= len(part):
                    self._i, self._pos = self._i + 1, 0
            out += chunk
        self.sent += len(out)
        if self.on_read is not None and out:
            self.on_read(self.sent, self.total)
        return out

    def close(self) -> None:
        self._file.close()
