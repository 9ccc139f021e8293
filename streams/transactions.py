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

from collections.abc import Callable

from confluent_kafka import KafkaException, Message, Producer

from kdiag.errors import KdiagError
from kdiag.settings import Settings
from streams import metrics

log = logging.getLogger(__name__)

Output = tuple[str, bytes | None, bytes | None]  # topic, key, value
StateWrite = tuple[bytes, bytes | None]
MAX_TRANSACTION_ATTEMPTS = 3


class TransactionAborted(KdiagError):
    """The transaction was aborted; the batch must be processed again from committed state."""


class PartitionTransactions:
    def __init__(
        self,
        settings: Settings,
        partition: int,
        input_topic: str | None = None,
        changelog_topic: str | None = None,
    ) -> None:
        """`input_topic` (default: the changes topic) names the transactional.id; `changelog_topic`
        (default: the rule worker's changelog) receives the state writes."""
        self.settings = settings
        self.partition = partition
        self.changelog_topic = changelog_topic or settings.changelog_topic
        self.transactional_id = f"{settings.app_id}-{input_topic or settings.changes_topic}-{partition}"
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
        elif message.topic() == self.changelog_topic:
            self._changelog_high = max(self._changelog_high, message.offset())

    def commit(
        self,
        alerts: Sequence[tuple[bytes, bytes]],
        dead_letters: Sequence[bytes],
        state_writes: Sequence[tuple[bytes, bytes | None]],
        cluster_objects: Sequence[tuple[bytes, bytes | None]] = (),
        diagnoses: Sequence[tuple[bytes, bytes]] = (),
        events: Sequence[tuple[bytes, bytes]] = (),
        timeout_seconds: float = 60.0,
    ) -> int:
        """Produce one rule-worker batch's outputs in one transaction; see commit_outputs."""
        settings = self.settings
        outputs: list[Output] = [(settings.alerts_topic, key, value) for key, value in alerts]
        outputs += [(settings.dead_letter_topic, None, value) for value in dead_letters]
        outputs += [(settings.cluster_objects_topic, key, value) for key, value in cluster_objects]
        outputs += [(settings.diagnoses_topic, key, value) for key, value in diagnoses]
        outputs += [(settings.events_topic, key, value) for key, value in events]
        return self.commit_outputs(outputs, state_writes, timeout_seconds)

    def commit_outputs(
        self,
        outputs: Sequence[Output],
        state_writes: Sequence[tuple[bytes, bytes | None]],
        timeout_seconds: float = 60.0,
    ) -> int:
        """Produce (topic, key, value) outputs and the partition's changelog writes in one transaction.
        Returns the newest changelog offset written.

        Raises TransactionAborted when the transaction had to be aborted, and KafkaException for fatal
        errors such as being fenced by a newer owner of the partition.
        """
        self._changelog_high = -1
        self._delivery_error = None
        producer = self._producer
        try:
            producer.begin_transaction()
            for topic, key, value in outputs:
                producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
            for key, value in state_writes:
                producer.produce(
                    self.changelog_topic,
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


def commit_batch(
    transactions: PartitionTransactions,
    apply_writes: Callable[[Sequence[StateWrite], int], None],
    topic: str,
    attempt: Callable[[], tuple[list[Output], list[StateWrite]] | None],
    reload: Callable[[], None],
) -> bool:
    """Commit what `attempt` returns in one transaction, then apply the state writes locally.

    `attempt` processes a batch from the committed state and returns its outputs and state writes, or
    None when there is nothing to commit. After an aborted transaction, `reload` restores the
    committed state and the batch runs again, up to MAX_TRANSACTION_ATTEMPTS times. `apply_writes`
    gets the writes and the newest changelog offset. Returns whether a transaction committed.
    """
    partition = transactions.partition
    for attempt_number in range(1, MAX_TRANSACTION_ATTEMPTS + 1):
        staged = attempt()
        if staged is None:
            return False
        outputs, writes = staged
        try:
            changelog_offset = transactions.commit_outputs(outputs, writes)
        except TransactionAborted:
            metrics.TRANSACTIONS.labels("aborted").inc()
            log.warning(
                "batch retried after an aborted transaction",
                extra={"topic": topic, "partition": partition, "attempt": f"{attempt_number}/{MAX_TRANSACTION_ATTEMPTS}"},
            )
            reload()
            continue
        metrics.TRANSACTIONS.labels("committed").inc()
        apply_writes(writes, changelog_offset)
        return True
    raise KdiagError(
        f"{MAX_TRANSACTION_ATTEMPTS} transactions in a row aborted for {topic}[{partition}]; "
        f"check the broker's transaction coordinator"
    )
