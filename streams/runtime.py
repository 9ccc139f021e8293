"""The worker's partitions: their state, processors and transactional producers.

WorkerRuntime is driven by the Faust agent in streams/app.py: it receives batches of changes-topic
events, runs them through each partition's PartitionProcessor and commits every partition's outputs
in that partition's Kafka transaction before the agent acknowledges the events.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from kdiag import json_bytes
from kdiag.durations import FIRING_STATUS
from kdiag.rules import RuleSet
from kdiag.settings import Settings
from streams import metrics
from streams.cluster_objects import ClusterObjects, encode_key
from streams.processor import BatchResult, PartitionProcessor
from streams.state import EntryStore, StoredEntries, restore
from streams.transactions import COMMIT_THREADS, Output, PartitionBatch, PartitionTransactions, StateWrite, commit_batch, commit_partitions

log = logging.getLogger(__name__)

# Seconds between returns of freed heap memory to the operating system (see release_free_memory).
TRIM_INTERVAL_SECONDS = 1.0


def _find_glibc_function(name: str) -> Callable[..., int] | None:
    """Return a glibc malloc function, or None where the C library has none (musl, macOS)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


_malloc_trim = _find_glibc_function("malloc_trim")
_mallopt = _find_glibc_function("mallopt")

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Free memory at the top of a thread's arena above this is returned to the system when a block is
# freed. malloc_trim returns the top only of the main arena, and after large frees glibc raises this
# threshold by itself, up to 64 MiB.
TRIM_THRESHOLD_BYTES = 8 * 1024 * 1024
# Blocks from this size on get their own mapping. Fixing the trim threshold also stops glibc from
# raising this one, so it is set to the largest value glibc's own adjustment reaches (32 MiB on 64-bit).
# A threshold of 64 KiB cost the worker about a quarter of its rate (docs/benchmarks.md, runs T11, T12).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# At most this many malloc arenas: the main one and one that every other thread shares. Each arena
# keeps up to TRIM_THRESHOLD_BYTES of free memory at its top, and glibc's default limit on 64-bit is
# 8 arenas per core, 16 on 2 cores. Python threads allocate while they hold the GIL, so they rarely wait for an arena's lock.
# With 1,000,000 tracked objects the worker used 141 to 146 MiB in four runs with 2 arenas, against
# 154 and 169 MiB without a limit. Its CPU time per change in a catch-up stayed within the spread of
# runs (docs/benchmarks.md, runs M22 to M28, T33, T34, T36).
ARENA_MAX = 2
# A limit set by the operator through glibc's environment variable is kept.
ARENA_MAX_VARIABLE = "MALLOC_ARENA_MAX"


def bound_free_arena_memory() -> bool:
    """Make glibc return free memory at the top of every arena above TRIM_THRESHOLD_BYTES, and use at
    most ARENA_MAX arenas unless the environment sets MALLOC_ARENA_MAX.

    Call it before the process starts threads. Returns False without glibc's mallopt, or when
    mallopt rejects a value.
    """
    if _mallopt is None:
        return False
    if ARENA_MAX_VARIABLE not in os.environ and not _mallopt(_M_ARENA_MAX, ARENA_MAX):
        return False
    if not _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        return False
    return bool(_mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def release_free_memory() -> bool:
    """Return the C heap's free pages to the operating system. Returns False without glibc.

    A large batch allocates and frees tens of MiB (records, decoded changes, state writes). glibc
    keeps freed memory below the top of its heaps and in its per-thread arenas, so without a trim
    the RSS stays at the largest batch's high-water mark. On a 2-core x86_64 machine a trim took
    15 ms when it freed 180 MiB, and under 1 ms with little to free.
    """
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


@dataclass(frozen=True, slots=True)
class InputRecord:
    partition: int
    offset: int
    value: bytes | None


class PartitionRuntime:
    """State, processor and producer of one owned partition."""

    def __init__(
        self, settings: Settings, partition: int, rule_set: RuleSet, cluster_objects: ClusterObjects | None = None
    ) -> None:
        self.settings = settings
        self.partition = partition
        self.rule_set = rule_set
        self.cluster_objects = cluster_objects
        # Cluster-scoped objects that changed elsewhere, to recheck at this partition's next batch.
        self.pending_cluster_objects: set[tuple[str, str, str, str]] = set()
        self.transactions = PartitionTransactions(settings, partition)
        self.transactions.initialize()
        self.store = EntryStore(settings.state_dir / settings.app_id, partition)
        started = time.monotonic()
        applied = restore(self.store, settings.bootstrap_servers, settings.changelog_topic)
        metrics.RESTORED.inc(applied)
        self.processor = self._load_processor()
        log.info(
            "partition started",
            extra={
                "topic": settings.changes_topic,
                "partition": partition,
                "restored_records": applied,
                "restore_seconds": round(time.monotonic() - started, 3),
                "next_offset": self.processor.next_offset,
                "entries": sum(self.processor.tracker.counts()),
            },
        )

    def _load_processor(self) -> PartitionProcessor:
        clocks, next_offset = self.store.load_positions()
        return PartitionProcessor(
            self.settings.changes_topic,
            self.partition,
            self.rule_set,
            [],
            clocks,
            next_offset,
            partitions=self.settings.partitions,
            lookup=self.store.get,
            scan=self.store.scan_keys,
            cluster_objects=self.cluster_objects.get if self.cluster_objects is not None else None,
            cluster_nodes=self.cluster_objects.nodes if self.cluster_objects is not None else None,
            forward_warnings=self.settings.forward_warning_events,
            entry_storage=StoredEntries(self.store),
            watermark_interval_ms=round(self.settings.watermark_interval_seconds * 1000),
            warning_max_age_ms=round(self.settings.forward_warning_max_age_seconds * 1000),
        )

    def batch(self, records: Sequence[InputRecord], rule_set: RuleSet) -> tuple[PartitionBatch, list[BatchResult]]:
        """Return the batch that processes records of this partition with `rule_set`, for
        commit_partitions or commit_batch, and the list that receives each attempt's result: after the
        commit, its last element is the committed one."""
        results: list[BatchResult] = []

        def attempt() -> tuple[list[Output], list[StateWrite]] | None:
            result = BatchResult()
            results.append(result)
            processor = self.processor
            processor.update_rules(rule_set, result)
            processor.recheck_cluster_objects(self.pending_cluster_objects, result)
            for record in records:
                processor.process(record.offset, record.value, result)
            if not processor.has_state_writes() and not result.alerts and not result.warning_events:
                self.pending_cluster_objects.clear()
                return None
            processor.diagnose(result)
            writes = processor.take_state_writes()
            shared = [
                (encode_key(key), json_bytes.dumps(value) if value is not None else None)
                for key, value in processor.cluster_object_writes
            ]
            processor.cluster_object_writes.clear()
            outputs = self.transactions.rule_outputs(
                result.encoded_alerts(), result.encoded_dead_letters(), shared, result.diagnoses, result.warning_events
            )
            return outputs, writes

        def reload() -> None:
            self.processor = self._load_processor()

        def apply_writes(writes: Sequence[StateWrite], changelog_offset: int) -> None:
            self.store.apply(writes, changelog_offset)
            self.rule_set = rule_set
            self.pending_cluster_objects.clear()

        return PartitionBatch(self.transactions, self.settings.changes_topic, attempt, reload, apply_writes), results

    def process(self, records: Sequence[InputRecord], rule_set: RuleSet) -> BatchResult:
        """Process records of this partition with `rule_set` and commit their outputs in one transaction.

        An aborted transaction is retried from the committed state (streams.transactions.commit_batch).
        """
        batch, results = self.batch(records, rule_set)
        commit_batch(batch)
        return results[-1]

    def close(self) -> None:
        self.transactions.close()
        self.store.close()


class WorkerRuntime:
    """The partitions this worker owns. `rules` returns the rule set in force, read before each batch."""

    def __init__(
        self, settings: Settings, rules: Callable[[], RuleSet], cluster_objects: ClusterObjects | None = None
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.cluster_objects = cluster_objects
        self.assigned: set[int] = set()
        self.partitions: dict[int, PartitionRuntime] = {}
        self._trimmed_at = time.monotonic()
        # Runs the partitions' transaction commits, which wait for the broker, in parallel.
        self._committer = ThreadPoolExecutor(max_workers=COMMIT_THREADS, thread_name_prefix="kdiag-commit")
        # Batches processed since the last trim of the C heap.
        self._untrimmed_batches = 0
        self._trim_lock = threading.Lock()
        if _malloc_trim is None:
            log.info("malloc_trim is not available, so freed memory stays with the C allocator")

    def assign(self, partitions: Iterable[int]) -> None:
        """Take over the assigned partitions at once: initialising each partition's transactional
        producer aborts a transaction that a killed owner left open, which would otherwise hold back
        read_committed readers of the output topics until the transaction timed out."""
        self.assigned = set(partitions)
        for partition in list(self.partitions):
            if partition not in self.assigned:
                self.release([partition])
        for partition in sorted(self.assigned - set(self.partitions)):
            self.partitions[partition] = PartitionRuntime(self.settings, partition, self.rules(), self.cluster_objects)
        metrics.PARTITIONS.set(len(self.assigned))
        log.info("partitions assigned", extra={"topic": self.settings.changes_topic, "partitions": sorted(self.assigned)})

    def release(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.assigned.discard(partition)
            runtime = self.partitions.pop(partition, None)
            if runtime is not None:
                runtime.close()
                log.info("partition stopped", extra={"topic": self.settings.changes_topic, "partition": partition})
        metrics.PARTITIONS.set(len(self.assigned))

    def process(self, records: Sequence[InputRecord]) -> None:
        """Process one batch of events, in order within each partition."""
        started = time.perf_counter()
        started_cpu = time.thread_time()
        rule_set = self.rules()
        if self.cluster_objects is not None:
            changed = self.cluster_objects.take_changed()
            for runtime in self.partitions.values():
                runtime.pending_cluster_objects |= changed
        by_partition: dict[int, list[InputRecord]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        batches: list[tuple[int, PartitionBatch, list[BatchResult]]] = []
        for partition, partition_records in by_partition.items():
            if partition not in self.assigned:
                # The partition moved to another worker during the batch; that worker processes the
                # records again from the last committed transaction.
                continue
            runtime = self.partitions.get(partition)
            if runtime is None:
                runtime = self.partitions[partition] = PartitionRuntime(
                    self.settings, partition, rule_set, self.cluster_objects
                )
            batches.append((partition, *runtime.batch(partition_records, rule_set)))
        commit_partitions([batch for _, batch, _ in batches], self._committer)
        for partition, _, results in batches:
            self._count(partition, results[-1])
        metrics.BATCH_CPU_SECONDS.inc(time.thread_time() - started_cpu)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        self._untrimmed_batches += 1
        self.release_memory_if_due()

    def next_offsets(self) -> dict[int, int]:
        """Return the next offset of each owned partition, as the committed transactions recorded it."""
        return {partition: runtime.processor.next_offset for partition, runtime in self.partitions.items()}

    def release_memory_if_due(self) -> bool:
        """Trim the C heap if a batch ran since the last trim and TRIM_INTERVAL_SECONDS have passed.

        The agent's timer also calls this between batches, so the memory that the last batches of a
        burst freed goes back to the operating system instead of staying until the next batch.
        Returns True if it trimmed.
        """
        if not self._untrimmed_batches or time.monotonic() - self._trimmed_at < TRIM_INTERVAL_SECONDS:
            return False
        # The batch thread and the event loop both call this, and only one of them trims.
        if not self._trim_lock.acquire(blocking=False):
            return False
        try:
            release_free_memory()
            self._trimmed_at = time.monotonic()
            self._untrimmed_batches = 0
        finally:
            self._trim_lock.release()
        return True

    def _count(self, partition: int, result: BatchResult) -> None:
        metrics.RECORDS.labels(str(partition)).inc(result.records)
        metrics.CHANGES.inc(result.changes)
        metrics.TICKS.inc(result.ticks)
        metrics.SKIPPED.inc(result.skipped)
        metrics.STALE_WARNINGS.inc(result.stale_warnings)
        metrics.OFFSETS_MISSING.inc(result.offsets_missing)
        metrics.DEAD_LETTERS.inc(len(result.dead_letters))
        for event in result.alerts:
            metrics.ALERTS.labels(event.status).inc()
            log.info(
                "alert firing" if event.status == FIRING_STATUS else "alert resolved",
                extra={
                    "rule": event.entry.rule,
                    "object": event.entry.ref.describe(),
                    "cluster": event.entry.ref.cluster,
                    "alert_id": event.entry.alert_id,
                },
            )
        pending = firing = 0
        for runtime in self.partitions.values():
            partition_pending, partition_firing = runtime.processor.tracker.counts()
            pending += partition_pending
            firing += partition_firing
        metrics.ENTRIES.labels("pending").set(pending)
        metrics.ENTRIES.labels("firing").set(firing)

    def close(self) -> None:
        self.release(list(self.partitions))
        self._committer.shutdown(wait=True)
