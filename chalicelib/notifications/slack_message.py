"""The Slack message about a build: Block Kit blocks plus a plain-text fallback, for its
final outcome or for its start. Pure: no I/O.

The cost it shows is ``build.cost``, which the caller fills in with the one cost function
(``costs.build_costs.BuildCosts.cost``, as ``GET /builds/{id}`` and the ``BuildCostUSD``
metric do), so the message, the API and the metric always say the same for a build."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from chalicelib.builds.schemas import Build
from chalicelib.builds.segments import longest_note
from chalicelib.builds.states import Status
from chalicelib.clock import parse
from chalicelib.costs.billing import usd_text

OUTCOME = {
    Status.SUCCEEDED: (":white_check_mark:", "succeeded"),
    Status.FAILED: (":x:", "failed"),
    Status.TIMED_OUT: (":alarm_clock:", "timed out"),
    Status.CANCELLED: (":no_entry_sign:", "was cancelled"),
    Status.RUNNING: (":rocket:", "started"),
}
_SECTION_MAX = 2900  # Slack: a section's text is at most 3000 characters


def escape(text: str) -> str:
    """Slack mrkdwn needs only &, < and > escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h {m:02d}m {sec:02d}s"
    if m:
        return f"{m}m {sec:02d}s"
    return f"{sec}s"


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (parse(end) - parse(start)).total_seconds()


def image_size_text(n: int | None) -> str | None:
    """An image's compressed size in decimal units (2.15 MB, 4.31 GB), or None if not measured."""
    if n is None:
        return None
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def image_uris(build: Build) -> list[str]:
    """Every pushed reference: one per tag, and the digest."""
    repo = build.image.repository
    uris = [f"{repo}:{t}" for t in build.image.tags]
    if build.image.digest:
        uris.append(f"{repo}@{build.image.digest}")
    return uris


def _reason_parts(reason: str | None) -> tuple[str, str]:
    """(the reason's first line, the log lines after it)."""
    if not reason:
        return "", ""
    head, _, tail = reason.strip().partition("\n")
    return head.strip(), tail.strip("\n")


def _code_block(text: str, limit: int) -> str:
    """A mrkdwn code block of the *last* characters of ``text`` (a log tail keeps its end)."""
    lines = escape(text.replace("```", "`\u200b``")).splitlines()
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        line = line[-limit:]
        if size + len(line) + 1 > limit:
            break
        kept.insert(0, line)
        size += len(line) + 1
    if len(kept) < len(lines):
        kept.insert(0, f"… ({len(lines) - len(kept)} earlier lines cut)")
    return "```" + "\n".join(kept) + "```"


def build_message(build: Build, *, api_url: str = "", started: bool = False) -> dict[str, Any]:
    """The Slack payload: Block Kit ``blocks`` plus a plain ``text`` fallback (shown in
    notifications and by clients that cannot render blocks)."""
    return start_message(build, api_url=api_url) if started else final_message(build, api_url=api_url)


@dataclass(frozen=True)
class _Facts:
    """What every message says about the build."""

    build_id: str
    headline: str
    what: str
    stack: str
    instance: str
    cli: str
    api: str
    uris: list[str]
    size: str | None  # the image's compressed size, when measured

    @classmethod
    def of(cls, build: Build, status: Status, api_url: str) -> _Facts:
        emoji, word = OUTCOME.get(status, (":grey_question:", status.value.lower()))
        what = f"{build.framework} {build.version}"
        inst = build.instance
        return cls(
            build_id=build.id,
            headline=f"{emoji} {what} build {word}",
            what=what,
            stack=f"CUDA {build.cuda} · Python {build.python}",
            instance=f"{inst.type} ({inst.lifecycle}{', ' + inst.az if inst.az else ''})" if inst else "none launched",
            cli=f"voltabuild status {build.id}",
            api=f"{api_url}/builds/{build.id}" if api_url else "",
            uris=image_uris(build) if (build.image.digest or status == Status.SUCCEEDED) else [],
            size=image_size_text(build.image.compressed_size_bytes),
        )

    def fields(self, build: Build) -> list[str]:
        return [f"*Framework*\n{escape(self.what)}", f"*Toolchain*\n{escape(self.stack)}",
                f"*Instance*\n{escape(self.instance)}", f"*Attempt*\n{build.attempt} of {build.max_attempts}"]

    def top(self, fields: list[str]) -> list[dict[str, Any]]:
        """The header and the fields."""
        return [
            {"type": "header", "text": {"type": "plain_text", "text": self.headline[:150], "emoji": True}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
        ]

    def image(self) -> dict[str, Any]:
        listing = "\n".join(f"`{escape(u)}`" for u in self.uris) + (f"\n{self.size} compressed" if self.size else "")
        return _section(f"*Image*\n{listing}"[:_SECTION_MAX])

    def image_text(self) -> str:
        return "image " + " ".join(self.uris) + (f" ({self.size} compressed)" if self.size else "")

    def context(self) -> dict[str, Any]:
        context = [f"`{escape(self.cli)}`", f"build `{self.build_id}`"]
        if self.api:
            context.append(f"<{self.api}|{escape(self.api)}>")
        return {"type": "context", "elements": [{"type": "mrkdwn", "text": c} for c in context]}

    def see(self) -> str:
        return f"see `{self.cli}`" + (f" or {self.api}" if self.api else "")


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def start_message(build: Build, *, api_url: str = "") -> dict[str, Any]:
    """The "build started" message: what runs where, and where to follow it."""
    f = _Facts.of(build, Status.RUNNING, api_url)
    blocks = f.top(f.fields(build))
    if f.uris:
        blocks.append(f.image())
    blocks.append(f.context())
    parts = [f"{f.headline} ({f.stack})", f"instance {f.instance}"]
    if f.uris:
        parts.append(f.image_text())
    parts.append(f.see())
    return {"text": escape(" · ".join(parts)), "blocks": blocks}


def final_message(build: Build, *, api_url: str = "") -> dict[str, Any]:
    """The final-outcome message: the facts, duration, cost, image, reason and log tail."""
    f = _Facts.of(build, build.status, api_url)
    duration, cost = _duration_text(build), cost_text(build)
    reason, log_tail = _reason_parts(build.reason)
    blocks = f.top([*f.fields(build), f"*Duration*\n{escape(duration)}", f"*Cost*\n{escape(cost)}"])
    blocks.append(f.image() if f.uris else _section("*Image*\nnot pushed"))
    if reason:
        blocks.append(_section(f"*Reason*\n{escape(reason)}"[:_SECTION_MAX]))
    if log_tail:
        blocks.append(_section("*Last log lines*\n" + _code_block(log_tail, 2800)))
    blocks.append(f.context())

    parts = [f"{f.headline} ({f.stack})", f"duration {duration}", f"instance {f.instance}",
             f"cost {cost}"]
    if f.uris:
        parts.append(f.image_text())
    if reason:
        parts.append(f"reason: {reason}")
    parts.append(f.see())
    # the fallback is mrkdwn too (notifications, clients without blocks): escaped like the
    # blocks, so `<!channel>` or `<https://evil|click>` from a log or a reason stays text
    text = escape(" · ".join(parts))
    if log_tail:
        text += "\nLast log lines:\n" + escape(log_tail[-1500:])
    return {"text": text, "blocks": blocks}


def _duration_text(build: Build) -> str:
    inst = build.instance
    duration = format_duration(_seconds_between(build.created_at, build.finished_at))
    on_instance = _seconds_between(inst.launched_at if inst else None, build.finished_at)
    if on_instance is not None:
        duration += f" (on the instance {format_duration(on_instance)})"
    return duration + longest_note(build)  # where the time went (chalicelib/builds/segments.py)


def cost_text(build: Build) -> str:
    """The build's cost as the API computed it (``build.cost``): USD, price, lifecycle and
    billed time, and whether it is still an estimate (the instance not yet terminated)."""
    cost = build.cost
    if build.instance is None or (cost is not None and not cost.instances):
        return "$0.00 (no instance was launched)"
    if cost is None:
        return "unknown (no price recorded for this instance)"
    text = (f"{cost.display} ({cost.lifecycle}: ${cost.price_per_hour.normalize():f}/h × "
            f"{format_duration(cost.billed_seconds)} billed")
    return text + (", an estimate until the instance is terminated)" if cost.estimated else ")")


# ---- a matrix's one message (issue 22) -------------------------------------------------
GROUP_OUTCOME = {
    Status.SUCCEEDED: (":white_check_mark:", "succeeded"),
    Status.FAILED: (":x:", "failed"),
    Status.CANCELLED: (":no_entry_sign:", "was cancelled"),
}
_TABLE_ROWS = 100  # Slack: a table block has at most 100 rows (the header is one); a matrix has at most 32 cells


def cell_label(values: dict[str, str], build: Build) -> str:
    """What the matrix said for the cell (``version=2.6.0 cuda=12.4``), else its toolchain."""
    if values:
        return " ".join(f"{k}={v}" for k, v in values.items())
    return f"{build.version} CUDA {build.cuda} Python {build.python}"


def _cell_cost(build: Build) -> str:
    cost = build.cost
    if build.instance is None or (cost is not None and not cost.instances):
        return "$0.00"
    return cost.display if cost is not None else "unknown"


def _raw(text: str) -> dict[str, str]:
    return {"type": "raw_text", "text": text}


def group_message(group_id: str, framework: str, cells: list[tuple[dict[str, str], Build]], *, skipped: int = 0,
                  api_url: str = "") -> dict[str, Any]:
    """The one message of a matrix group whose cells have all ended: the group's outcome
    (``builds.groups.aggregate_status``: SUCCEEDED only if every cell did, FAILED if one
    failed or timed out), which cells failed and why, and a Block Kit ``table`` of the cells
    (outcome, duration, cost, each as ``GET /builds/{id}`` shows it). Table block:
    https://docs.slack.dev/reference/block-kit/blocks/table-block (rows of ``raw_text``
    cells, at most 100 rows and 20 columns; read 2026-12-02)."""
    from chalicelib.builds.groups import aggregate_status  # the group's status as GET /groups/{id} derives it

    builds = [b for _, b in cells]
    status = aggregate_status([b.status for b in builds])
    emoji, word = GROUP_OUTCOME.get(status, (":grey_question:", status.value.lower()))
    bad = [(v, b) for v, b in cells if b.status in (Status.FAILED, Status.TIMED_OUT)]
    ok = sum(1 for b in builds if b.status == Status.SUCCEEDED)
    headline = f"{emoji} {framework} matrix {word}: {ok} of {len(builds)} cells succeeded"
    costs = [b.cost for b in builds]
    known = all(c is not None or b.instance is None for c, b in zip(costs, builds, strict=True))
    total = sum((c.usd for c in costs if c is not None), Decimal(0))
    estimated = any(c is not None and c.estimated for c in costs)
    total_text = (("~" if estimated else "") + usd_text(total)) if known else "unknown"

    rows = [[_raw("cell"), _raw("outcome"), _raw("duration"), _raw("cost")]]
    lines = []
    for values, b in cells:
        outcome = OUTCOME.get(b.status, ("", b.status.value.lower()))[1]
        duration = format_duration(_seconds_between(b.created_at, b.finished_at))
        label = cell_label(values, b)
        rows.append([_raw(label[:200]), _raw(outcome), _raw(duration), _raw(_cell_cost(b))])
        lines.append(f"{label}: {outcome}, {duration}, {_cell_cost(b)}")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": headline[:150], "emoji": True}},
        _section(f"*Group* `{escape(group_id)}` · *Total cost* {escape(total_text)}"
                 + (f" · {skipped} cell(s) skipped when submitted" if skipped else "")),
    ]
    if bad:
        failed = "\n".join(f"• `{escape(cell_label(v, b))}` {OUTCOME[b.status][1]} (`{b.id}`)"
                           + (f": {escape(_reason_parts(b.reason)[0])}" if b.reason else "") for v, b in bad)
        blocks.append(_section(f"*Failed cells*\n{failed}"[:_SECTION_MAX]))
    blocks.append({"type": "table", "column_settings": [{"is_wrapped": True}, {}, {"align": "right"},
                                                        {"align": "right"}],
                   "rows": rows[:_TABLE_ROWS]})
    api = f"{api_url}/groups/{group_id}" if api_url else ""
    context = [f"`voltabuild group {group_id}`"] + ([f"<{api}|{escape(api)}>"] if api else [])
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": c} for c in context]})
    parts = [headline, f"total {total_text}"]
    if bad:
        parts.append("failed: " + "; ".join(
            f"{cell_label(v, b)} ({b.id})" + (f": {_reason_parts(b.reason)[0]}" if b.reason else "") for v, b in bad))
    parts.append(f"see `voltabuild group {group_id}`" + (f" or {api}" if api else ""))
    text = escape(" · ".join(parts)) + "\n" + escape("\n".join(lines))
    return {"text": text[:3000], "blocks": blocks}


# ---- the stage's budget alert (issue 22) -------------------------------------------------
def budget_message(month: str, spent: Decimal, budget: Decimal, fraction: Decimal, *, stage: str = "",
                   api_url: str = "") -> dict[str, Any]:
    """The alert that ``month``'s booked costs crossed ``fraction`` of MONTHLY_BUDGET_USD."""
    share = (spent / budget * 100).quantize(Decimal(1)) if budget else Decimal(0)
    left = max(Decimal(0), budget - spent)
    where = f" on stage {stage}" if stage else ""
    headline = f":money_with_wings: {share}% of this month's build budget is spent{where}"
    detail = (f"Builds booked {usd_text(spent)} of MONTHLY_BUDGET_USD {usd_text(budget)} in {month} "
              f"(the alert is at {(fraction * 100).quantize(Decimal(1))}%); {usd_text(left)} is left. A submit whose "
              "worst case would cross the budget is refused with a 429.")
    see = "`voltabuild costs`" + (f" or {api_url}/costs?by=framework" if api_url else "")
    blocks = [{"type": "header", "text": {"type": "plain_text", "text": headline[:150], "emoji": True}},
              _section(escape(detail)), {"type": "context", "elements": [{"type": "mrkdwn", "text": f"see {see}"}]}]
    return {"text": escape(f"{headline} · {detail} · see {see}"), "blocks": blocks}
