"""Garbage collector settings and pause timing (streams/collector.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from streams.collector import PauseTimer, configure_collector


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def restored_collector() -> Iterator[None]:
    """Undo configure_collector, so that the rest of the test session runs with Python's defaults."""
    threshold = gc.get_threshold()
    callbacks = list(gc.callbacks)
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    gc.callbacks[:] = callbacks


def _pause_count(generation: str) -> float:
    return REGISTRY.get_sample_value("kdiag_gc_pause_seconds_count", {"generation": generation}) or 0.0


def test_pause_timer_records_pause_by_generation():
    clock = FakeClock(100.0)
    timer = PauseTimer(clock)
    count_before = _pause_count("1")

    timer("start", {"generation": 1})
    clock.now = 100.25
    timer("stop", {"generation": 1, "collected": 0, "uncollectable": 0})

    assert timer.collections == [0, 1, 0]
    assert timer.seconds[1] == pytest.approx(0.25)
    assert timer.seconds[0] == 0.0
    assert _pause_count("1") == count_before + 1


def test_pause_timer_sees_real_full_collection(restored_collector):
    timer = PauseTimer()
    gc.callbacks.append(timer)

    gc.collect()

    assert timer.collections[2] == 1
    assert timer.seconds[2] > 0.0


def test_configure_collector_freezes_startup_objects(restored_collector):
    frozen = configure_collector(freeze_startup=True, young_threshold_objects=5000)

    assert frozen == gc.get_freeze_count()
    # Every module and function object of this process exists at this point.
    assert frozen > 10_000
    assert gc.get_threshold()[0] == 5000


def test_configure_collector_without_freeze(restored_collector):
    gc.unfreeze()

    frozen = configure_collector(freeze_startup=False, young_threshold_objects=700)

    assert frozen == 0
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold()[0] == 700


def test_frozen_objects_left_out_of_collections(restored_collector):
    configure_collector(freeze_startup=True, young_threshold_objects=700)

    gc.collect()

    # A full collection moves every tracked object it traverses into the oldest generation.
    assert len(gc.get_objects(generation=2)) < gc.get_freeze_count()
