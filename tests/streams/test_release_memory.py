"""streams.runtime returns freed C heap memory to the operating system."""

import random
import sys
import time

import pytest

from kdiag.rules import RuleSet
from kdiag.settings import Settings
from streams.runtime import TRIM_INTERVAL_SECONDS, WorkerRuntime, release_free_memory


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("VmRSS missing from /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and needs glibc")
def test_trim_returns_freed_heap():
    assert release_free_memory()
    rng = random.Random(1)
    # Sizes below glibc's mmap threshold land in the heap. Every 50th block stays allocated, so the
    # freed memory lies between live blocks and only a trim can return it.
    blocks = [bytes(rng.randrange(600, 120_000)) for _ in range(3_000)]
    live_blocks = blocks[::50]
    del blocks
    before = rss_kib()
    assert release_free_memory()
    after = rss_kib()
    assert len(live_blocks) == 60
    assert before - after > 50 * 1024, f"RSS went from {before} KiB to {after} KiB"


def test_release_memory_only_after_batches(tmp_path):
    settings = Settings(state_dir=tmp_path)
    runtime = WorkerRuntime(settings, lambda: RuleSet([]))
    runtime._trimmed_at -= TRIM_INTERVAL_SECONDS
    assert not runtime.release_memory_if_due()
    # The batch trims by itself once the interval has passed.
    runtime.process([])
    assert not runtime.release_memory_if_due()


def test_release_memory_waits_for_interval(tmp_path):
    settings = Settings(state_dir=tmp_path)
    runtime = WorkerRuntime(settings, lambda: RuleSet([]))
    runtime._trimmed_at = time.monotonic()
    runtime.process([])
    assert not runtime.release_memory_if_due()
    runtime._trimmed_at -= TRIM_INTERVAL_SECONDS
    assert runtime.release_memory_if_due()
    assert not runtime.release_memory_if_due()
