"""The replay benchmark's figures (bench/replay_speed.py)."""

from __future__ import annotations

from bench.replay_speed import _per_record_halves


def test_per_record_between_marks():
    # 1,000 records in 0.5 s of CPU, then 1,000 more in 1.5 s.
    marks = [(1_000.0, 10.0), (2_000.0, 10.5), (3_000.0, 12.0)]

    assert _per_record_halves(marks) == [500.0, 1500.0]


def test_per_record_skips_empty_interval():
    marks = [(2_000.0, 10.0), (2_000.0, 10.2), (3_000.0, 11.0)]

    assert _per_record_halves(marks) == [800.0]
