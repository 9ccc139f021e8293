"""Worker memory: RSS with many tracked objects, and with 1, 6 and 12 partitions.

    python -m bench.memory [--tracked 0,100000,250000] [--partitions 6] [--partition-scan 1,6,12]

A tracked object is one with an active entry. Each point fills fresh topics with that many Pending
Pods that the starter pack's PodUnschedulable rule (300 s) matches, all observed within a few
seconds so that none fires, and a tick to every partition. Then a fresh worker processes them, and
once its kdiag_worker_records_total counter shows every record, VmRSS is read from
/proc/<pid>/status every 0.5 s for 5 s. The figure is the median of those reads; the peak covers the
whole run. The growth per tracked object is the least-squares slope of RSS over the tracked counts.

The Pods are compact (about 1 KiB of JSON: metadata, one container, the PodScheduled condition),
because the worker keeps entries, not objects, and producing a million 9 KiB Pods takes too long
here. The partition scan measures 0 and --scan-tracked tracked objects on each of the
--partition-scan partition counts, reusing points measured already.

Model figures come first: the Python heap per entry of a streams.processor.PartitionProcessor,
measured with tracemalloc after it processed 100,000 such Pods in this process, without Kafka or
Faust. One keeps its entries in memory (kdiag.durations.MemoryEntries), the other in RocksDB as the
worker does (streams.state.StoredEntries). tracemalloc sees only Python's allocations, not RocksDB's.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any, Iterator

import orjson
from confluent_kafka import Producer

from bench import (
    PACK_RULES,
    BenchError,
    Broker,
    RssSampler,
    WorkerProcess,
    cleanup,
    env_pair,
    end_offsets,
    make_topics,
    metric_sum,
    progress,
    report,
    rss_kib,
)
from bench.heap_snapshot import HEAP_FILE_VARIABLE, HEAP_SNAPSHOT_SCRIPT, request_path
from connectors.publisher import Publisher, producer_config
from kdiag.codec import codec
from kdiag.model import ResourceChange, format_time_ms
from kdiag.rules import load_rules

START_MS = 1_714_521_600_000
PODS_PER_NAMESPACE = 100
SETTLE_SECONDS = 5.0
MODEL_ENTRIES = 100_000


def pending_pods(count: int, cluster: str, seed: int = 1) -> Iterator[ResourceChange]:
    """Yield ADDED changes of compact Pods that the scheduler cannot place, 1 ms of event time apart."""
    created = format_time_ms(START_MS)
    for index in range(count):
        namespace = f"tenant-{index // PODS_PER_NAMESPACE}"
        name = f"batch-job-{index}-{(index * 2654435761) % 100000:05d}"
        uid = str(uuid.UUID(int=(seed << 64) + index, version=4))
        obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid,
                "resourceVersion": str(1000 + index),
                "creationTimestamp": created,
                "labels": {"app": "batch-job", "job-name": f"batch-job-{index}", "team": "data"},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": f"batch-job-{index}", "uid": uid, "controller": True}],
            },
            "spec": {
                "containers": [
                    {
                        "name": "main",
                        "image": "registry.example.internal/data/batch-job:v3.1.0",
                        "resources": {"requests": {"cpu": "4", "memory": "64Gi"}},
                    }
                ],
                "restartPolicy": "Never",
                "schedulerName": "default-scheduler",
            },
            "status": {
                "phase": "Pending",
                "qosClass": "Burstable",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "lastProbeTime": None,
                        "lastTransitionTime": created,
                        "message": "0/40 nodes are available: 40 Insufficient memory. preemption: 0/40 nodes are available: 40 No preemption victims found for incoming pod.",
                    }
                ],
            },
        }
        yield ResourceChange(
            cluster=cluster,
            api_version="v1",
            kind="Pod",
            namespace=namespace,
            name=name,
            uid=uid,
            resource_version=obj["metadata"]["resourceVersion"],
            change_type="ADDED",
            observed_time_ms=START_MS + index % 5000,
            object_json=orjson.dumps(obj),
        )


def fill(settings: Any, tracked: int) -> int:
    """Produce `tracked` pending Pods and one tick per partition. Returns the topic's record count."""
    producer = Producer({**producer_config(settings, 120.0), "linger.ms": 20, "queue.buffering.max.kbytes": 512 * 1024})
    publisher = Publisher(settings, source="bench-memory", producer=producer, delivery_timeout_seconds=120.0)
    publisher.partition_count()
    try:
        for change in pending_pods(tracked, settings.cluster):
            publisher.publish_change(change, "bench-memory")
        publisher.publish_tick(settings.cluster, START_MS + 5000)
    finally:
        summary = publisher.close()
    if summary.failures:
        raise BenchError(f"{len(summary.failures)} records were not delivered, first: {summary.failures[0]}")
    return sum(end_offsets(settings.bootstrap_servers, settings.changes_topic, settings.partitions))


_MAPPING = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")
_ARENA_BYTES = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit: each thread arena's heap is one aligned 64 MiB mapping


def mapping_kind(start: int, perms: str, path: str, size: int) -> str:
    """Name the kind of one /proc/<pid>/smaps mapping: its file's name, the main heap, or an anonymous kind."""
    if path == "[heap]":
        return "main arena ([heap], brk)"
    if path.startswith("["):
        return path
    if path:
        name = path.rsplit("/", 1)[-1]
        return f"file {name}" if ".so" in name else "other files"
    if start % _ARENA_BYTES == 0 and size < _ARENA_BYTES and "rw" in perms:
        return "anonymous: thread arena heaps (64 MiB aligned)"
    if size <= (8 << 20) + (4 << 10) and size >= (8 << 20):
        return "anonymous: 8 MiB (thread stacks)"
    return "anonymous: other (pymalloc arenas, mmap'd blocks)"


def rss_breakdown(pid: int) -> dict[str, int]:
    """Return RSS in KiB per mapping kind of a process, from /proc/<pid>/smaps, or {} once it exited."""
    totals: dict[str, int] = {}
    kind = ""
    try:
        with open(f"/proc/{pid}/smaps") as smaps:
            for line in smaps:
                match = _MAPPING.match(line)
                if match:
                    start, end = int(match.group(1), 16), int(match.group(2), 16)
                    kind = mapping_kind(start, match.group(3), match.group(4).strip(), end - start)
                elif line.startswith("Rss:"):
                    totals[kind] = totals.get(kind, 0) + int(line.split()[1])
    except OSError:
        return {}
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def heap_snapshot(worker: WorkerProcess, heap_file: Path, timeout_seconds: float = 300.0) -> list[str]:
    """Make a worker started through bench/heap_snapshot.py write its heap snapshot to heap_file, and
    keep a copy of its /proc/<pid>/smaps beside it.

    Returns the snapshot's lines of glibc's malloc_stats and pymalloc's totals, or raises BenchError
    when no snapshot came within timeout_seconds.
    """
    heap_file.unlink(missing_ok=True)
    request_path(heap_file).touch()
    deadline = time.monotonic() + timeout_seconds
    while not heap_file.exists():
        worker.check_running()
        if time.monotonic() > deadline:
            raise BenchError(
                f"timed out after {timeout_seconds} s waiting for the worker's heap snapshot in {heap_file}; "
                f"last log lines:\n{worker.log_tail()}"
            )
        time.sleep(0.2)
    with contextlib.suppress(OSError):
        shutil.copyfile(f"/proc/{worker.pid}/smaps", heap_file.with_suffix(".smaps"))
    text = heap_file.read_text(errors="replace")
    return [line for line in text.splitlines() if "bytes" in line or line.startswith("Arena") or "mmap" in line]


def measure_point(
    broker: Broker,
    tracked: int,
    partitions: int,
    timeout_seconds: float,
    worker_env: dict[str, str] | None = None,
    breakdown: bool = False,
    log_dir: Path | None = None,
) -> dict[str, Any]:
    topics = make_topics(broker.bootstrap_servers, "memory", partitions)
    mappings: dict[str, int] = {}
    arenas: list[str] = []
    try:
        progress(f"memory: {tracked} tracked objects on {partitions} partitions")
        records = fill(topics.settings, tracked)
        snapshot = breakdown or log_dir is not None
        heap_file = (log_dir or topics.work_dir).resolve() / f"heap-{tracked}-{partitions}p.txt"
        worker = WorkerProcess(
            topics,
            extra_env={**(worker_env or {}), HEAP_FILE_VARIABLE: str(heap_file)} if snapshot else worker_env,
            launcher=[sys.executable, str(HEAP_SNAPSHOT_SCRIPT)] if snapshot else None,
        )
        sampler = RssSampler(worker.pid).start()
        try:
            started = time.monotonic()
            while True:
                worker.check_running()
                metrics = worker.metrics(("kdiag_worker_records_total",)) or {}
                if metric_sum(metrics, "kdiag_worker_records_total") >= records:
                    break
                if time.monotonic() - started > timeout_seconds:
                    raise BenchError(f"the worker did not process {records} records within {timeout_seconds} s:\n{worker.log_tail()}")
                time.sleep(0.5)
            processing_seconds = time.monotonic() - started
            settled = []
            for _ in range(int(SETTLE_SECONDS / 0.5)):
                time.sleep(0.5)
                value = rss_kib(worker.pid)
                if value is not None:
                    settled.append(value)
            metrics = worker.metrics() or {}
            if breakdown:
                mappings = rss_breakdown(worker.pid)
            if snapshot:
                heap_file.parent.mkdir(parents=True, exist_ok=True)
                arenas = heap_snapshot(worker, heap_file)
        finally:
            sampler.stop()
            worker.stop()
            if log_dir is not None:
                log_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(worker.log_path, log_dir / f"worker-{tracked}-{partitions}p-{worker.pid}.log")
    finally:
        cleanup(broker, topics)
    entries = int(metric_sum(metrics, "kdiag_worker_entries"))
    if entries < tracked:
        missing = int(metric_sum(metrics, "kdiag_worker_offsets_missing_total"))
        changes = int(metric_sum(metrics, "kdiag_worker_changes_total"))
        raise BenchError(
            f"the worker tracks {entries} entries, expected at least {tracked}; it evaluated {changes} "
            f"changes of {tracked} and saw {missing} changes-topic offsets missing between delivered records"
        )
    return {
        "tracked": tracked,
        "entries": entries,
        "partitions": partitions,
        "records": records,
        "rss_mib": round(statistics.median(settled) / 1024, 1),
        "peak_rss_mib": round(sampler.peak_kib / 1024, 1),
        "processing_seconds": round(processing_seconds, 1),
        "rss_kib_by_mapping": mappings,
        "malloc_stats": arenas,
    }


def model_bytes_per_entry(count: int = MODEL_ENTRIES, stored: bool = False) -> float:
    """Return the Python heap per entry of a PartitionProcessor that processed `count` pending Pods.

    With `stored`, the processor keeps its entries in a RocksDB EntryStore in a temporary folder, and
    each record's state writes are applied to it, as the worker applies them after each commit.
    """
    from streams.processor import BatchResult, PartitionProcessor
    from streams.state import EntryStore, StoredEntries

    batch_codec = codec("ChangeBatch")
    rule_set = load_rules([PACK_RULES])
    records = []
    chunk: list[dict[str, Any]] = []
    for change in pending_pods(count, "model"):
        chunk.append(change.to_avro())
        if len(chunk) == 100:
            records.append(batch_codec.encode({"changes": chunk, "tick": None}))
            chunk = []
    if chunk:
        records.append(batch_codec.encode({"changes": chunk, "tick": None}))
    with tempfile.TemporaryDirectory(prefix="kdiag-bench-memory-") as folder:
        store = EntryStore(Path(folder), 0) if stored else None
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        if store is not None:
            processor = PartitionProcessor(
                "model", 0, rule_set, [], {}, 0, lookup=store.get, scan=store.scan_keys, entry_storage=StoredEntries(store)
            )
        else:
            processor = PartitionProcessor("model", 0, rule_set, [], {}, 0)
        for offset, value in enumerate(records):
            result = BatchResult()
            processor.process(offset, value, result)
            writes = processor.take_state_writes()
            if store is not None:
                store.apply(writes, offset)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        entries = sum(processor.tracker.counts())
        if store is not None:
            store.close()
    if entries < count:
        raise BenchError(f"the model processor tracks {entries} entries, expected {count}")
    return (after - before) / entries


def slope(points: list[dict[str, Any]]) -> float | None:
    """Return the least-squares RSS growth in MiB per tracked object, or None with fewer than 2 counts."""
    xs = [point["tracked"] for point in points]
    ys = [point["rss_mib"] for point in points]
    if len(set(xs)) < 2:
        return None
    mean_x = statistics.fmean(xs)
    mean_y = statistics.fmean(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)


def run(args: argparse.Namespace, broker: Broker) -> dict[str, Any]:
    model = model_stored = None
    if not args.skip_model:
        progress(f"memory: Python heap per entry of a PartitionProcessor with {MODEL_ENTRIES} entries")
        model = model_bytes_per_entry()
        model_stored = model_bytes_per_entry(stored=True)
    worker_env = dict(args.worker_env)
    points = [
        measure_point(broker, tracked, args.partitions, args.timeout, worker_env, args.breakdown, args.log_dir)
        for tracked in args.tracked
    ]
    scan = []
    for partitions in args.partition_scan:
        for tracked in (0, args.scan_tracked):
            existing = next((p for p in points if p["partitions"] == partitions and p["tracked"] == tracked), None)
            scan.append(existing or measure_point(broker, tracked, partitions, args.timeout, worker_env, args.breakdown, args.log_dir))
    growth = slope(points)
    base = next((point["rss_mib"] for point in points if point["tracked"] == 0), None)
    one_million = base + growth * 1_000_000 if growth is not None and base is not None else None
    lines = []
    if model is not None and model_stored is not None:
        lines += [
        f"model: {model:.0f} bytes of Python heap per entry in a PartitionProcessor, entries in memory "
        f"(tracemalloc, {MODEL_ENTRIES} entries)",
        f"model: {model_stored:.0f} bytes of Python heap per entry in a PartitionProcessor, entries in RocksDB "
        f"as in the worker (tracemalloc, {MODEL_ENTRIES} entries)",
        ]
    lines += [
        f"{p['tracked']:>9} tracked, {p['partitions']:>2} partitions: RSS {p['rss_mib']:.0f} MiB "
        f"(peak {p['peak_rss_mib']:.0f} MiB), processed in {p['processing_seconds']:.0f} s"
        for p in points
    ]
    for point in points:
        if point["rss_kib_by_mapping"]:
            lines.append(f"RSS by mapping, {point['tracked']} tracked:")
            lines += [f"  {kib / 1024:7.1f} MiB  {kind}" for kind, kib in point["rss_kib_by_mapping"].items() if kib >= 512]
        if point["malloc_stats"]:
            lines.append(f"glibc malloc_stats, {point['tracked']} tracked:")
            lines += [f"  {line}" for line in point["malloc_stats"]]
    if growth is not None:
        lines.append(f"growth: {growth * 1024 * 1024:.0f} bytes of RSS per tracked object ({args.partitions} partitions)")
    if one_million is not None and max(args.tracked) < 1_000_000:
        lines.append(f"1M tracked objects, extrapolated linearly from the points above: {one_million:.0f} MiB")
    lines.append("partitions (0 and %d tracked):" % args.scan_tracked)
    lines += [
        f"  {p['partitions']:>2} partitions, {p['tracked']:>7} tracked: RSS {p['rss_mib']:.0f} MiB (peak {p['peak_rss_mib']:.0f} MiB)"
        for p in scan
    ]
    figures = {
        "model_bytes_per_entry": round(model) if model is not None else None,
        "model_bytes_per_stored_entry": round(model_stored) if model_stored is not None else None,
        "points": points,
        "bytes_per_tracked_object": round(growth * 1024 * 1024) if growth is not None else None,
        "rss_mib_1m_extrapolated": round(one_million, 1) if one_million is not None else None,
        "partition_scan": scan,
    }
    report("memory", lines, figures)
    return figures


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracked", type=_counts, default=[0, 100_000, 250_000], help="comma-separated tracked-object counts (default 0,100000,250000)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the --tracked points (default 6)")
    parser.add_argument("--partition-scan", type=_counts, default=[1, 6, 12], help="partition counts to compare (default 1,6,12)")
    parser.add_argument("--scan-tracked", type=int, default=100_000, help="tracked objects in the partition scan (default 100000)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a point may take (default 900)")
    parser.add_argument(
        "--worker-env", type=env_pair, action="append", default=[], help="set NAME=VALUE in the worker's environment (repeatable)"
    )
    parser.add_argument("--skip-model", action="store_true", help="skip the in-process model figures (tracemalloc)")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="after each point, split the worker's RSS by mapping (/proc/<pid>/smaps) and print glibc's malloc_stats",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        help="copy each point's worker log into this folder, with a snapshot of its heap and RocksDB memory "
        "(PYTHONTRACEMALLOC=1 in --worker-env adds tracemalloc's top lines)",
    )
    parser.add_argument("--bootstrap-servers", help="use this broker instead of starting one")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    with Broker(args.bootstrap_servers) as broker:
        run(args, broker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
