"""Rule evaluation over the records of one changes-topic partition.

PartitionProcessor turns changes-topic records into alert transitions and state writes. It does no
I/O: the worker hands it records and commits what it returns, so its behaviour is tested with
explicit records and timestamps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from kdiag.codec import codec
from kdiag.durations import AlertEvent, DurationTracker, Entry, ObjectRef
from kdiag.model import topic_key
from kdiag.partitioning import partition_for_key
from kdiag.rules.kinds import CLUSTER_SCOPED_KINDS
from kdiag.rules.references import extract_references
from streams.references import DYNAMIC_TARGET_KINDS, ObjectKey, ReferencePlan, ReferenceStore
from kdiag.errors import DecodeError, KdiagError
from kdiag.rules import RuleSet
from streams.state import NEXT_OFFSET_KEY, StateWrite, clock_state_key, entry_state_key

log = logging.getLogger(__name__)

CHANGE_BATCH = codec("ChangeBatch")
ALERT = codec("Alert")
DEAD_LETTER = codec("DeadLetter")
MAX_DEAD_LETTER_PAYLOAD_BYTES = 65_536


class OffsetGapError(KdiagError):
    """The consumer is ahead of the committed state: processing on would skip records."""


@dataclass
class BatchResult:
    """Outputs and counts of one batch of records of one partition."""

    alerts: list[AlertEvent] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    changes: int = 0
    ticks: int = 0
    skipped: int = 0

    def encoded_alerts(self) -> list[tuple[bytes, bytes]]:
        return [(event.entry.fingerprint.encode(), ALERT.encode(event.to_avro())) for event in self.alerts]

    def encoded_dead_letters(self) -> list[bytes]:
        return [DEAD_LETTER.encode(letter) for letter in self.dead_letters]


class PartitionProcessor:
    def __init__(
        self,
        topic: str,
        partition: int,
        rule_set: RuleSet,
        entries: list[Entry],
        clocks: dict[str, int],
        next_offset: int,
        partitions: int = 1,
        lookup: Callable[[bytes], bytes | None] = lambda key: None,
    ) -> None:
        """`partitions` is the changes topic's partition count and `lookup` reads committed state."""
        self.topic = topic
        self.partition = partition
        self.partitions = partitions
        self.rule_set = rule_set
        self.tracker = DurationTracker(entries, clocks)
        self.next_offset = next_offset
        self.references = ReferenceStore(lookup)
        self.plan = ReferencePlan.from_rule_set(rule_set)
        # Referenced object -> keys of the entries whose rule read it, and the reverse.
        self._dependents: dict[ObjectKey, set[str]] = {}
        self._entry_references: dict[str, list[ObjectKey]] = {}
        self._indexed_by_object: dict[tuple[str, str], set[str]] = {}
        self._clocks_changed: set[str] = set()
        self._offset_changed = False
        self._started = False
        self._rules_checked = False
        self._rebuild_dependents()

    def update_rules(self, rule_set: RuleSet, result: BatchResult) -> None:
        """Evaluate with `rule_set` from now on. Entries of rules it no longer has are dropped and their
        firing alerts resolve with reason "rule deleted"."""
        if rule_set is self.rule_set and self._rules_checked:
            return
        # Entries rather than the previous rule set decide, so that rules deleted while no worker
        # owned this partition are dropped too.
        deleted = {entry.rule for entry in self.tracker.entries.values()} - set(rule_set.names)
        self.rule_set = rule_set
        self.plan = ReferencePlan.from_rule_set(rule_set)
        self._rules_checked = True
        for rule in sorted(deleted):
            result.alerts.extend(self.tracker.drop_rule(rule))
        self._rebuild_dependents()

    def has_state_writes(self) -> bool:
        return bool(self.tracker.dirty or self._clocks_changed or self._offset_changed or self.references.has_writes())

    def process(self, offset: int, value: bytes | None, result: BatchResult) -> None:
        """Apply one record. Records before next_offset were committed already and are skipped."""
        if offset < self.next_offset:
            result.skipped += 1
            return
        if not self._started:
            self._started = True
            if offset > self.next_offset > 0:
                # NOTE: input written by a transactional producer has control records between offsets,
                # which would also trip this check; the connectors write without transactions.
                raise OffsetGapError(
                    f"{self.topic}[{self.partition}] delivered offset {offset} but the committed state "
                    f"ends before offset {self.next_offset}; restart the worker so that it resumes "
                    f"from the consumer group's committed offset"
                )
        self.next_offset = offset + 1
        self._offset_changed = True
        result.records += 1
        try:
            batch = CHANGE_BATCH.decode(value)
        except DecodeError as error:
            self._dead_letter(result, offset, str(error), value or b"")
            return
        for change in batch["changes"]:
            self._apply_change(offset, change, result)
        tick = batch["tick"]
        if tick is not None:
            result.ticks += 1
            self._advance(tick["cluster"], tick["time"], result)

    def _advance(self, cluster: str, time_ms: int, result: BatchResult) -> None:
        before = self.tracker.clocks.get(cluster)
        result.alerts.extend(self.tracker.advance(cluster, time_ms))
        if self.tracker.clocks.get(cluster) != before:
            self._clocks_changed.add(cluster)

    def _apply_change(self, offset: int, change: dict[str, Any], result: BatchResult) -> None:
        result.changes += 1
        cluster = change["cluster"]
        time_ms = change["observedTime"]
        if time_ms > self.tracker.clocks.get(cluster, -1):
            self._clocks_changed.add(cluster)
        ref = ObjectRef(
            cluster=cluster,
            api_version=change["apiVersion"],
            kind=change["kind"],
            namespace=change["namespace"],
            name=change["name"],
            uid=change["uid"],
            resource_version=change["resourceVersion"],
        )
        object_key = (cluster, ref.kind, ref.namespace, ref.name)
        referenced = self.plan.references(ref.kind)
        if change["changeType"] == "DELETED":
            result.alerts.extend(self.tracker.delete(ref, time_ms))
            self._forget_object(cluster, ref.uid)
            if referenced and self.references.delete(object_key):
                result.alerts.extend(self._recheck_dependents(object_key, time_ms))
            return
        rules = self.rule_set.rules_for_kind(ref.kind)
        if not rules and not referenced:
            result.alerts.extend(self.tracker.advance(cluster, time_ms))
            return
        try:
            obj = orjson.loads(change["object"])
        except orjson.JSONDecodeError as error:
            reason = f"object of {ref.describe()} uid {ref.uid} is not valid JSON: {error}"
            self._dead_letter(result, offset, reason, change["object"])
            result.alerts.extend(self.tracker.advance(cluster, time_ms))
            return
        if referenced:
            result.alerts.extend(self.tracker.advance(cluster, time_ms))
            if self.references.put(object_key, self.plan.project(obj)):
                result.alerts.extend(self._recheck_dependents(object_key, time_ms))
        if not rules:
            return
        resolve = self.references.resolver(cluster)
        results = []
        for rule in rules:
            if rule.uses_references:
                match = rule.evaluate(obj, resolve) if self._can_resolve(rule, cluster) else None
            else:
                match = rule.evaluate(obj)
            start_ms = rule.active_since_ms(obj) if match is not None and rule.duration_from is not None else None
            results.append((rule.name, rule.duration_seconds, match, start_ms))
        result.alerts.extend(self.tracker.observe(ref, time_ms, results))
        if self._indexed_by_object.get((cluster, ref.uid)) or any(rule.uses_references for rule in rules):
            self._track_references(cluster, ref.uid, obj)

    # References

    def _can_resolve(self, rule: Any, cluster: str) -> bool:
        """Whether this partition holds the objects the rule refers to.

        Cluster-scoped objects arrive only on the partition of key "<cluster>/".
        """
        if not any(kind in CLUSTER_SCOPED_KINDS for kind in self._rule_target_kinds(rule)):
            return True
        return partition_for_key(topic_key(cluster, "").encode(), self.partitions) == self.partition

    @staticmethod
    def _rule_target_kinds(rule: Any) -> set[str]:
        kinds: set[str] = set()
        for declaration in rule.references:
            kinds |= {declaration.kind} if declaration.kind else set(DYNAMIC_TARGET_KINDS)
        return kinds

    def _track_references(self, cluster: str, uid: str, obj: dict[str, Any]) -> None:
        """Index the object's entries of reference rules by the objects they refer to."""
        for rule_name, entry in self.tracker.entries_of(cluster, uid).items():
            rule = self.rule_set.get(rule_name)
            if rule is None or not rule.uses_references or entry.key in self._entry_references:
                continue
            if entry.object is None:
                entry.object = obj
                self.tracker.dirty.add(entry.key)
            self._index_entry(entry, rule)
        self._forget_ended(cluster, uid)

    def _index_entry(self, entry: Entry, rule: Any) -> None:
        cluster = entry.ref.cluster
        references = extract_references(rule, entry.object)
        keys = [(cluster, reference.kind, reference.namespace, reference.name) for reference in references]
        self._entry_references[entry.key] = keys
        self._indexed_by_object.setdefault((cluster, entry.ref.uid), set()).add(entry.key)
        for key in keys:
            self._dependents.setdefault(key, set()).add(entry.key)

    def _unindex_entry(self, entry_key: str) -> None:
        _, cluster, uid, _ = entry_key.split("\x1f", 3)
        indexed = self._indexed_by_object.get((cluster, uid))
        if indexed is not None:
            indexed.discard(entry_key)
            if not indexed:
                del self._indexed_by_object[(cluster, uid)]
        for key in self._entry_references.pop(entry_key, ()):
            dependents = self._dependents.get(key)
            if dependents is not None:
                dependents.discard(entry_key)
                if not dependents:
                    del self._dependents[key]

    def _forget_ended(self, cluster: str, uid: str) -> None:
        current = {entry.key for entry in self.tracker.entries_of(cluster, uid).values()}
        for key in list(self._indexed_by_object.get((cluster, uid), ())):
            if key not in current:
                self._unindex_entry(key)

    def _forget_object(self, cluster: str, uid: str) -> None:
        self._forget_ended(cluster, uid)

    def _rebuild_dependents(self) -> None:
        self._dependents.clear()
        self._entry_references.clear()
        self._indexed_by_object.clear()
        for entry in self.tracker.entries.values():
            rule = self.rule_set.get(entry.rule)
            if rule is not None and rule.uses_references and entry.object is not None:
                self._index_entry(entry, rule)

    def _recheck_dependents(self, object_key: ObjectKey, time_ms: int) -> list[AlertEvent]:
        """Evaluate again the entries whose rule read a referenced object that just changed."""
        events: list[AlertEvent] = []
        for key in sorted(self._dependents.get(object_key, ())):
            entry = self.tracker.entries.get(key)
            rule = self.rule_set.get(entry.rule) if entry is not None else None
            if entry is None or rule is None or entry.object is None:
                self._unindex_entry(key)
                continue
            if rule.evaluate(entry.object, self.references.resolver(entry.ref.cluster)) is None:
                events.extend(self.tracker.end(entry, time_ms, "recovered"))
                self._unindex_entry(key)
        return events

    def _dead_letter(self, result: BatchResult, offset: int, reason: str, payload: bytes) -> None:
        origin = f"{self.topic}[{self.partition}]@{offset}"
        log.warning("record rejected", extra={"origin": origin, "reason": reason})
        result.dead_letters.append(
            {
                "origin": origin,
                "component": "worker",
                "reason": reason,
                "payload": bytes(payload[:MAX_DEAD_LETTER_PAYLOAD_BYTES]),
                "time": int(time.time() * 1000),
            }
        )

    def take_state_writes(self) -> list[StateWrite]:
        """Return the state changed since the last call, as changelog key/value pairs."""
        writes: list[StateWrite] = []
        tracker = self.tracker
        for key in sorted(tracker.dirty):
            entry = tracker.entries.get(key)
            value = orjson.dumps(entry.to_state()) if entry is not None else None
            writes.append((entry_state_key(key), value))
        tracker.dirty.clear()
        for cluster in sorted(self._clocks_changed):
            clock = tracker.clocks.get(cluster)
            if clock is not None:
                writes.append((clock_state_key(cluster), str(clock).encode()))
        self._clocks_changed.clear()
        if self._offset_changed:
            writes.append((NEXT_OFFSET_KEY, str(self.next_offset).encode()))
            self._offset_changed = False
        writes.extend(self.references.take_writes())
        return writes
