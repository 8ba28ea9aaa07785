"""The deployment zip is small (issue 21: at most 3 MB) and what was left out of it is
really unused: every module and the Slack webhook work from the slimmed zip alone."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from infra.package import PRUNED, ZIP_LIMIT_BYTES

# what the Lambda Python runtime brings besides the standard library
LAMBDA_RUNTIME = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_the_zip_is_at_most_3_mb_without_yaml_or_the_pruned_parts(packages, stage):
    pkg = packages[stage]
    assert pkg.zip_bytes <= ZIP_LIMIT_BYTES, f"{pkg.zip_bytes} bytes"
    with zipfile.ZipFile(pkg.zip) as zf:
        names = zf.namelist()
    assert not [n for n in names if n.startswith(("yaml/", "_yaml/", "PyYAML", "pyyaml"))]
    assert not [n for n in names if n.startswith(PRUNED)]
    assert not [n for n in names if "__pycache__" in n]  # whatever the packager's environment
    assert not [n for n in names if n.endswith((".pyi", "/py.typed"))]  # type checkers' files
    assert "chalicelib/_bundle/buildspecs.compiled.json" in names
    assert any(n.startswith("slack_sdk/webhook/") for n in names)  # the part the notifier uses


class _Sink(http.server.BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_every_module_the_catalog_and_a_slack_webhook_work_from_the_slim_zip_alone(packages, tmp_path):
    # GIVEN the zip unpacked and, beside it, only what the Lambda runtime provides (no PyYAML)
    code = tmp_path / "task"
    with zipfile.ZipFile(packages["dev"].zip) as zf:
        zf.extractall(code)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for name in LAMBDA_RUNTIME:
        src = Path(__import__(name).__file__)
        src = src.parent if src.name == "__init__.py" else src
        (runtime / src.name).symlink_to(src)
    server = http.server.HTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    modules = sorted(".".join(p.relative_to(ROOT / "chalicelib").with_suffix("").parts)
                     for p in (ROOT / "chalicelib").rglob("*.py")
                     if p.stem != "__init__" and "templates" not in p.parts and "_bundle" not in p.parts)
    probe = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('chalicelib.' + m)\n"
        "import app\n"
        "from chalicelib.specs.catalog import load_catalog\n"
        "from chalicelib.api.openapi import document\n"
        "from chalicelib.notifications.slack_delivery import SlackSender\n"
        "cat = load_catalog()\n"
        "assert 'yaml' not in sys.modules, 'the compiled catalog was not used'\n"
        "assert document()['paths']\n"
        f"d = SlackSender(timeout=5).send('http://127.0.0.1:{server.server_port}/hook', "
        "{'text': 'from the zip', 'blocks': []})\n"
        "print(d.ok, ' '.join(sorted(cat.frameworks)))\n"
    )
    try:
        proc = subprocess.run([sys.executable, "-S", "-c", probe], cwd=code, capture_output=True, text=True,
                              env={"PYTHONPATH": f"{code}:{runtime}", "PATH": "/usr/bin:/bin",
                                   "AWS_DEFAULT_REGION": "us-east-1", "VOLTABUILD_STAGE": "dev"},
                              check=False, timeout=120)
    finally:
        server.shutdown()
    # THEN every import resolves, the catalog comes from JSON, and the webhook was posted
    assert proc.returncode == 0, proc.stderr
    ok, frameworks = proc.stdout.strip().split(" ", 1)
    assert ok == "True" and "canary" in frameworks.split()
    assert _Sink.bodies and _Sink.bodies[-1]["text"] == "from the zip"
