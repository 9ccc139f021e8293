"""The root-cause stage: diagnoses in, DIAGNOSIS events with their root cause out, for the alert center.

The rule stage writes one Diagnosis record per alert transition to the diagnoses topic, keyed by rule.
For a FIRING record this stage runs the graph that covers the rule (kdiag.rootcause) over the object
and the related objects the record carries, and writes the record's event, root cause attached, to the
events topic with the same key. RESOLVED records and rules without a graph pass through unchanged, so
the events of one rule keep their order.

Each diagnoses partition commits its events and its next offset in one Kafka transaction, the offset
kept in RocksDB and a changelog like the other stages' state. A restarted worker therefore neither
analyses a committed record again nor loses one. Plugin calls block for up to their timeouts, so the
agent runs batches in a thread (see streams/app.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from kdiag.alertcenter.events import FIRING, Event
from kdiag.codec import codec
from kdiag.errors import DecodeError
from kdiag.rootcause import Diagnosis, DiagnosisContext, GraphSet, Related, run_graph
from kdiag.settings import Settings
from streams import metrics
from streams.state import PartitionStore, restore
from streams.transactions import COMMIT_THREADS, Output, PartitionBatch, PartitionTransactions, StateWrite, commit_batch, commit_partitions

log = logging.getLogger(__name__)

DIAGNOSIS = codec("Diagnosis")
EVENT = codec("Event")
DEAD_LETTER = codec("DeadLetter")
NEXT_OFFSET_KEY = b"o"
MAX_DEAD_LETTER_PAYLOAD_BYTES = 65_536


@dataclass(frozen=True, slots=True)
class DiagnosisRecord:
    partition: int
    offset: int
    value: bytes | None


@dataclass
class RootCauseResult:
    events: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    analysed: int = 0


def context_of(record: dict[str, Any]) -> DiagnosisContext:
    """Build the plugins' context from a decoded Diagnosis record."""
    alert = record["alert"]
    obj = orjson.loads(record["object"]) if record["object"] is not None else None
    if not isinstance(obj, dict):
        # The rule stage did not hold the object: plugins get its identity only.
        obj = {
            "apiVersion": alert.get("apiVersion", ""),
            "kind": alert.get("kind", ""),
            "metadata": {"name": alert.get("name", ""), "namespace": alert.get("namespace", ""), "uid": alert.get("uid", "")},
        }
    related = Related.from_json(orjson.loads(record["related"])) if record["related"] is not None else Related()
    return DiagnosisContext(Diagnosis.from_alert(alert), obj, related)


class RootCauseProcessor:
    """Analyses the diagnoses of one partition. Its only I/O is what the plugins do."""

    def __init__(self, settings: Settings, partition: int, graphs: GraphSet, next_offset: int) -> None:
        self.settings = settings
        self.partition = partition
        self.graphs = graphs
        self.next_offset = next_offset
        self._offset_changed = False

    def process(self, record: DiagnosisRecord, result: RootCauseResult) -> None:
        """Apply one record; records below next_offset were committed already."""
        if record.offset < self.next_offset:
            return
        self.next_offset = record.offset + 1
        self._offset_changed = True
        result.records += 1
        try:
            decoded = DIAGNOSIS.decode(record.value)
            event = Event.from_avro(decoded["event"])
            if event.status == FIRING:
                graph = self.graphs.graph_for(event.rule)
                if graph is not None:
                    root_cause = run_graph(graph, context_of(decoded))
                    event = event.with_root_cause(root_cause)
                    result.analysed += 1
                    metrics.ROOT_CAUSES.labels(root_cause["responsibility"]).inc()
                    log.info(
                        "root cause found",
                        extra={"rule": event.rule, "object": f"{event.namespace}/{event.kind}/{event.name}",
                               "cause": root_cause["cause"], "responsibility": root_cause["responsibility"]},
                    )
        except (DecodeError, ValueError) as error:
            origin = f"{self.settings.diagnoses_topic}[{self.partition}]@{record.offset}"
            reason = f"not a Diagnosis record: {error}"
            log.warning("record rejected", extra={"origin": origin, "reason": reason})
            result.dead_letters.append(
                {
                    "origin": origin,
                    "component": "root-cause",
                    "reason": reason,
                    "payload": bytes((record.value or b"")[:MAX_DEAD_LETTER_PAYLOAD_BYTES]),
                    "time": int(time.time() * 1000),
                }
            )
            return
        result.events.append((event.rule.encode(), EVENT.encode(event.to_avro())))

    def take_state_writes(self) -> list[tuple[bytes, bytes | None]]:
        if not self._offset_changed:
            return []
        self._offset_changed = False
        return [(NEXT_OFFSET_KEY, str(self.next_offset).encode())]


class RootCausePartition:
    """State, processor and transactional producer of one diagnoses-topic partition."""

    def __init__(self, settings: Settings, partition: int, graphs: GraphSet) -> None:
        self.settings = settings
        self.partition = partition
        self.graphs = graphs
        changelog = settings.root_cause_changelog_topic
        self.transactions = PartitionTransactions(settings, partition, settings.diagnoses_topic, changelog)
        self.transactions.initialize()
        self.store = PartitionStore(settings.state_dir / f"{settings.app_id}-rootcause", partition)
        restore(self.store, settings.bootstrap_servers, changelog)
        self.processor = self._load_processor()
        log.info(
            "root-cause partition started",
            extra={"topic": settings.diagnoses_topic, "partition": partition, "next_offset": self.processor.next_offset},
        )

    def _load_processor(self) -> RootCauseProcessor:
        raw = self.store.get(NEXT_OFFSET_KEY)
        return RootCauseProcessor(self.settings, self.partition, self.graphs, int(raw) if raw is not None else 0)

    def batch(self, records: Sequence[DiagnosisRecord]) -> tuple[PartitionBatch, list[RootCauseResult]]:
        """Return the batch that diagnoses records of this partition, for commit_partitions or
        commit_batch, and the list that receives each attempt's result: after the commit, its last
        element is the committed one."""
        results: list[RootCauseResult] = []

        def attempt() -> tuple[list[Output], list[StateWrite]] | None:
            result = RootCauseResult()
            results.append(result)
            for record in records:
                self.processor.process(record, result)
            if result.records == 0:
                return None
            outputs: list[Output] = [(self.settings.events_topic, key, value) for key, value in result.events]
            outputs += [(self.settings.dead_letter_topic, None, DEAD_LETTER.encode(letter)) for letter in result.dead_letters]
            return outputs, self.processor.take_state_writes()

        def reload() -> None:
            self.processor = self._load_processor()

        return PartitionBatch(self.transactions, self.settings.diagnoses_topic, attempt, reload, self.store.apply), results

    def process(self, records: Sequence[DiagnosisRecord]) -> RootCauseResult:
        """Diagnose records of this partition and commit the events in one transaction."""
        batch, results = self.batch(records)
        commit_batch(batch)
        return results[-1]

    def close(self) -> None:
        self.transactions.close()
        self.store.close()


class RootCauseRuntime:
    """The diagnoses-topic partitions this worker owns.

    `process` runs in a worker thread while the event loop assigns and releases partitions, so both
    hold a lock: a partition is never closed in the middle of a batch.
    """

    def __init__(self, settings: Settings, graphs: GraphSet) -> None:
        self.settings = settings
        self.graphs = graphs
        self.assigned: set[int] = set()
        self.partitions: dict[int, RootCausePartition] = {}
        self._lock = threading.Lock()
        self._committer = ThreadPoolExecutor(max_workers=COMMIT_THREADS, thread_name_prefix="kdiag-root-cause-commit")

    def assign(self, partitions: set[int]) -> None:
        with self._lock:
            self.assigned = set(partitions)
            for partition in list(self.partitions):
                if partition not in self.assigned:
                    self.partitions.pop(partition).close()
            for partition in sorted(self.assigned - set(self.partitions)):
                self.partitions[partition] = RootCausePartition(self.settings, partition, self.graphs)

    def release(self, partitions: set[int]) -> None:
        with self._lock:
            for partition in partitions:
                self.assigned.discard(partition)
                runtime = self.partitions.pop(partition, None)
                if runtime is not None:
                    runtime.close()

    def process(self, records: Sequence[DiagnosisRecord]) -> None:
        started = time.perf_counter()
        by_partition: dict[int, list[DiagnosisRecord]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        with self._lock:
            batches: list[tuple[PartitionBatch, list[RootCauseResult]]] = []
            for partition, partition_records in sorted(by_partition.items()):
                if partition not in self.assigned:
                    continue
                runtime = self.partitions.get(partition)
                if runtime is None:
                    runtime = self.partitions[partition] = RootCausePartition(self.settings, partition, self.graphs)
                batches.append(runtime.batch(partition_records))
            commit_partitions([batch for batch, _ in batches], self._committer)
            for _, results in batches:
                metrics.DIAGNOSES.inc(results[-1].records)
        metrics.STAGE_BATCH_SECONDS.labels("root-cause").observe(time.perf_counter() - started)

    def next_offsets(self) -> dict[int, int]:
        """Return the next offset of each owned partition, as the committed transactions recorded it."""
        with self._lock:
            return {partition: runtime.processor.next_offset for partition, runtime in self.partitions.items()}

    def close(self) -> None:
        self.release(set(self.partitions))
        self._committer.shutdown(wait=True)
