"""`voltabuild status` of a split build (issue 23): its cost (both instances) against the same
build on the GPU instance alone, and its wall time without the handover; nothing for an
unsplit build."""

from __future__ import annotations

from datetime import UTC, datetime

from voltabuild_cli.render import build_detail, split_saving

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def part(price: float, seconds: int, volume: float = 0.0) -> dict:
    compute = price * seconds / 3600
    return {"price_per_hour": str(price), "billed_seconds": seconds, "compute_usd": str(compute),
            "volume_usd": str(volume), "usd": str(compute + volume), "estimated": False}


def split_build() -> dict:
    cpu, gpu = part(0.40, 3600), part(1.20, 600)  # an hour of compiling, ten minutes of testing
    return {
        "id": "b-0123456789abcdef0123", "status": "SUCCEEDED", "framework": "pytorch", "version": "2.14.1",
        "cuda": "12.6", "python": "3.12", "attempt": 2, "max_attempts": 3, "split": True, "stage": "test",
        "created_at": "2026-12-02T07:00:00Z", "finished_at": "2026-12-02T08:15:00Z",
        "image": {"repository": "r/voltabuild/pytorch", "tags": ["t"], "digest": "sha256:" + "a" * 64},
        "stages": {"build": {"instance": {"id": "i-0aaaaaaaaaaaaaaaa", "type": "c7i.8xlarge"}},
                   "test": {"instance": {"id": "i-0bbbbbbbbbbbbbbbb", "type": "g5.xlarge"}}},
        "cost": {"usd": str(0.40 + 0.20), "estimated": False, "instances": [cpu, gpu]},
        "events": [
            {"at": "2026-12-02T07:00:00Z", "status": "QUEUED", "stage": "build", "message": "accepted"},
            {"at": "2026-12-02T08:01:00Z", "status": "RUNNING", "stage": "test", "message": "build stage done"},
            {"at": "2026-12-02T08:04:00Z", "status": "RUNNING", "phase": "PREPARING", "stage": "test"},
        ],
    }


def test_status_shows_what_the_split_saved_against_the_gpu_instance_alone():
    text = split_saving(split_build())
    # split: $0.40 + $0.20; unsplit: the GPU's $1.20/h for 3600 + 600 s = $1.40
    assert text.splitlines()[0] == ("$0.60 (build c7i.8xlarge $0.40 + test g5.xlarge $0.20); "
                                    "unsplit on g5.xlarge ~$1.40: saves ~$0.80 (57%)")
    assert "wall 1h15m vs ~1h12m unsplit (the handover to the GPU instance took 3m00s" in text.splitlines()[1]
    assert "  split     $0.60 (build c7i.8xlarge" in build_detail(split_build(), NOW)


def test_no_split_line_for_an_unsplit_or_unpriced_build():
    unsplit = {**split_build(), "split": False}
    assert split_saving(unsplit) is None
    assert not any(line.startswith("  split") for line in build_detail(unsplit, NOW).splitlines())
    assert split_saving({**split_build(), "cost": None}) is None
    one = split_build()
    one["cost"]["instances"] = one["cost"]["instances"][:1]  # the build stage failed: nothing to compare
    assert split_saving(one) is None
