"""`chalice local` as the local stand-in for API Gateway.

Two differences from plain `chalice local`, both for the local stack:
- a listen backlog that takes bursts: chalice's ThreadedHTTPServer keeps socketserver's
  default of 5 pending connections, so 20 clients at once get connection resets that API
  Gateway never gives;
- the settings named in ``VOLTABUILD_LOCAL_WINS`` (comma-separated) keep the values the
  local stack gave this process: `chalice local` otherwise writes the stage's
  ``environment_variables`` from ``.chalice/config.json`` over them (the local stack runs
  the dev stage, whose per-key quotas a burst of local test builds would hit).

    python -m voltabuild_local.api_server --host 127.0.0.1 --port 8010 --stage dev
"""

from __future__ import annotations

import os
import sys

from chalice import local
from chalice.cli import main as chalice_main
from chalice.cli.factory import CLIFactory


def _keep_local_settings() -> None:
    keep = {name.strip() for name in os.environ.get("VOLTABUILD_LOCAL_WINS", "").split(",") if name.strip()}
    if not keep:
        return
    load = CLIFactory.load_chalice_app

    def load_keeping_local(self, environment_variables=None, *args, **kwargs):
        if environment_variables:
            environment_variables = {k: v for k, v in environment_variables.items() if k not in keep}
        return load(self, environment_variables, *args, **kwargs)

    CLIFactory.load_chalice_app = load_keeping_local


def main() -> None:
    local.ThreadedHTTPServer.request_queue_size = 128
    _keep_local_settings()
    sys.argv = ["chalice", "local", "--no-autoreload", *sys.argv[1:]]
    chalice_main()


if __name__ == "__main__":
    main()
