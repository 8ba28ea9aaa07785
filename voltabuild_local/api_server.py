"""`chalice local` as the local stand-in for API Gateway, with a listen backlog that takes
bursts: chalice's ThreadedHTTPServer keeps socketserver's default of 5 pending
connections, so 20 clients at once get connection resets that API Gateway never gives.

    python -m voltabuild_local.api_server --host 127.0.0.1 --port 8010 --stage dev
"""

from __future__ import annotations

import sys

from chalice import local
from chalice.cli import main as chalice_main


def main() -> None:
    local.ThreadedHTTPServer.request_queue_size = 128
    sys.argv = ["chalice", "local", "--no-autoreload", *sys.argv[1:]]
    chalice_main()


if __name__ == "__main__":
    main()
