"""kdiag's rules on quix-streams: the peer of the worker in the throughput benchmark.

Run it with the interpreter of bench/.venv-quix and the repository root on PYTHONPATH, so that it
imports kdiag's rule engine and the worker's PartitionProcessor (quixstreams pins a confluent-kafka older
than kdiag's, hence the separate virtual environment):

    PYTHONPATH=. bench/.venv-quix/bin/python bench/quix_peer/peer.py --bootstrap-servers HOST:PORT \
        --topic T --partitions P --alerts-topic A --group G --state-dir DIR [--rules PATH ...]

Per record it runs the worker's own streams.processor.PartitionProcessor of the record's partition,
which decodes the ChangeBatch, parses each object with orjson when a rule applies to its kind,
evaluates the rules and updates the partition's kdiag.durations.DurationTracker. The peer then writes
the changed state entries to quix state (RocksDB with a changelog topic) and produces each alert
transition, Avro encoded, to the alerts topic. The application runs with
processing_guarantee="exactly-once", so outputs, state and offsets commit in Kafka transactions,
every commit_interval seconds (quixstreams' default 5 s unless --commit-interval is given).

Differences from the worker: quix state is scoped to the message key. A state entry is written
under the key of the record that changed it (a tick's key is the cluster), and the processor reads
committed state only under that key. Quix state has no prefix scan, so the processor finds only
referrers staged in the same record. The peer does not reload its processors from quix state after
a restart. None of this changes the alerts of one run from an empty state on the load generator's
history, whose references stay within a namespace, the key of its records.

The peer stops on SIGTERM and prints one JSON line with its own counts and timing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from quixstreams import Application, message_context
from quixstreams.models.serializers import Serializer

from kdiag.rules import RuleSet, load_rules
from streams.processor import BatchResult, PartitionProcessor
from streams.state import NEXT_OFFSET_KEY

REPO_ROOT = Path(__file__).resolve().parents[2]


class AlertValueSerializer(Serializer):
    """Produces the Avro bytes of a (key, value) pair that the peer emits."""

    def __call__(self, value: tuple[bytes, bytes], ctx: Any) -> bytes:
        return value[1]


class Peer:
    def __init__(self, topic: str, partitions: int, rule_set: RuleSet) -> None:
        self.topic = topic
        self.partitions = partitions
        self._state: Any = None
        self.rule_set = rule_set
        self.processors: dict[int, PartitionProcessor] = {}
        self.records = 0
        self.changes = 0
        self.alerts = 0
        self.first_record_at: float | None = None
        self.last_record_at: float | None = None
        self.first_record_cpu = 0.0
        self.last_record_cpu = 0.0

    def _lookup(self, key: bytes) -> bytes | None:
        """Read a committed state key from the quix state of the record being processed."""
        value = self._state.get(key.decode()) if self._state is not None else None
        return value.encode() if value is not None else None

    def process(self, value: bytes, state: Any) -> list[tuple[bytes, bytes]]:
        if self.first_record_at is None:
            self.first_record_at = time.monotonic()
            self.first_record_cpu = time.process_time()
        context = message_context()
        processor = self.processors.get(context.partition)
        if processor is None:
            processor = PartitionProcessor(
                self.topic, context.partition, self.rule_set, [], {}, 0, partitions=self.partitions, lookup=self._lookup
            )
            self.processors[context.partition] = processor
        self._state = state
        result = BatchResult()
        processor.process(context.offset, value, result)
        for key, state_value in processor.take_state_writes():
            if key == NEXT_OFFSET_KEY:
                continue  # quix commits the consumer offset itself
            if state_value is None:
                state.delete(key.decode())
            else:
                state.set(key.decode(), state_value.decode())
        self.records += result.records
        self.changes += result.changes
        self.alerts += len(result.alerts)
        self.last_record_at = time.monotonic()
        self.last_record_cpu = time.process_time()
        return result.encoded_alerts()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap servers, host:port")
    parser.add_argument("--topic", required=True, help="changes topic")
    parser.add_argument("--partitions", type=int, required=True, help="partition count of the changes topic")
    parser.add_argument("--alerts-topic", required=True, help="topic for the alert transitions")
    parser.add_argument("--group", required=True, help="consumer group, also the name of quix's changelog topics")
    parser.add_argument("--state-dir", type=Path, required=True, help="folder of quix's RocksDB state")
    parser.add_argument("--rules", type=Path, action="append", help="rule file or folder (repeatable; default rules/)")
    parser.add_argument("--commit-interval", type=float, default=5.0, help="seconds between commits (default 5, quix's default)")
    args = parser.parse_args(argv)

    peer = Peer(args.topic, args.partitions, load_rules(args.rules or [REPO_ROOT / "rules"]))
    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_interval=args.commit_interval,
        state_dir=args.state_dir,
        loglevel="WARNING",
    )
    changes = app.topic(args.topic, key_deserializer="bytes", value_deserializer="bytes")
    alerts = app.topic(args.alerts_topic, key_serializer="bytes", value_serializer=AlertValueSerializer())
    frame = app.dataframe(changes)
    frame = frame.apply(peer.process, stateful=True, expand=True)
    frame.to_topic(alerts, key=lambda item: item[0])
    started = time.monotonic()
    app.run()
    seconds = (peer.last_record_at or started) - (peer.first_record_at or started)
    print(
        orjson.dumps(
            {
                "records": peer.records,
                "changes": peer.changes,
                "alerts": peer.alerts,
                "processing_seconds": round(seconds, 3),
                "cpu_seconds": round(peer.last_record_cpu - peer.first_record_cpu, 3),
                "changes_per_second": round(peer.changes / seconds) if seconds else 0,
            }
        ).decode(),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
