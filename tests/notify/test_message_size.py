"""The Slack message shows the pushed image's compressed size (issue 19)."""

from __future__ import annotations

from chalicelib.builds.states import Status
from chalicelib.notifications.slack_message import build_message, image_size_text

from .test_message import a_build, everything


def test_a_succeeded_build_shows_its_compressed_size():
    build = a_build(Status.SUCCEEDED, image={
        "repository": "r/voltabuild/pytorch", "tags": ["2.5.1"], "digest": "sha256:" + "0f" * 32,
        "compressed_size_bytes": 4_312_000_000, "base_image_digest": "sha256:" + "ab" * 32})
    msg = build_message(build)
    image_block = next(b for b in msg["blocks"] if b.get("text", {}).get("text", "").startswith("*Image*"))
    assert image_block["text"]["text"].endswith("\n4.31 GB compressed")
    assert "(4.31 GB compressed)" in msg["text"]


def test_no_size_line_when_it_was_not_measured():
    msg = build_message(a_build(Status.SUCCEEDED))
    assert "compressed" not in everything(msg)


def test_sizes_read_like_a_registry_shows_them():
    assert [image_size_text(n) for n in (None, 999, 2_150_000, 1_000, 4_312_000_000)] == [
        None, "999 B", "2.15 MB", "1.00 kB", "4.31 GB"]
