"""Signed page cursors for ``GET /builds`` (issue 17, item 8).

A cursor is ``base64url(json payload) "." hex HMAC-SHA256[:32]``. The payload names the
index it pages and the index key to start after. Decoding never raises anything but
:class:`BadRequest`: whatever a client sends (non-ASCII, a wrong signature, a payload of
the wrong shape even under a valid signature) is a 400.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping

from chalicelib.errors import BadRequest

MAX_CURSOR_CHARS = 2048
MIN_KEY_BYTES = 16
_SIG = re.compile(r"^[0-9a-f]{32}$")
_BODY = re.compile(r"^[A-Za-z0-9_-]+$")


class CursorCodec:
    """Encodes and checks cursors for a fixed set of indexes, each with its key attributes."""

    def __init__(self, key: bytes, index_keys: Mapping[str, frozenset[str]]) -> None:
        self._key = key
        self._index_keys = dict(index_keys)

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()[:32]

    def encode(self, index: str, key: Mapping[str, str]) -> str:
        payload = json.dumps({"i": index, "k": dict(key)}, sort_keys=True, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + self._sign(payload)

    def decode(self, cursor: str, index: str) -> dict[str, str]:
        """The index key a cursor starts after (plain strings), or BadRequest."""
        bad = BadRequest("next: not a cursor this API issued; start again without it", field="next")
        if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_CHARS:
            raise bad
        body, _, sig = cursor.partition(".")
        # shapes first: compare_digest refuses non-ASCII str, b64decode accepts junk
        if not _BODY.match(body) or not _SIG.match(sig):
            raise bad
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise bad from None
        if not hmac.compare_digest(sig.encode(), self._sign(payload).encode()):
            raise bad
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            raise bad from None
        if not isinstance(data, dict) or not isinstance(data.get("i"), str) or not isinstance(data.get("k"), dict):
            raise bad
        if data["i"] != index:
            raise BadRequest("next: this cursor belongs to a listing with other filters", field="next")
        key = data["k"]
        expected = self._index_keys.get(index)
        if expected is None or set(key) != expected or not all(isinstance(v, str) and v for v in key.values()):
            raise bad
        return dict(key)
