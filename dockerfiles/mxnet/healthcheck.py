"""The image's HEALTHCHECK: is the Jupyter server this container runs answering?

    python healthcheck.py     exit 0: healthy (or not in Jupyter mode); exit 1: unhealthy

Jupyter mode is when a `jupyter lab|notebook|server` process runs in the container (the image's
default command). Then its REST API (`/api`, which answers without a token) must reply on the
port the command line names (`--port=N`, else $JUPYTER_PORT, else 8888) within the timeout.
In any other mode (`--check`, a shell, a script) there is nothing to watch, and the container
is reported healthy rather than unhealthy for running what it was asked to.

This file is the same in each GPU image's folder; tests/images checks the copies stay identical.
Runs on the oldest Python an image ships (3.8).
"""

import os
import re
import ssl
import sys
import urllib.request

TIMEOUT = 4  # seconds; the HEALTHCHECK's own --timeout is 5
_JUPYTER = re.compile(r"(^|/)jupyter(-lab|-notebook|-server)?$")


def jupyter_command_lines(proc="/proc"):
    """The argv of every Jupyter server process in this container."""
    found = []
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            with open(os.path.join(proc, pid, "cmdline"), "rb") as f:
                argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
        except OSError:  # the process ended meanwhile, or is not ours to read
            continue
        # `jupyter lab ...`, or `python /opt/venv/bin/jupyter-lab ...` once the launcher execs it
        for i, arg in enumerate(argv[:3]):
            if _JUPYTER.search(arg):
                rest = argv[i + 1:]
                if arg.endswith("jupyter") and not (rest and rest[0] in ("lab", "notebook", "server")):
                    continue
                found.append(argv)
                break
    return found


def url_of(argv, environ):
    port = environ.get("JUPYTER_PORT", "8888")
    scheme = "http"
    for i, arg in enumerate(argv):
        m = re.match(r"^--(?:ServerApp\.|NotebookApp\.)?port(?:=(\d+))?$", arg)
        if m:
            port = m.group(1) or (argv[i + 1] if i + 1 < len(argv) else port)
        if re.match(r"^--(?:ServerApp\.|NotebookApp\.)?certfile", arg):
            scheme = "https"
    return f"{scheme}://127.0.0.1:{port}/api"


def main(proc="/proc", environ=None):
    environ = os.environ if environ is None else environ
    servers = jupyter_command_lines(proc)
    if not servers:
        print("healthy: not in Jupyter mode (no Jupyter server process); nothing to check")
        return 0
    url = url_of(servers[0], environ)
    context = ssl._create_unverified_context() if url.startswith("https") else None  # its own certificate
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT, context=context) as reply:
            status = reply.status
    except OSError as e:  # refused, timed out, HTTP error: all mean unhealthy
        print(f"unhealthy: Jupyter does not answer at {url}: {e}")
        return 1
    if status != 200:
        print(f"unhealthy: Jupyter answered {status} at {url}")
        return 1
    print(f"healthy: Jupyter answers at {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
