"""HEALTHCHECK: exit 0 when the Jupyter server this container runs answers on /api, or when no
Jupyter server runs (not in Jupyter mode: nothing to watch); else 1. See README.md."""

import os
import re
import ssl
import sys
import urllib.request

_JUPYTER = re.compile(r"(^|/)jupyter-(lab|notebook|server)$")


def jupyter_command_lines(proc="/proc"):
    found = []
    for pid in filter(str.isdigit, os.listdir(proc)):
        try:
            with open(os.path.join(proc, pid, "cmdline"), "rb") as f:
                argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
        except OSError:  # ended meanwhile
            continue
        # `jupyter lab` (the launcher), or the jupyter-lab it execs through its Python shebang
        if argv[:1] == ["jupyter"] and argv[1:2] in (["lab"], ["notebook"], ["server"]) \
                or any(_JUPYTER.search(a) for a in argv[:2]):
            found.append(argv)
    return found


def url_of(argv, environ):
    port, scheme = environ.get("JUPYTER_PORT", "8888"), "http"
    for i, arg in enumerate(argv):
        m = re.match(r"^--(?:ServerApp\.|NotebookApp\.)?port(?:=(\d+))?$", arg)
        if m:
            port = m.group(1) or (argv[i + 1] if i + 1 < len(argv) else port)
        if re.match(r"^--(?:ServerApp\.|NotebookApp\.)?certfile", arg):
            scheme = "https"
    return f"{scheme}://127.0.0.1:{port}/api"


def main(proc="/proc", environ=None):
    servers = jupyter_command_lines(proc)
    if not servers:
        print("healthy: not in Jupyter mode (no Jupyter server process); nothing to check")
        return 0
    url = url_of(servers[0], os.environ if environ is None else environ)
    context = ssl._create_unverified_context() if url.startswith("https") else None  # its own certificate
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as reply:
            status = reply.status
    except OSError as e:  # refused, timed out, an HTTP error status
        print(f"unhealthy: Jupyter does not answer at {url}: {e}")
        return 1
    print(f"healthy: Jupyter answers at {url} ({status})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
