"""``voltabuild status`` shows where a build's time went as a small bar chart (render.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from voltabuild_cli.render import build_detail, segments_chart


def test_bars_scale_to_the_longest_segment_in_segment_order():
    lines = segments_chart({"pushing": 60.0, "queued": 0.4, "building": 1800.0, "terminate_lag": 0.0}, width=30)
    assert lines[0] == "  time spent"
    names = [ln.split()[0] for ln in lines[1:]]
    assert names == ["queued", "building", "pushing", "terminate"]
    bars = {ln.split()[0]: ln[18:48] for ln in lines[1:]}
    assert bars["building"] == "█" * 30
    assert bars["pushing"].strip() == "█"  # 60/1800 of 30 cells
    assert bars["queued"].strip() == "▏"  # under a cell, but it took time
    assert bars["terminate"].strip() == ""  # none at all
    assert lines[2].endswith("30m00s") and lines[3].endswith("1m00s") and lines[1].endswith("0s")


def test_no_segments_no_chart():
    assert segments_chart({}) == []


def test_status_shows_the_chart_between_the_fields_and_the_timeline():
    build = {
        "id": "b-1", "status": "SUCCEEDED", "framework": "canary", "created_at": "2026-12-02T07:00:00Z",
        "finished_at": "2026-12-02T07:05:00Z", "segments": {"queued": 5.0, "building": 250.0, "pushing": 45.0},
        "events": [{"at": "2026-12-02T07:00:00Z", "status": "QUEUED", "message": "accepted"}],
    }
    text = build_detail(build, datetime(2026, 12, 2, 7, 6, tzinfo=UTC))
    lines = text.splitlines()
    chart = lines.index("  time spent")
    assert lines.index("  timeline") == chart + 4
    assert lines[chart + 2].split()[0] == "building" and "4m10s" in lines[chart + 2]
