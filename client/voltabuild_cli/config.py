"""Where the CLI finds the API: flags, environment, a config file, the local stack.

Precedence, for the API URL and the API key each:

1. ``--api-url`` / ``--api-key``
2. ``VOLTABUILD_API_URL`` / ``VOLTABUILD_API_KEY``
3. the config file: ``$VOLTABUILD_CONFIG``, else ``$XDG_CONFIG_HOME/voltabuild/config.toml``
   (``~/.config/voltabuild/config.toml``), with ``api_url = "..."`` and ``api_key = "..."``
4. the local stack's ``.voltabuild/local.env`` (written by ``make up``), looked for in the
   current directory and each parent.

Each setting comes from its own first source: ``voltabuild --api-key KEY status ID`` with
the local stack up takes the key from the flag and the URL from ``local.env``. One rule
on top: the local stack's key is only ever sent to the local stack's URL, so a URL from
anywhere else never gets it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_KEYS = ("api_url", "api_key")
ENV_NAMES = {"api_url": "VOLTABUILD_API_URL", "api_key": "VOLTABUILD_API_KEY"}
LOCAL_ENV = Path(".voltabuild") / "local.env"


class ConfigError(Exception):
    """The configuration is broken or missing; the message says what to do."""


@dataclass(frozen=True)
class Config:
    api_url: str | None
    api_key: str | None
    sources: dict[str, str] = field(default_factory=dict)  # setting -> where it came from

    def require_url(self) -> str:
        if not self.api_url:
            raise ConfigError(
                "no API URL configured. Start the local stack with `make up` (in a voltabuild "
                "checkout), or set VOLTABUILD_API_URL (or --api-url, or api_url in the config file)"
            )
        return self.api_url


def config_path(env: Mapping[str, str], home: Path) -> tuple[Path, bool]:
    """The config file to read and whether the user named it explicitly."""
    if env.get("VOLTABUILD_CONFIG"):
        return Path(env["VOLTABUILD_CONFIG"]).expanduser(), True
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    return base / "voltabuild" / "config.toml", False


def read_config_file(path: Path, explicit: bool) -> dict[str, str]:
    if not path.is_file():
        if explicit:
            raise ConfigError(f"VOLTABUILD_CONFIG names {path}, which does not exist")
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(CONFIG_KEYS)}")
    out = {}
    for key in CONFIG_KEYS:
        if key in data:
            if not isinstance(data[key], str):
                raise ConfigError(f"{path}: {key} must be a string")
            out[key] = data[key]
    return out


def find_local_env(cwd: Path) -> Path | None:
    for d in (cwd, *cwd.parents):
        candidate = d / LOCAL_ENV
        if candidate.is_file():
            return candidate
    return None


def parse_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines; blank lines, ``#`` comments and an ``export`` prefix allowed."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[name.strip()] = value
    return out


def resolve(
    *,
    flags: Mapping[str, str | None],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    home: Path | None = None,
) -> Config:
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    home = Path.home() if home is None else home

    path, explicit = config_path(env, home)
    from_file = read_config_file(path, explicit)
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for key in CONFIG_KEYS:
        flag_name = "--" + key.replace("_", "-")
        for value, source in (
            (flags.get(key), flag_name),
            (env.get(ENV_NAMES[key]), ENV_NAMES[key]),
            (from_file.get(key), str(path)),
        ):
            if value:
                values[key], sources[key] = value, source
                break

    if "api_url" not in values or "api_key" not in values:
        local = find_local_env(cwd)
        data = parse_env_file(local) if local is not None else {}
        if "api_url" not in values and data.get(ENV_NAMES["api_url"]):
            values["api_url"], sources["api_url"] = data[ENV_NAMES["api_url"]], str(local)
        if "api_key" not in values and data.get(ENV_NAMES["api_key"]) and sources.get("api_url") == str(local):
            values["api_key"], sources["api_key"] = data[ENV_NAMES["api_key"]], str(local)

    url = values.get("api_url")
    return Config(api_url=url.rstrip("/") if url else None, api_key=values.get("api_key"), sources=sources)
