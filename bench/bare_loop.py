"""The worker's per-record work in a plain confluent-kafka consumer loop, without Faust or transactions.

Each partition gets the worker's own streams.processor.PartitionProcessor, built as
streams/runtime.py builds it, so every record goes through exactly the worker's code. That code
decodes the ChangeBatch with kdiag's codec, parses each object with orjson when a rule applies to its
kind, evaluates the rules and updates the partition's kdiag.durations.DurationTracker, whose entries
live in RocksDB as the worker's do. After each batch of a partition the loop encodes the alerts and
dead letters, writes the partition's changed state with streams.state.EntryStore (one rocksdict
WriteBatch) and commits the consumer offsets asynchronously. It produces nothing: no alerts, no
changelog, no transactions. Its rate is what the worker's per-record code reaches on this machine
without the framework around it, so worker/bare shows what Faust and the transactions cost.

    python -m bench.bare_loop --bootstrap-servers HOST:PORT --topic T --partitions P \
        --group G --state-dir DIR --records N [--rules PATH ...] [--consume-only]

It stops after N records or --timeout seconds and prints one JSON line with its own timing: from the
first consumed record to the last processed one. --consume-only skips all processing, which gives the
rate at which this machine delivers the records to Python at all.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from kdiag.rules import RuleSet, load_rules
from kdiag.settings import Settings, load_settings
from streams.collector import configure_collector, time_collections
from streams.processor import BatchResult, PartitionProcessor
from streams.state import EntryStore, StoredEntries

REPO_ROOT = Path(__file__).resolve().parent.parent
# The worker's agent takes at most this many records per batch, so the loop's batches, and with
# them the state staged per batch, are no larger than the worker's.
CONSUME_BATCH_MESSAGES = Settings().batch_max_records


class BareLoop:
    def __init__(self, topic: str, partition_count: int, rule_set: RuleSet, state_dir: Path) -> None:
        self.topic = topic
        self.partition_count = partition_count
        self.rule_set = rule_set
        self.state_dir = state_dir
        self.partitions: dict[int, tuple[PartitionProcessor, EntryStore]] = {}
        self.records = 0
        self.changes = 0
        self.alerts = 0
        self.dead_letters = 0

    def _partition(self, partition: int) -> tuple[PartitionProcessor, EntryStore]:
        pair = self.partitions.get(partition)
        if pair is None:
            store = EntryStore(self.state_dir, partition)
            # Built as streams/runtime.py builds it, so that references and entries read the committed state.
            processor = PartitionProcessor(
                self.topic,
                partition,
                self.rule_set,
                [],
                {},
                0,
                partitions=self.partition_count,
                lookup=store.get,
                scan=store.scan_keys,
                entry_storage=StoredEntries(store),
            )
            pair = self.partitions[partition] = (processor, store)
        return pair

    def process(self, partition: int, messages: list[Message]) -> None:
        processor, store = self._partition(partition)
        result = BatchResult()
        for message in messages:
            processor.process(message.offset(), message.value(), result)
        result.encoded_alerts()
        result.encoded_dead_letters()
        store.apply(processor.take_state_writes(), -1)
        self.records += result.records
        self.changes += result.changes
        self.alerts += len(result.alerts)
        self.dead_letters += len(result.dead_letters)

    def close(self) -> None:
        for _, store in self.partitions.values():
            store.close()


def _cpu_seconds(usage: resource.struct_rusage) -> float:
    """Return the user plus system CPU time of a getrusage result."""
    return usage.ru_utime + usage.ru_stime


def run(args: argparse.Namespace) -> dict:
    rule_set = load_rules(args.rules or [REPO_ROOT / "rules"])
    loop = BareLoop(args.topic, args.partitions, rule_set, args.state_dir)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap_servers,
            "group.id": args.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(args.topic, partition) for partition in range(args.partitions)])
    # The worker's collector settings, so that worker/bare does not count them as Faust's cost.
    settings = load_settings()
    configure_collector(settings.gc_freeze_startup, settings.gc_young_threshold_objects)
    collections = time_collections()
    collections_before = (list(collections.collections), list(collections.seconds))
    first_message_at: float | None = None
    first_usage = finished_usage = resource.getrusage(resource.RUSAGE_SELF)
    consumed = 0
    chunk = max(1, CONSUME_BATCH_MESSAGES // args.partitions)
    deadline = time.monotonic() + args.timeout
    try:
        while consumed < args.records and time.monotonic() < deadline:
            messages = consumer.consume(CONSUME_BATCH_MESSAGES, 0.5)
            by_partition: dict[int, list[Message]] = {}
            for message in messages:
                if message.error() is None:
                    by_partition.setdefault(message.partition(), []).append(message)
            if not by_partition:
                continue
            if first_message_at is None:
                first_message_at = time.monotonic()
                first_usage = resource.getrusage(resource.RUSAGE_SELF)
                collections_before = (list(collections.collections), list(collections.seconds))
            for partition, partition_messages in by_partition.items():
                consumed += len(partition_messages)
                if args.consume_only:
                    continue
                # Faust's take_events mixes the partitions, so a worker batch has about
                # batch_max_records / partitions records of each. The loop processes and commits
                # chunks of that size, because the state staged per chunk grows with it.
                for start in range(0, len(partition_messages), chunk):
                    loop.process(partition, partition_messages[start : start + chunk])
            consumer.commit(asynchronous=True)
        finished_at = time.monotonic()
        finished_usage = resource.getrusage(resource.RUSAGE_SELF)
        collections_after = (list(collections.collections), list(collections.seconds))
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as error:
            # _NO_OFFSET: the asynchronous commits already covered every consumed record.
            if error.args[0].code() != KafkaError._NO_OFFSET:
                raise
    finally:
        consumer.close()
        loop.close()
    seconds = finished_at - (first_message_at or finished_at)
    return {
        "records": consumed,
        "changes": loop.changes,
        "alerts": loop.alerts,
        "dead_letters": loop.dead_letters,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(_cpu_seconds(finished_usage) - _cpu_seconds(first_usage), 3),
        "system_cpu_seconds": round(finished_usage.ru_stime - first_usage.ru_stime, 3),
        "minor_faults": finished_usage.ru_minflt - first_usage.ru_minflt,
        "changes_per_second": round(loop.changes / seconds) if seconds else 0,
        "gc_seconds": round(sum(collections_after[1]) - sum(collections_before[1]), 3),
        "gc_full_collections": collections_after[0][2] - collections_before[0][2],
        "timed_out": consumed < args.records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap servers, host:port")
    parser.add_argument("--topic", required=True, help="changes topic to read from the beginning")
    parser.add_argument("--partitions", type=int, required=True, help="partition count of the topic")
    parser.add_argument("--group", required=True, help="consumer group whose offsets the loop commits")
    parser.add_argument("--state-dir", type=Path, required=True, help="folder for the RocksDB databases (emptied first)")
    parser.add_argument("--records", type=int, required=True, help="stop after this many records")
    parser.add_argument("--rules", type=Path, action="append", help="rule file or folder (repeatable; default rules/)")
    parser.add_argument("--timeout", type=float, default=600.0, help="stop after this many seconds (default 600)")
    parser.add_argument(
        "--consume-only", action="store_true", help="only consume and commit the records, to measure the fetch ceiling"
    )
    args = parser.parse_args(argv)
    shutil.rmtree(args.state_dir, ignore_errors=True)
    print(orjson.dumps(run(args)).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
