"""Each Dockerfile matches its buildspec: every build arg a build passes is declared, the
Dockerfile's own defaults are the buildspec's defaults (so a hand-made `docker build .` gives
the default image), and the conventions every image shares hold."""

from __future__ import annotations

import base64
import io
import re
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from chalicelib.launching.catalog_contexts import context_files
from chalicelib.launching.hostscript import pack_context, strip_comments
from chalicelib.specs.catalog import BuildSpec, load_catalog, without_digest

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(ROOT)
HW = CATALOG.hardware
SPECS = sorted(CATALOG.frameworks.values(), key=lambda s: s.framework)
GPU_SPECS = [s for s in SPECS if s.framework != "canary"]

# Added by the host script to every build, beside spec.docker_build_args(...).
HOST_ARGS = {"BUILD_DATE", "VOLTABUILD_BUILD_ID", "VCS_REF"}
# Different for every build: must come after the last layer-making step, or no layer is ever
# reused from the cache.
PER_BUILD_ARGS = HOST_ARGS | {"VOLTABUILD_BUILDSPEC_HASH"}
ENTRYPOINT = "/usr/local/bin/entrypoint.sh"
TINI = "/usr/bin/tini"
REQUIRED_LABELS = {
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.source",
    "org.opencontainers.image.created",
    "io.voltabuild.framework",
    "io.voltabuild.cuda",
    "io.voltabuild.buildspec-hash",
    "io.voltabuild.build-id",
}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Dockerfile instructions, continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
        buf = ""
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1]:]


def arg_defaults(instructions: list[Instruction]) -> dict[str, str | None]:
    """Every declared ARG with its default (None when it has none); first declaration wins."""
    out: dict[str, str | None] = {}
    for ins in instructions:
        if ins.keyword != "ARG":
            continue
        name, eq, value = ins.args.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out.setdefault(name.strip(), value if eq else None)
    return out


def labels(instructions: list[Instruction]) -> dict[str, str]:
    out = {}
    for ins in instructions:
        if ins.keyword == "LABEL":
            for pair in shlex.split(ins.args):
                key, _, value = pair.partition("=")
                out[key] = value
    return out


def dockerfile(spec: BuildSpec) -> list[Instruction]:
    return parse(CATALOG.context_dir(spec) / "Dockerfile")


COMBINATIONS = [(s, r) for s in SPECS for r in s.combinations()]


@pytest.mark.parametrize(
    "spec,resolved", COMBINATIONS, ids=[f"{s.framework}-{r.version}-cu{r.cuda}-py{r.python}" for s, r in COMBINATIONS]
)
def test_every_rendered_build_arg_is_declared(spec, resolved):
    # GIVEN every build arg a build of this combination passes, with every allowed build arg set
    passed = set(spec.docker_build_args(resolved, HW, {})) | HOST_ARGS
    # THEN the Dockerfile declares each of them (an undeclared --build-arg is silently unused)
    declared = set(arg_defaults(dockerfile(spec)))
    assert passed <= declared, f"{spec.framework}: not declared in the Dockerfile: {sorted(passed - declared)}"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.framework)
def test_dockerfile_defaults_are_the_buildspec_defaults(spec):
    declared = arg_defaults(dockerfile(spec))
    default = spec.resolve(None, None, None)
    for name, value in spec.docker_build_args(default, HW, {}).items():
        if name in PER_BUILD_ARGS:
            continue
        # a base pinned by digest (base-digests.yaml) is passed as name:tag@digest; the
        # Dockerfile's own default, for a hand-made build, names it by tag
        value = without_digest(value) if name.endswith("_IMAGE") else value
        assert declared[name] == value, (
            f"{spec.framework}: ARG {name} defaults to {declared[name]!r} but the buildspec's default build passes {value!r}"
        )


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.framework)
def test_per_build_args_come_after_every_layer(spec):
    stage = final_stage(dockerfile(spec))
    last_layer = max(i for i, ins in enumerate(stage) if ins.keyword in {"RUN", "COPY", "ADD"})
    for i, ins in enumerate(stage):
        name = ins.args.partition("=")[0].strip()
        if ins.keyword == "ARG" and name in PER_BUILD_ARGS:
            assert i > last_layer, f"{spec.framework}: ARG {name} is declared before a RUN/COPY and busts the cache"
    # and they are declared in the final stage (an ARG before FROM is not visible after it)
    assert PER_BUILD_ARGS <= {ins.args.partition("=")[0].strip() for ins in stage if ins.keyword == "ARG"}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.framework)
def test_labels_carry_version_revision_and_build(spec):
    found = labels(final_stage(dockerfile(spec)))
    assert REQUIRED_LABELS <= set(found), f"missing labels: {sorted(REQUIRED_LABELS - set(found))}"
    assert found["io.voltabuild.framework"] == spec.framework
    assert found["org.opencontainers.image.revision"] == "${VCS_REF}"
    assert found["org.opencontainers.image.created"] == "${BUILD_DATE}"
    assert found["io.voltabuild.buildspec-hash"] == "${VOLTABUILD_BUILDSPEC_HASH}"
    assert found["io.voltabuild.build-id"] == "${VOLTABUILD_BUILD_ID}"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.framework)
def test_image_conventions(spec):
    stage = final_stage(dockerfile(spec))
    kinds = [ins.keyword for ins in stage]
    # SHELL with pipefail before the first RUN
    shell = next(ins for ins in stage if ins.keyword == "SHELL")
    assert "pipefail" in shell.args
    assert kinds.index("SHELL") < kinds.index("RUN")
    # runs as a non-root user
    last_user = [ins.args for ins in stage if ins.keyword == "USER"][-1]
    assert last_user not in {"0", "root"}
    # the smoke test is the entrypoint, copied to where the buildspec runs it; in the GPU images
    # tini runs it as PID 1's child (the canary's busybox has no tini, and runs no Jupyter kernels)
    assert spec.smoke_test == [ENTRYPOINT, "--check"]
    expected = f'["{ENTRYPOINT}"]' if spec.framework == "canary" else f'["{TINI}", "-g", "--", "{ENTRYPOINT}"]'
    assert [ins.args for ins in stage if ins.keyword == "ENTRYPOINT"] == [expected]
    assert any(ins.keyword == "COPY" and ins.args.split()[-1] == ENTRYPOINT for ins in stage)
    # apt lists never stay in a layer
    for ins in stage:
        if ins.keyword == "RUN" and "apt-get install" in ins.args:
            assert "rm -rf /var/lib/apt/lists/*" in ins.args, ins.args


@pytest.mark.parametrize("spec", GPU_SPECS, ids=lambda s: s.framework)
def test_gpu_images_serve_jupyter_and_keep_devtools_optional(spec):
    stage = final_stage(dockerfile(spec))
    assert any(ins.keyword == "EXPOSE" and ins.args == "8888" for ins in stage)
    cmd = next(ins.args for ins in stage if ins.keyword == "CMD")
    assert cmd.startswith('["jupyter", "lab"') and '"--port=8888"' in cmd and '"--ip=0.0.0.0"' in cmd
    # slim by default: the 2017 tools only behind INSTALL_DEVTOOLS, which defaults to 0
    assert spec.build_args["INSTALL_DEVTOOLS"].default == "0"
    for ins in stage:
        if ins.keyword == "RUN" and re.search(r"\b(tmux|htop|mlocate)\b", ins.args):
            assert "INSTALL_DEVTOOLS" in ins.args, f"devtools installed unconditionally: {ins.args}"
    # the framework probe sits where the entrypoint looks for it, the health check beside it (and,
    # for the probes that check the GPU's architecture, the shared rule they import)
    wanted = "probe.py gpu_arch.py healthcheck.py" if spec.framework in ("pytorch", "tensorflow") else "probe.py healthcheck.py"
    assert any(ins.keyword == "COPY" and ins.args == f"{wanted} /usr/local/lib/voltabuild/" for ins in stage)


@pytest.mark.parametrize("spec", GPU_SPECS, ids=lambda s: s.framework)
def test_gpu_images_have_an_init_a_health_check_and_utf8(spec):
    stage = final_stage(dockerfile(spec))
    # tini comes from the distribution, in the apt step, and the build stops if it is not there
    apt = next(ins.args for ins in stage if ins.keyword == "RUN" and "apt-get install" in ins.args)
    assert re.search(r"packages=\([^)]*\btini\b", apt) and f"test -x {TINI}" in apt
    health = [ins.args for ins in stage if ins.keyword == "HEALTHCHECK"]
    assert len(health) == 1
    assert health[0].endswith('CMD ["python", "/usr/local/lib/voltabuild/healthcheck.py"]')
    assert "--timeout=5s" in health[0]
    env = " ".join(ins.args for ins in stage if ins.keyword == "ENV")
    assert "LANG=C.UTF-8" in env


def test_gpu_images_are_built_with_the_one_shared_entrypoint_and_health_check():
    # GIVEN the GPU build contexts, which keep no entrypoint or health check of their own,
    # WHEN each is packed for the host script, THEN it carries dockerfiles/common/'s, the entrypoint executable
    common = CATALOG.common_context_dir
    for s in GPU_SPECS:
        for name in ("entrypoint.sh", "healthcheck.py"):
            assert not (CATALOG.context_dir(s) / name).exists(), f"{s.framework}: a copy of {name}"
        blob = base64.b64decode(pack_context(CATALOG.context_dir(s), common))
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            member = tar.getmember("entrypoint.sh")
            assert tar.extractfile(member).read() == strip_comments((common / "entrypoint.sh").read_bytes())
            assert member.mode & 0o111, "entrypoint.sh must be executable"
            assert tar.extractfile("healthcheck.py").read() == (common / "healthcheck.py").read_bytes()
            assert "Dockerfile" in tar.getnames()


def test_a_context_carries_only_the_shared_files_its_dockerfile_copies():
    # the canary's context travels in user-data (16 KB): none of the GPU images' Python files;
    # MXNet's probe checks no architecture list: no gpu_arch.py
    packed = {s.framework: set(context_files(CATALOG.context_dir(s), CATALOG.common_context_dir)) for s in SPECS}
    assert not {"healthcheck.py", "gpu_arch.py"} & packed["canary"]
    assert "gpu_arch.py" not in packed["mxnet"] and "healthcheck.py" in packed["mxnet"]
    assert {"gpu_arch.py", "healthcheck.py", "entrypoint.sh"} <= packed["pytorch"] & packed["tensorflow"]


def test_pytorch_has_one_copy_of_cuda():
    # wheel builds start from the small base image: the wheels bring the CUDA libraries, so a
    # devel image would be a second toolkit; source builds need nvcc and cuDNN from devel
    spec = CATALOG.frameworks["pytorch"]
    for r in spec.combinations():
        args = spec.docker_build_args(r, HW, {})
        release = HW.cuda[r.cuda]  # cudnn8 (11.8, 12.1), cudnn9 (12.3), bare cudnn from 12.4.1
        assert without_digest(args["BASE_IMAGE"]) == f"nvidia/cuda:{release.full}-base-ubuntu22.04"
        assert without_digest(args["DEVEL_IMAGE"]) == f"nvidia/cuda:{release.full}-{release.cudnn}-devel-ubuntu22.04"
    instructions = dockerfile(spec)
    stages = [ins.args for ins in instructions if ins.keyword == "FROM"]
    # source builds compile in a stage on devel; wheel builds never reach it (an empty stage on base)
    assert "${DEVEL_IMAGE} AS compile" in stages and "${BASE_IMAGE} AS compile-wheels" in stages
    assert "compile AS compile-source" in stages and "compile-${BUILD_MODE} AS compiled" in stages
    assert spec.build_args["BUILD_MODE"].default == "wheels"
    # the image itself always starts from base, whatever the mode ...
    assert stages[-1] == "${BASE_IMAGE}"
    image = final_stage(instructions)
    # ... and takes from the compile stage only the CUDA libraries its torch loads, and its wheels
    # through a mount (no layer keeps them); no compiler gets in
    taken = [ins.args for ins in image if ins.keyword == "COPY" and "--from=compiled" in ins.args]
    assert taken == ["--from=compiled /out/cuda-libs /usr/local/lib/voltabuild-cuda"]
    install = next(ins.args for ins in image if ins.keyword == "RUN" and "install-torch.sh" in ins.args)
    assert install.startswith("--mount=type=bind,from=compiled,source=/out/wheels,target=/tmp/voltabuild-wheels ")
    assert not [ins for ins in image if ins.keyword == "RUN" and re.search(r"build-essential|\bnvcc\b|gcc", ins.args)]
    compile_stage = instructions[[i for i, ins in enumerate(instructions) if ins.keyword == "FROM"][1]:]
    assert any(ins.keyword == "RUN" and "install-torch.sh compile" in ins.args for ins in compile_stage)


@pytest.mark.parametrize("spec", GPU_SPECS, ids=lambda s: s.framework)
def test_no_gpu_image_ships_a_devel_toolkit_by_default(spec):
    base = spec.docker_build_args(spec.resolve(None, None, None), HW, {})["BASE_IMAGE"]
    assert "-devel-" not in base


@pytest.mark.parametrize("copy", ["COPY gpu_arch.py /x/", "COPY ./gpu_arch.py /x/", 'COPY ["gpu_arch.py", "/x/"]',
                                  "COPY probe.py gpu_arch.py healthcheck.py /x/"])
def test_a_shared_file_is_packed_however_the_dockerfile_copies_it(tmp_path, copy):
    folder = tmp_path / "fw"
    folder.mkdir()
    (folder / "Dockerfile").write_text(f"FROM x\n{copy}\n")
    assert "gpu_arch.py" in context_files(folder, CATALOG.common_context_dir)
    (folder / "Dockerfile").write_text("FROM x\nCOPY my_gpu_arch.py gpu_arch.pyc /x/gpu_arch.py\n")
    assert "gpu_arch.py" not in context_files(folder, CATALOG.common_context_dir)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.framework)
def test_readme_documents_every_build_arg_with_its_default(spec):
    readme = (CATALOG.context_dir(spec) / "README.md").read_text()
    default = spec.resolve(None, None, None)
    for name, value in spec.docker_build_args(default, HW, {}).items():
        if name in PER_BUILD_ARGS:
            continue
        value = without_digest(value) if name.endswith("_IMAGE") else value  # the digest: base-digests.yaml
        assert f"`{name}`" in readme, f"{spec.framework}/README.md does not mention {name}"
        assert f"`{value}`" in readme, f"{spec.framework}/README.md does not give {name}'s default {value!r}"
    for section in ("docker build", "--gpus all"):
        assert section in readme


def test_the_packed_context_drops_comments_but_not_what_runs():
    # user-data is limited to 16 KB: full-line comments stay behind, everything else travels
    script = (
        b"#!/usr/bin/env bash\n# a comment\n  # an indented one\n# shellcheck disable=SC2034\n"
        b"x=1  # a trailing comment stays\npython - <<'PY'\n# inside a heredoc: content\nprint(1)\nPY\n"
        b"# after it\ncat <<-EOF\n\t# also content\n\tEOF\necho done\n"
    )
    assert strip_comments(script).decode() == (
        "#!/usr/bin/env bash\n# shellcheck disable=SC2034\nx=1  # a trailing comment stays\n"
        "python - <<'PY'\n# inside a heredoc: content\nprint(1)\nPY\ncat <<-EOF\n\t# also content\n\tEOF\necho done\n"
    )
    dockerfile = b"# syntax=docker/dockerfile:1\n# about\nFROM x\nRUN a \\\n# between\n && b\n"
    assert strip_comments(dockerfile) == b"# syntax=docker/dockerfile:1\nFROM x\nRUN a \\\n && b\n"


@pytest.mark.parametrize("path", sorted((ROOT / "dockerfiles").glob("*/*")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stripping_comments_keeps_every_instruction(path):
    if path.name != "Dockerfile" and path.suffix != ".sh":
        return
    kept = [line for line in strip_comments(path.read_bytes()).decode().splitlines() if not line.lstrip().startswith("#")]
    original = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert kept == original
