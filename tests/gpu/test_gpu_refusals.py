"""Each GPU refusal (a 400) names the field it is about and reads as a clean list when more
than one type or architecture is wrong; a suggested TORCH_CUDA_ARCH_LIST keeps the valid
entries at a release's highest architecture; and a family with no AMI is refused by name.

Found by mutation testing (``make mutate MODULE=gpu``): these mutants survived before."""

from __future__ import annotations

import pytest

from chalicelib.errors import BadRequest
from chalicelib.specs.catalog import load_catalog
from chalicelib.specs.gpu import ARCH_LIST_ARG, check_arch_list, check_known, place

CATALOG = load_catalog()
HW = CATALOG.hardware
PYTORCH = CATALOG.frameworks["pytorch"]
ARCH_FIELD = f"build_args.{ARCH_LIST_ARG}"
V100 = "NVIDIA V100, compute capability 7.0"


def refusal(fn, *args) -> BadRequest:
    with pytest.raises(BadRequest) as e:
        fn(*args)
    return e.value


# ---- instance types -----------------------------------------------------------------------

def test_unknown_types_are_listed_with_the_types_voltabuild_builds_on():
    e = refusal(check_known, HW, ["p2.xlarge", "g5.xlarge", "x1.large"])
    assert e.field == "instance_types"
    assert e.message.startswith(
        "instance_types: p2.xlarge, x1.large not allowed; GPU instance types voltabuild builds on: "
        "g4dn.12xlarge, g4dn.16xlarge, g4dn.2xlarge, ")
    assert e.message.endswith("p3dn.24xlarge, p4d.24xlarge, p5.48xlarge, p5.4xlarge")


def _without_ami(*families: str):
    """The hardware table with ``families`` left without an AMI (and a reason)."""
    fams = {name: fam.model_copy(update={"ami": None, "no_ami": f"no {name} AMI in this test"})
            if name in families else fam for name, fam in HW.families.items()}
    return HW.model_copy(update={"families": fams})


def test_types_of_a_family_with_no_ami_are_refused_with_each_reason_and_the_bootable_families():
    hw = _without_ami("p3", "p3dn")
    check_known(hw, ["g5.xlarge", "p5.4xlarge"])  # families with an AMI still pass
    e = refusal(check_known, hw, ["g5.xlarge", "p3.2xlarge", "p3dn.24xlarge"])
    assert e.field == "instance_types"
    assert e.message == (
        "instance_types: voltabuild has no AMI that boots "
        "p3.2xlarge (NVIDIA V100): no p3 AMI in this test; "
        "p3dn.24xlarge (NVIDIA V100): no p3dn AMI in this test; "
        "instance families it can boot: g4dn, g5, g6, g6e, p4d, p5")


def test_named_types_that_cannot_run_the_cuda_are_each_listed():
    e = refusal(place, HW, PYTORCH, "13.0", ["g5.xlarge", "p3.2xlarge", "p3dn.24xlarge"], {})
    assert e.field == "instance_types"
    assert e.message == (
        f"instance_types: pytorch on CUDA 13.0 cannot run on p3.2xlarge ({V100}), "
        f"p3dn.24xlarge ({V100}): CUDA 13.0 needs compute capability 7.5 or newer; "
        "instance families that run CUDA 13.0: g4dn, g5, g6, g6e, p4d, p5 (for example "
        "g4dn.xlarge, g5.xlarge, g6.xlarge, g6e.xlarge, p4d.24xlarge, p5.4xlarge)")


def test_defaults_none_of_which_run_the_cuda_are_each_listed():
    only_p3 = PYTORCH.model_copy(update={"instance_types": ["p3.2xlarge", "p3.8xlarge"]})
    e = refusal(place, HW, only_p3, "13.0", None, {})
    assert e.field == "instance_types"
    assert e.message.startswith(
        "instance_types: none of pytorch's default instance types can run CUDA 13.0 "
        f"(p3.2xlarge ({V100}); p3.8xlarge ({V100})): CUDA 13.0 needs compute capability 7.5 or newer; "
        "name instance_types from the instance families that run CUDA 13.0: g4dn, g5")


def test_the_warning_lists_every_dropped_default_and_every_type_kept():
    spec = PYTORCH.model_copy(update={"instance_types": ["p3.2xlarge", "g5.xlarge", "p3.8xlarge", "g4dn.xlarge"]})
    placed = place(HW, spec, "13.0", None, {})
    assert placed.instance_types == ["g5.xlarge", "g4dn.xlarge"]
    assert placed.warnings == [
        f"instance_types: dropped p3.2xlarge ({V100}), p3.8xlarge ({V100}) from the default list: "
        "CUDA 13.0 needs compute capability 7.5 or newer; building on g5.xlarge, g4dn.xlarge"]


# ---- TORCH_CUDA_ARCH_LIST ------------------------------------------------------------------

def test_an_unreadable_entry_says_how_to_write_one():
    e = refusal(check_arch_list, HW, "12.6", ["g5.xlarge"], "8.6 sm_90")
    assert e.field == ARCH_FIELD
    assert e.message == (f"{ARCH_FIELD}: 'sm_90' is not a compute capability; "
                         "write entries like '7.5', '8.0' or '8.6+PTX', space separated")


def test_a_release_without_nvcc_is_refused_on_the_arch_list_field():
    e = refusal(check_arch_list, HW, "none", ["g5.xlarge"], "8.6")
    assert e.field == ARCH_FIELD
    assert e.message == f"{ARCH_FIELD}: a source build needs a CUDA toolkit; CUDA 'none' has none"


def test_entries_past_the_release_are_listed_and_the_suggestion_keeps_its_highest_architecture():
    # Blackwell (10.0, 12.0) asked of CUDA 12.6, whose nvcc stops at 9.0: 9.0 itself is valid
    # and must stay in the suggested list even though no instance type here has a 9.0 GPU.
    e = refusal(check_arch_list, HW, "12.6", ["g5.xlarge", "g4dn.xlarge"], "7.0 8.6 9.0 10.0 12.0")
    assert e.field == ARCH_FIELD
    assert e.message == (
        f"{ARCH_FIELD}: CUDA 12.6's nvcc compiles compute capability 5.0 to 9.0; "
        "10.0, 12.0 are outside it; for g5.xlarge, g4dn.xlarge send for example "
        f"{ARCH_LIST_ARG}='7.0 8.6 9.0'")


def test_a_list_that_covers_no_family_suggests_one_and_names_no_families():
    # 5.0 (Maxwell) compiles with CUDA 12.8 but runs on no GPU voltabuild launches
    e = refusal(check_arch_list, HW, "12.8", ["g5.xlarge", "g4dn.xlarge"], "5.0")
    assert e.field == ARCH_FIELD
    assert e.message == (
        f"{ARCH_FIELD}: '5.0' does not include the architecture of every GPU this build may be "
        "smoke-tested on: missing 7.5, 8.6 for g5.xlarge (NVIDIA A10G, compute capability 8.6), "
        "g4dn.xlarge (NVIDIA T4, compute capability 7.5); send for example "
        f"{ARCH_LIST_ARG}='5.0 7.5 8.6'")
