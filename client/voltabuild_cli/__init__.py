"""voltabuild's command-line client: talks to the voltabuild HTTP API only."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("voltabuild")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
