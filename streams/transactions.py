"""One transactional producer per changes-topic partition.

The alerts, dead letters and changelog writes that one batch of a partition produced commit in one
Kafka transaction, together with the partition's next offset in the changelog. Either all of them
become visible to read_committed consumers or none does, so a worker killed at any moment neither
loses nor repeats an alert. The transactional.id names the partition, so the worker that takes a
partition over fences the previous owner and aborts its open transaction.
"""

from __future__ import annotations

import logging
from typing import Sequence

from confluent_kafka import KafkaException, Message, Producer

from kdiag.errors import KdiagError
from kdiag.settings import Settings

log = logging.getLogger(__name__)


class TransactionAborted(KdiagError):
    """The transaction was aborted; the batch must be processed again from committed state."""


class PartitionTransactions:
    def __init__(self, settings: Settings, partition: int) -> None:
        self.settings = settings
        self.partition = partition
        self.transactional_id = f"{settings.app_id}-{settings.changes_topic}-{partition}"
        self._producer = Producer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                "transactional.id": self.transactional_id,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 2,
                "partitioner": "murmur2_random",
                "transaction.timeout.ms": int(settings.transaction_timeout_seconds * 1000),
                "message.max.bytes": settings.max_record_bytes + 65_536,
            }
        )
        self._changelog_high = -1
        self._delivery_error: str | None = None

    def initialize(self, timeout_seconds: float = 60.0) -> None:
        """Register the transactional.id: this fences an older producer of the same partition."""
        self._producer.init_transactions(timeout_seconds)
        log.info("transactional producer ready", extra={"transactional_id": self.transactional_id})

    def _on_delivery(self, error: object, message: Message) -> None:
        if error is not None:
            self._delivery_error = f"{message.topic()}[{message.partition()}]: {error}"
        elif message.topic() == self.settings.changelog_topic:
            self._changelog_high = max(self._changelog_high, message.offset())

    def commit(
        self,
        alerts: Sequence[tuple[bytes, bytes]],
        dead_letters: Sequence[bytes],
        state_writes: Sequence[tuple[bytes, bytes | None]],
        cluster_objects: Sequence[tuple[bytes, bytes | None]] = (),
        timeout_seconds: float = 60.0,
    ) -> int:
        """Produce one batch's outputs in one transaction. Returns the newest changelog offset written.

        Raises TransactionAborted when the transaction had to be aborted, and KafkaException for fatal
        errors such as being fenced by a newer owner of the partition.
        """
        self._changelog_high = -1
        self._delivery_error = None
        producer = self._producer
        settings = self.settings
        try:
            producer.begin_transaction()
            for key, value in alerts:
                producer.produce(settings.alerts_topic, value=value, key=key, on_delivery=self._on_delivery)
            for value in dead_letters:
                producer.produce(settings.dead_letter_topic, value=value, on_delivery=self._on_delivery)
            for key, value in cluster_objects:
                producer.produce(settings.cluster_objects_topic, value=value, key=key, on_delivery=self._on_delivery)
            for key, value in state_writes:
                producer.produce(
                    settings.changelog_topic,
                    value=value,
                    key=key,
                    partition=self.partition,
                    on_delivery=self._on_delivery,
                )
            producer.commit_transaction(timeout_seconds)
        except KafkaException as error:
            kafka_error = error.args[0]
            if kafka_error.txn_requires_abort():
                log.warning(
                    "transaction aborted",
                    extra={"transactional_id": self.transactional_id, "error": str(kafka_error)},
                )
                producer.abort_transaction(timeout_seconds)
                raise TransactionAborted(f"transaction of {self.transactional_id} aborted: {kafka_error}") from None
            raise
        except BufferError:
            producer.abort_transaction(timeout_seconds)
            raise TransactionAborted(
                f"producer queue of {self.transactional_id} is full; lower batch_max_records"
            ) from None
        if self._delivery_error is not None:
            raise KdiagError(f"delivery failed in a committed transaction: {self._delivery_error}")
        return self._changelog_high

    def close(self) -> None:
        self._producer.flush(5)
