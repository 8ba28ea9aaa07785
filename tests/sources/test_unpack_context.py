"""The unpacker the host script ships for uploaded contexts (chalicelib/launching/templates/
unpack_context.py): hostile tarballs are refused whole, before anything is written, with
a reason; a good one unpacks without owners or setuid bits."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from chalicelib.launching.hostscript import UNPACKER

spec = importlib.util.spec_from_file_location("unpack_context", UNPACKER)
unpack_context = importlib.util.module_from_spec(spec)
spec.loader.exec_module(unpack_context)


def make_tar(path: Path, members: list[tuple[str, str, bytes | str]], gz: bool = True) -> Path:
    """members: (kind, name, data or link target); kind is file, dir, sym, hard, dev or fifo."""
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size, info.mode, info.uid, info.uname = len(data), 0o4755, 0, "root"
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "dev": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("sym", "hard"):
                info.linkname = data
            tar.addfile(info)
    return path


def run(tarball: Path, dest: Path, max_bytes: int = 10_000, max_files: int = 10) -> subprocess.CompletedProcess:
    """As the host script runs it: python3 -c "$UNPACKER" ..."""
    return subprocess.run([sys.executable, "-c", UNPACKER.read_text(), str(tarball), str(dest), str(max_bytes),
                           str(max_files)], capture_output=True, text=True, timeout=30)


def test_a_good_context_unpacks_without_setuid_bits(tmp_path):
    tarball = make_tar(tmp_path / "ok.tar.gz", [("dir", "docker", b""), ("file", "docker/Dockerfile", b"FROM x\n"),
                                               ("file", "run.sh", b"echo hi\n"), ("sym", "docker/run.sh", "../run.sh")])
    got = run(tarball, tmp_path / "out")
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out/docker/Dockerfile").read_bytes() == b"FROM x\n"
    assert (tmp_path / "out/docker/run.sh").read_bytes() == b"echo hi\n"
    assert not (tmp_path / "out/run.sh").stat().st_mode & 0o7000


@pytest.mark.parametrize("members,reason", [
    ([("file", "../escape", b"x")], "'..' are not allowed"),
    ([("file", "a/../../escape", b"x")], "'..' are not allowed"),
    ([("file", "/etc/cron.d/evil", b"x")], "absolute paths"),
    ([("sym", "link", "/etc/passwd")], "leaves the context"),
    ([("sym", "a/link", "../../etc")], "leaves the context"),
    ([("hard", "link", "etc/passwd")], "only files, folders and symbolic links"),
    ([("dev", "null", b"")], "only files, folders and symbolic links"),
    ([("fifo", "pipe", b"")], "only files, folders and symbolic links"),
    ([("file", "big", b"x" * 10_001)], "more than 10000 bytes"),
    ([("file", f"f{i}", b"x") for i in range(11)], "more than 10 files"),
])
def test_hostile_tarballs_are_refused_whole_with_the_reason(tmp_path, members, reason):
    tarball = make_tar(tmp_path / "bad.tar.gz", [("file", "Dockerfile", b"FROM x\n"), *members])
    got = run(tarball, tmp_path / "out")
    assert got.returncode == 1
    assert reason in got.stderr
    assert not (tmp_path / "out" / "Dockerfile").exists()  # nothing written
    assert not (tmp_path / "escape").exists()


def test_not_a_tarball_is_refused(tmp_path):
    bad = tmp_path / "junk.tar"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    got = run(bad, tmp_path / "out")
    assert got.returncode == 1 and "broken build context" in got.stderr


def test_without_the_data_filter_links_are_refused_and_files_never_follow_links(tmp_path, monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter")
    tarball = make_tar(tmp_path / "ok.tar", [("file", "Dockerfile", b"FROM x\n"), ("file", "a/b", b"y")], gz=False)
    assert unpack_context.unpack(str(tarball), str(tmp_path / "out"), 1000, 10) == 2
    assert (tmp_path / "out/a/b").read_bytes() == b"y"
    linked = make_tar(tmp_path / "l.tar", [("sym", "x", "Dockerfile")], gz=False)
    with pytest.raises(unpack_context.Unsafe, match="need a python3 with tarfile's data filter"):
        unpack_context.unpack(str(linked), str(tmp_path / "out2"), 1000, 10)
