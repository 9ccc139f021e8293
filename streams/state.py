"""RocksDB state of one changes-topic partition, backed by a compacted changelog partition.

Layout of the keys (raw bytes):
- ``e\\x1f<cluster>\\x1f<uid>\\x1f<rule>``: an active entry (pending or firing) as JSON;
- ``c\\x1f<cluster>``: the cluster's event-time clock on this partition, epoch milliseconds;
- ``o``: the next offset of the changes partition to process;
- ``_checkpoint``: the newest changelog offset applied here. It stays local, never in the changelog.

Every key except ``_checkpoint`` is also written to the changelog, inside the same Kafka transaction as
the alerts that the change produced and the ``o`` key. The local database is written only after the
transaction commits, so it never contains more than the changelog. On start it catches up from the
changelog after ``_checkpoint``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Iterable

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from rocksdict import Options, Rdict, WriteBatch

from kdiag.durations import Entry
from kdiag.errors import KdiagError

log = logging.getLogger(__name__)

ENTRY_PREFIX = b"e\x1f"
CLOCK_PREFIX = b"c\x1f"
NEXT_OFFSET_KEY = b"o"
CHECKPOINT_KEY = b"_checkpoint"

StateWrite = tuple[bytes, bytes | None]


def entry_state_key(key: str) -> bytes:
    return key.encode()


def clock_state_key(cluster: str) -> bytes:
    return CLOCK_PREFIX + cluster.encode()


class PartitionStore:
    def __init__(self, root: Path, partition: int) -> None:
        self.partition = partition
        self.path = root / f"partition-{partition}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()

    def _open(self) -> Rdict:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        return Rdict(str(self.path), options)

    @property
    def checkpoint(self) -> int:
        raw = self._db.get(CHECKPOINT_KEY)
        return int(raw) if raw is not None else -1

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def scan_keys(self, prefix: bytes) -> list[bytes]:
        """Return the committed keys that start with prefix, in order."""
        keys = []
        for key in self._db.keys(from_key=prefix):
            if not key.startswith(prefix):
                break
            keys.append(key)
        return keys

    def load(self) -> tuple[list[Entry], dict[str, int], int]:
        """Return the active entries, the clocks and the next offset to process."""
        entries: list[Entry] = []
        clocks: dict[str, int] = {}
        for key, value in self._db.items(from_key=ENTRY_PREFIX):
            if not key.startswith(ENTRY_PREFIX):
                break
            entries.append(Entry.from_state(orjson.loads(value)))
        for key, value in self._db.items(from_key=CLOCK_PREFIX):
            if not key.startswith(CLOCK_PREFIX):
                break
            clocks[key[len(CLOCK_PREFIX):].decode()] = int(value)
        raw_offset = self._db.get(NEXT_OFFSET_KEY)
        return entries, clocks, int(raw_offset) if raw_offset is not None else 0

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
