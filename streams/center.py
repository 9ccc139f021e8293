"""The alert center stage: graded, de-duplicated alerts from the events and actions topics.

Both topics are keyed by rule and have the same partition count, so partition p of each meets on one
worker. Like the rule stage, each partition keeps its state (the AlertCenterState) in RocksDB backed
by a changelog. It commits its graded alerts, state and next offsets in one Kafka transaction, so a
killed worker neither repeats nor loses a graded alert or a level change.

Quiet Kubernetes Warning alerts expire by their cluster's watermark: the oldest of the last
watermarks that each changes partition sent (schemas/watermark.avsc). By then every Warning event of
the cluster up to that time has arrived, so batch boundaries and other clusters' times do not change
which alerts expire and when.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

from kdiag.alertcenter import AlertCenter, AlertCenterState
from kdiag.alertcenter.events import Event
from kdiag.codec import codec
from kdiag.errors import DecodeError
from kdiag.settings import Settings
from streams import metrics
from streams.state import PartitionStore, restore
from streams.transactions import COMMIT_THREADS, Output, PartitionBatch, PartitionTransactions, StateWrite, commit_batch, commit_partitions

log = logging.getLogger(__name__)

EVENT = codec("Event")
ACTION = codec("Action")
GRADED_ALERT = codec("GradedAlert")
DEAD_LETTER = codec("DeadLetter")
WATERMARK = codec("Watermark")

STATE_PREFIX = b"s\x1f"
OFFSET_PREFIX = b"o\x1f"
# Key: prefix, cluster, unit separator, changes partition. Value: "<time ms> <partition count>".
WATERMARK_PREFIX = b"w\x1f"


@dataclass
class CenterResult:
    graded: list[Any] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    # The clusters whose watermark moved, with its new time.
    watermarks: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CenterRecord:
    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass(slots=True)
class ClusterWatermarks:
    """The last watermark time of one cluster from each changes partition."""

    partitions: int
    times: dict[int, int] = field(default_factory=dict)

    def current(self) -> int | None:
        """Return the cluster's watermark, or None until every partition sent one."""
        if any(partition not in self.times for partition in range(self.partitions)):
            return None
        return min(self.times[partition] for partition in range(self.partitions))


class CenterProcessor:
    """Applies events and actions of one partition to the alert center. It does no I/O."""

    def __init__(
        self,
        settings: Settings,
        partition: int,
        center: AlertCenter,
        state: AlertCenterState,
        next_offsets: dict[str, int],
        watermarks: dict[str, ClusterWatermarks],
    ) -> None:
        self.settings = settings
        self.partition = partition
        self.center = center
        self.state = state
        self.next_offsets = dict(next_offsets)
        self.watermarks = watermarks
        self._offsets_changed: set[str] = set()
        self._watermarks_changed: set[tuple[str, int]] = set()

    def process(self, record: CenterRecord, result: CenterResult) -> None:
        """Apply one record; records below the topic's next offset were committed already."""
        if record.offset < self.next_offsets.get(record.topic, 0):
            return
        self.next_offsets[record.topic] = record.offset + 1
        self._offsets_changed.add(record.topic)
        result.records += 1
        try:
            if record.topic == self.settings.actions_topic:
                result.graded.extend(self.center.acknowledge(ACTION.decode(record.value), self.state))
            elif WATERMARK.wrote(record.value):
                self._apply_watermark(WATERMARK.decode(record.value), result)
            else:
                event = Event.from_avro(EVENT.decode(record.value))
                result.graded.extend(self.center.process(event, self.state))
        except DecodeError as error:
            origin = f"{record.topic}[{record.partition}]@{record.offset}"
            log.warning("record rejected", extra={"origin": origin, "reason": str(error)})
            result.dead_letters.append(
                {
                    "origin": origin,
                    "component": "alert-center",
                    "reason": str(error),
                    "payload": bytes((record.value or b"")[:65_536]),
                    "time": int(time.time() * 1000),
                }
            )

    def _apply_watermark(self, watermark: dict[str, Any], result: CenterResult) -> None:
        """Record a changes partition's watermark, and expire the cluster's alerts if its watermark moved."""
        cluster, source, partitions = watermark["cluster"], watermark["partition"], watermark["partitions"]
        if not 0 <= source < partitions:
            raise DecodeError(
                f"Watermark field partition: expected a partition of {watermark['topic']} below its "
                f"partition count {partitions}, got {source}; fix the producer that wrote this record"
            )
        marks = self.watermarks.get(cluster)
        if marks is None:
            marks = self.watermarks[cluster] = ClusterWatermarks(partitions)
        before = marks.current()
        if partitions != marks.partitions:
            marks.partitions = partitions
            self._watermarks_changed.update((cluster, partition) for partition in marks.times)
        if watermark["time"] > marks.times.get(source, -1):
            marks.times[source] = watermark["time"]
            self._watermarks_changed.add((cluster, source))
        after = marks.current()
        if after is not None and (before is None or after > before):
            result.watermarks[cluster] = after
            result.graded.extend(self.center.advance(self.state, now_ms=after, cluster=cluster))

    def cluster_watermarks(self) -> dict[str, int]:
        """Return the watermark of each cluster whose every changes partition has sent one."""
        current = {cluster: marks.current() for cluster, marks in self.watermarks.items()}
        return {cluster: time_ms for cluster, time_ms in current.items() if time_ms is not None}

    def take_state_writes(self) -> list[tuple[bytes, bytes | None]]:
        writes = [(STATE_PREFIX + key.encode(), value) for key, value in self.state.take_changes().items()]
        for topic in sorted(self._offsets_changed):
            writes.append((OFFSET_PREFIX + topic.encode(), str(self.next_offsets[topic]).encode()))
        self._offsets_changed.clear()
        for cluster, source in sorted(self._watermarks_changed):
            marks = self.watermarks[cluster]
            writes.append((watermark_key(cluster, source), f"{marks.times[source]} {marks.partitions}".encode()))
        self._watermarks_changed.clear()
        return writes


def watermark_key(cluster: str, source: int) -> bytes:
    return WATERMARK_PREFIX + f"{cluster}\x1f{source}".encode()


def load_processor(store: PartitionStore, settings: Settings, partition: int, center: AlertCenter) -> CenterProcessor:
    items = []
    next_offsets: dict[str, int] = {}
    for key in store.scan_keys(STATE_PREFIX):
        items.append((key[len(STATE_PREFIX):].decode(), store.get(key)))
    for key in store.scan_keys(OFFSET_PREFIX):
        next_offsets[key[len(OFFSET_PREFIX):].decode()] = int(store.get(key))
    watermarks: dict[str, ClusterWatermarks] = {}
    for key in store.scan_keys(WATERMARK_PREFIX):
        cluster, source = key[len(WATERMARK_PREFIX):].decode().rsplit("\x1f", 1)
        time_ms, partitions = store.get(key).split()
        marks = watermarks.setdefault(cluster, ClusterWatermarks(int(partitions)))
        marks.times[int(source)] = int(time_ms)
    return CenterProcessor(settings, partition, center, AlertCenterState.restore(items), next_offsets, watermarks)


class CenterPartition:
    """State, processor and transactional producer of one events-topic partition."""

    def __init__(self, settings: Settings, partition: int, center: AlertCenter) -> None:
        self.settings = settings
        self.partition = partition
        self.center = center
        changelog = settings.center_changelog_topic
        self.transactions = PartitionTransactions(settings, partition, settings.events_topic, changelog)
        self.transactions.initialize()
        self.store = PartitionStore(settings.state_dir / f"{settings.app_id}-center", partition)
        applied = restore(self.store, settings.bootstrap_servers, changelog)
        self.processor = load_processor(self.store, settings, partition, center)
        log.info(
            "alert center partition started",
            extra={"topic": settings.events_topic, "partition": partition, "restored_records": applied,
                   "alerts": len(self.processor.state.alerts)},
        )
        export_watermarks(self.processor.cluster_watermarks())

    def batch(self, records: Sequence[CenterRecord]) -> tuple[PartitionBatch, list[CenterResult]]:
        """Return the batch that grades records of this partition, for commit_partitions or commit_batch,
        and the list that receives each attempt's result: after the commit, its last element is the
        committed one."""
        results: list[CenterResult] = []

        def attempt() -> tuple[list[Output], list[StateWrite]] | None:
            result = CenterResult()
            results.append(result)
            for record in records:
                self.processor.process(record, result)
            if result.records == 0:
                return None
            outputs: list[Output] = [
                (self.settings.graded_alerts_topic, graded.fingerprint.encode(), GRADED_ALERT.encode(graded.to_avro()))
                for graded in result.graded
            ]
            outputs += [(self.settings.dead_letter_topic, None, DEAD_LETTER.encode(letter)) for letter in result.dead_letters]
            return outputs, self.processor.take_state_writes()

        def reload() -> None:
            self.processor = load_processor(self.store, self.settings, self.partition, self.center)

        return PartitionBatch(self.transactions, self.settings.events_topic, attempt, reload, self.store.apply), results

    def process(self, records: Sequence[CenterRecord]) -> CenterResult:
        """Grade records of this partition and commit the outputs in one transaction."""
        batch, results = self.batch(records)
        commit_batch(batch)
        return results[-1]

    def close(self) -> None:
        self.transactions.close()
        self.store.close()


def export_watermarks(watermarks: dict[str, int]) -> None:
    """Set the watermark gauge of each cluster. A stuck watermark keeps quiet Warning alerts firing."""
    for cluster, time_ms in watermarks.items():
        metrics.CENTER_WATERMARK.labels(cluster).set(time_ms / 1000)


class CenterRuntime:
    """The events-topic partitions this worker owns."""

    def __init__(self, settings: Settings, center: AlertCenter | None = None) -> None:
        self.settings = settings
        self.center = center or AlertCenter()
        self.assigned: set[int] = set()
        self.partitions: dict[int, CenterPartition] = {}
        self._committer = ThreadPoolExecutor(max_workers=COMMIT_THREADS, thread_name_prefix="kdiag-center-commit")

    def assign(self, partitions: set[int]) -> None:
        """Take over the assigned partitions at once, which aborts transactions a killed owner left open."""
        self.assigned = set(partitions)
        for partition in list(self.partitions):
            if partition not in self.assigned:
                self.partitions.pop(partition).close()
        for partition in sorted(self.assigned - set(self.partitions)):
            self.partitions[partition] = CenterPartition(self.settings, partition, self.center)

    def release(self, partitions: set[int]) -> None:
        for partition in partitions:
            self.assigned.discard(partition)
            runtime = self.partitions.pop(partition, None)
            if runtime is not None:
                runtime.close()

    def process(self, records: Sequence[CenterRecord]) -> None:
        started = time.perf_counter()
        by_partition: dict[int, list[CenterRecord]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        batches: list[tuple[PartitionBatch, list[CenterResult]]] = []
        for partition, partition_records in sorted(by_partition.items()):
            if partition not in self.assigned:
                continue
            runtime = self.partitions.get(partition)
            if runtime is None:
                runtime = self.partitions[partition] = CenterPartition(self.settings, partition, self.center)
            batches.append(runtime.batch(partition_records))
        commit_partitions([batch for batch, _ in batches], self._committer)
        for _, results in batches:
            export_watermarks(results[-1].watermarks)
            for graded in results[-1].graded:
                metrics.MTTX.observe(graded.to_avro())
                log.info("graded alert", extra={"type": graded.type, "rule": graded.entry.rule,
                                                "fingerprint": graded.fingerprint, "alert_level": graded.entry.level})
        metrics.STAGE_BATCH_SECONDS.labels("alert-center").observe(time.perf_counter() - started)

    def next_offsets(self) -> dict[tuple[str, int], int]:
        """Return the next offset of each owned (topic, partition), as the committed transactions recorded it."""
        offsets = {}
        for partition, runtime in self.partitions.items():
            for topic, offset in runtime.processor.next_offsets.items():
                offsets[(topic, partition)] = offset
        return offsets

    def close(self) -> None:
        self.release(set(self.partitions))
        self._committer.shutdown(wait=True)
