"""The rendering rules of chalicelib/launching/hostscript.py that no run of the script shows: what is
stripped from the template and the build context, what a source build adds, the exact
errors a refused value gives, and deterministic bytes. Each test fails on a small change to
the module that the script runs in test_launch_hostscript.py let through (mutation testing,
see the README's testing section); all are render-only and fast."""

from __future__ import annotations

import base64
import gzip
import io
import random
import re
import shlex
import string
import tarfile

import pytest
from hostrun import CFG, TOKEN, record_for, render_for

from chalicelib.builds.records import BuildRecord
from chalicelib.launching import hostscript
from chalicelib.launching.hostscript import (
    USER_DATA_LIMIT,
    RenderError,
    pack_context,
    render,
    script_of,
    strip_comments,
    user_data,
)
from chalicelib.specs.catalog import load_catalog

URL = "https://contexts.example.test/sha256/abc?X-Amz-Signature=" + "f" * 64


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _tar(b64: str) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(b64)), mode="r:gz") as tar:
        return {m.name: (m, tar.extractfile(m).read()) for m in tar.getmembers()}


def _assigned(script: str) -> dict[str, str]:
    """``readonly NAME=value`` lines of the script, values unquoted."""
    out = {}
    for m in re.finditer(r"^readonly ([A-Z0-9_]+)=(.*)$", script, re.M):
        try:
            words = shlex.split(m.group(2))
        except ValueError:  # a multi-line value (the unpacker): tests look for it whole
            words = ["<multi-line>"]
        out[m.group(1)] = words[0] if words else ""
    return out


# ---- comments: what strip_comments keeps --------------------------------------------------

def test_strip_comments_drops_full_line_comments_and_keeps_everything_else():
    src = (b"#!/bin/bash\n"
           b"# a comment\n"
           b"   # an indented comment\n"
           b"echo one # not a full-line comment\n"
           b"\n"
           b"  echo two\n")
    assert strip_comments(src) == b"#!/bin/bash\necho one # not a full-line comment\n\n  echo two\n"


def test_strip_comments_keeps_dockerfile_parser_and_shellcheck_directives():
    src = (b"# syntax=docker/dockerfile:1.7\n"
           b"# ESCAPE=`\n"
           b"#check=skip=JSONArgsRecommended\n"
           b"# shellcheck disable=SC2086\n"
           b"# syntax is explained in the README\n"
           b"FROM scratch\n")
    assert strip_comments(src) == (b"# syntax=docker/dockerfile:1.7\n# ESCAPE=`\n#check=skip=JSONArgsRecommended\n"
                                   b"# shellcheck disable=SC2086\nFROM scratch\n")


@pytest.mark.parametrize("opener,end", [("<<EOF", "EOF"), ("<<-'PY'", "PY"), ('<< "END_1"', "END_1")])
def test_strip_comments_keeps_hash_lines_inside_a_heredoc_and_strips_again_after_it(opener, end):
    src = (f"RUN cat {opener} > /etc/app.conf\n"
           "# a line of the file, not a comment\n"
           "  # indented, still the file's\n"
           f"  {end}\n"
           "# a comment again\n"
           "RUN true\n").encode()
    assert strip_comments(src) == (f"RUN cat {opener} > /etc/app.conf\n# a line of the file, not a comment\n"
                                   f"  # indented, still the file's\n  {end}\nRUN true\n").encode()


def test_a_heredoc_named_in_a_comment_opens_nothing():
    src = b"# cat <<EOF writes the file\n# still a comment\nRUN true\n"
    assert strip_comments(src) == b"RUN true\n"


# ---- the build context ------------------------------------------------------------------

def test_the_context_strips_comments_from_dockerfiles_and_shell_scripts_only(tmp_path):
    (tmp_path / "Dockerfile").write_text("# about the image\nFROM scratch\n")
    (tmp_path / "entrypoint.sh").write_text("#!/bin/sh\n# explains\nexec true\n")
    (tmp_path / "app.py").write_text("# a python comment stays\nprint(1)\n")
    (tmp_path / "requirements.txt").write_text("# pinned\ntorch==2.5.1\n")
    files = _tar(pack_context(tmp_path))
    assert {name: data for name, (_, data) in files.items()} == {
        "Dockerfile": b"FROM scratch\n",
        "entrypoint.sh": b"#!/bin/sh\nexec true\n",
        "app.py": b"# a python comment stays\nprint(1)\n",
        "requirements.txt": b"# pinned\ntorch==2.5.1\n",
    }
    assert all(info.size == len(data) for info, data in files.values())


def test_a_world_writable_file_does_not_become_executable(tmp_path):
    (tmp_path / "data.bin").write_text("x")
    (tmp_path / "data.bin").chmod(0o666)
    (tmp_path / "tool").write_text("x")
    (tmp_path / "tool").chmod(0o701)
    files = _tar(pack_context(tmp_path))
    assert files["data.bin"][0].mode == 0o644 and files["tool"][0].mode == 0o755


def test_the_context_keeps_files_after_a_skipped_one(tmp_path):
    # sorted: .env and README.md come before the files that follow them
    for name in (".env", "README.md", "a.txt", "z.txt"):
        (tmp_path / name).write_text(name)
    assert set(_tar(pack_context(tmp_path))) == {"a.txt", "z.txt"}


def test_the_context_and_the_user_data_are_byte_identical_for_the_same_build(tmp_path, catalog):
    # gzip headers carry no timestamp: the same build renders the same user-data, any day
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    packed = base64.b64decode(pack_context(tmp_path))
    data = user_data(render_for(record_for(catalog, "canary"), catalog))
    for blob in (packed, data):
        assert blob[:2] == b"\x1f\x8b" and blob[4:8] == b"\0\0\0\0"


# ---- the template -----------------------------------------------------------------------

def test_the_template_loses_its_comments_but_keeps_the_shebang_shellcheck_lines_and_code(catalog, tmp_path,
                                                                                          monkeypatch):
    template = tmp_path / "host.sh"
    template.write_text("#!/usr/bin/env bash\n"
                        "set -euo pipefail\n"
                        "# a comment\n"
                        "  # an indented comment\n"
                        "# shellcheck disable=SC2154\n"
                        "  # shellcheck disable=SC2034\n"
                        "@@CONFIG@@\n"
                        "echo \"$BUILD_ID\"\n"
                        "@@SOURCES@@\n"
                        "exit 0\n")
    monkeypatch.setattr(hostscript, "TEMPLATE", template)
    script = render_for(record_for(catalog, "canary"), catalog)
    head, config_and_rest = script.split("readonly BUILD_ID=", 1)
    assert head == "#!/usr/bin/env bash\nset -euo pipefail\n# shellcheck disable=SC2154\n" \
                   "  # shellcheck disable=SC2034\n"
    assert config_and_rest.endswith('\necho "$BUILD_ID"\nexit 0\n')


# ---- source builds (issue 20): the variables and the part they add --------------------------

def _context_record(**source) -> dict:
    return {
        "id": "b-0123456789abcdef0123", "framework": "custom", "version": "custom", "cuda": "12.4",
        "python": "none", "build_args": {"http_proxy": ""},
        "image": {"repository": f"{CFG.registry}/voltabuild/team/app", "tags": ["v1"]},
        "instance_types": ["g5.xlarge"], "timeout_minutes": 45, "attempt": 1,
        "source": {"kind": "context", "context": "sha256:" + "0" * 64, "dockerfile": "docker/Dockerfile",
                   "target": "runtime", "smoke_test": ["true"], **source},
    }


def _git_record(**source) -> dict:
    rec = _context_record()
    rec["source"] = {"kind": "git", "git": "https://github.com/org/r.git", "ref": "v1.2", "path": "svc",
                     "dockerfile": "Dockerfile", "target": None, "smoke_test": ["true"], **source}
    return rec


def _render_source(catalog, record, **kw) -> str:
    at = "2026-12-02T08:00:00Z"
    stored = BuildRecord.of({"status": "LAUNCHING", "notify": {"slack": False}, "created_at": at, "updated_at": at,
                             **record})
    return render(stored, catalog, CFG, token=TOKEN, build_date=at, **kw)


def _sources_part() -> str:
    lines = hostscript.SOURCES_TEMPLATE.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#")) + "\n"


def test_a_context_build_carries_its_url_digest_limits_and_the_unpacker(catalog):
    script = _render_source(catalog, _context_record(), context_url=URL, context_max_bytes=100_000)
    v = _assigned(script)
    assert {k: v[k] for k in ("SOURCE_KIND", "CONTEXT_URL", "CONTEXT_SHA256", "CONTEXT_MAX_BYTES", "DOCKERFILE",
                              "TARGET", "SMOKE_GPUS", "REPOSITORY")} == {
        "SOURCE_KIND": "context", "CONTEXT_URL": URL, "CONTEXT_SHA256": "sha256:" + "0" * 64,
        "CONTEXT_MAX_BYTES": "100000", "DOCKERFILE": "docker/Dockerfile", "TARGET": "runtime", "SMOKE_GPUS": "1",
        "REPOSITORY": "voltabuild/team/app"}
    unpacker = hostscript.UNPACKER.read_text()
    assert f"\nreadonly UNPACKER={shlex.quote(unpacker)}\n" in script
    assert "\nreadonly -a BUILD_ARGS=(http_proxy=)\n" in script
    assert _sources_part() in script and "fetch_context() {" in script


def test_a_git_build_carries_its_repository_ref_and_path_and_no_unpacker(catalog):
    script = _render_source(catalog, _git_record())
    v = _assigned(script)
    assert (v["SOURCE_KIND"], v["GIT_URL"], v["GIT_REF"], v["CONTEXT_PATH"], v["UNPACKER"]) == (
        "git", "https://github.com/org/r.git", "v1.2", "svc", "")
    assert v["CONTEXT_MAX_BYTES"] == "0" and v["CONTEXT_URL"] == ""  # nothing to download
    assert "\nreadonly UNPACKER=''\n" in script
    assert _sources_part() in script


def test_the_source_part_leaves_out_its_comments(catalog):
    script = _render_source(catalog, _git_record())
    comments = [line.strip() for line in hostscript.SOURCES_TEMPLATE.read_text().splitlines()
                if line.lstrip().startswith("#") and len(line.strip()) > 20]
    assert comments and not [c for c in comments if c in script]


def test_a_catalog_build_sets_only_the_source_variables_host_sh_reads_and_no_source_part(catalog):
    script = render_for(record_for(catalog, "canary"), catalog)
    v = _assigned(script)
    assert (v["DOCKERFILE"], v["TARGET"], v["SMOKE_GPUS"], v["GIT_URL"]) == ("Dockerfile", "", "0", "")
    for absent in ("SOURCE_KIND", "CONTEXT_URL", "UNPACKER", "CONTEXT_PATH"):
        assert absent not in v
    assert "fetch_context()" not in script and "clone_source()" not in script
    assert "@@SOURCES@@" not in script and "@@CONFIG@@" not in script


@pytest.mark.parametrize("source,message", [
    ({"dockerfile": "../Dockerfile"}, "dockerfile: '../Dockerfile' leaves the context"),
    ({"dockerfile": "docker/../../etc/Dockerfile"}, "dockerfile: 'docker/../../etc/Dockerfile' leaves the context"),
])
def test_a_dockerfile_outside_the_context_is_refused_at_render_time(catalog, source, message):
    with pytest.raises(RenderError) as e:
        _render_source(catalog, _context_record(**source), context_url=URL, context_max_bytes=100_000)
    assert str(e.value) == message


def test_a_git_path_outside_the_repository_is_refused_and_dotted_names_are_not(catalog):
    with pytest.raises(RenderError) as e:
        _render_source(catalog, _git_record(path="svc/.."))
    assert str(e.value) == "context_path: 'svc/..' leaves the context"
    # `..` inside a name, or in a value that is not a path in the context, is data
    script = _render_source(catalog, _git_record(path="svc/..x", git="https://github.com/org/../r.git"))
    assert _assigned(script)["CONTEXT_PATH"] == "svc/..x"


def test_a_source_value_that_fails_its_pattern_names_the_variable(catalog):
    with pytest.raises(RenderError) as e:
        _render_source(catalog, _git_record(ref="-upload-pack=evil"))
    assert str(e.value).startswith("git_ref: '-upload-pack=evil' cannot go into the host script (must match ^(")


def test_a_context_build_without_its_download_url_is_a_render_error_saying_so(catalog):
    with pytest.raises(RenderError, match="^a context build needs the context's download URL$"):
        _render_source(catalog, _context_record())


# ---- the errors a refused value gives ----------------------------------------------------

def test_a_refused_value_names_the_field_the_value_and_the_pattern(catalog):
    rec = record_for(catalog, "canary")
    with pytest.raises(RenderError) as e:
        render(BuildRecord.of(rec), catalog, CFG.__class__(**{**CFG.__dict__, "region": "moon-1"}), token=TOKEN,
               build_date="x")
    assert str(e.value) == (f"region: 'moon-1' cannot go into the host script (must match "
                            f"{hostscript._REGION.pattern})")


def test_a_value_that_is_not_a_string_is_refused(catalog):
    # a stored record is validated on reading; the render checks every value again anyway
    rec = BuildRecord.of(record_for(catalog, "canary"))
    rec.image.tags = [7]
    with pytest.raises(RenderError, match=r"^tag: 7 cannot go into the host script"):
        render(rec, catalog, CFG, token=TOKEN, build_date="2026-12-02T08:00:00Z")


def test_a_value_with_control_characters_names_the_field_and_the_limit(catalog, monkeypatch):
    spec = catalog.spec("canary")
    monkeypatch.setattr(type(spec), "docker_build_args", lambda self, *a, **k: {"NOTE": "a\tb"})
    with pytest.raises(RenderError) as e:
        render_for(record_for(catalog, "canary"), catalog)
    assert str(e.value) == "build_args.NOTE: control characters or over 1024 characters"


# ---- user-data --------------------------------------------------------------------------

def test_user_data_exactly_at_the_limit_is_accepted_and_one_byte_over_is_refused_with_its_size(monkeypatch):
    script = "#!/usr/bin/env bash\n: " + "".join(random.Random(5).choices(string.ascii_letters, k=3000)) + "\n"
    size = len(gzip.compress(script.encode(), compresslevel=9, mtime=0))
    monkeypatch.setattr(hostscript, "USER_DATA_LIMIT", size)
    assert script_of(user_data(script)) == script
    monkeypatch.setattr(hostscript, "USER_DATA_LIMIT", size - 1)
    with pytest.raises(RenderError) as e:
        user_data(script)
    assert str(e.value) == f"the host script is {size} bytes compressed; EC2 user-data is limited to {size - 1}"
    assert USER_DATA_LIMIT == 16 * 1024


def test_script_of_reads_gzip_and_plain_user_data():
    assert script_of(user_data("#!/bin/sh\ntrue\n")) == "#!/bin/sh\ntrue\n"
    assert script_of(b"#!/bin/sh\ntrue\n") == "#!/bin/sh\ntrue\n"


def test_the_source_part_loses_indented_comments_too(catalog, tmp_path, monkeypatch):
    part = tmp_path / "sources.sh"
    part.write_text("# shellcheck shell=bash\nfetch_context() {\n  # why this step\n  true\n}\n")
    monkeypatch.setattr(hostscript, "SOURCES_TEMPLATE", part)
    script = _render_source(catalog, _git_record())
    assert "\nfetch_context() {\n  true\n}\n" in script and "# why this step" not in script
