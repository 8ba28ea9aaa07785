"""`voltabuild` driven as a user would, against the real API over HTTP (chalice local on moto)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

BUILD_ID = re.compile(r"b-[0-9a-f]{20}")
COMMANDS = ["submit", "status", "list", "cancel", "logs", "wait", "frameworks", "config"]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens once the socket is closed


# ---- help -------------------------------------------------------------------------
def test_top_level_help_explains_exit_codes_config_and_examples(cli):
    r = cli("--help")
    assert r.exit_code == 0
    for text in ("Examples:", "voltabuild submit pytorch", "Exit codes:", "130", "VOLTABUILD_API_URL",
                 "~/.config/voltabuild/config.toml", ".voltabuild/local.env", "make up"):
        assert text in r.stdout, text
    for name in COMMANDS:
        assert name in r.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_has_an_example(cli, name):
    r = cli(name, "--help")
    assert r.exit_code == 0
    assert "Examples:" in r.stdout or name == "config"
    assert f"voltabuild {name}" in r.stdout or name == "config"
    assert "--json" in r.stdout


# ---- submit -----------------------------------------------------------------------
def test_submit_prints_the_build_and_how_to_follow_it(cli, builds):
    r = cli("submit", "canary")
    assert r.exit_code == 0, r.stderr
    build_id = BUILD_ID.search(r.stdout).group(0)
    builds.track(build_id)
    assert "QUEUED" in r.stdout and "canary 1.0" in r.stdout
    assert "voltabuild/canary:1.0" in r.stdout  # the image it will push
    assert f"voltabuild wait {build_id}" in r.stderr  # the hint goes to stderr, not into the data


def test_submit_json_carries_every_option_to_the_api(cli, builds, live_api):
    r = cli("submit", "canary", "--version", "1.0", "--tag", "nightly", "--tag", "team-a",
            "--build-arg", "CANARY_FAIL=1", "--instance-type", "g5.xlarge", "--max-price", "0.9",
            "--timeout", "20", "--no-notify", "--json")
    assert r.exit_code == 0, r.stderr
    build = json.loads(r.stdout)
    builds.track(build["id"])
    assert BUILD_ID.fullmatch(build["id"]) and build["status"] == "QUEUED"
    assert {"nightly", "team-a", "1.0"} <= set(build["image"]["tags"])
    assert build["build_args"]["CANARY_FAIL"] == "1"
    assert build["instance_types"] == ["g5.xlarge"]
    assert build["max_price"] == 0.9 and build["timeout_minutes"] == 20
    assert build["notify"]["slack"] is False
    # the record the API keeps is the one printed
    stored = requests.get(f"{live_api.url}/builds/{build['id']}", headers={"x-api-key": live_api.api_key}).json()
    assert stored["id"] == build["id"] and stored["image"] == build["image"]


@pytest.mark.parametrize("split,expected", [("on", True), ("off", False)])
def test_submit_split_asks_for_a_cpu_build_and_a_gpu_test(cli, builds, split, expected):
    # WHEN a user asks for the canary built on a CPU instance (or explicitly not)
    r = cli("submit", "canary", "--split", split, "--no-notify", "--json")
    assert r.exit_code == 0, r.stderr
    build = json.loads(r.stdout)
    builds.track(build["id"])
    # THEN the build the API accepted is split (or not) as asked
    assert build["split"] is expected


def test_submit_split_takes_only_on_off_or_auto(cli):
    r = cli("submit", "canary", "--split", "yes")
    assert r.exit_code == 2 and "'yes' is not one of 'on', 'off', 'auto'" in r.stderr


def test_submit_unknown_framework_is_a_usage_error_with_the_apis_message(cli):
    r = cli("submit", "caffe")
    assert r.exit_code == 2
    assert r.stdout == ""
    assert "unknown framework 'caffe'" in r.stderr and "canary" in r.stderr  # names what is allowed
    assert "Traceback" not in r.stderr


def test_submit_bad_combination_names_the_field(cli):
    r = cli("submit", "canary", "--version", "9.9")
    assert r.exit_code == 2
    assert "version" in r.stderr and "1.0" in r.stderr


def test_submit_malformed_build_arg_is_refused_before_any_request(cli):
    r = cli("submit", "canary", "--build-arg", "CANARY_FAIL", url=closed_port_url())
    assert r.exit_code == 2
    assert "KEY=VALUE" in r.stderr


def test_same_idempotency_key_gives_the_same_build(cli, builds):
    first = cli("submit", "canary", "--idempotency-key", "ci-run-42", "--json")
    again = cli("submit", "canary", "--idempotency-key", "ci-run-42", "--json")
    assert first.exit_code == again.exit_code == 0
    builds.track(json.loads(first.stdout)["id"])
    assert json.loads(first.stdout)["id"] == json.loads(again.stdout)["id"]
    assert "already made build" in again.stderr


class LoseFirstResponse(requests.Session):
    """Sends every request, but the first POST's answer is 'lost' on the way back: the
    build is made, the client sees a dropped connection and retries."""

    posts: list[dict] = []

    def request(self, method, url, **kw):
        resp = super().request(method, url, **kw)
        if method == "POST":
            LoseFirstResponse.posts.append(dict(kw.get("headers") or {}))
            if len(LoseFirstResponse.posts) == 1:
                raise requests.ConnectionError("Connection reset by peer")
        return resp


def test_a_retried_submit_never_makes_two_builds(cli, builds, live_api):
    LoseFirstResponse.posts = []
    tag = "retry-" + uuid.uuid4().hex[:12]
    r = cli("submit", "canary", "--tag", tag, "--json", session_factory=LoseFirstResponse)
    assert r.exit_code == 0, r.stderr
    build = json.loads(r.stdout)
    builds.track(build["id"])
    keys = {h["Idempotency-Key"] for h in LoseFirstResponse.posts}
    assert len(LoseFirstResponse.posts) == 2 and len(keys) == 1  # retried with the same key
    listed = requests.get(f"{live_api.url}/builds", params={"framework": "canary", "limit": 100},
                          headers={"x-api-key": live_api.api_key}).json()["builds"]
    assert [b["id"] for b in listed if tag in b["image"]["tags"]] == [build["id"]]


# ---- status / list / cancel -------------------------------------------------------
def test_status_human_and_json(cli, builds):
    b = builds.submit()
    r = cli("status", b["id"])
    assert r.exit_code == 0
    assert b["id"] in r.stdout and "QUEUED" in r.stdout and "timeline" in r.stdout and "accepted" in r.stdout
    j = cli("status", b["id"], "--json")
    data = json.loads(j.stdout)
    assert data["id"] == b["id"] and data["status"] == "QUEUED" and isinstance(data["events"], list)


def test_status_of_unknown_build_is_a_usage_error(cli):
    r = cli("status", "b-00000000000000000000")
    assert r.exit_code == 2
    assert "no build with id 'b-00000000000000000000'" in r.stderr


def test_list_filters_pages_and_json_shape(cli, builds):
    a, b = builds.submit(), builds.submit()
    builds.move(a["id"], "CANCELLED")
    r = cli("list", "--status", "cancelled", "--framework", "canary", "--json")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert set(data) == {"builds", "next"}
    ids = [x["id"] for x in data["builds"]]
    assert a["id"] in ids and b["id"] not in ids
    assert {x["status"] for x in data["builds"]} == {"CANCELLED"}

    one = json.loads(cli("list", "--limit", "1", "--json").stdout)
    assert len(one["builds"]) == 1 and one["next"]  # there are more
    assert one["builds"][0]["id"] == b["id"]  # newest first

    table = cli("list", "--limit", "2")
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATUS", "PHASE"] and len(lines) == 3
    assert b["id"] in lines[1]


def test_list_rejects_an_unknown_status_locally(cli):
    r = cli("list", "--status", "DONE")
    assert r.exit_code == 2 and "queued" in r.stderr.lower() and "DONE" in r.stderr


def test_cancel_queued_then_again(cli, builds):
    b = builds.submit()
    r = cli("cancel", b["id"])
    assert r.exit_code == 0 and f"{b['id']}  CANCELLED" in r.stdout
    again = cli("cancel", b["id"], "--json")
    assert again.exit_code == 2
    assert "already finished as CANCELLED" in again.stderr


def test_cancel_running_build_is_requested(cli, builds):
    b = builds.submit()
    builds.move(b["id"], "LAUNCHING")
    builds.move(b["id"], "RUNNING", phase="BUILDING")
    r = cli("cancel", b["id"], "--json")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["status"] == "RUNNING" and data["cancel_requested"] is True
    human = cli("cancel", b["id"])
    assert "cancel requested" in human.stdout


# ---- frameworks -------------------------------------------------------------------
def test_frameworks_json_is_the_catalog(cli, live_api):
    r = cli("frameworks", "--json")
    assert r.exit_code == 0
    direct = requests.get(f"{live_api.url}/frameworks", headers={"x-api-key": live_api.api_key}).json()
    assert json.loads(r.stdout) == direct


def test_frameworks_shows_versions_defaults_and_gpu_families(cli, live_api):
    catalog = requests.get(f"{live_api.url}/frameworks", headers={"x-api-key": live_api.api_key}).json()
    r = cli("frameworks")
    assert r.exit_code == 0
    for fw in catalog["frameworks"]:
        assert fw["framework"] in r.stdout
        d = fw["defaults"]
        assert f"default    {d['version']}  CUDA {d['cuda']}  Python {d['python']}" in r.stdout
        if fw.get("deprecated"):
            assert fw["deprecated"] in r.stdout
    pytorch = next(f for f in catalog["frameworks"] if f["framework"] == "pytorch")
    v = pytorch["versions"][0]
    cuda = v["cuda"][0]
    one = cli("frameworks", "pytorch").stdout
    assert f"CUDA {cuda:<6} runs on {', '.join(v['instance_families'][cuda])}" in one
    assert "tensorflow" not in one.split("\n", 1)[1]
    # each version's age shows, the newest is marked, deprecated ones say why
    for v in pytorch["versions"]:
        assert v["released"], v
        line = next(x for x in one.splitlines() if x.strip().lstrip("*").startswith(v["version"] + " "))
        assert f"released {v['released']}" in line
        assert ("newest" in line) is v["newest"]
        if v["deprecated"]:
            assert "deprecated" in line and v["deprecated"] in one
    assert sum(v["newest"] for v in pytorch["versions"]) == 1


def test_frameworks_unknown_name(cli):
    r = cli("frameworks", "caffe")
    assert r.exit_code == 2 and "known frameworks" in r.stderr


# ---- auth, reachability, config ---------------------------------------------------
def test_wrong_key_is_auth_refused(cli):
    r = cli("list", key="not-the-key")
    assert r.exit_code == 4
    assert "authentication refused" in r.stderr and "VOLTABUILD_API_KEY" in r.stderr
    assert "Traceback" not in r.stderr


def test_api_down_exits_5_naming_the_url_and_the_fix(cli):
    url = closed_port_url()
    r = cli("list", url=url)
    assert r.exit_code == 5
    assert url in r.stderr and "make up" in r.stderr and "VOLTABUILD_API_URL" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.clock.sleeps == [0.5, 1.0, 2.0]  # retried with backoff, on the injected clock


def test_debug_shows_the_traceback(cli):
    r = cli("--debug", "list", url=closed_port_url())
    assert r.exit_code == 5 and "Traceback" in r.stderr


def test_no_url_anywhere_says_how_to_configure(cli):
    r = cli("list", url="", key="")
    assert r.exit_code == 2
    assert "make up" in r.stderr and "VOLTABUILD_API_URL" in r.stderr


def test_wrong_path_is_not_reported_as_auth(cli, live_api):
    r = cli("list", url=live_api.url + "/nope")
    assert r.exit_code == 5 and "has no route" in r.stderr


def test_installed_entry_point(live_api, tmp_path):
    exe = Path(sys.executable).with_name("voltabuild")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "VOLTABUILD_API_URL": live_api.url,
           "VOLTABUILD_API_KEY": live_api.api_key}
    p = subprocess.run([str(exe), "frameworks", "--json"], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "canary" in [f["framework"] for f in json.loads(p.stdout)["frameworks"]]
    bad = subprocess.run([str(exe), "status", "nope"], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and bad.stdout == "" and "no build with id" in bad.stderr

