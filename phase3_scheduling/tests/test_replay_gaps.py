"""The arithmetic of replay_gaps.py (the GPU script itself runs in the GPU session): busy
periods merged from overlapping kernels, and the per-step gaps taken from a synthetic timeline
whose gaps are known."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from replay_gaps import gap_stats, kv_blocks, merge  # noqa: E402


def test_merge_joins_overlapping_and_touching_kernels():
    assert merge([(5, 7), (0, 2), (1, 3), (3, 4), (9, 10)]) == [(0, 4), (5, 7), (9, 10)]


def test_gap_stats_of_a_known_timeline():
    # 4 steps of 100 µs of kernels (two overlapping streams inside each), 30 µs apart, with small
    # 2 µs gaps inside steps that must not count as step boundaries
    kernels = []
    for step in range(4):
        t0 = step * 130.0
        kernels += [(t0, t0 + 49), (t0 + 40, t0 + 49), (t0 + 51, t0 + 100)]
    stats = gap_stats(kernels, steps=4)
    assert stats["step_gap_us_median"] == pytest.approx(30.0)
    assert stats["step_gap_us_max"] == pytest.approx(30.0)
    assert stats["wall_us_per_step"] == pytest.approx((3 * 130 + 100) / 4)
    assert stats["busy_us_per_step"] == pytest.approx(98.0)
    assert stats["idle_us_per_step"] == pytest.approx((490 - 4 * 98) / 4)
    with pytest.raises(ValueError):
        gap_stats([(0, 1)], steps=4)


def test_kv_blocks_hold_every_request_of_a_large_batch():
    assert kv_blocks(1, 160) == 2048  # small runs keep the old pool
    blocks = kv_blocks(256, 1024 + 80)  # 69 blocks of 16 tokens a request
    assert blocks >= 256 * 69 and (blocks - 256 * 69) < 256
