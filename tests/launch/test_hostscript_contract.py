"""What the rendered user-data promises EC2, cloud-init and the instance, pinned down one
behaviour at a time (each test fails on a small change to chalicelib/launching/hostscript.py that
the other tests let through: see the mutation-testing section of the README)."""

from __future__ import annotations

import base64
import gzip
import io
import random
import re
import string
import tarfile

import pytest
from hostrun import record_for, render_for

from chalicelib.launching.hostscript import USER_DATA_LIMIT, RenderError, pack_context, script_of, user_data
from chalicelib.specs.catalog import load_catalog


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _members(b64: str) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(b64)), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_user_data_starts_with_the_shebang_cloud_init_needs(catalog):
    # cloud-init runs user-data as a script only when its first line is a #! line
    script = script_of(user_data(render_for(record_for(catalog, "canary"), catalog)))
    assert script.startswith("#!/usr/bin/env bash\n")
    assert script.count("#!/usr/bin/env bash") == 1


def _incompressible(n: int) -> str:
    rng = random.Random(n)
    return "#!/usr/bin/env bash\n: " + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n)) + "\n"


def test_user_data_over_16_kib_compressed_is_refused_at_render_time():
    # GIVEN scripts whose gzip size falls on either side of EC2's 16 KiB limit
    sizes = {n: len(gzip.compress(_incompressible(n).encode(), compresslevel=9, mtime=0))
             for n in range(21000, 23500, 50)}
    fits = max(n for n, size in sizes.items() if size <= USER_DATA_LIMIT)
    over = min(n for n, size in sizes.items() if size > USER_DATA_LIMIT)
    assert USER_DATA_LIMIT == 16 * 1024 and sizes[over] - USER_DATA_LIMIT < 1024
    # THEN the one that fits is user-data, and one just over is a clear error, not EC2's later refusal
    assert script_of(user_data(_incompressible(fits))) == _incompressible(fits)
    with pytest.raises(RenderError, match=r"limited to 16384"):
        user_data(_incompressible(over))


def test_the_context_keeps_execute_bits_and_leaves_out_dotfiles_and_readmes(tmp_path):
    # GIVEN a context folder with a script, a data file, secrets in dotfiles and READMEs
    (tmp_path / "entrypoint.sh").write_text("#!/bin/sh\n")
    (tmp_path / "entrypoint.sh").chmod(0o700)
    (tmp_path / "data.txt").write_text("x")
    (tmp_path / "data.txt").chmod(0o600)
    (tmp_path / ".env").write_text("SECRET=1")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]")
    (tmp_path / "README.md").write_text("# docs")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "README.md").write_text("# docs")
    (tmp_path / "sub" / "tool.py").write_text("print()")
    # WHEN it is packed into the user-data
    members = _members(pack_context(tmp_path))
    # THEN only the build's files go, executables stay executable, nothing else is readable-only
    assert set(members) == {"entrypoint.sh", "data.txt", "sub/tool.py"}
    assert members["entrypoint.sh"].mode == 0o755
    assert members["data.txt"].mode == 0o644 and members["sub/tool.py"].mode == 0o644
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members.values())


def test_the_canary_entrypoint_arrives_executable(catalog):
    script = render_for(record_for(catalog, "canary"), catalog)
    b64 = re.search(r"^readonly CONTEXT_B64=(\S+)$", script, re.M).group(1).strip("'")
    assert _members(b64)["entrypoint.sh"].mode == 0o755


@pytest.mark.parametrize("attempt", [1, 3])
def test_the_script_knows_which_attempt_it_is(catalog, attempt):
    script = render_for(record_for(catalog, "canary", attempt=attempt), catalog)
    assert f"\nreadonly ATTEMPT={attempt}\n" in script


def _render_with_args(catalog, monkeypatch, args: dict[str, str]) -> str:
    spec = catalog.spec("canary")
    monkeypatch.setattr(type(spec), "docker_build_args", lambda self, *a, **k: dict(args))
    return render_for(record_for(catalog, "canary"), catalog)


@pytest.mark.parametrize("name", ["lower", "A-B", "A;rm", "1ABC", "A" * 65])
def test_build_arg_names_are_checked_again_at_render_time(catalog, monkeypatch, name):
    # whatever the catalog hands over, a name that is not [A-Z][A-Z0-9_]* never reaches bash
    with pytest.raises(RenderError, match="build arg name"):
        _render_with_args(catalog, monkeypatch, {name: "x"})


def test_build_arg_values_are_capped_at_1024_characters(catalog, monkeypatch):
    ok = _render_with_args(catalog, monkeypatch, {"LONG": "v" * 1024})
    assert "LONG=" + "v" * 1024 in ok
    with pytest.raises(RenderError, match="over 1024 characters"):
        _render_with_args(catalog, monkeypatch, {"LONG": "v" * 1025})
    with pytest.raises(RenderError, match="control characters"):
        _render_with_args(catalog, monkeypatch, {"LONG": "a\nb"})
