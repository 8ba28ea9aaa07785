"""A webhook sink standing in for Slack: records each POST as a JSON line, answers "ok".

    python -m voltabuild_local.sink --port 5102 --out .voltabuild/slack.jsonl
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_LOCK = threading.Lock()


def make_handler(out: Path):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/health":
                return self._reply(200, b"ok")
            if self.path == "/messages":
                lines = out.read_text().splitlines() if out.exists() else []
                return self._reply(200, json.dumps([json.loads(x) for x in lines]).encode(), "application/json")
            return self._reply(404, b"not found")

        def do_POST(self) -> None:
            if not self.path.startswith("/hooks/"):
                return self._reply(404, b"no_service")
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                payload = json.loads(raw)
            except ValueError:
                return self._reply(400, b"invalid_payload")
            record = {"channel": self.path.removeprefix("/hooks/"), "payload": payload}
            with _LOCK, out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            return self._reply(200, b"ok")

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.out)).serve_forever()


if __name__ == "__main__":
    main()
