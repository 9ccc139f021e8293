"""Pending, firing and resolved entries of duration rules, on event time.

A rule with duration s fires for an object when the object matched at every change for s seconds of
event time: from the first matching change, with no non-matching change in between. The tracker owns
no clock of its own. Callers pass the event time of every change and tick, and a cluster's clock is
the newest time seen for it, so replaying history fires exactly the alerts a live run fired, with the
same timestamps.

The tracker keeps its entries in an EntryStorage. MemoryEntries keeps them in Python dicts, and the
worker's StoredEntries (streams/state.py) keeps them in RocksDB. There are as many entries as there are
anomalies, not objects. The tracker reports the keys it changed, so that the caller persists state
only on transitions.
"""

from __future__ import annotations

import hashlib
import heapq
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

PENDING = "pending"
FIRING = "firing"
FIRING_STATUS = "FIRING"
RESOLVED_STATUS = "RESOLVED"


class MatchLike(Protocol):
    context: dict[str, str]


@dataclass(frozen=True, slots=True)
class ObjectRef:
    cluster: str
    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    resource_version: str

    def describe(self) -> str:
        return f"{self.namespace or '-'}/{self.kind}/{self.name}"


@dataclass(slots=True)
class Entry:
    """One rule that matches one object: pending until its deadline, then firing."""

    rule: str
    ref: ObjectRef
    state: str
    active_since_ms: int
    deadline_ms: int
    context: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return entry_key(self.ref.cluster, self.ref.uid, self.rule)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule, self.ref)

    @property
    def alert_id(self) -> str:
        return alert_id(self.fingerprint, self.ref.uid, self.active_since_ms)

    def to_state(self) -> dict[str, Any]:
        ref = self.ref
        return {
            "rule": self.rule,
            "cluster": ref.cluster,
            "apiVersion": ref.api_version,
            "kind": ref.kind,
            "namespace": ref.namespace,
            "name": ref.name,
            "uid": ref.uid,
            "resourceVersion": ref.resource_version,
            "state": self.state,
            "activeSince": self.active_since_ms,
            "deadline": self.deadline_ms,
            "context": self.context,
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> "Entry":
        # Interned: entries restored into memory share one copy of each cluster, kind and rule name.
        intern = sys.intern
        ref = ObjectRef(
            cluster=intern(data["cluster"]),
            api_version=intern(data["apiVersion"]),
            kind=intern(data["kind"]),
            namespace=intern(data["namespace"]),
            name=data["name"],
            uid=data["uid"],
            resource_version=data["resourceVersion"],
        )
        return cls(
            rule=intern(data["rule"]),
            ref=ref,
            state=intern(data["state"]),
            active_since_ms=data["activeSince"],
            deadline_ms=data["deadline"],
            context=dict(data["context"]),
        )


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A transition to FIRING or RESOLVED, in the field names of the Alert schema."""

    status: str
    entry: Entry
    resolved_at_ms: int | None = None
    resolve_reason: str = ""
    resource_version: str = ""

    def to_avro(self) -> dict[str, Any]:
        entry = self.entry
        ref = entry.ref
        return {
            "id": entry.alert_id,
            "fingerprint": entry.fingerprint,
            "status": self.status,
            "rule": entry.rule,
            "cluster": ref.cluster,
            "apiVersion": ref.api_version,
            "kind": ref.kind,
            "namespace": ref.namespace,
            "name": ref.name,
            "uid": ref.uid,
            "resourceVersion": self.resource_version or ref.resource_version,
            "activeSince": entry.active_since_ms,
            "firedAt": entry.deadline_ms,
            "resolvedAt": self.resolved_at_ms,
            "resolveReason": self.resolve_reason,
            "context": entry.context,
        }


def entry_key(cluster: str, uid: str, rule: str) -> str:
    return f"e\x1f{cluster}\x1f{uid}\x1f{rule}"


def fingerprint(rule: str, ref: ObjectRef) -> str:
    """Hash of the rule and the object's identity by name, stable across firings and new uids."""
    text = "\x1f".join((rule, ref.cluster, ref.kind, ref.namespace, ref.name))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def alert_id(fingerprint_hex: str, uid: str, active_since_ms: int) -> str:
    """Hash of one firing: the same object, rule and start time always give the same id."""
    text = f"{fingerprint_hex}\x1f{uid}\x1f{active_since_ms}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class EntryStorage:
    """Storage of a DurationTracker's entries, with the pending, firing and per-rule counts.

    The tracker calls `add`, `fire` and `remove` for every transition, so the counts never need a
    scan. Subclasses keep the entries and their deadlines. `take_writes` hands over the keys changed
    since its last call, with their new entry or None for a removed one.
    """

    def __init__(self) -> None:
        self.total = 0
        self.firing = 0
        self.rule_counts: dict[str, int] = {}

    # Implemented by subclasses

    @property
    def dirty(self) -> Collection[str]:
        """Return the keys changed since the last take_writes."""
        raise NotImplementedError

    def get(self, key: str) -> Entry | None:
        raise NotImplementedError

    def object_entries(self, cluster: str, uid: str) -> dict[str, Entry]:
        """Return a new dict of the object's entries by rule."""
        raise NotImplementedError

    def keys(self) -> Iterator[str]:
        """Yield the key of every entry."""
        raise NotImplementedError

    def rule_entries(self, rule: str) -> list[Entry]:
        """Return every entry of a rule, in key order."""
        raise NotImplementedError

    def pop_due(self, cluster: str, time_ms: int) -> list[tuple[int, str]]:
        """Remove and return the (deadline, key) items of the cluster due at time_ms, in order.

        Items can be stale: the tracker checks each one against the entry that `get` returns.
        """
        raise NotImplementedError

    def take_writes(self) -> list[tuple[str, Entry | None]]:
        raise NotImplementedError

    def _write_entry(self, entry: Entry, new: bool) -> None:
        """Store an entry. A new pending entry also gets its deadline scheduled."""
        raise NotImplementedError

    def _delete_entry(self, entry: Entry) -> None:
        raise NotImplementedError

    # Transitions, called by the tracker

    def add(self, entry: Entry) -> None:
        """Store a new entry, pending or firing."""
        self._write_entry(entry, new=True)
        self.total += 1
        self.rule_counts[entry.rule] = self.rule_counts.get(entry.rule, 0) + 1
        if entry.state == FIRING:
            self.firing += 1

    def fire(self, entry: Entry) -> None:
        """Move a pending entry to firing."""
        entry.state = FIRING
        self._write_entry(entry, new=False)
        self.firing += 1

    def remove(self, entry: Entry) -> None:
        self._delete_entry(entry)
        self.total -= 1
        remaining = self.rule_counts[entry.rule] - 1
        if remaining:
            self.rule_counts[entry.rule] = remaining
        else:
            del self.rule_counts[entry.rule]
        if entry.state == FIRING:
            self.firing -= 1


class MemoryEntries(EntryStorage):
    """Every entry in Python dicts, with a heap of deadlines per cluster.

    About 1.6 KiB of Python heap per entry. The worker keeps its entries in RocksDB instead
    (streams/state.py StoredEntries). This one serves callers without a database.
    """

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        super().__init__()
        self.entries: dict[str, Entry] = {}
        self._by_object: dict[tuple[str, str], dict[str, Entry]] = {}
        self._deadlines: dict[str, list[tuple[int, str]]] = {}
        self._dirty: set[str] = set()
        for entry in entries:
            self.add(entry)
        self._dirty.clear()

    @property
    def dirty(self) -> set[str]:
        return self._dirty

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def object_entries(self, cluster: str, uid: str) -> dict[str, Entry]:
        return dict(self._by_object.get((cluster, uid), ()))

    def keys(self) -> Iterator[str]:
        return iter(list(self.entries))

    def rule_entries(self, rule: str) -> list[Entry]:
        return [self.entries[key] for key in sorted(self.entries) if self.entries[key].rule == rule]

    def pop_due(self, cluster: str, time_ms: int) -> list[tuple[int, str]]:
        heap = self._deadlines.get(cluster)
        due = []
        while heap and heap[0][0] <= time_ms:
            due.append(heapq.heappop(heap))
        return due

    def take_writes(self) -> list[tuple[str, Entry | None]]:
        writes = [(key, self.entries.get(key)) for key in sorted(self._dirty)]
        self._dirty.clear()
        return writes

    def _write_entry(self, entry: Entry, new: bool) -> None:
        key = entry.key
        if new:
            self.entries[key] = entry
            self._by_object.setdefault((entry.ref.cluster, entry.ref.uid), {})[entry.rule] = entry
            if entry.state == PENDING:
                heapq.heappush(self._deadlines.setdefault(entry.ref.cluster, []), (entry.deadline_ms, key))
        self._dirty.add(key)

    def _delete_entry(self, entry: Entry) -> None:
        key = entry.key
        del self.entries[key]
        object_key = (entry.ref.cluster, entry.ref.uid)
        rules = self._by_object[object_key]
        del rules[entry.rule]
        if not rules:
            del self._by_object[object_key]
        self._dirty.add(key)


class EntriesView(Mapping[str, Entry]):
    """Read-only mapping from entry key to Entry over an EntryStorage."""

    def __init__(self, storage: EntryStorage) -> None:
        self._storage = storage

    def __getitem__(self, key: str) -> Entry:
        entry = self._storage.get(key)
        if entry is None:
            raise KeyError(key)
        return entry

    def __iter__(self) -> Iterator[str]:
        return self._storage.keys()

    def __len__(self) -> int:
        return self._storage.total


class DurationTracker:
    """Active entries and clocks of one partition.

    `storage` keeps the entries: by default a MemoryEntries built from `entries`. A storage backed by a
    database (streams/state.py StoredEntries) loads its own entries, so `entries` must then be empty.
    `dirty` contains the entry keys changed since the last `take_writes`.
    """

    def __init__(
        self,
        entries: Iterable[Entry] = (),
        clocks: dict[str, int] | None = None,
        storage: EntryStorage | None = None,
    ) -> None:
        if storage is None:
            storage = MemoryEntries(entries)
        elif any(True for _ in entries):
            raise ValueError("entries must be empty when a storage is given: the storage loads its own entries")
        self.storage = storage
        self.clocks: dict[str, int] = dict(clocks or {})

    # Queries

    @property
    def entries(self) -> Mapping[str, Entry]:
        """Every active entry by key. With a database-backed storage each read parses stored JSON."""
        storage = self.storage
        return storage.entries if isinstance(storage, MemoryEntries) else EntriesView(storage)

    @property
    def dirty(self) -> Collection[str]:
        return self.storage.dirty

    def clock(self, cluster: str) -> int | None:
        return self.clocks.get(cluster)

    def entries_of(self, cluster: str, uid: str) -> dict[str, Entry]:
        return self.storage.object_entries(cluster, uid)

    def has_entries(self, cluster: str, uid: str) -> bool:
        return bool(self.storage.object_entries(cluster, uid))

    def rules(self) -> set[str]:
        """Return the names of the rules that have at least one entry."""
        return set(self.storage.rule_counts)

    def counts(self) -> tuple[int, int]:
        """Return (pending, firing) entry counts."""
        return self.storage.total - self.storage.firing, self.storage.firing

    def take_writes(self) -> list[tuple[str, Entry | None]]:
        """Return the entries changed since the last call, sorted by key, None for a removed one."""
        return self.storage.take_writes()

    # Transitions

    def advance(self, cluster: str, time_ms: int) -> list[AlertEvent]:
        """Move the cluster's clock forward to time_ms and fire the entries whose deadline passed.

        A clock never moves back: an older time leaves it unchanged.
        """
        current = self.clocks.get(cluster)
        if current is None or time_ms > current:
            self.clocks[cluster] = time_ms
            current = time_ms
        events: list[AlertEvent] = []
        for deadline_ms, key in self.storage.pop_due(cluster, current):
            entry = self.storage.get(key)
            if entry is None or entry.state != PENDING or entry.deadline_ms != deadline_ms:
                continue  # A stale item: the entry was removed, fired or restarted since.
            self.storage.fire(entry)
            events.append(AlertEvent(FIRING_STATUS, entry))
        return events

    def observe(
        self,
        ref: ObjectRef,
        time_ms: int,
        results: Iterable[tuple[str, float, MatchLike | None, int | None]],
    ) -> list[AlertEvent]:
        """Apply one change of an object. `results` contains (rule, duration_seconds, match or None,
        start) for every rule that applies to the object's kind. `start` is the time the object
        itself gives for the anomaly's start (a rule's durationFrom), or None to start at this change.

        Deadlines that passed before this change fire first, because the object matched up to it.
        """
        events = self.advance(ref.cluster, time_ms)
        current = self.storage.object_entries(ref.cluster, ref.uid)
        for rule, duration_seconds, match, start_ms in results:
            entry = current.get(rule)
            if match is None:
                if entry is not None:
                    events.extend(self._end(entry, time_ms, "recovered", ref.resource_version))
                    del current[rule]
                continue
            if entry is not None:
                continue  # Still matching: state changes only on transitions.
            # A start later than the change (clock skew between the object and the source) is ignored.
            active_since_ms = time_ms if start_ms is None else min(start_ms, time_ms)
            deadline_ms = active_since_ms + int(round(duration_seconds * 1000))
            entry = Entry(
                rule=rule,
                ref=ref,
                state=FIRING if deadline_ms <= time_ms else PENDING,
                active_since_ms=active_since_ms,
                deadline_ms=deadline_ms,
                context=dict(match.context),
            )
            self.storage.add(entry)
            current[rule] = entry
            if entry.state == FIRING:
                events.append(AlertEvent(FIRING_STATUS, entry))
        return events

    def delete(self, ref: ObjectRef, time_ms: int) -> list[AlertEvent]:
        """Apply the deletion of an object: pending entries go, firing ones resolve, in rule order."""
        events = self.advance(ref.cluster, time_ms)
        entries = self.storage.object_entries(ref.cluster, ref.uid)
        for rule in sorted(entries):
            events.extend(self._end(entries[rule], time_ms, "deleted", ref.resource_version))
        return events

    def drop_rule(self, rule: str) -> list[AlertEvent]:
        """Remove every entry of a deleted rule, in key order: pending ones go, firing ones resolve at
        their cluster's clock.

        With a database-backed storage this reads every entry key, so it runs only when the rule has entries.
        """
        if rule not in self.storage.rule_counts:
            return []
        events: list[AlertEvent] = []
        for entry in self.storage.rule_entries(rule):
            clock = self.clocks.get(entry.ref.cluster, entry.deadline_ms)
            events.extend(self._end(entry, clock, "rule deleted", entry.ref.resource_version))
        return events

    # Internals

    def _end(self, entry: Entry, time_ms: int, reason: str, resource_version: str) -> list[AlertEvent]:
        self.storage.remove(entry)
        if entry.state != FIRING:
            return []
        return [AlertEvent(RESOLVED_STATUS, entry, time_ms, reason, resource_version)]
