"""The heap snapshot that bench.memory requests from a worker started through bench/heap_snapshot.py."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.heap_snapshot import HEAP_FILE_VARIABLE, HEAP_SNAPSHOT_SCRIPT, request_path, write_snapshot

def test_snapshot_sections() -> None:
    out = io.StringIO()
    write_snapshot(out)
    text = out.getvalue()
    assert "allocated blocks" in text  # sys._debugmallocstats, written by C code to descriptor 2
    assert "objects tracked by the collector" in text
    assert "rocksdb: {'databases'" in text
    if sys.platform.startswith("linux"):
        assert "system bytes" in text  # glibc's malloc_stats


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs glibc")
def test_snapshot_written_on_request(tmp_path: Path) -> None:
    heap_file = tmp_path / "heap.txt"
    env = {**os.environ, HEAP_FILE_VARIABLE: str(heap_file), "PYTHONTRACEMALLOC": "1"}
    # A process that runs only the launcher's snapshot thread, because a worker would need a broker.
    code = (
        "import sys, threading, time\n"
        f"sys.path.insert(0, {str(HEAP_SNAPSHOT_SCRIPT.parent)!r})\n"
        "import heap_snapshot\n"
        "threading.Thread(target=heap_snapshot._serve, args=(heap_snapshot.Path(sys.argv[1]),), daemon=True).start()\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(heap_file)], env=env)
    try:
        request_path(heap_file).touch()
        deadline = time.monotonic() + 30
        while not heap_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert heap_file.exists()
        assert not request_path(heap_file).exists()
        assert "top by lineno:" in heap_file.read_text()
    finally:
        process.kill()
        process.wait(10)
