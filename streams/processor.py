"""Rule evaluation over the records of one changes-topic partition.

PartitionProcessor turns changes-topic records into alert transitions and state writes. It does no
I/O: the worker hands it records and commits what it returns, so its behaviour is tested with
explicit records and timestamps.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from kdiag.codec import codec
from kdiag.durations import AlertEvent, DurationTracker, Entry, ObjectRef
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
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.rule_set = rule_set
        self.tracker = DurationTracker(entries, clocks)
        self.next_offset = next_offset
        self._clocks_changed: set[str] = set()
        self._offset_changed = False
        self._started = False
        self._rules_checked = False

    def update_rules(self, rule_set: RuleSet, result: BatchResult) -> None:
        """Evaluate with `rule_set` from now on. Entries of rules it no longer has are dropped and their
        firing alerts resolve with reason "rule deleted"."""
        if rule_set is self.rule_set and self._rules_checked:
            return
        # Entries rather than the previous rule set decide, so that rules deleted while no worker
        # owned this partition are dropped too.
        deleted = {entry.rule for entry in self.tracker.entries.values()} - set(rule_set.names)
        self.rule_set = rule_set
        self._rules_checked = True
        for rule in sorted(deleted):
            result.alerts.extend(self.tracker.drop_rule(rule))

    def has_state_writes(self) -> bool:
        return bool(self.tracker.dirty or self._clocks_changed or self._offset_changed)

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
        if change["changeType"] == "DELETED":
            result.alerts.extend(self.tracker.delete(ref, time_ms))
            return
        rules = self.rule_set.rules_for_kind(ref.kind)
        if not rules:
            result.alerts.extend(self.tracker.advance(cluster, time_ms))
            return
        try:
            obj = orjson.loads(change["object"])
        except orjson.JSONDecodeError as error:
            reason = f"object of {ref.describe()} uid {ref.uid} is not valid JSON: {error}"
            self._dead_letter(result, offset, reason, change["object"])
            result.alerts.extend(self.tracker.advance(cluster, time_ms))
            return
        results = []
        for rule in rules:
            match = rule.evaluate(obj)
            start_ms = rule.active_since_ms(obj) if match is not None and rule.duration_from is not None else None
            results.append((rule.name, rule.duration_seconds, match, start_ms))
        result.alerts.extend(self.tracker.observe(ref, time_ms, results))

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
        return writes
