"""A build's log lines from CloudWatch Logs: a page of them for ``GET /builds/{id}/logs?next=&limit=``,
and the last few for the reason of a build whose instance was lost.

The host script ships its log to the group ``/voltabuild/builds``, one stream per build
(named by the build id; a relaunched attempt appends to the same stream). Lines come
oldest first; ``next`` is CloudWatch's forward token: pass it back to get the lines written
since. It is returned even when no new lines were there yet, so a client can poll with it.
A read that found no line leaves the cursor where it was (none, for a first read): the token
of an empty stream points at nothing (moto spells it with a negative index), and the next
poll must still find the first lines.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from botocore.exceptions import ClientError

from chalicelib.builds.names import check_build_id
from chalicelib.builds.store import BuildStore
from chalicelib.clock import iso
from chalicelib.errors import BadRequest

_CURSOR = re.compile(r"^[fb]/[0-9]{1,80}(/s)?$")
MAX_LIMIT = 1000
DEFAULT_LIMIT = 200


class BuildLogs:
    def __init__(self, logs_client, log_group: str, store: BuildStore) -> None:
        self._logs = logs_client
        self.group = log_group
        self.store = store

    def read(self, build_id: str, *, cursor: str | None = None, limit: str | None = None) -> dict:
        build = self.store.get(check_build_id(build_id))
        try:
            n = int(limit) if limit is not None else DEFAULT_LIMIT
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_LIMIT:
            raise BadRequest(f"limit: {limit!r} is not a number from 1 to {MAX_LIMIT}", field="limit")
        if cursor is not None and not _CURSOR.match(cursor):
            raise BadRequest("next: not a cursor this API issued; start again without it", field="next")
        kwargs = {"logGroupName": self.group, "logStreamName": build.id, "startFromHead": True, "limit": n}
        if cursor:
            kwargs["nextToken"] = cursor
        lines: list[dict] = []
        token = cursor
        # CloudWatch may return an empty page before the end: follow the token while it moves
        for _ in range(5):
            try:
                resp = self._logs.get_log_events(**kwargs)
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code")
                if code == "ResourceNotFoundException":  # nothing shipped yet
                    return {"build_id": build.id, "status": build.status.value, "lines": [], "next": cursor}
                if code == "InvalidParameterException" and cursor:
                    raise BadRequest("next: not a cursor for this build's log; start again without it",
                                     field="next") from None
                raise
            lines.extend(
                {"at": iso(datetime.fromtimestamp(ev["timestamp"] / 1000, UTC)), "message": ev["message"]}
                for ev in resp.get("events", [])
            )
            new_token = resp.get("nextForwardToken")
            moved = new_token and new_token != token
            token = new_token or token
            if lines or not moved:
                break
            kwargs["nextToken"] = token
        return {"build_id": build.id, "status": build.status.value, "lines": lines,
                "next": token if lines else cursor}

    def last_lines(self, build_id: str, n: int) -> list[str]:
        """The last ``n`` lines of the build's log (its stream is named after it, as the host
        script makes it): one GetLogEvents from the end. Best effort: [] if it has none."""
        try:
            events = self._logs.get_log_events(logGroupName=self.group, logStreamName=build_id,
                                               limit=n, startFromHead=False).get("events", [])
        except ClientError as e:
            if e.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
            return []
        return [e["message"].rstrip("\n") for e in events][-n:]
