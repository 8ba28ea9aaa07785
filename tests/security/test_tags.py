"""Item 3 of issue 17: tags the catalog gives belong to the builds that produce them; a
variant build wears tags of its own; the repositories' tag mutability is set in the template."""

from __future__ import annotations

import json

import pytest

from chalicelib.specs.catalog import load_catalog

CATALOG = load_catalog()
PYTORCH = CATALOG.frameworks["pytorch"]
# the default build's canonical tag (the catalog's default version, CUDA and Python)
DEFAULT_TAG = PYTORCH.tags_for(PYTORCH.resolve(None, None, None), CATALOG.hardware)[0]


def submit(api, body):
    resp = api.http.post("/builds", headers={"Content-Type": "application/json"}, body=json.dumps(body))
    return resp.status_code, json.loads(resp.body)


@pytest.mark.parametrize("tag", [
    "latest",
    "buildcache", "buildcache-cu124", "buildcacheX",
    "2.5.1-cu124-py311",            # another version's canonical tag on a 2.4.1 build
    "9.9.9-cu999-py399",            # a canonical form of a version that does not exist yet
    "2.5.1-cu124-py311-v0123456789",  # a variant's form
])
def test_a_key_holder_cannot_take_a_reserved_tag(api, aws, tag):
    code, body = submit(api, {"framework": "pytorch", "version": "2.4.1", "tags": [tag]})
    assert code == 400 and "reserved" in body["Message"] and "tags" in body["Message"]
    assert aws.messages() == [], "nothing launched"


def test_own_canonical_tags_and_free_names_are_fine(api, aws):
    code, body = submit(api, {"framework": "pytorch", "tags": [DEFAULT_TAG, "team-a", "exp.7"]})
    assert code == 202, body
    assert body["image"]["tags"] == [DEFAULT_TAG, "latest", "team-a", "exp.7"]


@pytest.mark.parametrize("args", [
    {"BUILD_MODE": "source", "TORCH_CUDA_ARCH_LIST": "7.0+PTX 8.0 8.6 8.9 9.0"},
    {"INSTALL_DEVTOOLS": "1"},
    {"INSTALL_EXAMPLES": "1"},
])
def test_a_variant_build_gets_suffixed_tags_and_no_latest(api, aws, args):
    code, body = submit(api, {"framework": "pytorch", "build_args": args})
    assert code == 202, body
    (tag,) = body["image"]["tags"]
    assert tag.startswith(f"{DEFAULT_TAG}-v") and len(tag) == len(f"{DEFAULT_TAG}-v") + 10
    # the same variant always gets the same suffix; another variant another one
    assert PYTORCH.variant_suffix({**PYTORCH.check_build_args(args)}) == tag[len(DEFAULT_TAG):]


def test_variant_suffixes_differ_per_variant_and_ignore_non_variant_args():
    a = PYTORCH.variant_suffix({"INSTALL_DEVTOOLS": "1"})
    b = PYTORCH.variant_suffix({"INSTALL_EXAMPLES": "1"})
    assert a and b and a != b
    assert PYTORCH.variant_suffix({"INSTALL_DEVTOOLS": "0"}) == ""       # the default value
    assert PYTORCH.variant_suffix({"MAX_JOBS": "4"}) == ""               # parallelism changes nothing built
    assert PYTORCH.variant_suffix({"INSTALL_DEVTOOLS": "1", "MAX_JOBS": "4"}) == a


def test_the_default_build_keeps_its_canonical_tags(api, aws):
    code, body = submit(api, {"framework": "pytorch", "build_args": {"MAX_JOBS": "4"}})
    assert code == 202 and body["image"]["tags"] == [DEFAULT_TAG, "latest"]


def test_every_repository_states_its_tag_mutability():
    # the documented choice (README, Security): tags stay mutable so a rebuild and `latest`
    # and the build cache can move; who may set which tag is checked by the API (above)
    from infra.local import load_template

    repos = {k: r for k, r in load_template()["Resources"].items() if r["Type"] == "AWS::ECR::Repository"}
    assert repos and all(r["Properties"]["ImageTagMutability"] == "MUTABLE" for r in repos.values())


# ---- stages that share the repositories ------------------------------------------------
def test_a_non_prod_stage_tags_everything_under_its_own_prefix(aws, monkeypatch):
    from chalicelib import wiring
    from chalicelib.builds.schemas import BuildRequest

    monkeypatch.setenv("IMAGE_TAG_PREFIX", "dev__")
    wiring.reset()
    build, _ = wiring.builds().submit(BuildRequest(framework="pytorch", tags=["nightly"]))
    assert build.image.tags == [f"dev__{DEFAULT_TAG}", "dev__latest", "dev__nightly"]


def test_no_request_may_send_a_tag_that_looks_like_another_stages(api, aws):
    code, body = submit(api, {"framework": "pytorch", "tags": [f"dev__{DEFAULT_TAG}"]})
    assert code == 400 and "'__'" in body["Message"]
    code, body = submit(api, {"framework": "canary", "tags": ["a__b"]})
    assert code == 400


def test_the_deployment_prefixes_every_stage_but_prod(templates):
    for stage in ("dev", "prod"):
        tpl = templates[stage]
        env = tpl["Globals"]["Function"]["Environment"]["Variables"]
        assert env["IMAGE_TAG_PREFIX"] == {"Fn::If": ["IsProd", "", {"Fn::Sub": "${Stage}__"}]}
        assert tpl["Conditions"]["IsProd"] == {"Fn::Equals": [{"Ref": "Stage"}, "prod"]}


@pytest.mark.parametrize("prefix", ["dev", "dev-", "DEV__", "d" * 20 + "__"])
def test_a_malformed_prefix_is_a_deployment_error(prefix):
    from chalicelib.settings import ConfigurationError, Settings

    with pytest.raises(ConfigurationError):
        Settings.from_env({"IMAGE_TAG_PREFIX": prefix})
    assert Settings.from_env({"IMAGE_TAG_PREFIX": "dev__"}).image_tag_prefix == "dev__"
