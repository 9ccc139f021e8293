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


def test_per_record_without_scale():
    # 1,000 records with 410 changes, then 1,000 more with 1,000 changes.
    marks = [(0.0, 0.0), (1_000.0, 410.0), (2_000.0, 1_410.0)]

    assert _per_record_halves(marks, scale=1.0, digits=2) == [0.41, 1.0]
