"""TORCH_CUDA_ARCH_LIST at the edges: a release with no nvcc, and architectures exactly at
the lowest and highest compute capability a CUDA release's nvcc compiles."""

from __future__ import annotations

import pytest

from chalicelib.errors import BadRequest
from chalicelib.specs.catalog import load_catalog
from chalicelib.specs.gpu import check_arch_list


@pytest.fixture(scope="module")
def hw():
    return load_catalog().hardware


def test_a_source_build_without_a_cuda_toolkit_is_a_400_not_a_crash(hw):
    with pytest.raises(BadRequest, match="needs a CUDA toolkit"):
        check_arch_list(hw, "none", ["g5.xlarge"], "8.6")


def test_the_edges_of_a_release_are_inside_it_and_kept_in_the_suggestion(hw):
    release = hw.cuda["12.4"]
    lo, hi = (f"{a}.{b}" for a, b in (release.min_cc, release.max_cc))
    # GIVEN a list whose ends are exactly the release's lowest and highest architectures
    # THEN both ends are accepted as they are
    check_arch_list(hw, "12.4", ["p5.4xlarge"], f"{lo} {hi}")
    # WHEN one more entry lies past the highest  THEN only that one is refused, and the
    # suggested list keeps both ends
    with pytest.raises(BadRequest) as e:
        check_arch_list(hw, "12.4", ["p5.4xlarge"], f"{lo} {hi} 12.0")
    message = str(e.value)
    assert "12.0 is outside it" in message
    suggestion = message.split("TORCH_CUDA_ARCH_LIST=")[1].strip("'")
    assert suggestion.split() == [lo, hi]
