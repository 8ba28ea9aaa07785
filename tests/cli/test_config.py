"""Where the CLI finds the API: flags > environment > config file > the local stack's local.env."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from voltabuild_cli.config import ConfigError, resolve


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def project(tmp_path):
    """A checkout with a running local stack, the user in a subdirectory of it."""
    root = tmp_path / "checkout"
    write(root / ".voltabuild" / "local.env",
          "# written by `make up`\nVOLTABUILD_API_URL=http://127.0.0.1:8001/\nexport VOLTABUILD_API_KEY='local-key'\n"
          "VOLTABUILD_REGISTRY=127.0.0.1:5001\n")
    sub = root / "dockerfiles" / "pytorch"
    sub.mkdir(parents=True)
    return sub


def test_local_env_is_found_in_a_parent_when_nothing_else_is_set(project, home):
    cfg = resolve(flags={}, env={}, cwd=project, home=home)
    assert cfg.api_url == "http://127.0.0.1:8001" and cfg.api_key == "local-key"
    assert cfg.sources["api_url"].endswith(".voltabuild/local.env")


def test_config_file_beats_local_env_and_is_never_mixed_with_it(project, home):
    write(home / ".config" / "voltabuild" / "config.toml", 'api_url = "https://prod.example/api"\n')
    cfg = resolve(flags={}, env={}, cwd=project, home=home)
    assert cfg.api_url == "https://prod.example/api"
    assert cfg.api_key is None  # the local stack's key is not sent to another API


def test_each_setting_comes_from_its_own_first_source(project, home):
    # GIVEN the local stack's file, WHEN only the key is given on the command line
    cfg = resolve(flags={"api_key": "flag-key"}, env={}, cwd=project, home=home)
    # THEN the key is the flag's and the URL is still the local stack's
    assert (cfg.api_url, cfg.api_key) == ("http://127.0.0.1:8001", "flag-key")
    assert cfg.sources["api_key"] == "--api-key" and cfg.sources["api_url"].endswith(".voltabuild/local.env")
    # and the same with the key from the environment
    cfg = resolve(flags={}, env={"VOLTABUILD_API_KEY": "env-key"}, cwd=project, home=home)
    assert (cfg.api_url, cfg.api_key) == ("http://127.0.0.1:8001", "env-key")


def test_the_local_key_never_goes_to_a_url_from_elsewhere(project, home):
    cfg = resolve(flags={}, env={"VOLTABUILD_API_URL": "https://prod.example/api"}, cwd=project, home=home)
    assert cfg.api_url == "https://prod.example/api" and cfg.api_key is None


def test_environment_beats_config_file(project, home):
    write(home / ".config" / "voltabuild" / "config.toml", 'api_url = "https://file/api"\napi_key = "file-key"\n')
    cfg = resolve(flags={}, env={"VOLTABUILD_API_URL": "https://env/api"}, cwd=project, home=home)
    assert (cfg.api_url, cfg.api_key) == ("https://env/api", "file-key")
    assert cfg.sources == {"api_url": "VOLTABUILD_API_URL", "api_key": str(home / ".config/voltabuild/config.toml")}


def test_flags_beat_everything(project, home):
    env = {"VOLTABUILD_API_URL": "https://env/api", "VOLTABUILD_API_KEY": "env-key"}
    cfg = resolve(flags={"api_url": "https://flag/api", "api_key": None}, env=env, cwd=project, home=home)
    assert (cfg.api_url, cfg.api_key) == ("https://flag/api", "env-key")
    assert cfg.sources["api_url"] == "--api-url"


def test_voltabuild_config_and_xdg_config_home_choose_the_file(tmp_path, home):
    named = write(tmp_path / "team.toml", 'api_url = "https://team/api"\n')
    assert resolve(flags={}, env={"VOLTABUILD_CONFIG": str(named)}, cwd=tmp_path, home=home).api_url == "https://team/api"
    write(tmp_path / "xdg" / "voltabuild" / "config.toml", 'api_url = "https://xdg/api"\n')
    cfg = resolve(flags={}, env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")}, cwd=tmp_path, home=home)
    assert cfg.api_url == "https://xdg/api"


@pytest.mark.parametrize("text, message", [
    ("api_url = ", "not valid TOML"),
    ('api_url = "x"\nregion = "eu"\n', "unknown setting(s) region; allowed: api_url, api_key"),
    ("api_key = 42\n", "api_key must be a string"),
])
def test_a_broken_config_file_is_named(tmp_path, home, text, message):
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as e:
        resolve(flags={}, env={"VOLTABUILD_CONFIG": str(path)}, cwd=tmp_path, home=home)
    assert str(path) in str(e.value) and message in str(e.value)


def test_a_missing_named_config_file_is_an_error(tmp_path, home):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(flags={}, env={"VOLTABUILD_CONFIG": str(tmp_path / "nope.toml")}, cwd=tmp_path, home=home)


# ---- through the CLI, against the live API -------------------------------------------
def test_cli_uses_the_local_stacks_file_with_nothing_set(cli, live_api, tmp_path):
    write(tmp_path / ".voltabuild" / "local.env",
          f"VOLTABUILD_API_URL={live_api.url}\nVOLTABUILD_API_KEY={live_api.api_key}\n")
    r = cli("list", "--limit", "1", "--json", url="", key="")
    assert r.exit_code == 0, r.stderr
    assert set(json.loads(r.stdout)) == {"builds", "next"}
    shown = json.loads(cli("config", "--json", url="", key="").stdout)
    assert shown["api_url"] == live_api.url and shown["sources"]["api_key"].endswith("local.env")
    assert live_api.api_key not in json.dumps(shown)  # the key is masked


def test_cli_api_key_flag_keeps_the_local_stacks_url(cli, live_api, tmp_path):
    # GIVEN `make up` wrote the local stack's file (its key is stale here: a restarted stack)
    write(tmp_path / ".voltabuild" / "local.env", f"VOLTABUILD_API_URL={live_api.url}\nVOLTABUILD_API_KEY=stale\n")
    # WHEN only the key is given, as a flag
    r = cli("--api-key", live_api.api_key, "list", "--limit", "1", "--json", url="", key="")
    # THEN the URL still comes from the local stack's file and the flag's key is used
    assert r.exit_code == 0, r.stderr
    assert set(json.loads(r.stdout)) == {"builds", "next"}


def test_cli_config_file_key_is_used(cli, live_api, tmp_path):
    cfg = write(tmp_path / "cfg.toml", f'api_url = "{live_api.url}"\napi_key = "{live_api.api_key}"\n')
    r = cli("frameworks", "--json", url="", key="", env={"VOLTABUILD_CONFIG": str(cfg)})
    assert r.exit_code == 0, r.stderr
    bad = write(tmp_path / "bad.toml", f'api_url = "{live_api.url}"\napi_key = "wrong"\n')
    r = cli("frameworks", url="", key="", env={"VOLTABUILD_CONFIG": str(bad)})
    assert r.exit_code == 4 and str(bad) in r.stderr  # says where the refused key came from


def test_cli_broken_config_is_a_usage_error(cli, tmp_path):
    bad = write(tmp_path / "bad.toml", "api_url = [\n")
    r = cli("list", url="", key="", env={"VOLTABUILD_CONFIG": str(bad)})
    assert r.exit_code == 2 and "not valid TOML" in r.stderr
