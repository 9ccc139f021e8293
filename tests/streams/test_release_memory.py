"""streams.runtime returns freed C heap memory to the operating system."""

import os
import random
import subprocess
import sys
import time

import pytest

from kdiag.rules import RuleSet
from kdiag.settings import Settings
from streams.runtime import (
    ARENA_MAX,
    ARENA_MAX_VARIABLE,
    TRIM_INTERVAL_SECONDS,
    TRIM_THRESHOLD_BYTES,
    WorkerRuntime,
    release_free_memory,
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


# Allocates 24 MiB in a thread, which gets its own glibc arena, and frees it again. A 16 MiB block
# freed first makes glibc raise its trim threshold to 32 MiB, as the worker's large batches do, so
# by default the arena keeps the freed 24 MiB at its top.
THREAD_ARENA_SCRIPT = """
import ctypes, sys, threading
from streams.runtime import bound_free_arena_memory, release_free_memory

if sys.argv[1] == "bound":
    assert bound_free_arena_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

def allocate_and_free():
    large = libc.malloc(16 << 20)
    ctypes.memset(large, 1, 16 << 20)
    libc.free(large)
    blocks = [libc.malloc(64 << 10) for _ in range(384)]
    for block in blocks:
        ctypes.memset(block, 1, 64 << 10)
    for block in reversed(blocks):
        libc.free(block)

before = rss_kib()
thread = threading.Thread(target=allocate_and_free)
thread.start()
thread.join()
release_free_memory()
print(rss_kib() - before)
"""


def _thread_arena_growth_kib(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", THREAD_ARENA_SCRIPT, mode], capture_output=True, text=True, timeout=60, check=True
    )
    return int(result.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and needs glibc")
def test_thread_arena_top_kept_by_default():
    # malloc_trim returns the top of the main arena only, so a thread arena keeps its freed top.
    assert _thread_arena_growth_kib("default") > 16 * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and needs glibc")
def test_bounded_thread_arena_returns_top():
    growth_kib = _thread_arena_growth_kib("bound")
    assert growth_kib < TRIM_THRESHOLD_BYTES // 1024 + 2 * 1024


# Starts 6 threads that allocate at the same time, then prints how many malloc arenas exist.
ARENA_COUNT_SCRIPT = """
import ctypes, threading
from streams.runtime import bound_free_arena_memory

assert bound_free_arena_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
barrier = threading.Barrier(6)

def allocate():
    libc.malloc(1024)
    barrier.wait()

threads = [threading.Thread(target=allocate) for _ in range(6)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
libc.malloc_stats()
"""


def _arena_count(environ: dict[str, str]) -> int:
    result = subprocess.run(
        [sys.executable, "-c", ARENA_COUNT_SCRIPT], capture_output=True, text=True, timeout=60, check=True, env=environ
    )
    return sum(1 for line in result.stderr.splitlines() if line.startswith("Arena "))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs glibc")
def test_arenas_limited():
    environ = {key: value for key, value in os.environ.items() if key != ARENA_MAX_VARIABLE}
    assert _arena_count(environ) == ARENA_MAX


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs glibc")
def test_operator_arena_limit_kept():
    environ = {**os.environ, ARENA_MAX_VARIABLE: "8"}
    assert _arena_count(environ) > ARENA_MAX
