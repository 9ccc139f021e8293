"""CenterProcessor with explicit records and timestamps: watermarks, expiry and restore, no broker."""

from __future__ import annotations

from pathlib import Path

from kdiag.alertcenter import AlertCenter, AlertCenterConfig, AlertCenterState, kubernetes_event_to_event
from kdiag.codec import codec
from kdiag.model import format_time_ms
from kdiag.settings import Settings
from streams.center import CenterProcessor, CenterRecord, CenterResult, load_processor
from streams.state import PartitionStore

EVENT = codec("Event")
WATERMARK = codec("Watermark")
SETTINGS = Settings()
T0 = 1_700_000_000_000
MINUTE_MS = 60_000


def warning(cluster: str, minute: int) -> bytes:
    event = kubernetes_event_to_event(
        {
            "kind": "Event",
            "type": "Warning",
            "metadata": {"uid": f"ev-{cluster}-{minute}"},
            "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": f"uid-{cluster}"},
            "reason": "BackOff",
            "lastTimestamp": format_time_ms(T0 + minute * MINUTE_MS),
        },
        cluster=cluster,
    )
    assert event is not None
    return EVENT.encode(event.to_avro())


def watermark(cluster: str, minute: int, partition: int, partitions: int = 2) -> bytes:
    return WATERMARK.encode(
        {"cluster": cluster, "time": T0 + minute * MINUTE_MS, "topic": "kdiag-changes", "partition": partition, "partitions": partitions}
    )


def new_processor() -> CenterProcessor:
    center = AlertCenter(AlertCenterConfig.from_mapping({"staleAfter": "15m"}))
    return CenterProcessor(SETTINGS, 0, center, AlertCenterState(), {}, {})


def feed(processor: CenterProcessor, values: list[bytes], first_offset: int = 0) -> CenterResult:
    result = CenterResult()
    for offset, value in enumerate(values, start=first_offset):
        processor.process(CenterRecord(SETTINGS.events_topic, 0, offset, value), result)
    return result


def graded(result: CenterResult) -> list[tuple[str, str]]:
    return [(alert.type, alert.entry.cluster) for alert in result.graded]


def test_expiry_waits_for_every_partition():
    processor = new_processor()
    assert graded(feed(processor, [warning("east", 0)])) == [("FIRING", "east")]

    # Partition 1 has not sent a watermark yet, so the cluster's watermark is unknown.
    assert graded(feed(processor, [watermark("east", 20, 0)], 1)) == []
    # The cluster's watermark is the oldest of the partitions': minute 14, before the expiry at 15.
    assert graded(feed(processor, [watermark("east", 14, 1)], 2)) == []
    result = feed(processor, [watermark("east", 16, 1)], 3)

    assert result.watermarks == {"east": T0 + 16 * MINUTE_MS}
    assert graded(result) == [("RESOLVED", "east")]
    assert result.graded[0].resolved_at_ms == T0 + 15 * MINUTE_MS


def test_cluster_watermarks_once_complete():
    processor = new_processor()
    feed(processor, [watermark("east", 5, 0), watermark("west", 7, 0), watermark("west", 3, 1)])
    assert processor.cluster_watermarks() == {"west": T0 + 3 * MINUTE_MS}


def test_watermark_of_one_cluster_leaves_the_others():
    processor = new_processor()
    feed(processor, [warning("east", 0), warning("west", 0)])

    result = feed(processor, [watermark("west", 30, 0), watermark("west", 30, 1)], 2)

    assert graded(result) == [("RESOLVED", "west")]
    assert [entry.cluster for entry in processor.state.alerts.values()] == ["east"]


def test_invalid_watermark_becomes_dead_letter():
    processor = new_processor()
    result = feed(processor, [watermark("east", 5, partition=4, partitions=2), warning("east", 0)])

    assert [letter["origin"] for letter in result.dead_letters] == [f"{SETTINGS.events_topic}[0]@0"]
    assert "expected a partition of kdiag-changes below its partition count 2, got 4" in result.dead_letters[0]["reason"]
    assert graded(result) == [("FIRING", "east")]


def test_watermarks_survive_a_restart(tmp_path: Path):
    store = PartitionStore(tmp_path, 0)
    try:
        processor = new_processor()
        feed(processor, [warning("east", 0), watermark("east", 10, 0), watermark("east", 5, 1)])
        store.apply(processor.take_state_writes(), checkpoint=-1)

        restored = load_processor(store, SETTINGS, 0, processor.center)
        assert restored.watermarks["east"].times == {0: T0 + 10 * MINUTE_MS, 1: T0 + 5 * MINUTE_MS}
        assert restored.next_offsets == {SETTINGS.events_topic: 3}
        # Partition 0's watermark from before the restart keeps the cluster's watermark at minute 10.
        assert graded(feed(restored, [watermark("east", 30, 1)], 3)) == []
        assert graded(feed(restored, [watermark("east", 30, 0)], 4)) == [("RESOLVED", "east")]
    finally:
        store.close()
