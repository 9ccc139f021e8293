"""The heap snapshot that bench.memory requests from a worker started through bench/heap_snapshot.py."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.heap_snapshot import HEAP_SNAPSHOT_SCRIPT, request_path, write_snapshot

def test_snapshot_sections() -> None:
    out = io.StringIO()
    write_snapshot(out)
    text = out.getvalue()
    assert "allocated blocks" in text  # sys._debugmallocstats, written by C code to descriptor 2
    assert "objects tracked by the collector" in text
    assert "rocksdb: {'databases'" in text
    if sys.platform.startswith("linux"):
        assert "system bytes" in text  # glibc's malloc_stats


# A process that runs only the launcher's snapshot thread, because a worker would need a broker.
# With the argument "fail", taking the snapshot raises.
SNAPSHOT_PROCESS = """
import sys, threading, time
sys.path.insert(0, {folder!r})
import heap_snapshot

def fail(out):
    raise RuntimeError("no heap today")

if sys.argv[2] == "fail":
    heap_snapshot.write_snapshot = fail
threading.Thread(target=heap_snapshot._serve, args=(heap_snapshot.Path(sys.argv[1]),), daemon=True).start()
time.sleep(60)
"""


def _request_snapshot(heap_file: Path, mode: str) -> str:
    """Start a snapshot process, request a snapshot and return the file's text."""
    env = {**os.environ, "PYTHONTRACEMALLOC": "1"}
    code = SNAPSHOT_PROCESS.format(folder=str(HEAP_SNAPSHOT_SCRIPT.parent))
    process = subprocess.Popen([sys.executable, "-c", code, str(heap_file), mode], env=env)
    try:
        request_path(heap_file).touch()
        deadline = time.monotonic() + 30
        while not heap_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert heap_file.exists()
        assert not request_path(heap_file).exists()
        return heap_file.read_text()
    finally:
        process.kill()
        process.wait(10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs glibc")
def test_snapshot_written_on_request(tmp_path: Path) -> None:
    assert "top by lineno:" in _request_snapshot(tmp_path / "heap.txt", "snapshot")


def test_failed_snapshot_reported(tmp_path: Path) -> None:
    text = _request_snapshot(tmp_path / "heap.txt", "fail")
    assert text.startswith("snapshot failed:")
    assert "RuntimeError: no heap today" in text
