"""BuildService.plan over every buildspec combination: where a build may run."""

from __future__ import annotations

import re

import pytest

from chalicelib.builds.builds import BuildService
from chalicelib.builds.schemas import BuildRequest
from chalicelib.errors import BadRequest
from chalicelib.settings import Settings
from chalicelib.specs.catalog import load_catalog
from chalicelib.specs.gpu import ARCH_LIST_ARG, covered, parse_arch_list

CATALOG = load_catalog()
HW = CATALOG.hardware
COMBOS = [(name, r) for name, spec in CATALOG.frameworks.items() for r in spec.combinations()]
IDS = [f"{n}-{r.version}-cu{r.cuda}-py{r.python}" for n, r in COMBOS]
SOURCE_COMBOS = [(n, r) for n, r in COMBOS if "BUILD_MODE" in CATALOG.frameworks[n].build_args]


def service(catalog=CATALOG) -> BuildService:
    # plan() does no I/O: it needs neither the store nor the queues.
    return BuildService(None, catalog, Settings(), None, None)


def plan(**req):
    return service().plan(BuildRequest(**req))


def refused(**req) -> str:
    with pytest.raises(BadRequest) as e:
        plan(**req)
    return e.value.message


@pytest.mark.parametrize(("framework", "r"), COMBOS, ids=IDS)
def test_every_combination_with_default_instance_types_runs_somewhere(framework, r):
    spec = CATALOG.frameworks[framework]
    build = plan(framework=framework, version=r.version, cuda=r.cuda, python=r.python)
    assert build.instance_types, "the load-time check guarantees one default type runs each combination"
    assert all(HW.runs(t, r.cuda) for t in build.instance_types)
    # nothing that runs is dropped, the buildspec's order is kept ...
    assert build.instance_types == [t for t in spec.instance_types if t in build.instance_types]
    dropped = [t for t in spec.instance_types if t not in build.instance_types]
    assert all(not HW.runs(t, r.cuda) for t in dropped)
    # ... and whatever was dropped is said in the build's warnings
    gpu_warnings = [w for w in build.warnings if w.startswith("instance_types:")]
    assert bool(gpu_warnings) == bool(dropped)
    for t in dropped:
        assert t in gpu_warnings[0] and HW.family(t).gpu in gpu_warnings[0]


@pytest.mark.parametrize(("framework", "r"), COMBOS, ids=IDS)
def test_every_combination_on_p3_is_accepted_or_refused_naming_what_works(framework, r):
    req = dict(framework=framework, version=r.version, cuda=r.cuda, python=r.python, instance_types=["p3.2xlarge"])
    if HW.runs("p3.2xlarge", r.cuda):
        assert plan(**req).instance_types == ["p3.2xlarge"]
    else:
        msg = refused(**req)
        assert "p3.2xlarge (NVIDIA V100, compute capability 7.0)" in msg
        assert f"needs compute capability {HW.cuda[r.cuda].min_compute_capability}" in msg
        assert ", ".join(HW.families_for(r.cuda)) in msg


@pytest.mark.parametrize("framework", sorted(CATALOG.frameworks))
def test_buildspec_defaults_stay_on_a_cuda_the_default_p3_runs(framework):
    spec = CATALOG.frameworks[framework]
    assert spec.instance_types[0] == "p3.2xlarge"
    assert HW.runs("p3.2xlarge", spec.defaults.cuda)
    build = plan(framework=framework)
    assert build.instance_types == spec.instance_types
    assert not [w for w in build.warnings if w.startswith("instance_types:")]


# ---- the real case: PyTorch 2.9.1 on CUDA 13.0 ------------------------------------------

def test_cuda_13_with_default_instance_types_drops_p3():
    build = plan(framework="pytorch", version="2.14.1", cuda="13.0")
    assert build.instance_types == ["g5.xlarge", "g4dn.xlarge", "g6.xlarge"]
    (w,) = build.warnings
    assert "dropped p3.2xlarge (NVIDIA V100, compute capability 7.0)" in w
    assert "CUDA 13.0 needs compute capability 7.5 or newer" in w


def test_cuda_13_on_p3_is_refused_naming_the_families_that_run_it():
    msg = refused(framework="pytorch", version="2.9.1", cuda="13.0", instance_types=["p3.2xlarge"])
    assert msg.startswith("instance_types:")
    assert "p3.2xlarge (NVIDIA V100, compute capability 7.0)" in msg
    assert "CUDA 13.0 needs compute capability 7.5 or newer" in msg
    assert "instance families that run CUDA 13.0: g4dn, g5, g6, g6e, p4d, p5" in msg
    assert "g4dn.xlarge" in msg and "p5.4xlarge" in msg


def test_every_named_type_must_run_not_just_one():
    msg = refused(framework="pytorch", version="2.9.1", cuda="13.0",
                  instance_types=["g5.xlarge", "p3dn.24xlarge", "p3.8xlarge"])
    assert "p3dn.24xlarge" in msg and "p3.8xlarge" in msg
    assert "cannot run on g5.xlarge" not in msg


def test_named_types_that_all_run_are_kept_in_order_without_duplicates():
    build = plan(framework="pytorch", version="2.14.1", cuda="13.0",
                 instance_types=["p5.48xlarge", "g6e.xlarge", "p5.48xlarge"])
    assert build.instance_types == ["p5.48xlarge", "g6e.xlarge"]
    assert build.warnings == []


def test_unknown_instance_types_still_refused_first():
    msg = refused(framework="pytorch", instance_types=["p2.xlarge"])
    assert msg.startswith("instance_types: p2.xlarge not allowed") and "g5.xlarge" in msg


def test_defaults_none_of_which_run_the_cuda_is_a_400_naming_what_would():
    spec = CATALOG.frameworks["pytorch"]
    only_p3 = spec.model_copy(update={"instance_types": ["p3.2xlarge", "p3.8xlarge"]})
    catalog = CATALOG.model_copy(update={"frameworks": {**CATALOG.frameworks, "pytorch": only_p3}})
    with pytest.raises(BadRequest) as e:
        service(catalog).plan(BuildRequest(framework="pytorch", version="2.9.1", cuda="13.0"))
    msg = e.value.message
    assert "none of pytorch's default instance types can run CUDA 13.0" in msg
    assert "p3.2xlarge" in msg and "p3.8xlarge" in msg
    assert "g4dn, g5, g6, g6e, p4d, p5" in msg


# ---- source builds: TORCH_CUDA_ARCH_LIST ------------------------------------------------

def _suggested(msg: str) -> str:
    m = re.search(rf"{ARCH_LIST_ARG}='([^']+)'", msg)
    assert m, msg
    return m.group(1)


@pytest.mark.parametrize(("framework", "r"), SOURCE_COMBOS,
                         ids=[f"{n}-{r.version}-cu{r.cuda}-py{r.python}" for n, r in SOURCE_COMBOS])
def test_every_source_combination_is_accepted_or_refused_with_a_list_that_works(framework, r):
    req = dict(framework=framework, version=r.version, cuda=r.cuda, python=r.python)
    try:
        build = plan(**req, build_args={"BUILD_MODE": "source"})
    except BadRequest as e:
        assert e.field == f"build_args.{ARCH_LIST_ARG}"
        build = plan(**req, build_args={"BUILD_MODE": "source", ARCH_LIST_ARG: _suggested(e.message)})
    archs = parse_arch_list(build.build_args[ARCH_LIST_ARG])
    assert all(covered(archs, HW.family(t).cc) for t in build.instance_types)


def test_source_build_on_cuda_13_with_the_default_list_names_the_uncompilable_entry():
    msg = refused(framework="pytorch", version="2.9.1", cuda="13.0", build_args={"BUILD_MODE": "source"})
    assert "CUDA 13.0's nvcc compiles compute capability 7.5 to 12.1" in msg
    assert "7.0+PTX is outside it" in msg
    assert _suggested(msg) == "7.5 8.0 8.6 8.9 9.0"


def test_source_build_must_cover_every_gpu_it_may_be_tested_on():
    msg = refused(framework="pytorch", build_args={"BUILD_MODE": "source", ARCH_LIST_ARG: "8.6"})
    assert "missing 7.0, 7.5" in msg
    assert "p3.2xlarge (NVIDIA V100, compute capability 7.0)" in msg and "g4dn.xlarge (NVIDIA T4" in msg
    assert _suggested(msg) == "7.0 7.5 8.6"
    assert "families it covers: g5, g6, g6e" in msg


def test_sm_80_does_not_cover_hopper_but_ptx_does():
    base = dict(framework="pytorch", version="2.6.0", cuda="12.6", instance_types=["p5.48xlarge", "g5.xlarge"])
    msg = refused(**base, build_args={"BUILD_MODE": "source", ARCH_LIST_ARG: "8.0"})
    assert "missing 9.0 for p5.48xlarge (NVIDIA H100" in msg and "g5.xlarge" not in msg.split("for example")[0]
    build = plan(**base, build_args={"BUILD_MODE": "source", ARCH_LIST_ARG: "8.0+PTX"})
    assert build.instance_types == ["p5.48xlarge", "g5.xlarge"]


def test_arch_above_what_the_cuda_compiles_is_refused():
    msg = refused(framework="pytorch", version="2.5.1", cuda="11.8", instance_types=["g5.xlarge"],
                  build_args={"BUILD_MODE": "source", ARCH_LIST_ARG: "8.6 12.0"})
    assert "CUDA 11.8's nvcc compiles compute capability 3.5 to 9.0; 12.0 is outside it" in msg


def test_wheels_builds_ignore_the_arch_list():
    build = plan(framework="pytorch", version="2.9.1", cuda="13.0", build_args={ARCH_LIST_ARG: "8.6"})
    assert build.instance_types == ["g5.xlarge", "g4dn.xlarge", "g6.xlarge"]
