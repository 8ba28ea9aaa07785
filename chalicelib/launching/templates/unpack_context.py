"""voltabuild: unpack an uploaded build context safely (issue 20).

The host script runs it as python3 -c <this file> TARBALL DEST MAX_BYTES MAX_FILES
(shipped in the user-data, so it needs nothing on the host but python3). A tarball with
an absolute path, a .. component, a device, fifo or hard link, a link that leaves the
context, too many files or too many bytes is refused whole, before anything is written:
the reason goes to stderr and the exit status is 1. Owners are never restored; modes lose
setuid, setgid and sticky bits. Where python3 has tarfile's "data" filter (3.8.17+,
3.9.17+, 3.10.12+, 3.11.4+) it extracts too; elsewhere symbolic links are refused and
files are written one by one without following links.
"""
import os
import posixpath
import shutil
import sys
import tarfile


class Unsafe(Exception):
    pass


def checked_members(tar, max_bytes, max_files):
    members, total = [], 0
    for m in tar:
        name = m.name
        parts = name.split("/")
        if not name or name.startswith("/") or "\\" in name or "\x00" in name or ".." in parts:
            raise Unsafe(f"{name!r}: absolute paths and '..' are not allowed")
        if m.isdev() or m.isfifo() or m.islnk() or not (m.isfile() or m.isdir() or m.issym()):
            raise Unsafe(f"{name!r}: only files, folders and symbolic links are allowed")
        if m.issym():
            target = m.linkname
            inside = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
            if target.startswith("/") or inside == ".." or inside.startswith("../"):
                raise Unsafe(f"{name!r}: a link to {target!r} leaves the context")
        total += m.size
        members.append(m)
        if len(members) > max_files:
            raise Unsafe(f"more than {max_files} files")
        if total > max_bytes:
            raise Unsafe(f"more than {max_bytes} bytes unpacked")
    return members


def extract_plain(tar, members, dest):
    for m in members:
        path = os.path.join(dest, *m.name.split("/"))
        if m.issym():
            raise Unsafe(f"{m.name!r}: symbolic links need a python3 with tarfile's data filter")
        if m.isdir():
            os.makedirs(path, mode=0o755, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        mode = 0o755 if m.mode & 0o111 else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(tar.extractfile(m), out)


def unpack(tarball, dest, max_bytes, max_files):
    os.makedirs(dest, mode=0o755, exist_ok=True)
    with tarfile.open(tarball, "r:*") as tar:
        members = checked_members(tar, max_bytes, max_files)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:
            extract_plain(tar, members, dest)
    return len(members)


def main(argv):
    tarball, dest, max_bytes, max_files = argv[1], argv[2], int(argv[3]), int(argv[4])
    try:
        n = unpack(tarball, dest, max_bytes, max_files)
    except (Unsafe, tarfile.TarError, OSError, EOFError) as e:
        print(f"unsafe or broken build context: {e}", file=sys.stderr)
        return 1
    print(f"unpacked {n} entries", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
