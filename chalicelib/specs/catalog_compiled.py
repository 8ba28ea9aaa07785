"""The catalog's YAML, compiled to JSON at package time, so a Lambda never parses YAML
(nor ships PyYAML).

``buildspecs/**/*.yaml`` stay the one source. ``python -m infra.package`` writes
``buildspecs.compiled.json`` beside ``buildspecs/`` in the deployment bundle: for every
YAML file, the SHA-256 of its bytes and what ``yaml.safe_load`` made of it, as JSON text (dates
tagged ``{"$date": "2026-12-02"}``, the one YAML type JSON lacks). The catalog loader asks
:func:`parsed` for a file's data: it answers only when the compiled entry's hash is the
file's, so a stale compiled file is never believed (the loader parses the YAML instead).
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any

FILE_NAME = "buildspecs.compiled.json"
FORMAT = 1
_DATE, _DATETIME = "$date", "$datetime"


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):  # before date: a datetime is a date too
        return {_DATETIME: value.isoformat()}
    if isinstance(value, date):
        return {_DATE: value.isoformat()}
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in (_DATE, _DATETIME):
            raise ValueError(f"a mapping whose one key is {next(iter(value))!r} would read back as a date")
        if any(not isinstance(k, str) for k in value):
            raise ValueError(f"a mapping key that is not a string: {sorted(map(repr, value))}")
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ValueError(f"a YAML value JSON cannot hold: {type(value).__name__}")


def _decode(obj: dict) -> Any:
    if len(obj) == 1:
        if _DATE in obj:
            return date.fromisoformat(obj[_DATE])
        if _DATETIME in obj:
            return datetime.fromisoformat(obj[_DATETIME])
    return obj


def compile_sources(root: Path) -> dict:
    """The compiled document for ``root/buildspecs`` (needs PyYAML: a build-time tool)."""
    import yaml

    files = {}
    for path in sorted((root / "buildspecs").rglob("*.yaml")):
        raw = path.read_bytes()
        files[path.relative_to(root).as_posix()] = {
            "sha256": hashlib.sha256(raw).hexdigest(),
            # a JSON text per file: each load decodes fresh objects (the loader adds to them);
            # keys keep the YAML's order (the order of families and CUDA releases means something)
            "json": json.dumps(_encode(yaml.safe_load(raw)), separators=(",", ":")),
        }
    return {"format": FORMAT, "files": files}


def write(root: Path, dest: Path | None = None) -> Path:
    """Compile ``root``'s buildspecs into ``dest`` (default ``root/FILE_NAME``)."""
    dest = dest or root / FILE_NAME
    dest.write_text(json.dumps(compile_sources(root), sort_keys=True, separators=(",", ":")))
    _document.cache_clear()
    return dest


@cache
def _document(root: Path) -> dict:
    path = root / FILE_NAME
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    return doc.get("files", {}) if doc.get("format") == FORMAT else {}


def parsed(path: Path) -> tuple[bool, Any]:
    """``(True, data)`` when the compiled document of the catalog ``path`` belongs to
    (``<root>/buildspecs/...``) holds ``path`` as it is now on disk; ``(False, None)``
    otherwise (no compiled file, not in it, or changed since)."""
    path = path.resolve()
    root = next((p.parent for p in path.parents if p.name == "buildspecs"), None)
    if root is None:
        return False, None
    entry = _document(root).get(path.relative_to(root).as_posix())
    if entry is None or entry["sha256"] != hashlib.sha256(path.read_bytes()).hexdigest():
        return False, None
    return True, json.loads(entry["json"], object_hook=_decode)
