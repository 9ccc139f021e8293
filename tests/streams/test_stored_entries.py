"""DurationTracker over StoredEntries (RocksDB) against the in-memory tracker, with explicit timestamps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from kdiag.durations import FIRING, FIRING_STATUS, PENDING, DurationTracker, Entry, ObjectRef
from kdiag.rules import RuleSet
from streams.processor import BatchResult, PartitionProcessor
from streams.state import (
    CHECKPOINT_KEY,
    LOCAL_INDEX_KEY,
    OBJECT_PREFIX,
    DEADLINE_PREFIX,
    EntryStore,
    PartitionStore,
    StoredEntries,
    entry_state_key,
)
from tests.streams.test_processor import RULES as PROCESSOR_RULES
from tests.streams.test_processor import change_record, tick_record
from tests.streams.test_processor import pod as crashing_pod

T0 = 1_600_000_000_000
RULES = ("PodCrashLooping", "PodUnschedulable", "PodPending")


@dataclass
class FakeMatch:
    context: dict[str, str] = field(default_factory=lambda: {"status.phase": "Pending"})


def pod(uid: str, cluster: str = "c1", version: str = "1") -> ObjectRef:
    return ObjectRef(cluster, "v1", "Pod", "team-a", f"pod-{uid}", uid, version)


def matching(rule: str = RULES[0], duration: float = 300, start_ms: int | None = None):
    return [(rule, duration, FakeMatch(), start_ms)]


def not_matching(rule: str = RULES[0], duration: float = 300):
    return [(rule, duration, None, None)]


def serialized(writes: list[tuple[str, Entry | None]]) -> list[tuple[bytes, bytes | None]]:
    """Return tracker writes as PartitionProcessor.take_state_writes encodes them."""
    return [
        (entry_state_key(key), orjson.dumps(entry.to_state()) if entry is not None else None) for key, entry in writes
    ]


class StoredTracker:
    """A DurationTracker over an EntryStore, committed as the worker commits: writes, then apply."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = EntryStore(path, 0)
        self.tracker = DurationTracker(storage=StoredEntries(self.store))
        self.changelog: list[tuple[bytes, bytes | None]] = []

    def commit(self) -> None:
        writes = serialized(self.tracker.take_writes())
        self.changelog.extend(writes)
        self.store.apply(writes, len(self.changelog) - 1)

    def restart(self) -> None:
        """Close the database and load the tracker from it, as a restarted worker does."""
        clocks = dict(self.tracker.clocks)
        self.store.close()
        self.store = EntryStore(self.path, 0)
        self.tracker = DurationTracker(clocks=clocks, storage=StoredEntries(self.store))


@pytest.fixture
def stored(tmp_path: Path):
    harness = StoredTracker(tmp_path / "state")
    yield harness
    harness.store.close()


def avro(events) -> list[dict]:
    return [event.to_avro() | {"status": event.status} for event in events]


def index_keys(store: EntryStore) -> list[bytes]:
    return store.scan_keys(DEADLINE_PREFIX)


def object_index(store: EntryStore) -> dict[bytes, bytes]:
    return {key: store.get(key) for key in store.scan_keys(OBJECT_PREFIX)}


def counted_objects(store: EntryStore) -> dict[bytes, bytes]:
    """Return the object index that the stored entries call for, counted from the entry keys."""
    counts: dict[bytes, int] = {}
    for key in store.scan_keys(b"e\x1f"):
        _, cluster, uid, _ = key.split(b"\x1f", 3)
        object_key = OBJECT_PREFIX + cluster + b"\x1f" + uid
        counts[object_key] = counts.get(object_key, 0) + 1
    return {key: str(count).encode() for key, count in counts.items()}


def test_staged_entry_visible_before_commit(stored):
    tracker = stored.tracker
    tracker.observe(pod("a"), T0, matching())
    assert set(tracker.entries_of("c1", "a")) == {RULES[0]}
    assert tracker.counts() == (1, 0)
    assert stored.store.get(entry_state_key(f"e\x1fc1\x1fa\x1f{RULES[0]}")) is None
    assert len(tracker.advance("c1", T0 + 300_000)) == 1
    assert tracker.counts() == (0, 1)


def test_staged_removal_hides_committed_entry(stored):
    tracker = stored.tracker
    tracker.observe(pod("a"), T0, matching())
    stored.commit()
    tracker.observe(pod("a", version="2"), T0 + 1_000, not_matching())
    assert tracker.entries_of("c1", "a") == {}
    assert list(tracker.entries) == []
    assert tracker.advance("c1", T0 + 300_000) == []
    stored.commit()
    assert index_keys(stored.store) == []


def test_committed_entry_fires_at_deadline(stored):
    tracker = stored.tracker
    tracker.observe(pod("a"), T0, matching())
    stored.commit()
    assert tracker.advance("c1", T0 + 299_999) == []
    events = tracker.advance("c1", T0 + 300_000)
    assert [event.entry.deadline_ms for event in events] == [T0 + 300_000]
    assert events[0].entry.state == FIRING
    stored.commit()
    assert index_keys(stored.store) == []


def test_entries_survive_restart(stored):
    tracker = stored.tracker
    tracker.observe(pod("a"), T0, matching(duration=0))
    tracker.observe(pod("b"), T0, matching())
    tracker.observe(pod("c"), T0, matching(rule=RULES[1], duration=600))
    stored.commit()
    stored.restart()
    tracker = stored.tracker
    assert tracker.counts() == (2, 1)
    assert tracker.rules() == {RULES[0], RULES[1]}
    assert tracker.entries_of("c1", "b")[RULES[0]].state == PENDING
    assert tracker.advance("c1", T0 + 299_999) == []
    assert [event.entry.ref.uid for event in tracker.advance("c1", T0 + 300_000)] == ["b"]
    assert [event.entry.ref.uid for event in tracker.advance("c1", T0 + 600_000)] == ["c"]


def test_restore_from_changelog_builds_index(stored, tmp_path: Path):
    tracker = stored.tracker
    for index in range(5):
        tracker.observe(pod(f"u{index}"), T0 + index * 1_000, matching())
    stored.commit()
    tracker.observe(pod("u1", version="2"), T0 + 10_000, not_matching())
    stored.commit()

    # A worker without local state applies the changelog records in chunks, as restore() does.
    fresh = EntryStore(tmp_path / "fresh", 0)
    try:
        for start in range(0, len(stored.changelog), 2):
            fresh.apply(stored.changelog[start:start + 2], start + 1)
        assert index_keys(fresh) == index_keys(stored.store)
        assert len(index_keys(fresh)) == 4
        restored = DurationTracker(clocks=dict(tracker.clocks), storage=StoredEntries(fresh))
        fired = restored.advance("c1", T0 + 303_000)
        assert [event.entry.ref.uid for event in fired] == ["u0", "u2", "u3"]
    finally:
        fresh.close()


def test_index_built_for_database_without_it(tmp_path: Path):
    entry = Entry("PodUnschedulable", pod("a"), PENDING, T0, T0 + 300_000, {})
    firing = Entry("PodUnschedulable", pod("b"), FIRING, T0, T0, {})
    plain = PartitionStore(tmp_path, 0)
    plain.apply(serialized([(entry.key, entry), (firing.key, firing)]), 7)
    plain.close()

    store = EntryStore(tmp_path, 0)
    try:
        assert store.get(LOCAL_INDEX_KEY) is not None
        assert len(index_keys(store)) == 1
        assert object_index(store) == {OBJECT_PREFIX + b"c1\x1fa": b"1", OBJECT_PREFIX + b"c1\x1fb": b"1"}
        assert store.checkpoint == 7
        tracker = DurationTracker(storage=StoredEntries(store))
        assert tracker.counts() == (1, 1)
        assert [event.entry.ref.uid for event in tracker.advance("c1", T0 + 300_000)] == ["a"]
    finally:
        store.close()


def test_index_built_from_deadline_index(tmp_path: Path):
    entries = [Entry(rule, pod("a"), PENDING, T0, T0 + 300_000, {}) for rule in RULES]
    plain = PartitionStore(tmp_path, 0)
    plain.apply(serialized([(entry.key, entry) for entry in entries]) + [(b"_deadline_index", b"1")], 3)
    plain.close()

    store = EntryStore(tmp_path, 0)
    try:
        assert store.get(b"_deadline_index") is None
        assert object_index(store) == {OBJECT_PREFIX + b"c1\x1fa": b"3"}
        assert len(index_keys(store)) == 3
        assert set(StoredEntries(store).object_entries("c1", "a")) == set(RULES)
    finally:
        store.close()


def test_object_index_counts_entries(stored):
    tracker = stored.tracker
    tracker.observe(pod("a"), T0, [(rule, 300, FakeMatch(), None) for rule in RULES])
    stored.commit()
    assert object_index(stored.store) == {OBJECT_PREFIX + b"c1\x1fa": b"3"}

    tracker.observe(pod("a", version="2"), T0 + 1_000, [(RULES[0], 300, None, None), (RULES[1], 300, FakeMatch(), None)])
    stored.commit()
    assert object_index(stored.store) == {OBJECT_PREFIX + b"c1\x1fa": b"2"}
    assert set(tracker.entries_of("c1", "a")) == {RULES[1], RULES[2]}

    tracker.delete(pod("a", version="3"), T0 + 2_000)
    stored.commit()
    assert object_index(stored.store) == {}
    assert tracker.entries_of("c1", "a") == {}


def test_object_index_unchanged_on_firing(stored):
    stored.tracker.observe(pod("a"), T0, matching(duration=60))
    stored.commit()
    assert [event.status for event in stored.tracker.advance("c1", T0 + 60_000)] == [FIRING_STATUS]
    stored.commit()
    assert object_index(stored.store) == {OBJECT_PREFIX + b"c1\x1fa": b"1"}
    assert index_keys(stored.store) == []


def test_wipe_keeps_index_complete(stored):
    stored.tracker.observe(pod("a"), T0, matching())
    stored.commit()
    stored.store.wipe()
    assert stored.store.get(LOCAL_INDEX_KEY) is not None
    assert stored.store.get(CHECKPOINT_KEY) is None
    assert index_keys(stored.store) == []
    assert object_index(stored.store) == {}


def test_restarted_entry_fires_at_new_deadline_once(stored):
    tracker = stored.tracker
    tracker.observe(pod("a"), T0, matching())
    stored.commit()
    tracker.observe(pod("a", version="2"), T0 + 100_000, not_matching())
    tracker.observe(pod("a", version="3"), T0 + 200_000, matching())
    assert tracker.advance("c1", T0 + 300_000) == []
    stored.commit()
    assert tracker.advance("c1", T0 + 499_999) == []
    events = tracker.advance("c1", T0 + 500_000)
    assert [event.entry.active_since_ms for event in events] == [T0 + 200_000]
    assert tracker.advance("c1", T0 + 900_000) == []


def test_clusters_fire_independently(stored):
    tracker = stored.tracker
    tracker.observe(pod("a", cluster="c1"), T0, matching())
    tracker.observe(pod("b", cluster="c2"), T0, matching())
    stored.commit()
    stored.restart()
    tracker = stored.tracker
    assert tracker.advance("c2", T0 + 1_000_000) != []
    assert tracker.advance("c1", T0 + 299_999) == []
    assert [event.entry.ref.uid for event in tracker.advance("c1", T0 + 300_000)] == ["a"]


def test_drop_rule_keeps_other_rules(stored):
    tracker = stored.tracker
    tracker.observe(pod("a"), T0, matching(duration=0))
    tracker.observe(pod("b"), T0, matching(rule=RULES[1]))
    stored.commit()
    tracker.observe(pod("c"), T0 + 5, matching(duration=0))
    events = tracker.drop_rule(RULES[0])
    assert [event.entry.ref.uid for event in events] == ["a", "c"]
    assert {event.resolve_reason for event in events} == {"rule deleted"}
    assert tracker.rules() == {RULES[1]}
    assert list(tracker.entries) == [f"e\x1fc1\x1fb\x1f{RULES[1]}"]


def run_script(seed: int, memory: DurationTracker, stored: StoredTracker) -> None:
    """Apply the same random changes, ticks and deletions to both trackers and compare every output.

    The stored tracker commits at random points, and restarts from its database at some of them.
    """
    rng = random.Random(seed)
    uids = [f"u{index}" for index in range(12)]
    clusters = ["c1", "c2"]
    times = {cluster: T0 for cluster in clusters}
    for step in range(400):
        cluster = rng.choice(clusters)
        # Mostly forward in time, sometimes a change that is older than the cluster's clock.
        times[cluster] += rng.choice([0, 1_000, 30_000, 120_000, -60_000])
        time_ms = times[cluster]
        operation = rng.random()
        if operation < 0.55:
            ref = pod(rng.choice(uids), cluster, version=str(step))
            results = []
            for rule in RULES:
                duration = {"PodCrashLooping": 60, "PodUnschedulable": 300, "PodPending": 0}[rule]
                start = time_ms - rng.choice([0, 30_000, 400_000]) if rng.random() < 0.3 else None
                results.append((rule, duration, FakeMatch() if rng.random() < 0.6 else None, start))
            expected = memory.observe(ref, time_ms, results)
            actual = stored.tracker.observe(ref, time_ms, results)
        elif operation < 0.8:
            expected = memory.advance(cluster, time_ms)
            actual = stored.tracker.advance(cluster, time_ms)
        elif operation < 0.97:
            ref = pod(rng.choice(uids), cluster, version=str(step))
            expected = memory.delete(ref, time_ms)
            actual = stored.tracker.delete(ref, time_ms)
        else:
            rule = rng.choice(RULES)
            expected = memory.drop_rule(rule)
            actual = stored.tracker.drop_rule(rule)
        assert avro(actual) == avro(expected), f"seed {seed}, step {step}"
        assert stored.tracker.counts() == memory.counts(), f"seed {seed}, step {step}"
        if rng.random() < 0.3:
            assert sorted(stored.tracker.dirty) == sorted(memory.dirty), f"seed {seed}, step {step}"
            memory_writes = memory.take_writes()
            stored_writes = stored.tracker.take_writes()
            assert serialized(stored_writes) == serialized(memory_writes), f"seed {seed}, step {step}"
            stored.changelog.extend(serialized(stored_writes))
            stored.store.apply(serialized(stored_writes), len(stored.changelog) - 1)
            if rng.random() < 0.1:
                stored.restart()
    assert dict(stored.tracker.entries) == dict(memory.entries)


@pytest.mark.parametrize("seed", range(8))
def test_same_events_as_memory_tracker(seed: int, stored):
    run_script(seed, DurationTracker(), stored)


def test_restored_index_matches_live_index(stored, tmp_path: Path):
    run_script(99, DurationTracker(), stored)
    stored.commit()
    fresh = EntryStore(tmp_path / "fresh", 0)
    try:
        fresh.apply(stored.changelog, len(stored.changelog) - 1)
        assert index_keys(fresh) == index_keys(stored.store)
        assert object_index(fresh) == object_index(stored.store) == counted_objects(fresh)
        entries = stored.store.scan_keys(b"e\x1f")
        pending = [key for key in entries if orjson.loads(stored.store.get(key))["state"] == PENDING]
        assert len(index_keys(fresh)) == len(pending)
    finally:
        fresh.close()


def test_processor_writes_same_changelog(tmp_path: Path):
    """A processor over StoredEntries emits the same alerts and changelog writes as one over memory."""
    records = [
        change_record(crashing_pod("CrashLoopBackOff"), T0),
        tick_record(T0 + 30_000),
        change_record(crashing_pod("CrashLoopBackOff"), T0 + 40_000, version="2"),
        tick_record(T0 + 60_000),
        change_record(crashing_pod(None), T0 + 90_000, version="3"),
        change_record(crashing_pod("CrashLoopBackOff"), T0 + 100_000, version="4"),
        tick_record(T0 + 200_000),
        change_record(crashing_pod("CrashLoopBackOff"), T0 + 210_000, change_type="DELETED", version="5"),
    ]
    # The in-memory processor gets a plain dict as its committed state, for its other state keys.
    committed: dict[bytes, bytes] = {}
    memory = PartitionProcessor(
        "changes", 0, PROCESSOR_RULES, [], {}, 0,
        lookup=committed.get, scan=lambda prefix: sorted(key for key in committed if key.startswith(prefix)),
    )
    store = EntryStore(tmp_path, 0)

    def load_processor() -> PartitionProcessor:
        clocks, next_offset = store.load_positions()
        return PartitionProcessor(
            "changes", 0, PROCESSOR_RULES, [], clocks, next_offset,
            lookup=store.get, scan=store.scan_keys, entry_storage=StoredEntries(store),
        )

    statuses = []
    try:
        processor = load_processor()
        for offset, record in enumerate(records):
            expected, actual = BatchResult(), BatchResult()
            memory.process(offset, record, expected)
            processor.process(offset, record, actual)
            assert actual.encoded_alerts() == expected.encoded_alerts(), f"offset {offset}"
            writes = processor.take_state_writes()
            memory_writes = memory.take_state_writes()
            assert writes == memory_writes, f"offset {offset}"
            for key, value in memory_writes:
                if value is None:
                    committed.pop(key, None)
                else:
                    committed[key] = value
            store.apply(writes, offset)
            statuses += [event.status for event in actual.alerts]
            if offset == 2:
                processor = load_processor()  # A restart while the entry is pending.
        assert statuses == ["FIRING", "RESOLVED", "FIRING", "RESOLVED"]
        assert processor.tracker.counts() == (0, 0)
        assert index_keys(store) == []
    finally:
        store.close()


def test_processor_drops_deleted_rules_on_start(tmp_path: Path):
    store = EntryStore(tmp_path, 0)
    try:
        first = PartitionProcessor(
            "changes", 0, PROCESSOR_RULES, [], {}, 0, lookup=store.get, entry_storage=StoredEntries(store)
        )
        first.process(0, change_record(crashing_pod("CrashLoopBackOff"), T0), BatchResult())
        store.apply(first.take_state_writes(), 0)
        clocks, next_offset = store.load_positions()
        restarted = PartitionProcessor(
            "changes", 0, RuleSet(()), [], clocks, next_offset, lookup=store.get, entry_storage=StoredEntries(store)
        )
        assert restarted.tracker.rules() == {"PodCrashLooping"}
        on_start = BatchResult()
        restarted.update_rules(restarted.rule_set, on_start)
        assert on_start.alerts == []
        assert restarted.has_state_writes()
        store.apply(restarted.take_state_writes(), 1)
        assert store.scan_keys(b"e\x1f") == []
        assert index_keys(store) == []
    finally:
        store.close()
