"""Run `kdiag` with a thread that writes a snapshot of the process's Python heap on request.

    python bench/heap_snapshot.py worker [kdiag options...]

bench.memory starts the worker this way with --breakdown or --log-dir. The environment variable
KDIAG_BENCH_HEAP_FILE names the snapshot file. Creating that path with the suffix ".request" makes
the thread write the snapshot and then delete the request. The snapshot has:

- glibc's malloc_stats, the memory of each malloc arena;
- sys._debugmallocstats(): pymalloc's arenas and pools by size class;
- the objects that the garbage collector tracks, counted by type;
- tracemalloc's top allocation sites, when the process runs with PYTHONTRACEMALLOC;
- the containers that hold large bytes objects;
- RocksDB's memory properties, summed over the open databases.

Attaching gdb to call into the worker does not work on every machine: in a Firecracker VM, gdb
fails with "Couldn't write extended state status: Bad address". This launcher needs no debugger.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import gc
import os
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
from pathlib import Path
from typing import Callable, TextIO

HEAP_FILE_VARIABLE = "KDIAG_BENCH_HEAP_FILE"
# Run as a script, because the worker runs in a temporary folder where the bench package is not importable.
HEAP_SNAPSHOT_SCRIPT = Path(__file__).resolve()
REQUEST_SUFFIX = ".request"
POLL_SECONDS = 0.2
TOP_LINES = 30
ROCKSDB_PROPERTIES = (
    "cur-size-all-mem-tables",
    "size-all-mem-tables",
    "estimate-table-readers-mem",
    "block-cache-usage",
    "block-cache-pinned-usage",
)


def request_path(heap_file: Path) -> Path:
    return heap_file.with_name(heap_file.name + REQUEST_SUFFIX)


def write_snapshot(out: TextIO) -> None:
    """Write the heap figures of this process to out."""
    out.write("glibc malloc_stats() and sys._debugmallocstats():\n")
    out.write(_c_stderr_of(_print_allocator_stats))
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot()
        traced, peak = tracemalloc.get_traced_memory()
        out.write(f"traced {traced} bytes, peak {peak} bytes, tracemalloc's own {tracemalloc.get_tracemalloc_memory()} bytes\n")
        for group in ("filename", "lineno"):
            out.write(f"top by {group}:\n")
            for stat in snapshot.statistics(group)[:TOP_LINES]:
                out.write(f"{stat}\n")
        del snapshot

    objects = gc.get_objects()
    counts = collections.Counter(type(item).__qualname__ for item in objects)
    out.write(f"objects tracked by the collector: {len(objects)}; the most common types:\n")
    for name, count in counts.most_common(TOP_LINES):
        out.write(f"{count:10} {name}\n")
    _write_referents(out, objects)
    del objects


def _print_allocator_stats() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_stats()
    sys._debugmallocstats()


def _c_stderr_of(function: Callable[[], None]) -> str:
    """Return what function writes to file descriptor 2, where C code prints.

    While it runs, the other threads' lines to standard error go to the same text.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            function()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        return captured.read().decode(errors="replace")


def _write_referents(out: TextIO, objects: list[object]) -> None:
    """Write the containers that hold bytes of 16 KiB or more (record values), by type, and the memory
    of the RocksDB databases they reference. Databases are found as referents, because the collector
    does not track them."""
    from rocksdict import Rdict

    holders: dict[str, tuple[int, int]] = {}
    databases: dict[int, Rdict] = {}
    for item in objects:
        large = []
        for value in gc.get_referents(item):
            if type(value) is bytes and len(value) >= 16384:
                large.append(value)
            elif isinstance(value, Rdict):
                databases[id(value)] = value
        if large:
            name = type(item).__qualname__
            count, size = holders.get(name, (0, 0))
            holders[name] = (count + len(large), size + sum(len(value) for value in large))
    out.write("holders of bytes of 16 KiB or more:\n")
    for name, (count, size) in sorted(holders.items(), key=lambda pair: -pair[1][1])[:TOP_LINES]:
        out.write(f"{size / 1048576:8.1f} MiB in {count} bytes: {name}\n")
    totals: dict[str, int] = {"databases": len(databases)}
    for database in databases.values():
        for name in ROCKSDB_PROPERTIES:
            try:
                value = database.property_int_value("rocksdb." + name) or 0
            except Exception:  # A closed database raises, and its memory was released with it.
                continue
            if name.startswith("block-cache"):
                totals[name] = max(totals.get(name, 0), value)
            else:
                totals[name] = totals.get(name, 0) + value
    out.write(f"rocksdb: {totals}\n")


def _serve(heap_file: Path) -> None:
    request = request_path(heap_file)
    while True:
        time.sleep(POLL_SECONDS)
        if not request.exists():
            continue
        partial = heap_file.with_name(heap_file.name + ".partial")
        with open(partial, "w") as out:
            try:
                write_snapshot(out)
            except Exception:  # The requester reads the failure in the file instead of waiting for it.
                out.write(f"snapshot failed:\n{traceback.format_exc()}")
        request.unlink(missing_ok=True)
        partial.replace(heap_file)


def main(argv: list[str] | None = None) -> int:
    heap_file = os.environ.get(HEAP_FILE_VARIABLE)
    if heap_file:
        threading.Thread(target=_serve, args=(Path(heap_file),), name="heap-snapshot", daemon=True).start()
    from kdiag.cli import main as kdiag_main

    return kdiag_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())
