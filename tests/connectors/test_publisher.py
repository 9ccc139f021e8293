"""The publisher: batching per key, size limits, ticks on every partition, dead letters, deliveries."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError

from connectors.publisher import (
    BATCH_OVERHEAD_BYTES,
    DEAD_LETTER_PAYLOAD_BYTES,
    PRODUCE_ATTEMPTS,
    Publisher,
    PublishError,
    change_size_bytes,
    encode_object,
    producer_config,
)
from kdiag.codec import codec
from kdiag.model import ResourceChange
from kdiag.partitioning import partition_for_key
from kdiag.settings import Settings

BATCH = codec("ChangeBatch")
DEAD_LETTER = codec("DeadLetter")


@dataclass
class Produced:
    topic: str
    key: bytes
    value: bytes
    partition: int | None


class FakeMessage:
    def __init__(self, record: Produced) -> None:
        self._record = record

    def topic(self) -> str:
        return self._record.topic

    def partition(self) -> int:
        return self._record.partition if self._record.partition is not None else 0


@dataclass
class FakeProducer:
    """Records produced values; deliveries happen on flush, failing for the topics in `failing`."""

    partitions: int = 3
    failing: set[str] = field(default_factory=set)
    full_attempts: int = 0
    records: list[Produced] = field(default_factory=list)
    _pending: list[tuple[Produced, Any]] = field(default_factory=list)

    def produce(self, topic, value, key, partition=None, on_delivery=None):
        if self.full_attempts:
            self.full_attempts -= 1
            raise BufferError("Local: Queue full")
        record = Produced(topic, key, value, partition)
        self.records.append(record)
        self._pending.append((record, on_delivery))

    def poll(self, timeout):
        return 0

    def flush(self, timeout):
        for record, callback in self._pending:
            error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if record.topic in self.failing else None
            callback(error, FakeMessage(record))
        self._pending.clear()
        return 0

    def list_topics(self, topic=None, timeout=None):
        partitions = {index: None for index in range(self.partitions)}
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions=partitions)})


def make_settings(**overrides: Any) -> Settings:
    values = {"changes_topic": "changes", "dead_letter_topic": "dead", "batch_max_changes": 3}
    values.update(overrides)
    return Settings(**values)


def make_publisher(producer: FakeProducer | None = None, **overrides: Any) -> tuple[Publisher, FakeProducer]:
    producer = producer or FakeProducer()
    return Publisher(make_settings(**overrides), source="replay", producer=producer, wall_clock=lambda: 1.5), producer


def change(name: str, cluster: str = "c1", namespace: str = "ns", time_ms: int = 1000, body: bytes = b"{}") -> ResourceChange:
    return ResourceChange(cluster, "v1", "ConfigMap", namespace, name, f"uid-{name}", "1", "ADDED", time_ms, body)


def decoded(records: list[Produced], topic: str = "changes") -> list[tuple[bytes, int | None, dict]]:
    return [(record.key, record.partition, BATCH.decode(record.value)) for record in records if record.topic == topic]


def test_batches_flush_at_max_changes():
    publisher, producer = make_publisher()
    for index in range(7):
        publisher.publish_change(change(f"c{index}"), "f:1")
    assert len(producer.records) == 2
    summary = publisher.close()
    batches = decoded(producer.records)
    assert [len(batch["changes"]) for _, _, batch in batches] == [3, 3, 1]
    names = [item["name"] for _, _, batch in batches for item in batch["changes"]]
    assert names == [f"c{index}" for index in range(7)]
    assert {key for key, _, _ in batches} == {b"c1/ns"}
    assert {partition for _, partition, _ in batches} == {None}
    assert (summary.changes, summary.batches, summary.records, summary.delivered) == (7, 3, 3, 3)
    assert summary.failures == []


def test_buffers_are_per_key():
    publisher, producer = make_publisher()
    publisher.publish_change(change("a", namespace="one"), "f:1")
    publisher.publish_change(change("b", namespace="two"), "f:2")
    publisher.publish_change(change("c", namespace="one"), "f:3")
    publisher.close()
    batches = decoded(producer.records)
    assert [(key, [item["name"] for item in batch["changes"]]) for key, _, batch in batches] == [
        (b"c1/one", ["a", "c"]),
        (b"c1/two", ["b"]),
    ]


def test_batches_stay_under_record_size():
    publisher, producer = make_publisher(batch_max_changes=100, max_record_bytes=3000)
    body = orjson.dumps({"data": "x" * 900})
    for index in range(10):
        publisher.publish_change(change(f"c{index}", body=body), "f:1")
    publisher.close()
    sizes = [len(record.value) for record in producer.records]
    assert all(size <= 3000 for size in sizes)
    assert len(sizes) > 1
    names = [item["name"] for _, _, batch in decoded(producer.records) for item in batch["changes"]]
    assert names == [f"c{index}" for index in range(10)]


def test_too_large_change_dead_lettered(caplog):
    publisher, producer = make_publisher(max_record_bytes=2000)
    big = orjson.dumps({"data": "x" * 100_000})
    with caplog.at_level(logging.WARNING, logger="connectors.publisher"):
        publisher.publish_change(change("big", body=big), "dump.yaml:7")
    publisher.publish_change(change("small"), "dump.yaml:9")
    summary = publisher.close()
    dead = [DEAD_LETTER.decode(record.value) for record in producer.records if record.topic == "dead"]
    assert len(dead) == 1
    assert dead[0]["origin"] == "dump.yaml:7"
    assert dead[0]["reason"] == "object too large"
    assert dead[0]["component"] == "replay"
    assert len(dead[0]["payload"]) == DEAD_LETTER_PAYLOAD_BYTES
    assert [item["name"] for _, _, batch in decoded(producer.records) for item in batch["changes"]] == ["small"]
    assert (summary.changes, summary.dead_letters) == (1, 1)
    assert any(record.levelno == logging.WARNING and record.origin == "dump.yaml:7" for record in caplog.records)


def test_tick_flushes_its_cluster_then_reaches_every_partition():
    publisher, producer = make_publisher(batch_max_changes=100)
    publisher.publish_change(change("a", cluster="c1"), "f:1")
    publisher.publish_change(change("b", cluster="c2"), "f:2")
    publisher.publish_change(change("c", cluster="c1", namespace="other"), "f:3")
    publisher.publish_tick("c1", 5000)
    records = decoded(producer.records)
    # Of 3 partitions, murmur2 puts "c1/ns" on 2 and "c1/other" on 1: their records carry the tick.
    assert [partition_for_key(key, 3) for key in (b"c1/ns", b"c1/other")] == [2, 1]
    assert [(key, partition) for key, partition, _ in records] == [(b"c1/ns", None), (b"c1/other", None), (b"c1", 0)]
    assert [len(batch["changes"]) for _, _, batch in records] == [1, 1, 0]
    assert all(batch["tick"] == {"cluster": "c1", "time": 5000, "source": "replay"} for _, _, batch in records)
    publisher.close()
    assert decoded(producer.records)[-1][0] == b"c2/ns"
    assert publisher.summary.ticks == 1


def test_tick_rides_with_last_record_of_partition():
    publisher, producer = make_publisher(batch_max_changes=100)
    namespaces = ["ns", "other", "third"]
    for name, namespace in zip("abc", namespaces):
        publisher.publish_change(change(name, cluster="c1", namespace=namespace), "f:1")
    publisher.publish_tick("c1", 5000)
    # "c1/other" and "c1/third" share partition 1, so only the later of the two carries the tick.
    assert [partition_for_key(f"c1/{namespace}".encode(), 3) for namespace in namespaces] == [2, 1, 1]
    records = decoded(producer.records)
    change_records = [(key, batch["tick"] is not None) for key, _, batch in records if batch["changes"]]
    assert change_records == [(b"c1/ns", True), (b"c1/other", False), (b"c1/third", True)]
    alone = [partition for _, partition, batch in records if not batch["changes"]]
    assert alone == [0]


def test_tick_alone_when_record_is_full():
    # The buffer of "c1/ns" has no room for the tick, so partition 2 gets the tick in a record of its own.
    size = change_size_bytes(change("a", cluster="c1"))
    publisher, producer = make_publisher(batch_max_changes=100, max_record_bytes=size + BATCH_OVERHEAD_BYTES + 10)
    publisher.publish_change(change("a", cluster="c1"), "f:1")
    publisher.publish_tick("c1", 5000)
    records = decoded(producer.records)
    assert [(key, partition, batch["tick"] is not None) for key, partition, batch in records] == [
        (b"c1/ns", None, False),
        (b"c1", 0, True),
        (b"c1", 1, True),
        (b"c1", 2, True),
    ]


def test_dead_letter_record():
    publisher, producer = make_publisher()
    publisher.publish_dead_letter("events.jsonl:4", "invalid JSON", b"x" * (DEAD_LETTER_PAYLOAD_BYTES + 10))
    publisher.close()
    (record,) = producer.records
    assert (record.topic, record.key) == ("dead", b"events.jsonl:4")
    value = DEAD_LETTER.decode(record.value)
    assert value["origin"] == "events.jsonl:4"
    assert value["reason"] == "invalid JSON"
    assert value["time"] == 1500
    assert len(value["payload"]) == DEAD_LETTER_PAYLOAD_BYTES


def test_failed_delivery_names_topic_and_partition(caplog):
    publisher, _ = make_publisher(FakeProducer(failing={"changes"}))
    publisher.publish_change(change("a"), "f:1")
    publisher.publish_tick("c1", 2000)
    with caplog.at_level(logging.ERROR, logger="connectors.publisher"):
        summary = publisher.close()
    # The change's record also carries the tick for partition 2; partitions 0 and 1 get it alone.
    assert len(summary.failures) == 3
    assert summary.failures[0].startswith("changes[0]: ")
    assert "too large" in summary.failures[0].lower()
    assert [failure.split(":")[0] for failure in summary.failures[1:]] == ["changes[0]", "changes[1]"]
    assert summary.delivered == 0
    assert any(record.message == "delivery failed" for record in caplog.records)


def test_full_queue_retried_with_attempt_count(caplog):
    publisher, producer = make_publisher(FakeProducer(full_attempts=2))
    with caplog.at_level(logging.WARNING, logger="connectors.publisher"):
        publisher.publish_dead_letter("f:1", "reason", b"")
    assert len(producer.records) == 1
    attempts = [record.attempt for record in caplog.records if hasattr(record, "attempt")]
    assert attempts == [f"1/{PRODUCE_ATTEMPTS}", f"2/{PRODUCE_ATTEMPTS}"]


def test_queue_full_for_good_raises():
    publisher, _ = make_publisher(FakeProducer(full_attempts=PRODUCE_ATTEMPTS))
    with pytest.raises(PublishError, match="still full"):
        publisher.publish_dead_letter("f:1", "reason", b"")


def test_partition_count_read_once():
    producer = FakeProducer(partitions=5)
    calls = []
    original = producer.list_topics
    producer.list_topics = lambda topic=None, timeout=None: calls.append(topic) or original(topic, timeout)
    publisher, _ = make_publisher(producer)
    publisher.publish_tick("c1", 1)
    publisher.publish_tick("c1", 2)
    assert calls == ["changes"]
    assert publisher.summary.records == 10


def test_same_input_gives_identical_records():
    outputs = []
    for _ in range(2):
        publisher, producer = make_publisher()
        for index in range(5):
            publisher.publish_change(change(f"c{index}", time_ms=index), "f:1")
        publisher.publish_tick("c1", 10)
        publisher.close()
        outputs.append([(record.key, record.partition, record.value) for record in producer.records])
    assert outputs[0] == outputs[1]


def test_producer_config():
    settings = Settings(bootstrap_servers="127.0.0.1:1", linger_seconds=0.05, producer_linger_seconds=0.005)
    config = producer_config(settings, 30.0)
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["partitioner"] == "murmur2_random"
    assert config["compression.type"] == "none"
    assert config["linger.ms"] == pytest.approx(5.0)
    assert config["bootstrap.servers"] == "127.0.0.1:1"
    assert "transactional.id" not in config


def test_encode_object_removes_secret_values():
    secret = {
        "kind": "Secret",
        "metadata": {
            "name": "db",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": '{"data":{"pw":"c2VjcmV0"}}', "team": "a"},
            "managedFields": [{"manager": "kubectl"}],
        },
        "data": {"pw": "c2VjcmV0"},
        "stringData": {"user": "admin"},
    }
    published = orjson.loads(encode_object(secret))
    assert published["data"] == {"pw": ""}
    assert published["stringData"] == {"user": ""}
    assert published["metadata"]["annotations"] == {"team": "a"}
    assert "managedFields" not in published["metadata"]
    assert secret["data"] == {"pw": "c2VjcmV0"}


def test_encode_object_keeps_other_annotations():
    config_map = {"kind": "ConfigMap", "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}}}
    assert orjson.loads(encode_object(config_map)) == config_map


@pytest.mark.integration
def test_publisher_delivers_to_broker(kafka_bootstrap, unique_name):
    from confluent_kafka.admin import AdminClient, NewTopic

    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        changes_topic=f"{unique_name}-changes",
        dead_letter_topic=f"{unique_name}-dead",
        partitions=3,
    )
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    futures = admin.create_topics([NewTopic(settings.changes_topic, 3, 1), NewTopic(settings.dead_letter_topic, 1, 1)])
    for future in futures.values():
        future.result(timeout=30)
    publisher = Publisher(settings, source="replay")
    publisher.publish_change(change("a"), "f:1")
    publisher.publish_tick("c1", 2000)
    publisher.publish_dead_letter("f:2", "invalid JSON", b"{")
    summary = publisher.close()
    assert summary.failures == []
    # The change's record carries the tick on its partition, and the other two get the tick alone.
    assert summary.delivered == summary.records == 4


@pytest.mark.integration
def test_publisher_reports_missing_topic(kafka_bootstrap, unique_name):
    settings = Settings(bootstrap_servers=kafka_bootstrap, changes_topic=f"{unique_name}-absent")
    publisher = Publisher(settings, source="replay", delivery_timeout_seconds=2.0)
    publisher.publish_change(change("a"), "f:1")
    summary = publisher.close()
    assert len(summary.failures) == 1
    assert summary.failures[0].startswith(f"{unique_name}-absent[unassigned]: ")
