"""RocksDB state of one changes-topic partition, backed by a compacted changelog partition.

Layout of the keys (raw bytes):
- ``e\\x1f<cluster>\\x1f<uid>\\x1f<rule>``: an active entry (pending or firing) as JSON;
- ``c\\x1f<cluster>``: the cluster's event-time clock on this partition, epoch milliseconds;
- ``o``: the next offset of the changes partition to process;
- ``_checkpoint``: the newest changelog offset applied here;
- ``_d\\x1f<cluster>\\x1f<deadline>\\x1f<uid>\\x1f<rule>``, in a worker's EntryStore: the deadline index,
  one empty value per pending entry. ``<deadline>`` is 8 bytes, big-endian, offset by 2**63 so that
  the keys sort by deadline;
- ``_o\\x1f<cluster>\\x1f<uid>``, in a worker's EntryStore: the object index, the number of entries of
  each object that has any, in decimal. ``_local_index`` records that both indexes are complete.

Every key that does not start with ``_`` is also written to the changelog, inside the same Kafka
transaction as the alerts that the change produced and the ``o`` key. The ``_`` keys stay local:
EntryStore.apply derives the indexes from the entry writes, for processed and restored records alike.
The local database is written only after the transaction commits, so it never contains more than the
changelog. On start it catches up from the changelog after ``_checkpoint``.

Every database of the process shares one write buffer manager and one block cache, so RocksDB's
memory stays bounded however many partitions a worker owns.
"""

from __future__ import annotations

import heapq
import logging
import shutil
import struct
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Iterable

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from rocksdict import BlockBasedIndexType, BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteBufferManager

from kdiag.durations import PENDING, Entry, EntryStorage, entry_key
from kdiag.errors import KdiagError

log = logging.getLogger(__name__)

ENTRY_PREFIX = b"e\x1f"
CLOCK_PREFIX = b"c\x1f"
NEXT_OFFSET_KEY = b"o"
CHECKPOINT_KEY = b"_checkpoint"
DEADLINE_PREFIX = b"_d\x1f"
OBJECT_PREFIX = b"_o\x1f"
# Marks a database whose local indexes (deadlines and objects) are complete, with their version.
LOCAL_INDEX_KEY = b"_local_index"
LOCAL_INDEX_VERSION = b"1"
# The marker of databases that had the deadline index only.
OLD_DEADLINE_INDEX_KEY = b"_deadline_index"

# Memory budget of RocksDB for the whole process, shared by every partition's database (the
# worker's and the alert center's). The defaults (rocksdict 0.3.29) are 64 MiB per memtable, up to
# two memtables per database, and an 8 MiB block cache per database, so they grow with the
# partition count. The write buffer manager's limit is soft: RocksDB flushes memtables to stay near it.
WRITE_BUFFER_BYTES = 4 << 20  # one memtable of one database
SHARED_WRITE_BUFFER_BYTES = 16 << 20  # every memtable of the process
# Data, index and filter blocks of every database. With 1,000,000 tracked objects the worker used
# 139 and 134 MiB with 4 MiB, against 141 to 146 MiB with 8 MiB, and caught up as fast
# (docs/benchmarks.md, runs M26 to M32).
SHARED_BLOCK_CACHE_BYTES = 4 << 20
BLOCK_BYTES = 16 << 10
METADATA_BLOCK_BYTES = 4 << 10  # one partition of an index or filter block

_DEADLINE = struct.Struct(">Q")
_DEADLINE_OFFSET = 1 << 63
_REBUILD_CHUNK = 10_000

StateWrite = tuple[bytes, bytes | None]

_shared_memory: tuple[WriteBufferManager, Cache] | None = None


def entry_state_key(key: str) -> bytes:
    return key.encode()


def clock_state_key(cluster: str) -> bytes:
    return CLOCK_PREFIX + cluster.encode()


def deadline_prefix(cluster: str) -> bytes:
    return DEADLINE_PREFIX + cluster.encode() + b"\x1f"


def object_index_key(state_key: bytes) -> bytes:
    """Return the object index key of an entry's state key: OBJECT_PREFIX, cluster and uid."""
    _, cluster, uid, _ = state_key.split(b"\x1f", 3)
    return OBJECT_PREFIX + cluster + b"\x1f" + uid


def deadline_index_key(state_key: bytes, value: bytes | None) -> bytes | None:
    """Return the deadline index key of an entry's stored value, or None unless the entry is pending."""
    if value is None:
        return None
    data = orjson.loads(value)
    if data["state"] != PENDING:
        return None
    _, cluster, uid_and_rule = state_key.split(b"\x1f", 2)
    return DEADLINE_PREFIX + cluster + b"\x1f" + _DEADLINE.pack(data["deadline"] + _DEADLINE_OFFSET) + uid_and_rule


def _rocksdb_options() -> Options:
    global _shared_memory
    if _shared_memory is None:
        _shared_memory = (WriteBufferManager(SHARED_WRITE_BUFFER_BYTES, False), Cache(SHARED_BLOCK_CACHE_BYTES))
    write_buffers, cache = _shared_memory
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_block_size(BLOCK_BYTES)
    table.set_bloom_filter(10, False)
    # Index and filter blocks are split into partitions kept in the shared block cache, so they no
    # longer grow outside any budget (15.4 MiB at 1,000,000 tracked Pods, docs/benchmarks.md).
    # Unpartitioned blocks in the cache were evicted and read again on every lookup, which made
    # processing 5 to 10 times slower at 150,000 entries.
    table.set_index_type(BlockBasedIndexType.two_level_index_search())
    table.set_partition_filters(True)
    table.set_metadata_block_size(METADATA_BLOCK_BYTES)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_top_level_index_and_filter(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(WRITE_BUFFER_BYTES)
    options.set_write_buffer_manager(write_buffers)
    options.set_block_based_table_factory(table)
    return options


class PartitionStore:
    def __init__(self, root: Path, partition: int) -> None:
        self.partition = partition
        self.path = root / f"partition-{partition}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()

    def _open(self) -> Rdict:
        return Rdict(str(self.path), _rocksdb_options())

    @property
    def checkpoint(self) -> int:
        raw = self._db.get(CHECKPOINT_KEY)
        return int(raw) if raw is not None else -1

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def scan_keys(self, prefix: bytes) -> list[bytes]:
        """Return the committed keys that start with prefix, in order."""
        return list(self.iter_keys(prefix))

    def iter_keys(self, prefix: bytes, start: bytes | None = None) -> Iterator[bytes]:
        """Yield the committed keys that start with prefix, in order, from `start` if given."""
        for key in self._db.keys(from_key=start or prefix):
            if not key.startswith(prefix):
                break
            yield key

    def iter_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Yield the committed keys that start with prefix and their values, in order."""
        for key, value in self._db.items(from_key=prefix):
            if not key.startswith(prefix):
                break
            yield key, value

    def load_positions(self) -> tuple[dict[str, int], int]:
        """Return the clocks and the next offset to process."""
        clocks = {key[len(CLOCK_PREFIX):].decode(): int(value) for key, value in self.iter_items(CLOCK_PREFIX)}
        raw_offset = self._db.get(NEXT_OFFSET_KEY)
        return clocks, int(raw_offset) if raw_offset is not None else 0

    def apply(self, writes: Iterable[StateWrite], checkpoint: int) -> None:
        """Write committed changes (value None deletes) and the changelog offset they reach, atomically."""
        batch = WriteBatch(raw_mode=True)
        for key, value in writes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if checkpoint >= 0:
            batch.put(CHECKPOINT_KEY, str(checkpoint).encode())
        self._db.write(batch)

    def wipe(self) -> None:
        """Delete the local database, e.g. when it belongs to an older changelog."""
        self._db.close()
        Rdict.destroy(str(self.path))
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = self._open()

    def close(self) -> None:
        self._db.close()


class EntryStore(PartitionStore):
    """The state of a worker's partition, with two local indexes of its entries.

    The deadline index lets StoredEntries find due entries without keeping them in memory. The object
    index contains the entry count of every object that has entries. A change of an object without
    entries then costs one point lookup, which the bloom filters mostly settle without reading a
    data block, instead of an iterator. `apply` keeps both indexes in step with the entries: it reads
    each written entry's previous value. Neither index goes to the changelog, because restoring the
    entries rebuilds them.
    """

    def __init__(self, root: Path, partition: int) -> None:
        super().__init__(root, partition)
        self._ensure_local_indexes()

    def wipe(self) -> None:
        super().wipe()
        self._ensure_local_indexes()

    def _ensure_local_indexes(self) -> None:
        """Build the local indexes of a database written before they existed, or marked incomplete."""
        if self._db.get(LOCAL_INDEX_KEY) == LOCAL_INDEX_VERSION:
            return
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(DEADLINE_PREFIX, DEADLINE_PREFIX[:-1] + b"\x20")
        batch.delete_range(OBJECT_PREFIX, OBJECT_PREFIX[:-1] + b"\x20")
        pending = objects = written = 0
        # Entry keys are ordered by cluster, uid and rule, so the entries of an object are adjacent.
        object_key, count = b"", 0
        for key, value in self.iter_items(ENTRY_PREFIX):
            index_key = deadline_index_key(key, value)
            if index_key is not None:
                batch.put(index_key, b"")
                pending += 1
                written += 1
            key_of_object = object_index_key(key)
            if key_of_object != object_key:
                if count:
                    batch.put(object_key, str(count).encode())
                    objects += 1
                    written += 1
                object_key, count = key_of_object, 0
            count += 1
            if written >= _REBUILD_CHUNK:
                self._db.write(batch)
                batch = WriteBatch(raw_mode=True)
                written = 0
        if count:
            batch.put(object_key, str(count).encode())
            objects += 1
        batch.delete(OLD_DEADLINE_INDEX_KEY)
        batch.put(LOCAL_INDEX_KEY, LOCAL_INDEX_VERSION)
        self._db.write(batch)
        if objects:
            log.info("entry indexes built", extra={"path": str(self.path), "pending_entries": pending, "objects": objects})

    def apply(self, writes: Iterable[StateWrite], checkpoint: int) -> None:
        """Write committed changes and the index changes they cause, atomically."""
        writes = list(writes)
        index_writes: list[StateWrite] = []
        latest: dict[bytes, bytes | None] = {}
        # The change of each touched object's entry count.
        counts: dict[bytes, int] = {}
        for key, value in writes:
            if not key.startswith(ENTRY_PREFIX):
                continue
            old_value = latest[key] if key in latest else self._db.get(key)
            latest[key] = value
            if (old_value is None) != (value is None):
                key_of_object = object_index_key(key)
                counts[key_of_object] = counts.get(key_of_object, 0) + (1 if old_value is None else -1)
            old_index = deadline_index_key(key, old_value)
            new_index = deadline_index_key(key, value)
            if old_index == new_index:
                continue
            if old_index is not None:
                index_writes.append((old_index, None))
            if new_index is not None:
                index_writes.append((new_index, b""))
        for key_of_object, change in counts.items():
            if change:
                raw = self._db.get(key_of_object)
                count = (int(raw) if raw is not None else 0) + change
                index_writes.append((key_of_object, str(count).encode() if count > 0 else None))
        super().apply(writes + index_writes, checkpoint)

    def entry_summary(self) -> tuple[int, int, dict[str, int], dict[str, int]]:
        """Return the entry count, the pending count, the entries per rule and each cluster's
        earliest deadline. Reads every entry key and index key, but no value."""
        total = 0
        per_rule: dict[bytes, int] = {}
        for key in self.iter_keys(ENTRY_PREFIX):
            total += 1
            rule = key[key.rindex(b"\x1f") + 1:]
            per_rule[rule] = per_rule.get(rule, 0) + 1
        pending = 0
        earliest: dict[str, int] = {}
        cluster_prefix = b""
        for key in self.iter_keys(DEADLINE_PREFIX):
            pending += 1
            if cluster_prefix and key.startswith(cluster_prefix):
                continue
            cluster_prefix = key[: key.index(b"\x1f", len(DEADLINE_PREFIX)) + 1]
            deadline = _DEADLINE.unpack_from(key, len(cluster_prefix))[0] - _DEADLINE_OFFSET
            earliest[cluster_prefix[len(DEADLINE_PREFIX):-1].decode()] = deadline
        return total, pending, {rule.decode(): count for rule, count in per_rule.items()}, earliest

    def due_entries(
        self, cluster: str, time_ms: int, start: bytes | None
    ) -> tuple[list[tuple[int, str]], bytes, int | None]:
        """Return the committed pending entries of the cluster due at time_ms, as (deadline, entry
        key) from index key `start` on, with the index key to resume from and its deadline (None at
        the end of the cluster's index)."""
        prefix = deadline_prefix(cluster)
        entry_prefix = entry_key(cluster, "", "")[:-1]
        due: list[tuple[int, str]] = []
        resume = start or prefix
        for key in self.iter_keys(prefix, resume):
            deadline = _DEADLINE.unpack_from(key, len(prefix))[0] - _DEADLINE_OFFSET
            if deadline > time_ms:
                return due, key, deadline
            due.append((deadline, entry_prefix + key[len(prefix) + _DEADLINE.size:].decode()))
            resume = key + b"\x00"  # The smallest key after this one.
        return due, resume, None

    def object_values(self, cluster: str, uid: str) -> list[bytes]:
        """Return the stored values of an object's committed entries, in rule order."""
        prefix = entry_key(cluster, uid, "").encode()
        if self._db.get(object_index_key(prefix)) is None:
            return []
        return [value for _, value in self.iter_items(prefix)]


class StoredEntries(EntryStorage):
    """Entries of a DurationTracker kept in an EntryStore, with the current batch's changes in memory.

    Committed entries are only in RocksDB, so memory does not grow with them: reads parse the stored
    JSON, and due entries are found through the store's deadline index. Changes are staged until
    take_writes, and reads return a staged entry before a committed one. Deadlines of staged pending
    entries wait on a heap per cluster.

    take_writes hands the staged changes to the caller, who must apply them to the store (after the
    Kafka transaction commits) before the next read, or else build a new StoredEntries.
    """

    def __init__(self, store: EntryStore) -> None:
        super().__init__()
        self._store = store
        self._staged: dict[str, Entry | None] = {}
        self._staged_objects: dict[tuple[str, str], dict[str, Entry | None]] = {}
        self._staged_deadlines: dict[str, list[tuple[int, str]]] = {}
        # Per cluster, a deadline no later than that of the first index key not handled yet, or
        # absent when no such key is left. An earlier value only costs an index read that finds nothing.
        self._next_due: dict[str, int] = {}
        # Per cluster, the index key to resume from within this batch. The keys before it were
        # handled: their entries fired or changed, so applying the batch removes those keys.
        self._resume: dict[str, bytes] = {}
        total, pending, per_rule, earliest = store.entry_summary()
        self.total = total
        self.firing = total - pending
        self.rule_counts = per_rule
        self._next_due.update(earliest)

    @property
    def dirty(self) -> Collection[str]:
        return self._staged.keys()

    def get(self, key: str) -> Entry | None:
        if key in self._staged:
            return self._staged[key]
        raw = self._store.get(entry_state_key(key))
        return Entry.from_state(orjson.loads(raw)) if raw is not None else None

    def object_entries(self, cluster: str, uid: str) -> dict[str, Entry]:
        entries = {}
        for raw in self._store.object_values(cluster, uid):
            entry = Entry.from_state(orjson.loads(raw))
            entries[entry.rule] = entry
        staged = self._staged_objects.get((cluster, uid))
        if staged:
            for rule, entry in staged.items():
                if entry is None:
                    entries.pop(rule, None)
                else:
                    entries[rule] = entry
        return entries

    def keys(self) -> Iterator[str]:
        # Merges the committed keys with the staged ones, in key order. A staged key replaces the
        # committed one, and a staged removal hides it.
        staged = sorted(self._staged.items())
        position = 0
        for raw_key in self._store.iter_keys(ENTRY_PREFIX):
            key = raw_key.decode()
            while position < len(staged) and staged[position][0] <= key:
                staged_key, entry = staged[position]
                position += 1
                if entry is not None:
                    yield staged_key
            if key not in self._staged:
                yield key
        for staged_key, entry in staged[position:]:
            if entry is not None:
                yield staged_key

    def rule_entries(self, rule: str) -> list[Entry]:
        suffix = b"\x1f" + rule.encode()
        entries = {}
        for key in self._store.iter_keys(ENTRY_PREFIX):
            if key.endswith(suffix) and key.decode() not in self._staged:
                raw = self._store.get(key)
                if raw is not None:
                    entries[key.decode()] = Entry.from_state(orjson.loads(raw))
        for key, entry in self._staged.items():
            if entry is not None and entry.rule == rule:
                entries[key] = entry
        return [entries[key] for key in sorted(entries)]

    def pop_due(self, cluster: str, time_ms: int) -> list[tuple[int, str]]:
        due = []
        heap = self._staged_deadlines.get(cluster)
        while heap and heap[0][0] <= time_ms:
            due.append(heapq.heappop(heap))
        next_due = self._next_due.get(cluster)
        if next_due is not None and next_due <= time_ms:
            committed, resume, next_deadline = self._store.due_entries(cluster, time_ms, self._resume.get(cluster))
            self._resume[cluster] = resume
            if next_deadline is None:
                del self._next_due[cluster]
            else:
                self._next_due[cluster] = next_deadline
            if committed:
                due.extend(committed)
                due.sort()
        return due

    def take_writes(self) -> list[tuple[str, Entry | None]]:
        writes = sorted(self._staged.items())
        self._staged.clear()
        self._staged_objects.clear()
        # Once applied, the staged pending entries are in the index and the handled keys are gone.
        for cluster, heap in self._staged_deadlines.items():
            if heap:
                current = self._next_due.get(cluster)
                self._next_due[cluster] = heap[0][0] if current is None else min(current, heap[0][0])
        self._staged_deadlines.clear()
        self._resume.clear()
        return writes

    def _write_entry(self, entry: Entry, new: bool) -> None:
        key = entry.key
        self._staged[key] = entry
        self._staged_objects.setdefault((entry.ref.cluster, entry.ref.uid), {})[entry.rule] = entry
        if new and entry.state == PENDING:
            heapq.heappush(self._staged_deadlines.setdefault(entry.ref.cluster, []), (entry.deadline_ms, key))

    def _delete_entry(self, entry: Entry) -> None:
        key = entry.key
        self._staged[key] = None
        self._staged_objects.setdefault((entry.ref.cluster, entry.ref.uid), {})[entry.rule] = None


RESTORE_FETCH_WAIT_MS = 10


def restore(store: PartitionStore, bootstrap_servers: str, changelog_topic: str, timeout_seconds: float = 60.0) -> int:
    """Apply the changelog records after the store's checkpoint. Returns how many were applied.

    Call it after the partition's transactional producer initialised, so that a transaction left open
    by a crashed worker is aborted and read_committed reads to the end.
    """
    partition = store.partition
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"{changelog_topic}-restore",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            # The end of the partition shows only when a fetch returns empty. The broker delays such a
            # fetch by up to this long (librdkafka's default is 500 ms), and a new owner restores each
            # partition of each stage in turn before it processes a record.
            "fetch.wait.max.ms": RESTORE_FETCH_WAIT_MS,
        }
    )
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(changelog_topic, partition), timeout=timeout_seconds, cached=False
        )
        start = store.checkpoint + 1
        if start > high:
            log.warning(
                "local state is newer than the changelog, restoring from the beginning",
                extra={"topic": changelog_topic, "partition": partition, "checkpoint": start - 1, "high_watermark": high},
            )
            store.wipe()
            start = 0
        if start >= high:
            return 0
        consumer.assign([TopicPartition(changelog_topic, partition, max(start, low) if start else OFFSET_BEGINNING)])
        applied = 0
        last_offset = start - 1
        pending: list[StateWrite] = []
        while True:
            message = consumer.poll(timeout_seconds)
            if message is None:
                raise KdiagError(
                    f"timed out after {timeout_seconds} s restoring {changelog_topic}[{partition}] "
                    f"at offset {last_offset + 1} of {high}; check the broker"
                )
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    break
                raise KafkaException(error)
            pending.append((message.key(), message.value()))
            last_offset = message.offset()
            applied += 1
            if len(pending) >= 10_000:
                store.apply(pending, last_offset)
                pending.clear()
        # Transaction markers occupy offsets too: the checkpoint moves to just before the end.
        store.apply(pending, max(last_offset, high - 1))
        return applied
    finally:
        consumer.close()
