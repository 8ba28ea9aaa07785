"""Bare git repositories served over smart HTTP on loopback, for git builds on the local
stack (issue 20): git's own ``git http-backend`` (the CGI program git ships for exactly
this) behind a tiny WSGI server, so ``git fetch --depth 1`` works as against GitHub.

    python -m voltabuild_local.gitserver --root DIR --port 5103
    # then: voltabuild submit --git http://127.0.0.1:5103/<repo>.git --ref main

Plain http is accepted by the API only with GIT_ALLOW_LOOPBACK_HTTP=1 (the local stack sets
it) and only for http://127.0.0.1:PORT/ URLs; in AWS a git source is https only.
"""

from __future__ import annotations

import argparse
import subprocess
import threading
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

_PASSED = ("PATH_INFO", "QUERY_STRING", "REQUEST_METHOD", "CONTENT_TYPE", "CONTENT_LENGTH", "REMOTE_ADDR",
           "HTTP_CONTENT_ENCODING", "HTTP_GIT_PROTOCOL")


def application(root: Path):
    def app(environ, start_response):
        env = {k: environ[k] for k in _PASSED if environ.get(k)}
        env.update(GIT_PROJECT_ROOT=str(root), GIT_HTTP_EXPORT_ALL="1", PATH="/usr/bin:/bin:/usr/local/bin")
        if "HTTP_GIT_PROTOCOL" in env:
            env["GIT_PROTOCOL"] = env["HTTP_GIT_PROTOCOL"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, timeout=300).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status, headers = "200 OK", []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            elif name:
                headers.append((name.strip(), value.strip()))
        start_response(status, headers)
        return [payload]

    return app


class _Threaded(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve(root: Path, port: int = 0, host: str = "127.0.0.1"):
    """Start serving ``root`` in a thread; returns the server (``server.server_port``)."""
    server = make_server(host, port, application(root), server_class=_Threaded, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description="serve bare git repositories over smart HTTP on loopback")
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--port", type=int, default=5103)
    args = ap.parse_args()
    server = make_server("127.0.0.1", args.port, application(args.root), server_class=_Threaded,
                         handler_class=_Quiet)
    server.serve_forever()


if __name__ == "__main__":
    main()
