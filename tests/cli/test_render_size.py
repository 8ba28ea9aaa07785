"""`voltabuild status` shows the image's compressed size and base digest when the build
measured them (issue 19); nothing when it did not."""

from __future__ import annotations

from datetime import UTC, datetime

from voltabuild_cli.render import build_detail, human_size

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
BASE = "sha256:" + "b" * 64


def a_build(**image) -> dict:
    return {"id": "b-0123456789abcdef0123", "status": "SUCCEEDED", "framework": "canary", "version": "1.0",
            "cuda": "none", "python": "none", "attempt": 1, "max_attempts": 3,
            "created_at": "2026-12-02T07:59:00Z", "finished_at": "2026-12-02T07:59:40Z",
            "image": {"repository": "127.0.0.1:5055/voltabuild/canary", "tags": ["1.0"],
                      "digest": "sha256:" + "a" * 64, **image}}


def test_status_shows_the_compressed_size_and_the_base():
    out = build_detail(a_build(compressed_size_bytes=1_089_652, base_image_digest=BASE), NOW)
    assert f"  size      1.09 MB compressed (base {BASE})" in out.splitlines()


def test_status_without_a_measurement_has_no_size_line():
    out = build_detail(a_build(), NOW)
    assert not any(line.startswith("  size") for line in out.splitlines())


def test_human_size():
    assert [human_size(n) for n in (None, 0, 1_500, 4_312_000_000)] == [None, "0 B", "1.50 kB", "4.31 GB"]
