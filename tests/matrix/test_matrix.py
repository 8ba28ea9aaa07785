"""Build matrices (chalicelib/builds/matrix.py): GitHub Actions expansion, each cell planned by the
same code as a single build, refused cells listed with their reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chalicelib.api.http import status_of
from chalicelib.builds.builds import BuildService
from chalicelib.builds.matrix import MAX_CELLS, Matrix, MatrixRefused, MatrixRequest, combinations, expand
from chalicelib.builds.schemas import BuildRequest
from chalicelib.errors import BadRequest
from chalicelib.settings import Settings
from chalicelib.specs.catalog import load_catalog

CATALOG = load_catalog()
PLAN = BuildService(None, CATALOG, Settings(), None, None).plan  # plan() does no I/O


def cells(**m):
    return combinations(Matrix.model_validate(m))


def triples(expansion):
    return [(c.build.version, c.build.cuda, c.build.python) for c in expansion.cells]


def test_a_2x2_builds_four_cells_in_a_stable_order():
    # GIVEN two versions and two CUDA releases WHEN expanded THEN four builds, last axis fastest
    exp = expand(BuildRequest(framework="pytorch", python="3.11"),
                 Matrix(version=["2.5.1", "2.6.0"], cuda=["12.4", "11.8"]), PLAN)
    assert triples(exp) == [("2.5.1", "12.4", "3.11"), ("2.5.1", "11.8", "3.11"),
                            ("2.6.0", "12.4", "3.11"), ("2.6.0", "11.8", "3.11")]
    assert exp.skipped == []
    assert len({c.build.id for c in exp.cells}) == 4
    assert all(c.build.image.tags for c in exp.cells)


def test_exclude_removes_every_combination_it_matches_partially_or_whole():
    assert cells(version=["a", "b"], cuda=["1", "2"], exclude=[{"version": "a"}, {"version": "b", "cuda": "2"}]) == [
        {"version": "b", "cuda": "1"}]


def test_include_extends_matching_cells_and_adds_the_rest_as_new_cells():
    got = cells(version=["2.5.1", "2.6.0"], include=[{"version": "2.6.0", "cuda": "12.6"},
                                                     {"version": "2.4.1", "cuda": "12.1"}])
    assert got == [{"version": "2.5.1"}, {"version": "2.6.0", "cuda": "12.6"}, {"version": "2.4.1", "cuda": "12.1"}]


def test_include_never_overwrites_an_axis_value_but_may_overwrite_an_added_one():
    got = cells(version=["a"], include=[{"cuda": "1"}, {"cuda": "2"}, {"version": "b", "python": "3"}])
    assert got == [{"version": "a", "cuda": "2"}, {"version": "b", "python": "3"}]


def test_includes_run_after_excludes_and_a_matrix_of_only_includes_is_its_include_list():
    assert cells(version=["a"], exclude=[{"version": "a"}], include=[{"version": "a"}]) == [{"version": "a"}]
    assert cells(include=[{"version": "a"}, {"version": "b"}]) == [{"version": "a"}, {"version": "b"}]


def test_duplicates_are_removed_also_when_defaults_make_two_cells_one_build():
    assert cells(version=["a", "a"], cuda=["1"]) == [{"version": "a", "cuda": "1"}]
    # 2.6.0 alone takes its first CUDA (12.6) and Python (3.11): the same build as the explicit cell
    exp = expand(BuildRequest(framework="pytorch"), Matrix(version=["2.6.0"], include=[
        {"version": "2.4.1", "cuda": "12.4"}, {"version": "2.6.0", "cuda": "12.6", "python": "3.11"}]), PLAN)
    assert triples(exp) == [("2.6.0", "12.6", "3.11"), ("2.4.1", "12.4", "3.11")]


def test_an_invalid_cell_makes_the_request_a_400_listing_it_and_why():
    m = Matrix(version=["2.5.1", "2.6.0"], cuda=["12.1", "12.4"])
    with pytest.raises(MatrixRefused) as e:
        expand(BuildRequest(framework="pytorch"), m, PLAN)
    assert status_of(e.value) == 400
    assert [r.values for r in e.value.refused] == [{"version": "2.6.0", "cuda": "12.1"}]
    assert e.value.refused[0].field == "cuda"
    assert "1 of 4 cells refused: {version: 2.6.0, cuda: 12.1}: cuda: pytorch 2.6.0 is built for CUDA" in e.value.message
    assert "skip_invalid" in e.value.message


def test_skip_invalid_builds_the_rest_and_lists_what_was_skipped():
    m = Matrix(version=["2.5.1", "2.6.0"], cuda=["12.1", "12.4"])
    exp = expand(BuildRequest(framework="pytorch"), m, PLAN, skip_invalid=True)
    assert triples(exp) == [("2.5.1", "12.1", "3.11"), ("2.5.1", "12.4", "3.11"), ("2.6.0", "12.4", "3.11")]
    assert [s.describe().split(":")[0] for s in exp.skipped] == ["{version"]
    assert exp.skipped[0].values == {"version": "2.6.0", "cuda": "12.1"}


def test_the_gpu_table_refuses_cells_too_and_skip_invalid_cannot_leave_nothing():
    # CUDA 13 dropped Volta: a P3-only request cannot build any 13.0 cell
    base = BuildRequest(framework="pytorch", version="2.14.1", instance_types=["p3.2xlarge"])
    with pytest.raises(MatrixRefused, match="every cell was refused") as e:
        expand(base, Matrix(cuda=["13.0"]), PLAN, skip_invalid=True)
    assert e.value.refused[0].field == "instance_types"
    exp = expand(base, Matrix(cuda=["12.6", "13.0"]), PLAN, skip_invalid=True)
    assert triples(exp) == [("2.14.1", "12.6", "3.12")] and len(exp.skipped) == 1


def test_too_many_cells_is_a_400_before_anything_is_planned():
    calls = []
    m = Matrix(version=[f"v{i}" for i in range(MAX_CELLS)], python=["3.11", "3.12"])
    with pytest.raises(BadRequest, match=f"64 cells; at most {MAX_CELLS}"):
        expand(BuildRequest(framework="pytorch"), m, lambda r: calls.append(r))
    assert calls == []


def test_the_request_body_refuses_an_empty_matrix_unknown_axes_and_an_axis_given_twice():
    ok = MatrixRequest.model_validate({"framework": "pytorch", "matrix": {"version": ["2.5.1"]}, "python": "3.12"})
    assert ok.base() == BuildRequest(framework="pytorch", python="3.12")
    for body, text in [({"matrix": {}}, "at least one of version"),
                       ({"matrix": {"os": ["x"]}}, "Extra inputs"),
                       ({"matrix": {"version": ["a"], "include": [{"gpu": "x"}]}}, "version"),
                       ({"matrix": {"version": []}}, "at least 1"),
                       ({"matrix": {"cuda": ["12.4"]}, "cuda": "12.4"}, "given both outside and inside")]:
        with pytest.raises(ValidationError, match=text):
            MatrixRequest.model_validate({"framework": "pytorch", **body})


# ---- build-arg axes (issue 22) -----------------------------------------------------------
def test_build_args_are_axes_and_each_cell_is_an_image_of_its_own(api, aws):
    import json

    body = {"framework": "canary", "matrix": {"build_args": {"CANARY_GREETING": ["hello", "hi"],
                                                             "CANARY_FLAVOUR": ["plain", "spicy"]}}}
    resp = api.http.post("/builds", headers={"Content-Type": "application/json"}, body=json.dumps(body))
    assert resp.status_code == 202, resp.body
    group = json.loads(resp.body)
    assert [c["values"] for c in group["cells"]] == [
        {"CANARY_GREETING": g, "CANARY_FLAVOUR": f} for g in ("hello", "hi") for f in ("plain", "spicy")]
    builds = [json.loads(api.http.get(f"/builds/{c['id']}").body) for c in group["cells"]]
    for b, c in zip(builds, group["cells"], strict=True):  # each cell builds with its own values
        assert all(b["build_args"][k] == v for k, v in c["values"].items()), (b["build_args"], c["values"])
    firsts = [b["image"]["tags"][0] for b in builds]
    assert len(set(firsts)) == 4  # four images, none overwriting another's tags


def test_a_build_arg_axis_that_makes_no_variant_is_refused_naming_the_cells(api, aws):
    import json

    body = {"framework": "canary", "matrix": {"build_args": {"CANARY_SLEEP": ["0", "5"]}}}
    resp = api.http.post("/builds", headers={"Content-Type": "application/json"}, body=json.dumps(body))
    assert resp.status_code == 400
    msg = json.loads(resp.body)["Message"]
    assert "{CANARY_SLEEP: 5}" in msg and "same tags" in msg and "{CANARY_SLEEP: 0}" in msg
    bad = {"framework": "canary", "matrix": {"build_args": {"NOT_AN_ARG": ["1", "2"]}}}
    resp = api.http.post("/builds", headers={"Content-Type": "application/json"}, body=json.dumps(bad))
    assert resp.status_code == 400 and "NOT_AN_ARG" in json.loads(resp.body)["Message"]
    twice = {"framework": "canary", "build_args": {"CANARY_GREETING": "x"},
             "matrix": {"build_args": {"CANARY_GREETING": ["a", "b"]}}}
    resp = api.http.post("/builds", headers={"Content-Type": "application/json"}, body=json.dumps(twice))
    assert resp.status_code == 400 and "build_args.CANARY_GREETING" in json.loads(resp.body)["Message"]
    assert [i for i in aws.items() if i.get("kind") == "build"] == []
