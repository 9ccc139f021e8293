"""CPU time per change of the worker's PartitionProcessor, in one process, without Kafka.

    python -m bench.processor_cpu [--changes 50000] [--pods 10000] [--rules pack|100] [--repeat 3]

The input is what bench.throughput puts on the changes topic: changes of bench/loadgen.py's
synthetic cluster, retimed as a live stream of --live-rate changes per second and batched into
ChangeBatch records by connectors.publisher.Publisher, whose producer is replaced by a list. Keys go
to partitions as Kafka's murmur2 partitioner sends them. Each partition gets a PartitionProcessor
with a RocksDB EntryStore, which also keeps the entries, as in the worker and bench.bare_loop. The
records of all partitions are processed in turns of batch_max_records / partitions records per
partition, as Faust's take_events mixes them, and each turn's state writes are applied to RocksDB.

The figure is the process's CPU time (time.process_time) for processing every record, divided by
the changes. The fastest of --repeat runs is reported, because other load on the machine only adds
to it. The output also has a digest of every alert transition and of the final state of every
partition, so that two versions of the code can be checked for the same behaviour on this input.
With --profile FILE, cProfile records one more run and writes its statistics to FILE. With
--records-cache FILE, the records are kept in FILE and read from it by later runs with the same
input options, because generating them takes longer than processing them.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench import PACK_RULES
from bench.loadgen import SyntheticCluster, retime, to_resource_change
from bench.throughput import write_rule_variants
from connectors.publisher import Publisher
from kdiag.partitioning import partition_for_key
from kdiag.rules import RuleSet, load_rules
from kdiag.settings import Settings
from streams.processor import BatchResult, PartitionProcessor
from streams.state import EntryStore, StoredEntries

TOPIC = "bench-processor-cpu-changes"


class _ListProducer:
    """A confluent_kafka.Producer stand-in that keeps each record's partition and value."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.records: dict[int, list[bytes]] = {partition: [] for partition in range(partitions)}

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any = None, partition: int | None = None) -> None:
        if partition is None:
            partition = partition_for_key(key, self.partitions)
        self.records[partition].append(value)

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def build_records(changes: int, pods: int, seed: int, live_rate: int, partitions: int) -> tuple[dict[int, list[bytes]], int]:
    """Return the ChangeBatch records of each partition, as bench.throughput produces them, and the change count."""
    settings = Settings(changes_topic=TOPIC, partitions=partitions)
    producer = _ListProducer(partitions)
    publisher = Publisher(settings, source="loadgen", producer=producer)
    publisher._partitions = partitions  # The stand-in producer has no topic metadata to read.
    hours = max(24.0, changes / max(1.0, pods * 0.8))
    clock: int | None = None
    last_tick: int | None = None
    published = 0
    for change in retime(SyntheticCluster(pods, hours, seed).changes(), live_rate):
        # The same tick schedule as bench.loadgen.publish_changes with its default 1 s interval.
        if clock is not None and change.time_ms > clock and (last_tick is None or clock - last_tick >= 1000):
            publisher.publish_tick(settings.cluster, clock)
            last_tick = clock
        if clock is None or change.time_ms > clock:
            clock = change.time_ms
        publisher.publish_change(to_resource_change(change, settings.cluster), "loadgen")
        published += 1
        if published >= changes:
            break
    if clock is not None:
        publisher.publish_tick(settings.cluster, clock)
    publisher.close()
    return producer.records, published


def cached_records(args: argparse.Namespace) -> tuple[dict[int, list[bytes]], int]:
    """Return build_records' result, from --records-cache when it contains the records of the same input options."""
    options = (args.changes, args.pods, args.seed, args.live_rate, args.partitions)
    if args.records_cache is not None and args.records_cache.exists():
        with args.records_cache.open("rb") as file:
            cached_options, records, published = pickle.load(file)
        if cached_options == options:
            return records, published
    records, published = build_records(*options)
    if args.records_cache is not None:
        with args.records_cache.open("wb") as file:
            pickle.dump((options, records, published), file)
    return records, published


def process_all(records: dict[int, list[bytes]], rule_set: RuleSet, state_dir: Path) -> dict[str, Any]:
    """Process every record through one PartitionProcessor per partition. Returns CPU time, counts and digests."""
    partitions = len(records)
    chunk = max(1, Settings().batch_max_records // partitions)
    stores = {partition: EntryStore(state_dir, partition) for partition in records}
    processors = {
        partition: PartitionProcessor(
            TOPIC,
            partition,
            rule_set,
            [],
            {},
            0,
            partitions=partitions,
            lookup=store.get,
            scan=store.scan_keys,
            entry_storage=StoredEntries(store),
        )
        for partition, store in stores.items()
    }

    alert_digest = hashlib.sha256()
    state: dict[bytes, bytes] = {}
    alerts = 0
    changes = 0
    cpu = 0.0
    try:
        for start in range(0, max(len(values) for values in records.values()), chunk):
            for partition, values in records.items():
                processor = processors[partition]
                batch = values[start : start + chunk]
                if not batch:
                    continue
                started = time.process_time()
                result = BatchResult()
                for offset, value in enumerate(batch, start):
                    processor.process(offset, value, result)
                encoded = result.encoded_alerts()
                writes = processor.take_state_writes()
                stores[partition].apply(writes, -1)
                cpu += time.process_time() - started

                changes += result.changes
                alerts += len(result.alerts)
                for key, value in encoded:
                    alert_digest.update(key + b"\x00" + value + b"\x00")
                for key, value in writes:
                    if value is None:
                        state.pop(key, None)
                    else:
                        state[key] = value
    finally:
        for store in stores.values():
            store.close()

    state_digest = hashlib.sha256()
    for key in sorted(state):
        state_digest.update(key + b"\x00" + state[key] + b"\x00")
    return {
        "cpu_seconds": cpu,
        "changes": changes,
        "alerts": alerts,
        "alert_digest": alert_digest.hexdigest()[:16],
        "state_keys": len(state),
        "state_digest": state_digest.hexdigest()[:16],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.processor_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=50_000, help="changes to process (default 50000, as `make bench` gives bench.throughput)")
    parser.add_argument("--pods", type=int, default=10_000, help="pods of the synthetic cluster (default 10000)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions to spread the records over (default 6)")
    parser.add_argument("--live-rate", type=int, default=25_000, help="changes per second of the retimed stream (default 25000)")
    parser.add_argument("--seed", type=int, default=1, help="load generator seed (default 1)")
    parser.add_argument("--rules", choices=("pack", "100"), default="100", help="the starter pack, or the pack plus variants as in bench.throughput (default 100)")
    parser.add_argument("--repeat", type=int, default=3, help="runs to take the fastest of (default 3)")
    parser.add_argument("--profile", type=Path, help="also record one run with cProfile and write its statistics to this file")
    parser.add_argument("--records-cache", type=Path, help="keep the generated records in this file and reuse them when the input options match")
    args = parser.parse_args(argv)

    work_dir = Path(tempfile.mkdtemp(prefix="kdiag-processor-cpu-"))
    try:
        rule_paths = [PACK_RULES]
        if args.rules == "100":
            rule_paths.append(write_rule_variants(work_dir / "rules")[0])
        rule_set = load_rules(rule_paths)
        records, published = cached_records(args)
        record_count = sum(len(values) for values in records.values())
        print(f"input: {published} changes in {record_count} records on {args.partitions} partitions, {len(rule_set)} rules", flush=True)
        runs = []
        for run in range(args.repeat):
            result = process_all(records, rule_set, work_dir / f"state-{run}")
            shutil.rmtree(work_dir / f"state-{run}", ignore_errors=True)
            runs.append(result)
            print(
                f"run {run + 1}: {result['cpu_seconds'] / result['changes'] * 1e6:.1f} µs CPU per change, "
                f"{result['alerts']} alert transitions (digest {result['alert_digest']}), "
                f"{result['state_keys']} state keys (digest {result['state_digest']})",
                flush=True,
            )
        digests = {(run["alert_digest"], run["state_digest"]) for run in runs}
        if len(digests) != 1:
            print("processor_cpu: the runs produced different alerts or state", file=sys.stderr)
            return 1
        if args.profile is not None:
            profiler = cProfile.Profile()
            profiler.enable()
            process_all(records, rule_set, work_dir / "state-profile")
            profiler.disable()
            profiler.dump_stats(str(args.profile))
        fastest = min(runs, key=lambda run: run["cpu_seconds"])
        figures = {
            "changes": fastest["changes"],
            "rules": len(rule_set),
            "cpu_us_per_change": round(fastest["cpu_seconds"] / fastest["changes"] * 1e6, 1),
            "alerts": fastest["alerts"],
            "alert_digest": fastest["alert_digest"],
            "state_digest": fastest["state_digest"],
        }
        print("BENCH_JSON " + orjson.dumps(figures).decode(), flush=True)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
