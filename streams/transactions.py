"""One transactional producer per changes-topic partition.

The alerts, dead letters and changelog writes that one batch of a partition produced commit in one
Kafka transaction, together with the partition's next offset in the changelog. Either all of them
become visible to read_committed consumers or none does, so a worker killed at any moment neither
loses nor repeats an alert. The transactional.id names the partition, so the worker that takes a
partition over fences the previous owner and aborts its open transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from confluent_kafka import KafkaException, Message, Producer

from kdiag.errors import KdiagError
from kdiag.settings import Settings
from streams import metrics

log = logging.getLogger(__name__)

Output = tuple[str, bytes | None, bytes | None]  # topic, key, value
StateWrite = tuple[bytes, bytes | None]
MAX_TRANSACTION_ATTEMPTS = 3
# Transactions of one stage's batch that commit at the same time (see commit_partitions).
COMMIT_THREADS = 8


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

    def rule_outputs(
        self,
        alerts: Sequence[tuple[bytes, bytes]],
        dead_letters: Sequence[bytes],
        cluster_objects: Sequence[tuple[bytes, bytes | None]] = (),
        diagnoses: Sequence[tuple[bytes, bytes]] = (),
        events: Sequence[tuple[bytes, bytes]] = (),
    ) -> list[Output]:
        """Return the (topic, key, value) outputs of one rule-stage batch, for commit_outputs."""
        settings = self.settings
        outputs: list[Output] = [(settings.alerts_topic, key, value) for key, value in alerts]
        outputs += [(settings.dead_letter_topic, None, value) for value in dead_letters]
        outputs += [(settings.cluster_objects_topic, key, value) for key, value in cluster_objects]
        outputs += [(settings.diagnoses_topic, key, value) for key, value in diagnoses]
        outputs += [(settings.events_topic, key, value) for key, value in events]
        return outputs

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
        self.produce_outputs(outputs, state_writes, timeout_seconds)
        return self.finish(timeout_seconds)

    def produce_outputs(
        self,
        outputs: Sequence[Output],
        state_writes: Sequence[tuple[bytes, bytes | None]],
        timeout_seconds: float = 60.0,
    ) -> None:
        """Begin a transaction and produce the outputs and changelog writes into it; finish commits it.

        Raises TransactionAborted when the transaction had to be aborted, and KafkaException for fatal
        errors.
        """
        self._changelog_high = -1
        self._delivery_error = None
        producer = self._producer
        try:
            producer.begin_transaction()
            # A record that fails makes commit_transaction fail, so only the last changelog record,
            # whose offset the state needs, reports its delivery.
            for topic, key, value in outputs:
                producer.produce(topic, value=value, key=key)
            last = len(state_writes) - 1
            changelog = self.changelog_topic
            partition = self.partition
            for index, (key, value) in enumerate(state_writes):
                if index == last:
                    producer.produce(changelog, value=value, key=key, partition=partition, on_delivery=self._on_delivery)
                else:
                    producer.produce(changelog, value=value, key=key, partition=partition)
        except KafkaException as error:
            self._abort_if_required(error, timeout_seconds)
            raise
        except BufferError:
            producer.abort_transaction(timeout_seconds)
            raise TransactionAborted(
                f"producer queue of {self.transactional_id} is full; lower batch_max_records"
            ) from None

    def finish(self, timeout_seconds: float = 60.0) -> int:
        """Commit the transaction that produce_outputs opened. Returns the newest changelog offset written.

        Blocks until the broker acknowledged every record and the commit. confluent-kafka releases the
        GIL meanwhile, so the transactions of several partitions can finish in parallel threads.
        """
        try:
            self._producer.commit_transaction(timeout_seconds)
        except KafkaException as error:
            self._abort_if_required(error, timeout_seconds)
            raise
        if self._delivery_error is not None:
            raise KdiagError(f"delivery failed in a committed transaction: {self._delivery_error}")
        return self._changelog_high

    def _abort_if_required(self, error: KafkaException, timeout_seconds: float) -> None:
        """Abort after an error that requires it, and raise TransactionAborted then."""
        kafka_error = error.args[0]
        if kafka_error.txn_requires_abort():
            log.warning(
                "transaction aborted",
                extra={"transactional_id": self.transactional_id, "error": str(kafka_error)},
            )
            self._producer.abort_transaction(timeout_seconds)
            raise TransactionAborted(f"transaction of {self.transactional_id} aborted: {kafka_error}") from None

    def close(self) -> None:
        self._producer.flush(5)


@dataclass(frozen=True)
class PartitionBatch:
    """One partition's part of a batch, as commit_partitions and commit_batch take it.

    `attempt` processes the partition's records from the committed state and returns its outputs and
    state writes, or None when there is nothing to commit. After an aborted transaction, `reload`
    restores the committed state before the next attempt. `apply_writes` gets the writes and the
    newest changelog offset once the transaction committed.
    """

    transactions: PartitionTransactions
    topic: str
    attempt: Callable[[], tuple[list[Output], list[StateWrite]] | None]
    reload: Callable[[], None]
    apply_writes: Callable[[Sequence[StateWrite], int], None]


def commit_batch(batch: PartitionBatch, first_attempt: int = 1) -> bool:
    """Commit what `batch.attempt` returns in one transaction, then apply the state writes locally.

    An aborted transaction is retried from the committed state, up to MAX_TRANSACTION_ATTEMPTS
    attempts in all, counting from first_attempt. Returns whether a transaction committed.
    """
    for attempt_number in range(first_attempt, MAX_TRANSACTION_ATTEMPTS + 1):
        staged = batch.attempt()
        if staged is None:
            return False
        outputs, writes = staged
        try:
            changelog_offset = batch.transactions.commit_outputs(outputs, writes)
        except TransactionAborted:
            _retrying(batch, attempt_number)
            continue
        metrics.TRANSACTIONS.labels("committed").inc()
        batch.apply_writes(writes, changelog_offset)
        return True
    raise KdiagError(
        f"{MAX_TRANSACTION_ATTEMPTS} transactions in a row aborted for {batch.topic}[{batch.transactions.partition}]; "
        f"check the broker's transaction coordinator"
    )


def commit_partitions(batches: Sequence[PartitionBatch], executor: Executor) -> list[bool]:
    """Commit the batches of several partitions, each in its partition's transaction.

    The attempts run in order in the calling thread. Each transaction's commit, which waits for the
    broker, runs in `executor` as soon as its records are produced, so the waits of all partitions
    overlap with each other and with the attempts of the next partitions. A partition whose
    transaction aborted runs again alone through commit_batch. Returns, per batch, whether a
    transaction committed. A fatal KafkaException is raised after every commit ended.
    """
    committed = [False] * len(batches)
    pending: list[tuple[int, list[StateWrite], Future[int]]] = []
    retry: list[int] = []
    for index, batch in enumerate(batches):
        staged = batch.attempt()
        if staged is None:
            continue
        outputs, writes = staged
        try:
            batch.transactions.produce_outputs(outputs, writes)
        except TransactionAborted:
            retry.append(index)
            continue
        pending.append((index, writes, executor.submit(batch.transactions.finish)))
    fatal: BaseException | None = None
    for index, writes, future in pending:
        batch = batches[index]
        try:
            changelog_offset = future.result()
        except TransactionAborted:
            retry.append(index)
            continue
        except KafkaException as error:
            log.error(
                "transaction failed",
                extra={"topic": batch.topic, "partition": batch.transactions.partition, "error": str(error)},
            )
            fatal = fatal or error
            continue
        metrics.TRANSACTIONS.labels("committed").inc()
        batch.apply_writes(writes, changelog_offset)
        committed[index] = True
    if fatal is not None:
        raise fatal
    for index in sorted(retry):
        _retrying(batches[index], 1)
        committed[index] = commit_batch(batches[index], first_attempt=2)
    return committed


def _retrying(batch: PartitionBatch, attempt_number: int) -> None:
    metrics.TRANSACTIONS.labels("aborted").inc()
    log.warning(
        "batch retried after an aborted transaction",
        extra={
            "topic": batch.topic,
            "partition": batch.transactions.partition,
            "attempt": f"{attempt_number}/{MAX_TRANSACTION_ATTEMPTS}",
        },
    )
    batch.reload()
