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
    end_offsets,
    make_topics,
    metric_sum,
    progress,
    report,
    rss_kib,
)
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


def measure_point(broker: Broker, tracked: int, partitions: int, timeout_seconds: float) -> dict[str, Any]:
    topics = make_topics(broker.bootstrap_servers, "memory", partitions)
    try:
        progress(f"memory: {tracked} tracked objects on {partitions} partitions")
        records = fill(topics.settings, tracked)
        worker = WorkerProcess(topics)
        sampler = RssSampler(worker.pid).start()
        try:
            started = time.monotonic()
            while True:
                worker.check_running()
                metrics = worker.metrics() or {}
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
        finally:
            sampler.stop()
            worker.stop()
    finally:
        cleanup(broker, topics)
    entries = int(metric_sum(metrics, "kdiag_worker_entries"))
    if entries < tracked:
        raise BenchError(f"the worker tracks {entries} entries, expected at least {tracked}")
    return {
        "tracked": tracked,
        "entries": entries,
        "partitions": partitions,
        "records": records,
        "rss_mib": round(statistics.median(settled) / 1024, 1),
        "peak_rss_mib": round(sampler.peak_kib / 1024, 1),
        "processing_seconds": round(processing_seconds, 1),
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
    progress(f"memory: Python heap per entry of a PartitionProcessor with {MODEL_ENTRIES} entries")
    model = model_bytes_per_entry()
    model_stored = model_bytes_per_entry(stored=True)
    points = [measure_point(broker, tracked, args.partitions, args.timeout) for tracked in args.tracked]
    scan = []
    for partitions in args.partition_scan:
        for tracked in (0, args.scan_tracked):
            existing = next((p for p in points if p["partitions"] == partitions and p["tracked"] == tracked), None)
            scan.append(existing or measure_point(broker, tracked, partitions, args.timeout))
    growth = slope(points)
    base = next((point["rss_mib"] for point in points if point["tracked"] == 0), None)
    one_million = base + growth * 1_000_000 if growth is not None and base is not None else None
    lines = [
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
        "model_bytes_per_entry": round(model),
        "model_bytes_per_stored_entry": round(model_stored),
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
