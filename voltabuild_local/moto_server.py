"""moto server with its requests applied one at a time.

DynamoDB applies conditional writes and transactions to an item atomically. moto's
backend does not under concurrent requests: its TransactWriteItems snapshots the tables
and restores the snapshot on a failed condition, wiping writes other threads made in
between, and conditions are checked apart from the write. So the local stack serves moto
behind one lock: connections are still accepted concurrently, each request runs whole.

    python -m voltabuild_local.moto_server --host 127.0.0.1 --port 5100

It answers no CORS preflight: moto server would otherwise let any web page open in the
developer's browser call the emulated AWS (and so start "instances" that the local executor
plays). moto reads ``MOTO_DISABLE_GLOBAL_CORS`` when first imported, so it is set here,
before the import, and by the local stack for the process it starts.
"""

from __future__ import annotations

import argparse
import os
import threading

os.environ.setdefault("MOTO_DISABLE_GLOBAL_CORS", "true")

from moto.moto_server.werkzeug_app import (  # noqa: E402 — after the CORS switch above
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server  # noqa: E402


class Serialized:
    """A WSGI app that lets one request at a time into the app it wraps."""

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            return list(self.app(environ, start_response))


def server(host: str, port: int) -> BaseWSGIServer:
    app = Serialized(DomainDispatcherApplication(create_backend_app))
    return make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    server(args.host, args.port).serve_forever()


if __name__ == "__main__":
    main()
