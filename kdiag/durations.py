"""Pending, firing and resolved entries of duration rules, on event time.

A rule with duration s fires for an object when the object matched at every change for s seconds of
event time: from the first matching change, with no non-matching change in between. The tracker owns
no clock of its own. Callers pass the event time of every change and tick, and a cluster's clock is
the newest time seen for it, so replaying history fires exactly the alerts a live run fired, with the
same timestamps.

The tracker keeps every active entry in memory (there are as many as there are anomalies, not
objects) and reports the keys it changed, so that the caller persists state only on transitions.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

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
        ref = ObjectRef(
            cluster=data["cluster"],
            api_version=data["apiVersion"],
            kind=data["kind"],
            namespace=data["namespace"],
            name=data["name"],
            uid=data["uid"],
            resource_version=data["resourceVersion"],
        )
        return cls(
            rule=data["rule"],
            ref=ref,
            state=data["state"],
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


class DurationTracker:
    """Active entries and clocks of one partition.

    `dirty` collects the state keys changed since the caller last cleared it: entry keys whose value
    is now `entries[key]` or, if absent, deleted.
    """

    def __init__(self, entries: Iterable[Entry] = (), clocks: dict[str, int] | None = None) -> None:
        self.entries: dict[str, Entry] = {}
        self._by_object: dict[tuple[str, str], dict[str, Entry]] = {}
        self._deadlines: dict[str, list[tuple[int, str]]] = {}
        self.clocks: dict[str, int] = dict(clocks or {})
        self.dirty: set[str] = set()
        self._firing_count = 0
        for entry in entries:
            self._add(entry)
        self.dirty.clear()

    # Queries

    def clock(self, cluster: str) -> int | None:
        return self.clocks.get(cluster)

    def entries_of(self, cluster: str, uid: str) -> dict[str, Entry]:
        return self._by_object.get((cluster, uid), {})

    def has_entries(self, cluster: str, uid: str) -> bool:
        return (cluster, uid) in self._by_object

    def counts(self) -> tuple[int, int]:
        """Return (pending, firing) entry counts."""
        return len(self.entries) - self._firing_count, self._firing_count

    # Transitions

    def advance(self, cluster: str, time_ms: int) -> list[AlertEvent]:
        """Move the cluster's clock forward to time_ms and fire the entries whose deadline passed.

        A clock never moves back: an older time leaves it unchanged.
        """
        current = self.clocks.get(cluster)
        if current is None or time_ms > current:
            self.clocks[cluster] = time_ms
            current = time_ms
        heap = self._deadlines.get(cluster)
        events: list[AlertEvent] = []
        while heap and heap[0][0] <= current:
            deadline_ms, key = heapq.heappop(heap)
            entry = self.entries.get(key)
            if entry is None or entry.state != PENDING or entry.deadline_ms != deadline_ms:
                continue  # A stale heap item: the entry was removed or restarted since.
            entry.state = FIRING
            self._firing_count += 1
            self.dirty.add(key)
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
        current = self._by_object.get((ref.cluster, ref.uid))
        for rule, duration_seconds, match, start_ms in results:
            entry = current.get(rule) if current else None
            if match is None:
                if entry is not None:
                    events.extend(self._end(entry, time_ms, "recovered", ref.resource_version))
                continue
            if entry is not None:
                continue  # Still matching: state changes only on transitions.
            # A start later than the change (clock skew between the object and the source) is ignored.
            active_since_ms = time_ms if start_ms is None else min(start_ms, time_ms)
            entry = Entry(
                rule=rule,
                ref=ref,
                state=PENDING,
                active_since_ms=active_since_ms,
                deadline_ms=active_since_ms + int(round(duration_seconds * 1000)),
                context=dict(match.context),
            )
            self._add(entry)
            if entry.deadline_ms <= time_ms:
                entry.state = FIRING
                self._firing_count += 1
                events.append(AlertEvent(FIRING_STATUS, entry))
            current = self._by_object.get((ref.cluster, ref.uid))
        return events

    def delete(self, ref: ObjectRef, time_ms: int) -> list[AlertEvent]:
        """Apply the deletion of an object: pending entries go, firing ones resolve."""
        events = self.advance(ref.cluster, time_ms)
        for entry in list(self.entries_of(ref.cluster, ref.uid).values()):
            events.extend(self._end(entry, time_ms, "deleted", ref.resource_version))
        return events

    def drop_rule(self, rule: str) -> list[AlertEvent]:
        """Remove every entry of a deleted rule: pending ones go, firing ones resolve at their cluster's clock."""
        events: list[AlertEvent] = []
        for entry in [entry for entry in self.entries.values() if entry.rule == rule]:
            clock = self.clocks.get(entry.ref.cluster, entry.deadline_ms)
            events.extend(self._end(entry, clock, "rule deleted", entry.ref.resource_version))
        return events

    # Internals

    def _add(self, entry: Entry) -> None:
        key = entry.key
        self.entries[key] = entry
        self._by_object.setdefault((entry.ref.cluster, entry.ref.uid), {})[entry.rule] = entry
        if entry.state == PENDING:
            heapq.heappush(self._deadlines.setdefault(entry.ref.cluster, []), (entry.deadline_ms, key))
        else:
            self._firing_count += 1
        self.dirty.add(key)

    def _end(self, entry: Entry, time_ms: int, reason: str, resource_version: str) -> list[AlertEvent]:
        key = entry.key
        del self.entries[key]
        object_key = (entry.ref.cluster, entry.ref.uid)
        rules = self._by_object[object_key]
        del rules[entry.rule]
        if not rules:
            del self._by_object[object_key]
        self.dirty.add(key)
        if entry.state != FIRING:
            return []
        self._firing_count -= 1
        return [AlertEvent(RESOLVED_STATUS, entry, time_ms, reason, resource_version)]
