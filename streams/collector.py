"""Settings and timing of Python's cyclic garbage collector in the stream worker.

Parsing a change allocates hundreds of dicts and lists, so the collector runs many times per batch.
A collection of the oldest generation traverses every tracked object of the process, and after
startup the worker has about 80,000 of them (bench.throughput): modules, Faust's app, aiokafka, the
compiled rules. Few of them ever become garbage, so freezing them once after startup leaves them out of
every later collection. In bench.throughput with 100 rules the worker spent 0.35 s of a 22 s run in the
collector without the freeze and 0.13 s with it, in three full collections each (docs/benchmarks.md).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any, Callable

from prometheus_client import Histogram

log = logging.getLogger(__name__)

GC_PAUSE_SECONDS = Histogram(
    "kdiag_gc_pause_seconds",
    "Time of one cyclic garbage collection, by generation",
    ["generation"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
)


class PauseTimer:
    """A gc callback that observes every collection in GC_PAUSE_SECONDS.

    A collection holds the GIL from its start to its stop and collections do not nest, so one start
    time serves every thread.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        self._pauses = {generation: GC_PAUSE_SECONDS.labels(generation=str(generation)) for generation in range(3)}
        # Collections and their seconds by generation, for callers without a metrics scrape.
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        pause = self._clock() - self._started
        generation = info["generation"]
        self._pauses[generation].observe(pause)
        self.collections[generation] += 1
        self.seconds[generation] += pause


_timer: PauseTimer | None = None


def time_collections() -> PauseTimer:
    """Observe every later collection in GC_PAUSE_SECONDS and return the timer. Calling it again
    returns the same timer."""
    global _timer
    if _timer is None:
        _timer = PauseTimer()
        gc.callbacks.append(_timer)
    return _timer


def configure_collector(freeze_startup: bool, young_threshold_objects: int) -> int:
    """Time every later collection, set how many new container objects trigger a collection of the
    youngest generation, and with freeze_startup move every object that exists now to the
    collector's permanent generation. Returns the number of frozen objects.

    Call it once, after startup built what lives as long as the process and before any per-record
    work. A frozen object that later becomes part of an unreachable cycle stays in memory. Objects
    that reference counting frees, as it frees nearly all, are freed as before.
    """
    time_collections()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold_objects, middle, old)
    if freeze_startup:
        gc.collect()
        gc.freeze()
    frozen = gc.get_freeze_count()
    log.info(
        "garbage collector configured",
        extra={"frozen_objects": frozen, "young_threshold_objects": young_threshold_objects},
    )
    return frozen
