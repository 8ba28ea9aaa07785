"""Following a build: poll it until it is final, show progress, tail its logs."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Protocol

from voltabuild_cli.api import Api, ApiError, Unreachable
from voltabuild_cli.clock import Clock, human_duration, parse_time

FINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"})


def is_final(build: dict) -> bool:
    return build.get("status") in FINAL


class GaveUp(Exception):
    """``--timeout`` passed before the build finished; carries the build as last seen."""

    def __init__(self, build: dict, waited_s: float) -> None:
        super().__init__(f"gave up after {human_duration(waited_s)}: build {build.get('id')} is still "
                         f"{build.get('status')}")
        self.build = build
        self.waited_s = waited_s


class LogsUnavailable(Exception):
    """The API has no logs route (an older deployment)."""


class LogTail:
    """Reads ``GET /builds/{id}/logs`` page by page without showing a line twice.

    The route answers ``{"lines": [{"at", "message"}], "next": cursor|null}``. A new,
    different cursor means "continue from there"; a null or unchanged cursor means
    "nothing after this yet", so the next read repeats the same cursor and skips the
    lines already shown from it. A 404 means no logs yet (keeps trying); a missing
    route raises :class:`LogsUnavailable`.
    """

    def __init__(self, api: Api, build_id: str) -> None:
        self.api = api
        self.build_id = build_id
        self.cursor: str | None = None
        self.seen_at_cursor = 0

    def read(self) -> list[dict]:
        """Every line not shown yet, following cursors until the route has no more."""
        out: list[dict] = []
        for _ in range(1000):  # a bound, not a limit anyone reaches: 1000 pages per read
            try:
                page = self.api.logs(self.build_id, self.cursor)
            except ApiError as e:
                if e.no_route:
                    raise LogsUnavailable("this API does not serve build logs (GET /builds/{id}/logs)") from None
                if e.status == 404:
                    return out
                raise
            lines = [ln for ln in (page or {}).get("lines") or [] if isinstance(ln, dict)]
            nxt = (page or {}).get("next")
            fresh = lines[self.seen_at_cursor:]
            out.extend(fresh)
            if nxt and nxt != self.cursor:
                self.cursor, self.seen_at_cursor = nxt, 0
                if not lines:
                    return out
            else:
                self.seen_at_cursor = max(self.seen_at_cursor, len(lines))
                return out
        return out


# ---- progress -------------------------------------------------------------------
@dataclass
class Snapshot:
    build: dict
    elapsed_s: float
    latest: str | None  # the latest log line (or timeline message)
    alert: str | None = None  # trouble worth a line of its own, e.g. the API unreachable


def describe(s: Snapshot) -> str:
    b = s.build
    state = b.get("status", "?")
    if b.get("phase"):
        state += f" · {b['phase']}"
    parts = [str(b.get("id", "?")), state, human_duration(s.elapsed_s)]
    if b.get("cancel_requested") and not is_final(b):
        parts.append("cancel requested")
    if s.alert or s.latest:
        parts.append(s.alert or s.latest)
    return "  ".join(parts)


class Progress(Protocol):
    def update(self, s: Snapshot) -> None: ...
    def close(self) -> None: ...


class TtyProgress:
    """One status line, rewritten in place (a terminal)."""

    live = True

    def __init__(self, stream: IO[str], width: Callable[[], int] | None = None) -> None:
        self.stream = stream
        self.width = width or (lambda: shutil.get_terminal_size((100, 20)).columns)
        self.dirty = False

    def update(self, s: Snapshot) -> None:
        line = describe(s).replace("\n", " ").replace("\r", " ")
        width = max(20, self.width() - 1)
        if len(line) > width:
            line = line[: width - 1] + "…"
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self.dirty = True

    def close(self) -> None:
        if self.dirty:
            self.stream.write("\n")
            self.stream.flush()
            self.dirty = False


class PlainProgress:
    """A line each time status or phase changes (a pipe or a log file)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last: tuple | None = None

    def update(self, s: Snapshot) -> None:
        key = (s.build.get("status"), s.build.get("phase"), bool(s.build.get("cancel_requested")), s.alert)
        if key != self.last:
            self.last = key
            self.stream.write(describe(s) + "\n")
            self.stream.flush()

    def close(self) -> None:
        pass


# ---- the waiter -----------------------------------------------------------------
def elapsed_of(build: dict, clock: Clock) -> float:
    start = parse_time(build.get("created_at"))
    if start is None:
        return 0.0
    end = parse_time(build.get("finished_at")) if is_final(build) else None
    return ((end or clock.now()) - start).total_seconds()


def latest_message(build: dict) -> str | None:
    events = build.get("events") or []
    if events and isinstance(events[-1], dict):
        return events[-1].get("message") or None
    return None


class Waiter:
    """Polls a build until it is final (or ``timeout_s`` passes), reporting to ``progress``.

    Polls every ``interval_s``; a live display (a terminal) is redrawn every ``tick_s`` in
    between so the elapsed time moves. Once the build has been seen, the API being
    unreachable for less than ``max_outage_s`` is shown and waited out, not fatal.
    """

    def __init__(self, api: Api, clock: Clock, progress: Progress, *, interval_s: float = 5.0,
                 timeout_s: float | None = None, tail_logs: bool = True, tick_s: float = 1.0,
                 max_outage_s: float = 300.0) -> None:
        self.api = api
        self.clock = clock
        self.progress = progress
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.tail_logs = tail_logs
        self.tick_s = tick_s
        self.max_outage_s = max_outage_s

    def wait(self, build_id: str, build: dict | None = None) -> dict:
        """The final build. Returns at once, without sleeping, when it is already final.
        Raises :class:`GaveUp` after ``timeout_s``, :class:`Unreachable` when the API is
        gone for longer than ``max_outage_s`` (or before the build was ever seen)."""
        start = self.clock.monotonic()
        deadline = None if self.timeout_s is None else start + self.timeout_s
        tail = LogTail(self.api, build_id) if self.tail_logs else None
        latest: str | None = None
        seen: dict | None = build
        outage_since: float | None = None
        live = getattr(self.progress, "live", False)
        try:
            while True:
                note = None
                if build is None:
                    try:
                        build = self.api.get_build(build_id)
                        outage_since = None
                    except Unreachable:
                        now = self.clock.monotonic()
                        outage_since = now if outage_since is None else outage_since
                        if seen is None or now - outage_since >= self.max_outage_s:
                            raise
                        note = f"API unreachable for {human_duration(now - outage_since)}, retrying"
                seen = build or seen
                if tail is not None and note is None:
                    try:
                        lines = tail.read()
                    except (LogsUnavailable, ApiError, Unreachable):
                        tail, lines = None, []  # logs are a nicety: never fail a wait for them
                    if lines:
                        latest = str(lines[-1].get("message", "")).strip() or latest

                line = latest or latest_message(seen)
                self._show(seen, line, note)
                if is_final(seen):
                    return seen
                now = self.clock.monotonic()
                if deadline is not None and now >= deadline:
                    raise GaveUp(seen, now - start)
                next_poll = now + self.interval_s
                if deadline is not None:
                    next_poll = min(next_poll, deadline)
                while (remaining := next_poll - self.clock.monotonic()) > 0:
                    self.clock.sleep(min(self.tick_s, remaining) if live else remaining)
                    if live:
                        self._show(seen, line, note)
                build = None
        finally:
            self.progress.close()

    def _show(self, build: dict, line: str | None, alert: str | None) -> None:
        self.progress.update(Snapshot(build, elapsed_of(build, self.clock), line, alert))


def follow_logs(api: Api, build_id: str, clock: Clock, *, interval_s: float = 3.0) -> Iterator[dict]:
    """Every log line of a build, until it is final and nothing more comes."""
    tail = LogTail(api, build_id)
    while True:
        build = api.get_build(build_id)
        final = is_final(build)
        lines = tail.read()
        yield from lines
        if final:
            # the build was final before this read: one more read catches stragglers
            yield from tail.read()
            return
        clock.sleep(interval_s)
