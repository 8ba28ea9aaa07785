"""What render() puts into a split build's stage scripts (issue 23), render-only and fast.

test_hostscript_split.py runs these scripts for real; this file pins what a run there does
not show on its own: the stage variables the script reads, the refusals (and the message an
operator sees) of a stage the launcher asked for wrongly, which parts of the template a stage
carries, and that a whole build stays as it was. Each test fails on a small change to
chalicelib/launching/hostscript.py (mutation testing, see the README's testing section).
"""

from __future__ import annotations

import pytest
from hostrun import CFG, TOKEN, readonly_values, record_for

from chalicelib.builds.records import BuildRecord
from chalicelib.launching import hostscript
from chalicelib.launching.hostscript import RenderError, candidate_tag, render
from chalicelib.specs.catalog import load_catalog

DIGEST = "sha256:" + "ab" * 32
CPU_TYPE = "c7i.8xlarge"
BUCKET_URL = "https://contexts.example.test/catalog/sha256/" + "cd" * 32 + "?X-Amz-Signature=" + "f" * 64


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _render(catalog, role: str, *, rec: dict | None = None, **kw) -> str:
    stored = BuildRecord.of(rec or record_for(catalog, "canary"))
    if role != "all":
        kw.setdefault("candidate", candidate_tag(stored.id, stored.attempt))
    if role == "test":
        kw.setdefault("candidate_digest", DIGEST)
    if role == "build":
        kw.setdefault("instance_type", CPU_TYPE)
    return render(stored, catalog, CFG, token=TOKEN, build_date="2026-11-28T15:00:00Z", stage_role=role, **kw)


def _stages_part() -> str:
    lines = hostscript.STAGES_TEMPLATE.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#")) + "\n"


def _sources_part() -> str:
    lines = hostscript.SOURCES_TEMPLATE.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#")) + "\n"


# ---- the stage variables ------------------------------------------------------------------

def test_a_whole_build_by_default_has_no_candidate_and_no_stage_part(catalog):
    rec = BuildRecord.of(record_for(catalog, "canary"))
    script = render(rec, catalog, CFG, token=TOKEN, build_date="2026-11-28T15:00:00Z")
    v = readonly_values(script)
    assert (v["STAGE_ROLE"], v["CANDIDATE_TAG"], v["CANDIDATE_DIGEST"]) == ("all", "", "")
    assert "pull_candidate()" not in script and "promote()" not in script
    assert "@@STAGES@@" not in script


def test_the_build_stage_runs_on_a_cpu_type_with_no_driver_and_carries_the_candidate_tag(catalog):
    script = _render(catalog, "build")
    v = readonly_values(script)
    assert v["STAGE_ROLE"] == "build"
    assert v["CANDIDATE_TAG"] == f"candidate-{record_for(catalog)['id']}-1"
    assert v["CANDIDATE_DIGEST"] == ""
    assert (v["INSTANCE_TYPE"], v["DRIVER_BRANCH"]) == (CPU_TYPE, "")
    # it builds: the canary's context travels inside, as in a whole build
    assert v["CONTEXT_B64"] and v["CONTEXT_B64"] == readonly_values(_render(catalog, "all"))["CONTEXT_B64"]
    assert _stages_part() in script and "@@STAGES@@" not in script


def test_the_test_stage_carries_the_candidate_digest_its_gpu_driver_and_no_context(catalog):
    script = _render(catalog, "test", instance_type="g5.xlarge")
    v = readonly_values(script)
    assert (v["STAGE_ROLE"], v["CANDIDATE_DIGEST"]) == ("test", DIGEST)
    assert v["CANDIDATE_TAG"] == f"candidate-{record_for(catalog)['id']}-1"
    hw = catalog.hardware
    assert (v["INSTANCE_TYPE"], v["DRIVER_BRANCH"]) == ("g5.xlarge", hw.ami_of("g5.xlarge").driver_branch)
    # it builds nothing: no context, and no part that would fetch one, even when one was offered
    assert v["CONTEXT_B64"] == ""
    with_url = _render(catalog, "test", instance_type="g5.xlarge", context_url=BUCKET_URL, context_sha256=DIGEST)
    assert readonly_values(with_url)["CONTEXT_B64"] == ""
    assert _sources_part() not in with_url and "fetch_context()" not in with_url
    assert _stages_part() in script


def test_a_stage_carries_its_own_attempt_not_the_builds(catalog):
    rec = record_for(catalog, "canary", attempt=2)
    assert readonly_values(_render(catalog, "build", rec=rec))["ATTEMPT"] == "2"
    assert readonly_values(_render(catalog, "build", rec=rec, attempt=1, candidate=candidate_tag(rec["id"], 1)))["ATTEMPT"] \
        == "1"
    assert readonly_values(_render(catalog, "test", rec=rec, attempt=3))["ATTEMPT"] == "3"


def test_a_build_stage_fetching_a_catalog_context_carries_the_source_part(catalog):
    # the build stage of a locked framework downloads its context like a whole build does
    script = _render(catalog, "build", rec=record_for(catalog, "pytorch"), context_url=BUCKET_URL,
                     context_sha256=DIGEST, context_max_bytes=10**7)
    v = readonly_values(script)
    assert (v["CONTEXT_URL"], v["CONTEXT_SHA256"], v["CONTEXT_B64"]) == (BUCKET_URL, DIGEST, "")
    assert _sources_part() in script and _stages_part() in script


# ---- refusals: a stage the launcher asked for wrongly -------------------------------------

def test_an_unknown_stage_role_is_refused_naming_the_roles(catalog):
    with pytest.raises(RenderError) as e:
        _render(catalog, "deploy", candidate="candidate-x")
    assert str(e.value) == "stage role: 'deploy' is not one of all, build, test"


@pytest.mark.parametrize("role", ["build", "test"])
@pytest.mark.parametrize("candidate", ["", "latest", "candidate-", "candidate-x;reboot", "candidate-" + "a" * 101])
def test_a_stage_without_a_candidate_tag_is_refused_naming_it(catalog, role, candidate):
    with pytest.raises(RenderError) as e:
        _render(catalog, role, candidate=candidate)
    assert str(e.value) == (f"candidate tag: {candidate!r} cannot go into the host script "
                            r"(must match ^candidate-[A-Za-z0-9_.-]{1,100}$)")


def test_a_candidate_tag_may_use_every_character_of_a_docker_tag_up_to_100_after_the_prefix(catalog):
    for candidate in ("candidate-B-0123_x.y-1", "candidate-" + "Z" * 100):
        assert readonly_values(_render(catalog, "build", candidate=candidate))["CANDIDATE_TAG"] == candidate


@pytest.mark.parametrize("digest", ["", "sha256:x", "sha256:" + "AB" * 32, "sha512:" + "ab" * 32])
def test_a_test_stage_without_the_candidate_digest_is_refused_naming_it(catalog, digest):
    with pytest.raises(RenderError) as e:
        _render(catalog, "test", candidate_digest=digest)
    assert str(e.value) == (f"candidate digest: {digest!r} cannot go into the host script "
                            f"(must match {hostscript.DIGEST.pattern})")


def test_a_build_stage_needs_an_ec2_instance_type_name(catalog):
    with pytest.raises(RenderError) as e:
        _render(catalog, "build", instance_type="C7I 8XL")
    assert str(e.value) == ("instance type: 'C7I 8XL' cannot go into the host script "
                            f"(must match {hostscript._INSTANCE_TYPE.pattern})")


@pytest.mark.parametrize("itype", [CPU_TYPE, "g5.3xlarge"])
def test_the_test_stage_refuses_a_type_not_in_the_hardware_table(catalog, itype):
    # a CPU type, or a GPU family's size that does not exist
    with pytest.raises(RenderError) as e:
        _render(catalog, "test", instance_type=itype)
    assert str(e.value) == f"instance type {itype!r}: not in the hardware table, or no AMI boots it"


# ---- the stage part of the template ----------------------------------------------------------

def test_the_stage_part_loses_its_comments_indented_ones_too(catalog, tmp_path, monkeypatch):
    part = tmp_path / "stages.sh"
    part.write_text("# shellcheck shell=bash\npromote() {\n  # why this step\n  true\n}\nlast_line\n")
    monkeypatch.setattr(hostscript, "STAGES_TEMPLATE", part)
    script = _render(catalog, "build")
    assert "\npromote() {\n  true\n}\nlast_line\n" in script
    assert "# why this step" not in script and "# shellcheck shell=bash\npromote" not in script
