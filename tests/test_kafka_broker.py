"""Checks that the test broker supports what the worker relies on.

The worker produces its output inside Kafka transactions and its consumers
read with isolation.level=read_committed, so a broker without working
transactions would make every worker test fail in confusing ways.
"""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT_SECONDS = 30.0


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    futures[topic].result(timeout=TIMEOUT_SECONDS)


def _consume_until(consumer: Consumer, last_value: bytes) -> list[Message]:
    """Poll until the message with value ``last_value`` arrives, then return all messages read."""
    messages: list[Message] = []
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error() is not None:
            if message.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consumer error: {message.error()}")
        messages.append(message)
        if message.value() == last_value:
            return messages
    values = [message.value() for message in messages]
    raise AssertionError(
        f"timed out after {TIMEOUT_SECONDS}s waiting for {last_value!r}; received {values!r}"
    )


def _consumer(bootstrap: str, group: str, topic: str, isolation_level: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation_level,
        }
    )
    consumer.subscribe([topic])
    return consumer


def _delivery_callback(error: KafkaError | None, message: Message) -> None:
    if error is not None:
        raise AssertionError(f"delivery to {message.topic()} failed: {error}")


def test_plain_produce_consume(kafka_bootstrap: str, unique_name: str) -> None:
    topic = unique_name
    _create_topic(kafka_bootstrap, topic)

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    sent = [(f"key-{i}".encode(), f"value-{i}".encode()) for i in range(3)]
    for key, value in sent:
        producer.produce(topic, key=key, value=value, on_delivery=_delivery_callback)
    assert producer.flush(TIMEOUT_SECONDS) == 0

    consumer = _consumer(kafka_bootstrap, unique_name, topic, "read_uncommitted")
    try:
        messages = _consume_until(consumer, b"value-2")
    finally:
        consumer.close()

    received = [(message.key(), message.value()) for message in messages]
    assert received == sent
    assert [message.offset() for message in messages] == [0, 1, 2]


def test_transactions_read_committed(kafka_bootstrap: str, unique_name: str) -> None:
    topic = unique_name
    _create_topic(kafka_bootstrap, topic)

    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "transactional.id": f"{unique_name}-producer",
            "enable.idempotence": True,
        }
    )
    producer.init_transactions(TIMEOUT_SECONDS)

    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"committed-1", on_delivery=_delivery_callback)
    producer.produce(topic, key=b"k", value=b"committed-2", on_delivery=_delivery_callback)
    producer.commit_transaction(TIMEOUT_SECONDS)

    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"aborted", on_delivery=_delivery_callback)
    producer.flush(TIMEOUT_SECONDS)
    producer.abort_transaction(TIMEOUT_SECONDS)

    # A committed message after the aborted one, so the consumers below know
    # when they have read past the aborted transaction.
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"end", on_delivery=_delivery_callback)
    producer.commit_transaction(TIMEOUT_SECONDS)

    committed = _consumer(kafka_bootstrap, f"{unique_name}-committed", topic, "read_committed")
    try:
        committed_values = [message.value() for message in _consume_until(committed, b"end")]
    finally:
        committed.close()
    assert committed_values == [b"committed-1", b"committed-2", b"end"]

    # The aborted message is in the log, which shows that the read_committed
    # consumer above skipped it rather than never having it sent.
    uncommitted = _consumer(kafka_bootstrap, f"{unique_name}-uncommitted", topic, "read_uncommitted")
    try:
        uncommitted_values = [message.value() for message in _consume_until(uncommitted, b"end")]
    finally:
        uncommitted.close()
    assert b"aborted" in uncommitted_values


def test_open_transaction_hidden_until_commit(kafka_bootstrap: str, unique_name: str) -> None:
    topic = unique_name
    _create_topic(kafka_bootstrap, topic)
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"{unique_name}-producer"}
    )
    producer.init_transactions(TIMEOUT_SECONDS)
    producer.begin_transaction()
    producer.produce(topic, value=b"pending", on_delivery=_delivery_callback)
    assert producer.flush(TIMEOUT_SECONDS) == 0

    # assign() instead of subscribe(), so the consumer fetches at once
    # without waiting for a group rebalance.
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": unique_name,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    try:
        seen_before_commit: list[bytes] = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                seen_before_commit.append(message.value())

        producer.commit_transaction(TIMEOUT_SECONDS)
        seen_after_commit = [message.value() for message in _consume_until(consumer, b"pending")]
    finally:
        consumer.close()

    assert seen_before_commit == []
    assert seen_after_commit == [b"pending"]
