"""The watcher's progress: which resourceVersion each resource type may resume from, and which objects
Kafka has seen.

Two parts:

- ProgressStore, in RocksDB: per resource type the resourceVersion to resume the watch from, and the
  index uid -> (resourceVersion, namespace, name) of every object whose newest published change Kafka
  acknowledged. After a 410 Gone, the relist compares the listed objects with the index and publishes
  DELETED for indexed objects that are no longer listed. The objects themselves are never stored.
- ResourceProgress, in memory: the watch events of one resource type whose changes are still pending or
  unacknowledged, so that the persisted resourceVersion never passes a change Kafka has not
  acknowledged.

Key layout (raw bytes):
- ``v\\x1f<type id>``: the resourceVersion to resume the watch of the type from;
- ``i\\x1f<type id>\\x1f<uid>``: ``<resourceVersion>\\x1f<namespace>\\x1f<name>`` of an acknowledged object.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

SEPARATOR = b"\x1f"
VERSION_PREFIX = b"v\x1f"
INDEX_PREFIX = b"i\x1f"
# RocksDB buffers this many bytes of writes in memory before it writes a file. The default of 64 MiB
# would be most of the watcher's memory budget.
WRITE_BUFFER_BYTES = 2 * 1024 * 1024
# Cache of data blocks read from files, with index and filter blocks counted in it. RocksDB's default
# is 32 MiB. The index is read mostly after a restart or a 410 Gone, so a small cache suffices.
BLOCK_CACHE_BYTES = 4 * 1024 * 1024
INDEX_CHUNK_ENTRIES = 1000


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """The newest acknowledged state of an object: its resourceVersion, namespace and name."""

    resource_version: str
    namespace: str
    name: str

    def encode(self) -> bytes:
        return SEPARATOR.join((self.resource_version.encode(), self.namespace.encode(), self.name.encode()))

    @classmethod
    def decode(cls, raw: bytes) -> "IndexEntry":
        version, namespace, name = raw.split(SEPARATOR, 2)
        return cls(version.decode(), namespace.decode(), name.decode())


IndexWrite = tuple[str, str, IndexEntry | None]  # (type id, uid, entry or None to delete)


class ProgressStore:
    """The RocksDB database of resourceVersions and the uid index. Safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(2)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
        table.set_cache_index_and_filter_blocks(True)
        options.set_block_based_table_factory(table)
        self._lock = threading.Lock()
        self._db = Rdict(str(path), options)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # resourceVersions

    def resource_version(self, type_id: str) -> str | None:
        with self._lock:
            raw = self._db.get(VERSION_PREFIX + type_id.encode())
        return raw.decode() if raw is not None else None

    def save_resource_versions(self, versions: dict[str, str]) -> None:
        """Write the resourceVersions of several types in one atomic batch."""
        batch = WriteBatch(raw_mode=True)
        for type_id, version in versions.items():
            batch.put(VERSION_PREFIX + type_id.encode(), version.encode())
        with self._lock:
            self._db.write(batch)

    def resource_versions(self) -> dict[str, str]:
        result = {}
        with self._lock:
            for key, value in self._db.items(from_key=VERSION_PREFIX):
                if not key.startswith(VERSION_PREFIX):
                    break
                result[key[len(VERSION_PREFIX):].decode()] = value.decode()
        return result

    # uid index

    @staticmethod
    def _index_key(type_id: str, uid: str) -> bytes:
        return INDEX_PREFIX + type_id.encode() + SEPARATOR + uid.encode()

    def indexed(self, type_id: str, uid: str) -> IndexEntry | None:
        with self._lock:
            raw = self._db.get(self._index_key(type_id, uid))
        return IndexEntry.decode(raw) if raw is not None else None

    def write_index(self, writes: Iterable[IndexWrite]) -> None:
        """Put or delete (entry None) index entries in one atomic batch."""
        batch = WriteBatch(raw_mode=True)
        count = 0
        for type_id, uid, entry in writes:
            key = self._index_key(type_id, uid)
            if entry is None:
                batch.delete(key)
            else:
                batch.put(key, entry.encode())
            count += 1
        if count:
            with self._lock:
                self._db.write(batch)

    def index_chunk(self, type_id: str, after_uid: str | None = None, limit: int = INDEX_CHUNK_ENTRIES) -> list[tuple[str, IndexEntry]]:
        """Return up to `limit` index entries of a type in uid order, starting after `after_uid`.

        The lock is held for one chunk only, so that acknowledgements can update the index between
        chunks.
        """
        prefix = INDEX_PREFIX + type_id.encode() + SEPARATOR
        start = prefix if after_uid is None else prefix + after_uid.encode() + b"\x00"
        chunk: list[tuple[str, IndexEntry]] = []
        with self._lock:
            for key, value in self._db.items(from_key=start):
                if not key.startswith(prefix) or len(chunk) >= limit:
                    break
                chunk.append((key[len(prefix):].decode(), IndexEntry.decode(value)))
        return chunk

    def index_size(self, type_id: str) -> int:
        count = 0
        after = None
        while chunk := self.index_chunk(type_id, after):
            count += len(chunk)
            after = chunk[-1][0]
        return count


class ResourceProgress:
    """The newest resourceVersion of one resource type that is safe to persist.

    Each queued change opens an entry with a sequence number and a floor: the type's latest
    resourceVersion before the event that created the change. The entry closes when Kafka acknowledges
    the change or a newer change of the same object replaces it. The safe resourceVersion is the floor
    of the oldest open entry, or the latest resourceVersion when no entry is open. Events that produce
    no new entry (bookmarks, coalesced updates, filtered objects) only move the latest resourceVersion.

    Call open_entry() before advance() for the same event, so that the event's own resourceVersion is
    never the floor of its own change.
    """

    def __init__(self, resource_version: str | None) -> None:
        self._lock = threading.Lock()
        self._latest = resource_version
        self._open: OrderedDict[int, str | None] = OrderedDict()
        self._active_uids: dict[str, int] = {}
        self._next_sequence = 0

    @property
    def latest(self) -> str | None:
        with self._lock:
            return self._latest

    def open_entry(self, uid: str) -> int:
        with self._lock:
            self._next_sequence += 1
            self._open[self._next_sequence] = self._latest
            self._active_uids[uid] = self._active_uids.get(uid, 0) + 1
            return self._next_sequence

    def close_entry(self, sequence: int, uid: str) -> None:
        with self._lock:
            if self._open.pop(sequence, _MISSING) is _MISSING:
                return
            remaining = self._active_uids.get(uid, 0) - 1
            if remaining > 0:
                self._active_uids[uid] = remaining
            else:
                self._active_uids.pop(uid, None)

    def advance(self, resource_version: str) -> None:
        with self._lock:
            self._latest = resource_version

    def is_active(self, uid: str) -> bool:
        """Return whether a change of the object is queued or awaiting acknowledgement."""
        with self._lock:
            return uid in self._active_uids

    def active_changes(self, uid: str) -> int:
        """Return how many changes of the object are queued or awaiting acknowledgement."""
        with self._lock:
            return self._active_uids.get(uid, 0)

    def open_entries(self) -> int:
        with self._lock:
            return len(self._open)

    def safe_resource_version(self) -> str | None:
        with self._lock:
            if self._open:
                return next(iter(self._open.values()))
            return self._latest


_MISSING = object()
