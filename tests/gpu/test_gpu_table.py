"""The hardware table and the compatibility rules over every row of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from chalicelib.errors import BadRequest, CatalogError
from chalicelib.specs.catalog import ROOT, load_catalog
from chalicelib.specs.gpu import Arch, covered, parse_arch_list

HW = load_catalog().hardware
ROWS = [(fam, cuda) for fam in HW.families for cuda in HW.cuda]

# Independent facts the table must agree with (NVIDIA's CUDA GPUs list and CUDA release
# notes; EC2 instance pages). A typo in _hardware.yaml fails here, not on an instance.
GPU_CC = {"NVIDIA V100": "7.0", "NVIDIA T4": "7.5", "NVIDIA A10G": "8.6", "NVIDIA L4": "8.9",
          "NVIDIA L40S": "8.9", "NVIDIA A100": "8.0", "NVIDIA H100": "9.0"}
FAMILY_GPU = {"p3": "NVIDIA V100", "g4dn": "NVIDIA T4", "g5": "NVIDIA A10G", "g6": "NVIDIA L4",
              "g6e": "NVIDIA L40S", "p4d": "NVIDIA A100", "p5": "NVIDIA H100"}
MIN_CC_BY_MAJOR = {"11": "3.5", "12": "5.0", "13": "7.5"}
# "CUDA X.Y GA" rows of NVIDIA's "CUDA Toolkit and Corresponding Driver Versions" table.
GA_DRIVER = {"11.2": "460.27.03", "11.8": "520.61.05", "12.1": "530.30.02", "12.3": "545.23.06",
             "12.4": "550.54.14", "12.5": "555.42.02", "12.6": "560.28.03", "12.8": "570.26",
             "13.0": "580.65.06"}
# Newest sm_XY each release's nvcc compiles (sm_86 in 11.1, sm_90 in 11.8, sm_120 in 12.8,
# sm_121 in 12.9).
MAX_CC = {"11.2": "8.6", "11.8": "9.0", "12.1": "9.0", "12.3": "9.0", "12.4": "9.0", "12.5": "9.0",
          "12.6": "9.0", "12.8": "12.0", "13.0": "12.1"}


@pytest.mark.parametrize("family", sorted(FAMILY_GPU))
def test_the_issue_families_are_in_the_table_with_their_gpu(family):
    assert HW.families[family].gpu == FAMILY_GPU[family]


@pytest.mark.parametrize("family", sorted(HW.families))
def test_each_family_has_its_gpus_compute_capability(family):
    fam = HW.families[family]
    assert fam.compute_capability == GPU_CC[fam.gpu]
    assert all(t.startswith(family + ".") and n >= 1 for t, n in fam.sizes.items())


@pytest.mark.parametrize("cuda", sorted(c for c in HW.cuda if c != "none"))
def test_each_cuda_release_has_its_minimum_gpu_and_driver(cuda):
    rel = HW.cuda[cuda]
    assert rel.full.startswith(cuda + ".")
    assert rel.min_compute_capability == MIN_CC_BY_MAJOR[cuda.split(".")[0]]
    assert rel.min_driver == GA_DRIVER[cuda]
    assert rel.max_compute_capability == MAX_CC[cuda]


@pytest.mark.parametrize(("family", "cuda"), ROWS)
def test_runs_agrees_with_compute_capabilities(family, cuda):
    fam = HW.families[family]
    need = tuple(int(x) for x in HW.cuda[cuda].min_compute_capability.split("."))
    have = tuple(int(x) for x in fam.compute_capability.split("."))
    expected = have >= need
    for size in fam.sizes:
        assert HW.runs(size, cuda) is expected, size
    assert (family in HW.families_for(cuda)) is expected


def test_cuda_13_never_runs_on_volta_and_12_8_still_does():
    assert not HW.runs("p3.2xlarge", "13.0") and not HW.runs("p3dn.24xlarge", "13.0")
    assert HW.runs("p3.2xlarge", "12.8")
    assert HW.families_for("13.0") == ["g4dn", "g5", "g6", "g6e", "p4d", "p5"]


# ---- TORCH_CUDA_ARCH_LIST coverage ------------------------------------------------------

@pytest.mark.parametrize(("entry", "gpu", "runs"), [
    ("7.0", (7, 0), True),        # exact
    ("7.0", (7, 5), True),        # cubins run on later minors of the same major
    ("7.5", (7, 0), False),       # never on an earlier minor
    ("8.0", (8, 6), True),
    ("8.0", (8, 9), True),
    ("8.6", (8, 0), False),
    ("8.9", (9, 0), False),       # never across majors
    ("8.9+PTX", (9, 0), True),    # PTX is JIT-compiled for any newer GPU
    ("7.0+PTX", (8, 9), True),
    ("9.0+PTX", (8, 9), False),   # but never for an older one
])
def test_arch_entry_covers(entry, gpu, runs):
    (arch,) = parse_arch_list(entry)
    assert arch.covers(gpu) is runs


def test_parse_arch_list_accepts_spaces_and_semicolons():
    assert parse_arch_list(" 7.5;8.0  8.6+PTX ") == [Arch((7, 5)), Arch((8, 0)), Arch((8, 6), True)]
    assert covered(parse_arch_list("7.5 8.6+PTX"), (9, 0))


@pytest.mark.parametrize("bad", ["sm_80", "8", "8.6+ptx", "Ampere"])
def test_parse_arch_list_refuses_what_it_cannot_read(bad):
    with pytest.raises(BadRequest) as e:
        parse_arch_list(f"7.5 {bad}")
    assert bad in e.value.message and "8.6+PTX" in e.value.message


# ---- load-time checks ------------------------------------------------------------------

@pytest.fixture
def catalog_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "buildspecs", tmp_path / "buildspecs")
    shutil.copytree(ROOT / "dockerfiles", tmp_path / "dockerfiles")
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_buildspec_default_on_a_cuda_p3_cannot_run_fails_to_load(catalog_copy):
    spec = catalog_copy / "buildspecs" / "pytorch.yaml"
    _edit(spec, 'defaults: {version: "2.14.1", cuda: "12.6", python: "3.12"}',
          'defaults: {version: "2.14.1", cuda: "13.0", python: "3.12"}')
    with pytest.raises(CatalogError, match=r"defaults\.cuda: CUDA 13\.0 cannot run .*p3\.2xlarge.*NVIDIA V100"):
        load_catalog(catalog_copy)


def test_a_combination_no_default_instance_type_runs_fails_to_load(catalog_copy):
    spec = catalog_copy / "buildspecs" / "pytorch.yaml"
    _edit(spec, "instance_types: [p3.2xlarge, g5.xlarge, g4dn.xlarge, g6.xlarge]",
          "instance_types: [p3.2xlarge, p3.8xlarge]")
    with pytest.raises(CatalogError, match=r"versions\.2\.14\.1\.cuda: CUDA 13\.0 runs on none .*g4dn, g5"):
        load_catalog(catalog_copy)


def test_a_size_filed_under_the_wrong_family_fails_to_load(catalog_copy):
    hw = catalog_copy / "buildspecs" / "_hardware.yaml"
    _edit(hw, "sizes: {p3dn.24xlarge: 8}", "sizes: {p3dn.24xlarge: 8, p3.24xlarge: 8}")
    with pytest.raises(CatalogError, match=r"families\.p3dn.*p3\.24xlarge"):
        load_catalog(catalog_copy)


def test_a_cuda_release_whose_max_is_below_its_min_fails_to_load(catalog_copy):
    hw = catalog_copy / "buildspecs" / "_hardware.yaml"
    _edit(hw, 'min_compute_capability: "7.5", max_compute_capability: "12.1"',
          'min_compute_capability: "7.5", max_compute_capability: "7.0"')
    with pytest.raises(CatalogError, match=r"cuda\.13\.0.*max_compute_capability 7\.0 is below"):
        load_catalog(catalog_copy)
