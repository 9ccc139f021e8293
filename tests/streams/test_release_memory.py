"""streams.runtime returns freed C heap memory to the operating system."""

import random
import subprocess
import sys
import time

import pytest

from kdiag.rules import RuleSet
from kdiag.settings import Settings
from streams.runtime import (
    MMAP_THRESHOLD_BYTES,
    TRIM_INTERVAL_SECONDS,
    WorkerRuntime,
    release_free_memory,
    set_mmap_threshold,
)


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


_MAPPED_BLOCKS_SCRIPT = """
import ctypes
from streams.runtime import set_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.mallinfo2.restype = MallInfo2
assert set_mmap_threshold()
before = libc.mallinfo2().hblks
blocks = [libc.malloc(96 << 10) for _ in range(200)]
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs glibc 2.33 or later for mallinfo2")
def test_mmap_threshold_maps_large_blocks():
    # A fresh interpreter, because glibc maps a block only when no free chunk of the heap fits it.
    # 96 KiB is above MMAP_THRESHOLD_BYTES and below glibc's default threshold of 128 KiB.
    assert MMAP_THRESHOLD_BYTES < 96 << 10
    output = subprocess.run(
        [sys.executable, "-c", _MAPPED_BLOCKS_SCRIPT], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert int(output) >= 100


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
