"""PartitionProcessor with explicit records and timestamps: no broker, no sleeping."""

import orjson
import pytest

from kdiag.codec import codec
from kdiag.rules import RuleSet, parse_rules
from streams.processor import BatchResult, OffsetGapError, PartitionProcessor
from streams.state import NEXT_OFFSET_KEY, clock_state_key

CHANGE_BATCH = codec("ChangeBatch")
WATERMARK = codec("Watermark")
T0 = 1_600_000_000_000

RULES = RuleSet(
    parse_rules(
        {
            "PodCrashLooping": {
                "duration": 60,
                "resource": "Pod",
                "checkField": [
                    {
                        "field": ["status", "containerStatuses"],
                        "subIdentifierName": "name",
                        "subField": ["state", "waiting", "reason"],
                        "equalValue": ["CrashLoopBackOff"],
                    }
                ],
            }
        },
        source="test",
    )
)


def pod(reason: str | None) -> dict:
    state = {"waiting": {"reason": reason}} if reason else {"running": {}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "team-a", "uid": "u1"},
        "status": {"containerStatuses": [{"name": "app", "state": state}]},
    }


def change_record(obj: dict | bytes, time_ms: int, change_type: str = "MODIFIED", version: str = "1") -> bytes:
    object_json = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    change = {
        "cluster": "c1",
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": "team-a",
        "name": "web-0",
        "uid": "u1",
        "resourceVersion": version,
        "changeType": change_type,
        "observedTime": time_ms,
        "object": object_json,
    }
    return CHANGE_BATCH.encode({"changes": [change], "tick": None})


def tick_record(time_ms: int) -> bytes:
    return CHANGE_BATCH.encode({"changes": [], "tick": {"cluster": "c1", "time": time_ms, "source": "test"}})


def new_processor(next_offset: int = 0) -> PartitionProcessor:
    return PartitionProcessor("changes", 0, RULES, [], {}, next_offset)


def statuses(result: BatchResult) -> list[str]:
    return [event.status for event in result.alerts]


def test_tick_past_deadline_fires():
    processor = new_processor()
    result = BatchResult()
    processor.process(0, change_record(pod("CrashLoopBackOff"), T0), result)
    processor.process(1, tick_record(T0 + 59_999), result)
    assert statuses(result) == []
    processor.process(2, tick_record(T0 + 60_000), result)
    assert statuses(result) == ["FIRING"]
    assert result.alerts[0].to_avro()["context"] == {
        "status.containerStatuses[name=app].state.waiting.reason": "CrashLoopBackOff"
    }


def test_recovery_resolves_firing_alert():
    processor = new_processor()
    result = BatchResult()
    processor.process(0, change_record(pod("CrashLoopBackOff"), T0), result)
    processor.process(1, tick_record(T0 + 61_000), result)
    processor.process(2, change_record(pod(None), T0 + 90_000, version="2"), result)
    assert statuses(result) == ["FIRING", "RESOLVED"]
    assert result.alerts[1].to_avro()["resolveReason"] == "recovered"


def test_deleted_change_cancels_pending():
    processor = new_processor()
    result = BatchResult()
    processor.process(0, change_record(pod("CrashLoopBackOff"), T0), result)
    processor.process(1, change_record(pod("CrashLoopBackOff"), T0 + 1_000, "DELETED"), result)
    processor.process(2, tick_record(T0 + 600_000), result)
    assert statuses(result) == []


def test_committed_offsets_are_skipped():
    processor = new_processor(next_offset=5)
    result = BatchResult()
    processor.process(3, change_record(pod("CrashLoopBackOff"), T0), result)
    processor.process(4, tick_record(T0 + 600_000), result)
    assert result.skipped == 2
    assert result.records == 0
    assert statuses(result) == []


def test_offset_gap_after_start_raises():
    processor = new_processor(next_offset=5)
    with pytest.raises(OffsetGapError, match=r"changes\[0\] delivered offset 9"):
        processor.process(9, tick_record(T0), BatchResult())


def test_offset_gap_while_running_is_counted(caplog):
    processor = new_processor()
    result = BatchResult()
    processor.process(0, tick_record(T0), result)
    processor.process(4, tick_record(T0 + 1_000), result)

    assert result.offsets_missing == 3
    assert result.records == 2
    assert [record.message for record in caplog.records] == ["offset gap in the changes topic"]
    assert caplog.records[0].expected_offset == 1


def test_undecodable_record_becomes_dead_letter():
    processor = new_processor()
    result = BatchResult()
    processor.process(0, b"not avro at all", result)
    processor.process(1, change_record(pod("CrashLoopBackOff"), T0), result)
    assert len(result.dead_letters) == 1
    letter = result.dead_letters[0]
    assert letter["origin"] == "changes[0]@0"
    assert "Avro single-object" in letter["reason"]
    assert letter["payload"] == b"not avro at all"
    assert processor.next_offset == 2


def test_object_that_is_not_json_becomes_dead_letter():
    processor = new_processor()
    result = BatchResult()
    processor.process(0, change_record(b"{broken", T0), result)
    assert len(result.dead_letters) == 1
    assert "team-a/Pod/web-0" in result.dead_letters[0]["reason"]
    assert "not valid JSON" in result.dead_letters[0]["reason"]


def test_state_writes_only_on_transitions():
    processor = new_processor()
    result = BatchResult()
    processor.process(0, change_record(pod("CrashLoopBackOff"), T0), result)
    first = dict(processor.take_state_writes())
    assert any(key.startswith(b"e\x1f") for key in first)
    assert first[NEXT_OFFSET_KEY] == b"1"
    assert first[clock_state_key("c1")] == str(T0).encode()

    processor.process(1, change_record(pod("CrashLoopBackOff"), T0 + 1_000, version="2"), result)
    second = dict(processor.take_state_writes())
    assert not any(key.startswith(b"e\x1f") for key in second)
    assert second[NEXT_OFFSET_KEY] == b"2"


def test_same_records_give_same_alerts():
    records = [
        change_record(pod("CrashLoopBackOff"), T0),
        tick_record(T0 + 60_000),
        change_record(pod(None), T0 + 70_000, version="2"),
    ]
    runs = []
    for _ in range(2):
        processor = new_processor()
        result = BatchResult()
        for offset, record in enumerate(records):
            processor.process(offset, record, result)
        runs.append([event.to_avro() for event in result.alerts])
    assert runs[0] == runs[1]
    assert len(runs[0]) == 2


def test_deleted_rule_resolves_firing_alerts():
    processor = new_processor()
    result = BatchResult()
    processor.process(0, change_record(pod("CrashLoopBackOff"), T0), result)
    processor.process(1, tick_record(T0 + 120_000), result)
    assert statuses(result) == ["FIRING"]

    after_delete = BatchResult()
    processor.update_rules(RuleSet(()), after_delete)
    assert statuses(after_delete) == ["RESOLVED"]
    record = after_delete.alerts[0].to_avro()
    assert record["resolveReason"] == "rule deleted"
    assert record["resolvedAt"] == T0 + 120_000
    assert processor.tracker.entries == {}


def test_entries_of_unknown_rules_dropped_on_start():
    first = new_processor()
    result = BatchResult()
    first.process(0, change_record(pod("CrashLoopBackOff"), T0), result)
    entries = list(first.tracker.entries.values())
    restarted = PartitionProcessor("changes", 0, RuleSet(()), entries, dict(first.tracker.clocks), 1)
    on_start = BatchResult()
    restarted.update_rules(restarted.rule_set, on_start)
    assert on_start.alerts == []
    assert restarted.tracker.entries == {}
    assert restarted.has_state_writes()


def test_changed_rule_keeps_pending_entry():
    processor = new_processor()
    result = BatchResult()
    processor.process(0, change_record(pod("CrashLoopBackOff"), T0), result)
    renamed_copy = RuleSet(list(RULES))
    processor.update_rules(renamed_copy, result)
    assert len(processor.tracker.entries) == 1
    processor.process(1, tick_record(T0 + 60_000), result)
    assert statuses(result) == ["FIRING"]


NODE_RULES = RuleSet(
    parse_rules(
        {
            "NodeNotReadyLong": {
                "duration": 300,
                "resource": "Node",
                "durationFrom": {
                    "field": ["status", "conditions"],
                    "subIdentifierName": "type",
                    "subIdentifierValue": ["Ready"],
                    "subField": ["lastTransitionTime"],
                },
                "checkField": [
                    {
                        "field": ["status", "conditions"],
                        "subIdentifierName": "type",
                        "subIdentifierValue": ["Ready"],
                        "subField": ["status"],
                        "equalValue": ["False"],
                    }
                ],
            }
        },
        source="test",
    )
)


def node_record(time_ms: int, since: str) -> bytes:
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n1", "uid": "node-1"},
        "status": {"conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": since}]},
    }
    change = {
        "cluster": "c1", "apiVersion": "v1", "kind": "Node", "namespace": "", "name": "n1", "uid": "node-1",
        "resourceVersion": "7", "changeType": "ADDED", "observedTime": time_ms, "object": orjson.dumps(node),
    }
    return CHANGE_BATCH.encode({"changes": [change], "tick": None})


def test_duration_starts_at_object_timestamp():
    # A watcher that joins late finds the node NotReady since 2020-09-13T12:25:00Z, 100 s before
    # its first change, so the rule fires 200 s after that change, not 300 s.
    processor = PartitionProcessor("changes", 0, NODE_RULES, [], {}, 0)
    result = BatchResult()
    processor.process(0, node_record(T0, "2020-09-13T12:25:00Z"), result)
    processor.process(1, tick_record(T0 + 199_000), result)
    assert statuses(result) == []
    processor.process(2, tick_record(T0 + 200_000), result)
    assert statuses(result) == ["FIRING"]
    assert result.alerts[0].to_avro()["activeSince"] == T0 - 100_000


def sent_watermarks(result: BatchResult) -> list[tuple[bytes, dict]]:
    return [(key, WATERMARK.decode(value)) for key, value in result.warning_events if WATERMARK.wrote(value)]


def test_ticks_send_one_watermark_per_interval():
    processor = PartitionProcessor("changes", 2, RULES, [], {}, 0, partitions=3, watermark_interval_ms=30_000)
    result = BatchResult()
    start = T0 - T0 % 30_000  # Intervals start at multiples of 30 s since the epoch.
    for offset, seconds in enumerate([0, 10, 29, 30, 31, 95]):
        processor.process(offset, tick_record(start + seconds * 1000), result)

    sent = sent_watermarks(result)
    assert [watermark["time"] for _, watermark in sent] == [start, start + 30_000, start + 95_000]
    assert {key for key, _ in sent} == {b"KubernetesWarning"}
    assert sent[0][1] == {"cluster": "c1", "time": start, "topic": "changes", "partition": 2, "partitions": 3}


def test_no_watermarks_without_forwarded_warnings():
    processor = PartitionProcessor("changes", 0, RULES, [], {}, 0, forward_warnings=False)
    result = BatchResult()
    processor.process(0, tick_record(T0), result)
    processor.process(1, tick_record(T0 + 600_000), result)
    assert result.warning_events == []
