"""Duration rules on event time, with explicit timestamps and no sleeping."""

from dataclasses import dataclass, field

from kdiag.durations import FIRING, PENDING, DurationTracker, Entry, ObjectRef

T0 = 1_600_000_000_000  # 2020-09-13T12:26:40Z in epoch milliseconds
RULE = "PodCrashLooping"


@dataclass
class FakeMatch:
    context: dict[str, str] = field(default_factory=lambda: {"status.phase": "Running"})


def pod(uid: str = "uid-1", version: str = "1") -> ObjectRef:
    return ObjectRef("c1", "v1", "Pod", "team-a", "web-0", uid, version)


def matching(duration: float = 300, start_ms: int | None = None):
    return [(RULE, duration, FakeMatch(), start_ms)]


def not_matching(duration: float = 300):
    return [(RULE, duration, None, None)]


def test_pending_fires_at_deadline_not_before():
    tracker = DurationTracker()
    assert tracker.observe(pod(), T0, matching()) == []
    assert tracker.advance("c1", T0 + 299_999) == []
    events = tracker.advance("c1", T0 + 300_000)
    assert [event.status for event in events] == ["FIRING"]
    assert events[0].to_avro()["firedAt"] == T0 + 300_000
    assert events[0].to_avro()["activeSince"] == T0


def test_recovery_before_deadline_cancels():
    tracker = DurationTracker()
    tracker.observe(pod(), T0, matching())
    assert tracker.observe(pod(version="2"), T0 + 100_000, not_matching()) == []
    assert tracker.advance("c1", T0 + 1_000_000) == []
    assert tracker.entries == {}


def test_delete_cancels_pending():
    tracker = DurationTracker()
    tracker.observe(pod(), T0, matching())
    assert tracker.delete(pod(version="2"), T0 + 10_000) == []
    assert tracker.advance("c1", T0 + 1_000_000) == []
    assert tracker.entries == {}


def test_firing_that_recovers_resolves():
    tracker = DurationTracker()
    tracker.observe(pod(), T0, matching())
    fired = tracker.advance("c1", T0 + 400_000)
    resolved = tracker.observe(pod(version="3"), T0 + 500_000, not_matching())
    assert [event.status for event in resolved] == ["RESOLVED"]
    record = resolved[0].to_avro()
    assert record["id"] == fired[0].to_avro()["id"]
    assert record["resolvedAt"] == T0 + 500_000
    assert record["resolveReason"] == "recovered"
    assert record["resourceVersion"] == "3"


def test_deleting_firing_object_resolves():
    tracker = DurationTracker()
    tracker.observe(pod(), T0, matching(duration=0))
    resolved = tracker.delete(pod(version="9"), T0 + 5_000)
    assert [event.to_avro()["resolveReason"] for event in resolved] == ["deleted"]


def test_zero_duration_fires_on_first_match():
    tracker = DurationTracker()
    events = tracker.observe(pod(), T0, matching(duration=0))
    assert [event.status for event in events] == ["FIRING"]
    assert events[0].to_avro()["firedAt"] == T0


def test_deadline_passed_by_next_change_fires_first():
    tracker = DurationTracker()
    tracker.observe(pod(), T0, matching())
    events = tracker.observe(pod(version="2"), T0 + 300_000, not_matching())
    assert [event.status for event in events] == ["FIRING", "RESOLVED"]


def test_still_matching_changes_write_no_state():
    tracker = DurationTracker()
    tracker.observe(pod(), T0, matching())
    tracker.dirty.clear()
    tracker.observe(pod(version="2"), T0 + 1_000, matching())
    assert tracker.dirty == set()


def test_clock_never_moves_back():
    tracker = DurationTracker()
    tracker.advance("c1", T0 + 10_000)
    tracker.advance("c1", T0)
    assert tracker.clock("c1") == T0 + 10_000


def test_clocks_are_per_cluster():
    tracker = DurationTracker()
    tracker.observe(pod(), T0, matching())
    assert tracker.advance("c2", T0 + 1_000_000) == []
    assert len(tracker.advance("c1", T0 + 300_000)) == 1


def test_new_match_after_resolution_gets_new_id():
    tracker = DurationTracker()
    first = tracker.observe(pod(), T0, matching(duration=0))
    tracker.observe(pod(version="2"), T0 + 1_000, not_matching(duration=0))
    second = tracker.observe(pod(version="3"), T0 + 2_000, matching(duration=0))
    assert first[0].to_avro()["id"] != second[0].to_avro()["id"]
    assert first[0].to_avro()["fingerprint"] == second[0].to_avro()["fingerprint"]


def test_alert_ids_are_deterministic():
    records = []
    for _ in range(2):
        tracker = DurationTracker()
        tracker.observe(pod(), T0, matching())
        records.append([event.to_avro() for event in tracker.advance("c1", T0 + 300_000)])
    assert records[0] == records[1]


def test_restored_entries_keep_deadlines():
    tracker = DurationTracker()
    tracker.observe(pod(), T0, matching())
    saved = [Entry.from_state(entry.to_state()) for entry in tracker.entries.values()]
    restored = DurationTracker(saved, dict(tracker.clocks))
    assert restored.dirty == set()
    assert restored.advance("c1", T0 + 299_000) == []
    assert [event.status for event in restored.advance("c1", T0 + 300_000)] == ["FIRING"]


def test_counts_pending_and_firing():
    tracker = DurationTracker()
    tracker.observe(pod("a"), T0, matching(duration=0))
    tracker.observe(pod("b"), T0, matching())
    assert tracker.counts() == (1, 1)
    states = sorted(entry.state for entry in tracker.entries.values())
    assert states == [FIRING, PENDING]


def test_counts_follow_transitions_and_restore():
    tracker = DurationTracker()
    tracker.observe(pod("a"), T0, matching(duration=0))
    tracker.observe(pod("b"), T0, matching())
    tracker.advance("c1", T0 + 300_000)
    assert tracker.counts() == (0, 2)
    tracker.observe(pod("a", version="2"), T0 + 400_000, not_matching(duration=0))
    assert tracker.counts() == (0, 1)
    restored = DurationTracker(
        [Entry.from_state(entry.to_state()) for entry in tracker.entries.values()], dict(tracker.clocks)
    )
    assert restored.counts() == (0, 1)
    restored.delete(pod("b", version="3"), T0 + 500_000)
    assert restored.counts() == (0, 0)


def test_start_from_object_time_moves_deadline():
    tracker = DurationTracker()
    events = tracker.observe(pod(), T0, matching(start_ms=T0 - 200_000))
    assert events == []
    assert tracker.advance("c1", T0 + 99_999) == []
    fired = tracker.advance("c1", T0 + 100_000)
    assert [event.to_avro()["activeSince"] for event in fired] == [T0 - 200_000]


def test_start_long_ago_fires_at_once():
    tracker = DurationTracker()
    events = tracker.observe(pod(), T0, matching(start_ms=T0 - 3_600_000))
    assert [event.status for event in events] == ["FIRING"]
    assert events[0].to_avro()["firedAt"] == T0 - 3_300_000


def test_start_after_change_time_is_ignored():
    tracker = DurationTracker()
    tracker.observe(pod(), T0, matching(start_ms=T0 + 50_000))
    entry = next(iter(tracker.entries.values()))
    assert entry.active_since_ms == T0
