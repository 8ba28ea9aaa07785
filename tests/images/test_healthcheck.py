"""The GPU images' HEALTHCHECK script (dockerfiles/common/healthcheck.py, packed into each GPU
image's context) against a fake /proc and a real HTTP server on loopback: healthy when Jupyter
answers, unhealthy when it does not, and healthy when the container is not in Jupyter mode."""

from __future__ import annotations

import importlib.util
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "dockerfiles" / "common" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


health = _load()


def fake_proc(tmp_path: Path, *argvs: list[str]) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "self").mkdir()  # not a pid: skipped
    for pid, argv in enumerate(argvs, start=1):
        (proc / str(pid)).mkdir()
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return proc


@pytest.fixture
def jupyter_api():
    """A stand-in Jupyter server: GET /api answers 200 (or what `status` says)."""
    state = {"status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(state["status"] if self.path == "/api" else 404)
            self.end_headers()
            self.wfile.write(b'{"version": "2.14.2"}')

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], state
    server.shutdown()
    server.server_close()


TINI = ["/usr/bin/tini", "-g", "--", "/usr/local/bin/entrypoint.sh", "jupyter", "lab"]


def test_not_in_jupyter_mode_is_healthy(tmp_path, capsys):
    proc = fake_proc(tmp_path, TINI[:4] + ["bash"], ["bash"], ["python", "train.py", "--port=8888"])
    assert health.main(proc=str(proc), environ={}) == 0
    assert "not in Jupyter mode" in capsys.readouterr().out


def test_jupyter_answering_is_healthy(tmp_path, jupyter_api, capsys):
    port, _ = jupyter_api
    # `jupyter lab` has exec'd jupyter-lab through its Python shebang
    proc = fake_proc(tmp_path, TINI, ["/opt/venv/bin/python", "/opt/venv/bin/jupyter-lab", "--ip=0.0.0.0", f"--port={port}"])
    assert health.main(proc=str(proc), environ={}) == 0
    assert f"healthy: Jupyter answers at http://127.0.0.1:{port}/api (200)" in capsys.readouterr().out


@pytest.mark.parametrize("status", [500, 403])
def test_jupyter_answering_an_error_is_unhealthy(tmp_path, jupyter_api, status, capsys):
    port, state = jupyter_api
    state["status"] = status
    proc = fake_proc(tmp_path, ["jupyter", "lab", "--port", str(port)])
    assert health.main(proc=str(proc), environ={}) == 1
    assert "unhealthy" in capsys.readouterr().out


def test_jupyter_not_answering_is_unhealthy(tmp_path, jupyter_api, capsys):
    port, _ = jupyter_api
    # a Jupyter process whose port nothing listens on (the fixture's port + nothing: use JUPYTER_PORT)
    proc = fake_proc(tmp_path, ["/opt/venv/bin/python", "/opt/venv/bin/jupyter-lab"])
    closed = _closed_port()
    assert health.main(proc=str(proc), environ={"JUPYTER_PORT": str(closed)}) == 1
    assert f"Jupyter does not answer at http://127.0.0.1:{closed}/api" in capsys.readouterr().out


def test_the_port_comes_from_the_command_line_then_the_environment():
    assert health.url_of(["jupyter-lab", "--port=9999"], {"JUPYTER_PORT": "7777"}) == "http://127.0.0.1:9999/api"
    assert health.url_of(["jupyter-lab", "--ServerApp.port", "9000"], {}) == "http://127.0.0.1:9000/api"
    assert health.url_of(["jupyter-lab"], {"JUPYTER_PORT": "7777"}) == "http://127.0.0.1:7777/api"
    assert health.url_of(["jupyter-lab", "--certfile=/c.pem"], {}) == "https://127.0.0.1:8888/api"


def test_jupyter_as_an_argument_is_not_a_server(tmp_path):
    # `jupyter --version` or `pip install jupyter` is no server to watch
    proc = fake_proc(tmp_path, ["jupyter", "--version"], ["pip", "install", "jupyter"])
    assert health.jupyter_command_lines(str(proc)) == []


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
