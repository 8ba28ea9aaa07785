"""Item 8 of issue 17: every malformed cursor is a 400, and no deployment signs cursors
with a guessable key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chalicelib import wiring
from chalicelib.api.cursor import CursorCodec
from chalicelib.builds.schemas import BuildRequest
from chalicelib.builds.store import LIST_INDEX_KEYS
from chalicelib.errors import BadRequest
from chalicelib.settings import ConfigurationError, Settings, check_cursor_key


def forge(key: bytes, payload: bytes) -> str:
    """A cursor signed with the deployment's own key (what an insider or a leaked key could make)."""
    sig = hmac.new(key, payload, hashlib.sha256).hexdigest()[:32]
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + sig


@pytest.fixture
def listed(api):
    svc = wiring.builds()
    for _ in range(3):
        svc.submit(BuildRequest(framework="canary"))
    resp = api.http.get("/builds?limit=1")
    assert resp.status_code == 200
    return json.loads(resp.body)["next"]


def status_of(api, cursor: str, query: str = "limit=1") -> tuple[int, str]:
    from urllib.parse import quote

    resp = api.http.get(f"/builds?{query}&next={quote(cursor, safe='')}")
    return resp.status_code, json.loads(resp.body).get("Message", "")


def test_a_real_cursor_still_pages(api, listed):
    code, _ = status_of(api, listed)
    assert code == 200


@pytest.mark.parametrize("mangle", [
    lambda c: c.split(".")[0] + "." + "é" * 32,          # non-ASCII signature (was a TypeError, a 500)
    lambda c: c.split(".")[0] + ".ÿ",
    lambda c: "ü" + c,                                       # non-ASCII body
    lambda c: c.split(".")[0],                               # no signature
    lambda c: c + "0",                                       # signature too long
    lambda c: "x" * 5000,                                    # absurdly long
    lambda c: ".",
])
def test_mangled_cursors_are_400(api, listed, mangle):
    code, message = status_of(api, mangle(listed))
    assert code == 400 and "not a cursor" in message


@pytest.mark.parametrize("payload", [
    {"i": "by-created", "k": {"id": 1, "kind": "build", "created_key": "x"}},      # non-string value
    {"i": "by-created", "k": {"id": None, "kind": "build", "created_key": "x"}},
    {"i": "by-created", "k": {"id": ["a"], "kind": "build", "created_key": "x"}},
    {"i": "by-created", "k": ["not", "a", "map"]},
    {"i": "by-created", "k": {"id": "b-1", "kind": "build"}},                        # a key attribute missing
    {"i": "by-created", "k": {"id": "b-1", "kind": "build", "created_key": "x", "extra": "y"}},
    {"i": ["by-created"], "k": {}},
    ["by-created"],
    "by-created",
])
def test_forged_cursors_with_the_right_key_but_wrong_shape_are_400(api, listed, payload):
    key = wiring.settings().cursor_key.encode()
    raw = json.dumps(payload).encode()
    code, message = status_of(api, forge(key, raw))
    assert code == 400 and "next:" in message


def test_a_signed_payload_that_is_not_json_or_utf8_is_400(api, listed):
    key = wiring.settings().cursor_key.encode()
    for raw in (b"\xff\xfe", b"{not json", b""):
        code, message = status_of(api, forge(key, raw))
        assert code == 400 and "not a cursor" in message, raw


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_is_a_400_never_an_exception(text):
    codec = CursorCodec(b"k" * 32, LIST_INDEX_KEYS)
    with pytest.raises(BadRequest):
        codec.decode(text, "by-created")


# ---- the key ------------------------------------------------------------------------
def test_settings_no_longer_default_to_a_guessable_key():
    assert Settings.from_env({}).cursor_key == ""
    assert Settings.from_env({"VOLTABUILD_STAGE": "prod"}).cursor_key == ""


@pytest.mark.parametrize("key", ["", "voltabuild-dev-cursor-key", "ab" * 15, "zz" * 32])
def test_a_missing_short_or_non_hex_key_is_refused(key):
    with pytest.raises(ConfigurationError, match="CURSOR_KEY"):
        check_cursor_key(key)


def test_the_app_refuses_to_serve_without_a_cursor_key(aws, monkeypatch):
    monkeypatch.delenv("CURSOR_KEY")
    wiring.reset()
    with pytest.raises(ConfigurationError):
        wiring.builds()


def test_the_local_environment_draws_a_random_key_each_time():
    from infra.local import stage_environment

    res = {"BuildsTable": "t", "LaunchQueue": "l", "NotifyQueue": "n"}
    a, b = stage_environment(res)["CURSOR_KEY"], stage_environment(res)["CURSOR_KEY"]
    assert a != b and check_cursor_key(a) and len(a) == 64


def test_the_template_demands_a_cursor_key_with_no_default():
    from infra.package import merge_template

    param = merge_template("dev")["Parameters"]["CursorKey"]
    assert "Default" not in param and param["MinLength"] >= 32 and param["NoEcho"] is True
    env = merge_template("dev")["Globals"]["Function"]["Environment"]["Variables"]
    assert env["CURSOR_KEY"] == {"Ref": "CursorKey"}
