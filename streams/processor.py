"""Rule evaluation over the records of one changes-topic partition.

PartitionProcessor turns changes-topic records into alert transitions and state writes. It does no
I/O: the worker hands it records and commits what it returns, so its behaviour is tested with
explicit records and timestamps.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from kdiag import json_bytes
from kdiag.alertcenter.events import KUBERNETES_WARNING_RULE, alert_to_event, kubernetes_event_to_event
from kdiag.codec import codec
from kdiag.durations import FIRING_STATUS, AlertEvent, DurationTracker, Entry, EntryStorage, ObjectRef
from kdiag.model import format_time_ms, topic_key
from kdiag.partitioning import partition_for_key
from kdiag.rootcause import Related
from kdiag.rules.kinds import CLUSTER_SCOPED_KINDS
from kdiag.rules.references import ExtractedReferences, ExtractorGroup, ReferenceDeclaration
from kdiag.rules.schedule import next_check_ms
from streams.references import DYNAMIC_TARGET_KINDS, ObjectKey, ReferencePlan, ReferenceStore, strip_for_storage
from streams.related_objects import TABLE_KINDS, RelatedTable, Snapshot
from kdiag.errors import DecodeError, KdiagError
from kdiag.rules import RuleSet, SharedResults
from kdiag.rules.tree import RuleTree
from streams.state import NEXT_OFFSET_KEY, StateWrite, clock_state_key, entry_state_key

log = logging.getLogger(__name__)

CHANGE_BATCH = codec("ChangeBatch")
ALERT = codec("Alert")
DEAD_LETTER = codec("DeadLetter")
DIAGNOSIS = codec("Diagnosis")
EVENT = codec("Event")
WATERMARK = codec("Watermark")
MAX_DEAD_LETTER_PAYLOAD_BYTES = 65_536
# Referrer kinds whose related-table projection keeps everything rules read except the
# resourceVersion. Their referrers are stored as a table key and a resourceVersion, not a second copy.
# The table strips Secret and ConfigMap values and Node heartbeats and images.
REFERRERS_IN_TABLE = TABLE_KINDS - {"ConfigMap", "Secret", "Node"}
# The field of a stored referrer that contains (kind, namespace, name) of its table projection.
TABLE_KEY_FIELD = "tableKey"
# A diagnosis larger than this goes out without its related objects, so that it fits a Kafka record.
MAX_DIAGNOSIS_BYTES = 512 * 1024


class OffsetGapError(KdiagError):
    """The consumer is ahead of the committed state: processing on would skip records."""


@dataclass
class BatchResult:
    """Outputs and counts of one batch of records of one partition."""

    alerts: list[AlertEvent] = field(default_factory=list)
    # Diagnosis records for the root-cause stage, keyed by rule: one per alert transition.
    diagnoses: list[tuple[bytes, bytes]] = field(default_factory=list)
    diagnosed: int = 0  # alerts turned into diagnoses so far
    # Warning Events that no rule matched, as KUBERNETES_EVENT events for the alert center, and the
    # watermarks that follow them, keyed by rule.
    warning_events: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    changes: int = 0
    ticks: int = 0
    skipped: int = 0
    # Warning Events not forwarded because they were older than the maximum age when they changed.
    stale_warnings: int = 0
    # Offsets that were never delivered between two delivered records of the partition.
    offsets_missing: int = 0

    def encoded_alerts(self) -> list[tuple[bytes, bytes]]:
        return [(event.entry.fingerprint.encode(), ALERT.encode(event.to_avro())) for event in self.alerts]

    def encoded_dead_letters(self) -> list[bytes]:
        return [DEAD_LETTER.encode(letter) for letter in self.dead_letters]


@dataclass(frozen=True)
class _KindRules:
    """The rules of one kind, prepared for the evaluation of its changes."""

    # The kind's non-periodic rules, without those that read cluster-scoped objects this partition
    # does not receive: such rules never match here.
    tree: RuleTree
    # Position of each non-periodic rule in the results that DurationTracker.observe gets.
    positions: dict[str, int]
    # Those results when no rule matches: (rule, duration_seconds, None, None) per non-periodic rule.
    unmatched: tuple[tuple[str, float, None, None], ...]
    # The distinct reference declarations of the kind's non-periodic rules, one per extractor.
    reference_declarations: tuple[ReferenceDeclaration, ...]
    periodic_rules: tuple[Any, ...]
    # The reference declarations of the kind's rules, extracted in one walk of the object.
    extractors: ExtractorGroup


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
        scan: Callable[[bytes], Iterable[bytes]] = lambda prefix: (),
        cluster_objects: Callable[[ObjectKey], dict[str, Any] | None] | None = None,
        cluster_nodes: Callable[[str], Iterable[dict[str, Any]]] | None = None,
        forward_warnings: bool = True,
        entry_storage: EntryStorage | None = None,
        watermark_interval_ms: int = 60_000,
        warning_max_age_ms: int = 900_000,
    ) -> None:
        """`partitions` is the changes topic's partition count. `lookup` reads one committed state key
        and `scan` returns the committed keys with a prefix. `cluster_objects` returns cluster-scoped
        objects that other partitions received; without it, rules that read them match only on the
        partition that receives them. `cluster_nodes` lists a cluster's Nodes that other partitions
        received, for the snapshots of unscheduled pods. With `forward_warnings`, Warning Events that
        no rule matches go to the alert center as they are, unless their last occurrence lies more than
        `warning_max_age_ms` before the change, followed by a watermark of their cluster at most once
        per `watermark_interval_ms` of its event time. `entry_storage` keeps the tracker's
        entries, loaded already, so `entries` must then be empty. Without it the entries stay in
        memory."""
        self.topic = topic
        self.partition = partition
        self.partitions = partitions
        self.rule_set = rule_set
        self.tracker = DurationTracker(entries, clocks, storage=entry_storage)
        self.next_offset = next_offset
        self.references = ReferenceStore(lookup, scan)
        self.plan = ReferencePlan.from_rule_set(rule_set)
        # Per rule name, whether the rule refers to cluster-scoped kinds (see _can_resolve).
        self._reads_cluster_scoped: dict[str, bool] = {}
        # Per (kind, whether every rule can be resolved), the kind's rules as _evaluate_change uses them.
        self._kind_rules: dict[tuple[str, bool], _KindRules] = {}
        self._owned_clusters: dict[str, bool] = {}
        self._cluster_objects = cluster_objects
        self._cluster_nodes = cluster_nodes
        self.forward_warnings = forward_warnings
        self.watermark_interval_ms = watermark_interval_ms
        self.warning_max_age_ms = warning_max_age_ms
        # Per cluster, the time of the last watermark sent. After a restart the next tick sends one.
        self._watermarks_sent: dict[str, int] = {}
        self.related = RelatedTable(lookup, scan, rule_set.kinds)
        # Projections of cluster-scoped objects for the cluster-objects topic, taken at the commit.
        self.cluster_object_writes: list[tuple[ObjectKey, dict[str, Any] | None]] = []
        # Periodic checks per cluster: a heap of (due time, uid, rule), and what is on it.
        self._checks: dict[str, list[tuple[int, str, str]]] = {}
        self._scheduled: set[tuple[str, str, str]] = set()
        self._schedule_stored_objects()
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
        deleted = self.tracker.rules() - set(rule_set.names)
        self.rule_set = rule_set
        self.plan = ReferencePlan.from_rule_set(rule_set)
        self._reads_cluster_scoped.clear()
        self._kind_rules.clear()
        self.related.watch_kinds(rule_set.kinds)
        self._rules_checked = True
        for rule in sorted(deleted):
            result.alerts.extend(self.tracker.drop_rule(rule))

    def has_state_writes(self) -> bool:
        return bool(
            self.tracker.dirty
            or self._clocks_changed
            or self._offset_changed
            or self.references.has_writes()
            or self.cluster_object_writes
            or self.related.has_writes()
        )

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
                    f"ends before offset {self.next_offset}, so offsets {self.next_offset} to {offset - 1} "
                    f"were never processed: the consumer group's offset passed them, or retention deleted "
                    f"them. If they are still in the topic, reset the group's offset of this partition to "
                    f"{self.next_offset} (kafka-consumer-groups --reset-offsets) and restart the worker"
                )
        elif offset > self.next_offset:
            # The connectors write without transactions, so the offsets of a partition are contiguous.
            # A record that was not delivered would be lost without a trace, so the gap is reported.
            result.offsets_missing += offset - self.next_offset
            log.warning(
                "offset gap in the changes topic",
                extra={"topic": self.topic, "partition": self.partition, "expected_offset": self.next_offset, "offset": offset},
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
            if self.forward_warnings:
                self._send_watermark(tick["cluster"], tick["time"], result)
        self.diagnose(result, offset)

    def _advance(self, cluster: str, time_ms: int, result: BatchResult) -> None:
        before = self.tracker.clocks.get(cluster)
        result.alerts.extend(self.tracker.advance(cluster, time_ms))
        if self.tracker.clocks.get(cluster) != before:
            self._clocks_changed.add(cluster)
        self._run_due_checks(cluster, result)

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
            self._apply_delete(ref, object_key, referenced, time_ms, result)
            return

        self._run_due_checks(cluster, result, until_ms=time_ms)
        rules = self.rule_set.rules_for_kind(ref.kind)
        in_table = self.related.holds(ref.kind)
        if not rules and not referenced and not in_table:
            result.alerts.extend(self.tracker.advance(cluster, time_ms))
            return
        try:
            obj = orjson.loads(change["object"])
        except orjson.JSONDecodeError as error:
            reason = f"object of {ref.describe()} uid {ref.uid} is not valid JSON: {error}"
            self._dead_letter(result, offset, reason, change["object"])
            result.alerts.extend(self.tracker.advance(cluster, time_ms))
            return
        if in_table:
            stored = self.related.put(object_key, obj)
            if stored is not None and ref.kind in CLUSTER_SCOPED_KINDS:
                # The table's projection holds everything the reference projection does.
                self.cluster_object_writes.append((object_key, stored))
        if referenced:
            result.alerts.extend(self.tracker.advance(cluster, time_ms))
            projection = self.plan.project(obj)
            if self.references.put(object_key, projection):
                if ref.kind in CLUSTER_SCOPED_KINDS and not in_table:
                    self.cluster_object_writes.append((object_key, projection))
                result.alerts.extend(self._recheck_referrers(object_key, time_ms))
        matched = self._evaluate_change(ref, obj, time_ms, result) if rules else False
        if ref.kind == "Event" and not matched and self.forward_warnings and obj.get("type") == "Warning":
            self._forward_warning(ref, obj, time_ms, result)

    def _apply_delete(self, ref: ObjectRef, object_key: ObjectKey, referenced: bool, time_ms: int, result: BatchResult) -> None:
        # Checks that were due before the delete see the object, however late the next tick comes.
        self._run_due_checks(ref.cluster, result, until_ms=time_ms)
        result.alerts.extend(self.tracker.delete(ref, time_ms))
        if self._reference_rules(ref.kind) or self._has_periodic_rules(ref.kind):
            self._forget_referrer(ref.cluster, ref.uid)
        in_table = self.related.holds(ref.kind)
        if in_table and self.related.delete(object_key) and ref.kind in CLUSTER_SCOPED_KINDS:
            self.cluster_object_writes.append((object_key, None))
        if referenced and self.references.delete(object_key):
            if ref.kind in CLUSTER_SCOPED_KINDS and not in_table:
                self.cluster_object_writes.append((object_key, None))
            result.alerts.extend(self._recheck_referrers(object_key, time_ms))

    def _evaluate_change(self, ref: ObjectRef, obj: dict[str, Any], time_ms: int, result: BatchResult) -> bool:
        """Evaluate the rules of a changed object and return whether one of them matched. Periodic rules
        are only scheduled: they run at their check times."""
        cluster = ref.cluster
        kind_rules = self._rules_of_kind(ref.kind, cluster)
        # Shared by the rules and the reference tracking, so that each declaration is extracted once.
        extracted = ExtractedReferences(obj, kind_rules.extractors)
        matches = kind_rules.tree.matches(obj, self._resolver(cluster), extracted)
        results = list(kind_rules.unmatched)
        for match in matches:
            rule = match.rule
            start_ms = rule.active_since_ms(obj) if rule.duration_from is not None else None
            results[kind_rules.positions[rule.name]] = (rule.name, rule.duration_seconds, match, start_ms)
        result.alerts.extend(self.tracker.observe(ref, time_ms, results))
        if kind_rules.reference_declarations:
            self._remember_referrer(ref, obj, kind_rules.reference_declarations, extracted)
        elif kind_rules.periodic_rules:
            self._store_referrer(ref, obj)
        for rule in kind_rules.periodic_rules:
            self._schedule(cluster, ref.uid, rule, time_ms)
        return bool(matches)

    def _rules_of_kind(self, kind: str, cluster: str) -> _KindRules:
        """Return the rules of a kind as _evaluate_change uses them, built once per rule set."""
        # Every rule can be resolved when this partition receives the cluster's cluster-scoped objects.
        resolves_all = self._cluster_objects is not None or self._owns_cluster_scoped(cluster)
        kind_rules = self._kind_rules.get((kind, resolves_all))
        if kind_rules is None:
            rules = self.rule_set.rules_for_kind(kind)
            evaluated = tuple(rule for rule in rules if rule.every_seconds is None)
            kind_rules = self._kind_rules[(kind, resolves_all)] = _KindRules(
                tree=RuleTree(kind, [rule for rule in evaluated if resolves_all or self._can_resolve(rule, cluster)]),
                positions={rule.name: position for position, rule in enumerate(evaluated)},
                unmatched=tuple((rule.name, rule.duration_seconds, None, None) for rule in evaluated),
                reference_declarations=tuple(
                    {
                        declaration.extractor: declaration
                        for rule in evaluated
                        if rule.uses_references
                        for declaration in rule.references
                    }.values()
                ),
                periodic_rules=tuple(rule for rule in rules if rule.every_seconds is not None),
                extractors=ExtractorGroup(declaration.extractor for rule in rules for declaration in rule.references),
            )
        return kind_rules

    def _forward_warning(self, ref: ObjectRef, obj: dict[str, Any], time_ms: int, result: BatchResult) -> None:
        """Send a Warning Event that no rule matched to the alert center as a KUBERNETES_EVENT event.
        An Event without any time of its own (a partial dump) takes the change's observed time."""
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        if not any(obj.get(name) for name in ("lastTimestamp", "eventTime", "series")) and not metadata.get("creationTimestamp"):
            obj = {**obj, "eventTime": format_time_ms(time_ms)}
        involved = obj.get("involvedObject") or obj.get("regarding") or {}
        involved_object = None
        if isinstance(involved, dict) and involved.get("kind") and involved.get("name"):
            kind = str(involved["kind"])
            namespace = "" if kind in CLUSTER_SCOPED_KINDS else str(involved.get("namespace") or ref.namespace)
            involved_object = self.related.get((ref.cluster, kind, namespace, str(involved["name"])))
        try:
            event = kubernetes_event_to_event(obj, ref.cluster, involved_object)
        except DecodeError as error:
            log.warning("warning event not forwarded", extra={"object": ref.describe(), "cluster": ref.cluster, "reason": str(error)})
            return
        if event is None:
            return
        if time_ms - event.observed_time_ms > self.warning_max_age_ms:
            # Its condition ended before the change arrived, e.g. in a watcher's first list.
            result.stale_warnings += 1
            return
        # The change's time, because the Event's lastTimestamp can lie before a watermark this partition
        # already sent. So every Warning event reaches the alert center before the watermark that covers it.
        event = replace(event, observed_time_ms=time_ms)
        result.warning_events.append((event.rule.encode(), EVENT.encode(event.to_avro())))

    def _send_watermark(self, cluster: str, time_ms: int, result: BatchResult) -> None:
        """Tell the alert center that this partition forwarded the cluster's Warning Events up to the
        tick at `time_ms`, when the tick starts a new watermark interval."""
        sent = self._watermarks_sent.get(cluster)
        interval = self.watermark_interval_ms
        if sent is not None and time_ms // interval <= sent // interval:
            return
        self._watermarks_sent[cluster] = time_ms
        # Keyed as the forwarded Warning events, so it reaches their partition after them.
        watermark = {"cluster": cluster, "time": time_ms, "topic": self.topic, "partition": self.partition, "partitions": self.partitions}
        result.warning_events.append((KUBERNETES_WARNING_RULE.encode(), WATERMARK.encode(watermark)))

    # References

    def _owns_cluster_scoped(self, cluster: str) -> bool:
        """Return whether the cluster's cluster-scoped objects arrive on this partition (key "<cluster>/")."""
        owns = self._owned_clusters.get(cluster)
        if owns is None:
            owns = self._owned_clusters[cluster] = partition_for_key(topic_key(cluster, "").encode(), self.partitions) == self.partition
        return owns

    def _can_resolve(self, rule: Any, cluster: str) -> bool:
        """Return whether this partition can look up every object the rule refers to."""
        if self._cluster_objects is not None:
            return True
        reads_cluster_scoped = self._reads_cluster_scoped.get(rule.name)
        if reads_cluster_scoped is None:
            reads_cluster_scoped = any(kind in CLUSTER_SCOPED_KINDS for kind in self._rule_target_kinds(rule))
            self._reads_cluster_scoped[rule.name] = reads_cluster_scoped
        return not reads_cluster_scoped or self._owns_cluster_scoped(cluster)

    def _resolver(self, cluster: str) -> Callable[[str, str, str], dict[str, Any] | None]:
        local = self.references.resolver(cluster)
        if self._cluster_objects is None or self._owns_cluster_scoped(cluster):
            return local
        shared = self._cluster_objects

        def resolve(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
            if kind in CLUSTER_SCOPED_KINDS:
                return shared((cluster, kind, "", name))
            return local(kind, namespace, name)

        return resolve

    def recheck_cluster_objects(self, keys: Iterable[ObjectKey], result: BatchResult) -> None:
        """Evaluate again the referrers of cluster-scoped objects that another partition changed."""
        for key in sorted(keys):
            cluster = key[0]
            clock = self.tracker.clock(cluster)
            if clock is None or self._owns_cluster_scoped(cluster):
                continue  # No object of that cluster here yet, or this partition rechecked at the change.
            result.alerts.extend(self._recheck_referrers(key, clock))

    @staticmethod
    def _rule_target_kinds(rule: Any) -> set[str]:
        kinds: set[str] = set()
        for declaration in rule.references:
            kinds |= {declaration.kind} if declaration.kind else set(DYNAMIC_TARGET_KINDS)
        return kinds

    def _reference_rules(self, kind: str) -> list[Any]:
        return [rule for rule in self.rule_set.rules_for_kind(kind) if rule.uses_references]

    def _evaluate_references(self, ref: ObjectRef, obj: dict[str, Any], rules: list[Any], time_ms: int) -> list[AlertEvent]:
        resolve = self._resolver(ref.cluster)
        extracted = ExtractedReferences(obj)
        shared = SharedResults(obj)
        results = []
        for rule in rules:
            if not rule.uses_references:
                match = rule.evaluate(obj, shared=shared)
            else:
                match = rule.evaluate(obj, resolve, extracted, shared) if self._can_resolve(rule, ref.cluster) else None
            start_ms = rule.active_since_ms(obj) if match is not None and rule.duration_from is not None else None
            results.append((rule.name, rule.duration_seconds, match, start_ms))
        return self.tracker.observe(ref, time_ms, results)

    def _remember_referrer(self, ref: ObjectRef, obj: dict[str, Any], declarations: Iterable[ReferenceDeclaration], extracted: ExtractedReferences) -> None:
        """Store a referrer and what it refers to through the reference declarations of its rules, so that
        a change of those objects re-evaluates it."""
        keys: set[ObjectKey] = set()
        for declaration in declarations:
            for reference in extracted.extract(declaration):
                namespace = "" if reference.kind in CLUSTER_SCOPED_KINDS else reference.namespace
                keys.add((ref.cluster, reference.kind, namespace, reference.name))
        self.references.set_references(ref.cluster, ref.uid, keys)
        self._store_referrer(ref, obj)

    def _store_referrer(self, ref: ObjectRef, obj: dict[str, Any]) -> None:
        """Keep the object for reference rechecks and periodic checks: the object itself, or for a kind
        of REFERRERS_IN_TABLE the key of its table projection and its resourceVersion."""
        if ref.kind in REFERRERS_IN_TABLE:
            pointer = {TABLE_KEY_FIELD: [ref.kind, ref.namespace, ref.name], "resourceVersion": ref.resource_version}
            self.references.put_referrer(ref.cluster, ref.uid, pointer)
        else:
            self.references.put_referrer(ref.cluster, ref.uid, strip_for_storage(obj))

    def _stored_referrer(self, cluster: str, uid: str) -> dict[str, Any] | None:
        """Return the object that _store_referrer kept, or None when it is gone."""
        stored = self.references.referrer(cluster, uid)
        if stored is None or TABLE_KEY_FIELD not in stored:
            return stored
        kind, namespace, name = stored[TABLE_KEY_FIELD]
        obj = self.related.get((cluster, kind, namespace, name))
        if obj is None:
            return None
        metadata = obj.get("metadata")
        if isinstance(metadata, dict):
            metadata["resourceVersion"] = stored["resourceVersion"]
        return obj

    def _forget_referrer(self, cluster: str, uid: str) -> None:
        self.references.set_references(cluster, uid, set())
        self.references.delete_referrer(cluster, uid)

    def _recheck_referrers(self, referenced: ObjectKey, time_ms: int) -> list[AlertEvent]:
        """Evaluate the reference rules of every object that refers to a referenced object that changed."""
        events: list[AlertEvent] = []
        for cluster, uid in self.references.referrers_of(referenced):
            obj = self._stored_referrer(cluster, uid)
            if obj is None:
                continue
            rules = [rule for rule in self._reference_rules(obj.get("kind", "")) if rule.every_seconds is None]
            if rules:
                events.extend(self._evaluate_stored(cluster, uid, obj, rules, time_ms))
        return events

    # Periodic checks

    def _has_periodic_rules(self, kind: str) -> bool:
        return any(rule.every_seconds is not None for rule in self.rule_set.rules_for_kind(kind))

    def _schedule(self, cluster: str, uid: str, rule: Any, after_ms: int) -> None:
        if (cluster, uid, rule.name) in self._scheduled:
            return
        due_ms = next_check_ms(rule.name, uid, after_ms, rule.every_seconds, rule.jitter)
        heapq.heappush(self._checks.setdefault(cluster, []), (due_ms, uid, rule.name))
        self._scheduled.add((cluster, uid, rule.name))

    def _schedule_stored_objects(self) -> None:
        """Schedule the periodic checks of stored objects, from each cluster's clock, after a restart."""
        if not any(rule.every_seconds is not None for rule in self.rule_set):
            return
        for cluster, uid, stored in self.references.stored_objects():
            after_ms = self.tracker.clock(cluster)
            if after_ms is None:
                continue
            kind = stored[TABLE_KEY_FIELD][0] if TABLE_KEY_FIELD in stored else stored.get("kind", "")
            for rule in self.rule_set.rules_for_kind(kind):
                if rule.every_seconds is not None:
                    self._schedule(cluster, uid, rule, after_ms)

    def _run_due_checks(self, cluster: str, result: BatchResult, until_ms: int | None = None) -> None:
        """Run the periodic checks of a cluster that are due at its clock, or at until_ms if later."""
        heap = self._checks.get(cluster)
        clock = self.tracker.clocks.get(cluster)
        if not heap or clock is None:
            return
        limit = clock if until_ms is None else max(clock, until_ms)
        while heap and heap[0][0] <= limit:
            due_ms, uid, rule_name = heapq.heappop(heap)
            self._scheduled.discard((cluster, uid, rule_name))
            rule = self.rule_set.get(rule_name)
            obj = self._stored_referrer(cluster, uid)
            if rule is None or rule.every_seconds is None or obj is None:
                continue  # The rule or the object is gone: the check ends with it.
            result.alerts.extend(self._evaluate_stored(cluster, uid, obj, [rule], due_ms))
            self._schedule(cluster, uid, rule, due_ms)

    def _evaluate_stored(self, cluster: str, uid: str, obj: dict[str, Any], rules: list[Any], time_ms: int) -> list[AlertEvent]:
        metadata = obj.get("metadata", {})
        ref = ObjectRef(
            cluster=cluster,
            api_version=obj.get("apiVersion", ""),
            kind=obj.get("kind", ""),
            namespace=metadata.get("namespace", ""),
            name=metadata.get("name", ""),
            uid=uid,
            resource_version=str(metadata.get("resourceVersion", "")),
        )
        return self._evaluate_references(ref, obj, rules, time_ms)

    # Diagnoses for the root-cause stage

    def diagnose(self, result: BatchResult, source_offset: int = -1) -> None:
        """Turn the alert transitions added to result since the last call into diagnosis records.

        A FIRING record carries a snapshot of the table as it is now, that is, right after the
        record whose processing fired the rule.
        """
        for event in result.alerts[result.diagnosed:]:
            result.diagnoses.append((event.entry.rule.encode(), self._diagnosis(event, source_offset)))
        result.diagnosed = len(result.alerts)

    def _diagnosis(self, event: AlertEvent, source_offset: int) -> bytes:
        alert = event.to_avro()
        if event.status != FIRING_STATUS:
            record = {"alert": alert, "event": alert_to_event(alert).to_avro(), "object": None, "related": None,
                      "sourceOffset": source_offset}
            return DIAGNOSIS.encode(record)
        cluster_objects = self._cluster_objects
        node_lookup = (lambda cluster, name: cluster_objects((cluster, "Node", "", name))) if cluster_objects is not None else None
        ref = event.entry.ref
        try:
            snapshot = self.related.snapshot(ref, node_lookup, self._cluster_nodes)
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            # NOTE: the snapshot reads fields with the types that the API server gives them. A stored
            # object with other types gets a diagnosis without related objects instead.
            log.warning(
                "related objects left out of a diagnosis",
                extra={"object": ref.describe(), "cluster": ref.cluster, "rule": event.entry.rule, "reason": repr(error)},
            )
            namespace = "" if ref.kind in CLUSTER_SCOPED_KINDS else ref.namespace
            snapshot = Snapshot(self.related.get((ref.cluster, ref.kind, namespace, ref.name)), Related(), None, (), "", "")
        try:
            diagnosis = alert_to_event(alert, obj=snapshot.workload)
        except DecodeError as error:
            log.warning(
                "object labels or owners ignored",
                extra={"object": event.entry.ref.describe(), "rule": event.entry.rule, "reason": str(error)},
            )
            diagnosis = alert_to_event(alert)
        diagnosis = dataclasses.replace(
            diagnosis,
            owners=snapshot.owners or diagnosis.owners,
            node=snapshot.node or diagnosis.node,
            zone=snapshot.zone or diagnosis.zone,
        )
        record = {
            "alert": alert,
            "event": diagnosis.to_avro(),
            "object": orjson.dumps(snapshot.obj) if snapshot.obj is not None else None,
            "related": orjson.dumps(snapshot.related.to_json()),
            "sourceOffset": source_offset,
        }
        encoded = DIAGNOSIS.encode(record)
        if len(encoded) > MAX_DIAGNOSIS_BYTES:
            log.warning(
                "related objects left out of a large diagnosis",
                extra={"object": event.entry.ref.describe(), "rule": event.entry.rule, "bytes": len(encoded)},
            )
            record["related"] = None
            encoded = DIAGNOSIS.encode(record)
        return encoded

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
        for key, entry in tracker.take_writes():
            value = json_bytes.dumps(entry.to_state()) if entry is not None else None
            writes.append((entry_state_key(key), value))
        for cluster in sorted(self._clocks_changed):
            clock = tracker.clocks.get(cluster)
            if clock is not None:
                writes.append((clock_state_key(cluster), str(clock).encode()))
        self._clocks_changed.clear()
        if self._offset_changed:
            writes.append((NEXT_OFFSET_KEY, str(self.next_offset).encode()))
            self._offset_changed = False
        writes.extend(self.references.take_writes())
        writes.extend(self.related.take_writes())
        return writes
