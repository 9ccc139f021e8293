"""commit_partitions: order of attempts, parallel commits, retries after an abort, fatal errors.

Most transactions here are recording doubles of PartitionTransactions, so that aborts and fatal
errors happen on demand. The last test commits against the broker, and the worker tests cover more.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException

from kdiag.settings import Settings
from kdiag.topics import ensure_topics
from streams.transactions import (
    Output,
    PartitionBatch,
    PartitionTransactions,
    StateWrite,
    TransactionAborted,
    commit_partitions,
)


class RecordingTransactions:
    """Transactions of one partition that commit at changelog offset 100 + partition, or raise the given failures."""

    def __init__(self, partition: int, failures: Sequence[BaseException] = ()) -> None:
        self.partition = partition
        self.failures = list(failures)
        self.produced: list[list[Output]] = []
        self.finished_in: list[str] = []
        self.committed = 0

    def produce_outputs(self, outputs: Sequence[Output], state_writes: Sequence[StateWrite]) -> None:
        self.produced.append(list(outputs))

    def finish(self) -> int:
        self.finished_in.append(threading.current_thread().name)
        if self.failures:
            raise self.failures.pop(0)
        self.committed += 1
        return 100 + self.partition

    def commit_outputs(self, outputs: Sequence[Output], state_writes: Sequence[StateWrite]) -> int:
        self.produce_outputs(outputs, state_writes)
        return self.finish()


class Partition:
    """One partition's batch: each attempt yields one output, unless the partition has nothing to commit."""

    def __init__(self, partition: int, failures: Sequence[BaseException] = (), empty: bool = False) -> None:
        self.transactions = RecordingTransactions(partition, failures)
        self.empty = empty
        self.attempts = 0
        self.reloads = 0
        self.applied: list[tuple[list[StateWrite], int]] = []

    def batch(self, log: list[str]) -> PartitionBatch:
        def attempt() -> tuple[list[Output], list[StateWrite]] | None:
            self.attempts += 1
            log.append(f"attempt {self.transactions.partition}")
            if self.empty:
                return None
            return [("alerts", None, f"attempt {self.attempts}".encode())], [(b"key", b"value")]

        def reload() -> None:
            self.reloads += 1

        def apply_writes(writes: Sequence[StateWrite], changelog_offset: int) -> None:
            self.applied.append((list(writes), changelog_offset))

        return PartitionBatch(self.transactions, "changes", attempt, reload, apply_writes)  # type: ignore[arg-type]


@pytest.fixture
def executor():
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-commit") as pool:
        yield pool


def test_attempts_in_order_commits_in_executor(executor):
    log: list[str] = []
    partitions = [Partition(0), Partition(1, empty=True), Partition(2)]

    committed = commit_partitions([partition.batch(log) for partition in partitions], executor)

    assert committed == [True, False, True]
    assert log == ["attempt 0", "attempt 1", "attempt 2"]
    assert partitions[0].applied == [([(b"key", b"value")], 100)]
    assert partitions[2].applied == [([(b"key", b"value")], 102)]
    assert partitions[1].applied == []
    assert partitions[0].transactions.finished_in[0].startswith("test-commit")


def test_aborted_partition_runs_again_alone(executor):
    log: list[str] = []
    aborted = Partition(1, failures=[TransactionAborted("aborted by the coordinator")])
    partitions = [Partition(0), aborted]

    committed = commit_partitions([partition.batch(log) for partition in partitions], executor)

    assert committed == [True, True]
    assert aborted.reloads == 1
    assert aborted.attempts == 2
    assert aborted.transactions.produced[-1] == [("alerts", None, b"attempt 2")]
    assert aborted.applied == [([(b"key", b"value")], 101)]
    assert partitions[0].applied == [([(b"key", b"value")], 100)]


def test_fatal_error_raised_after_other_commits(executor):
    log: list[str] = []
    fenced = KafkaException(KafkaError(KafkaError._FENCED, "fenced by a newer producer"))
    partitions = [Partition(0, failures=[fenced]), Partition(1)]

    with pytest.raises(KafkaException):
        commit_partitions([partition.batch(log) for partition in partitions], executor)

    assert partitions[0].applied == []
    assert partitions[1].applied == [([(b"key", b"value")], 101)]


@pytest.mark.integration
def test_commits_in_a_row_then_takeover(kafka_bootstrap, unique_name):
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        app_id=unique_name,
        alerts_topic=f"{unique_name}-alerts",
        partitions=1,
    )
    ensure_topics(settings, only=[settings.alerts_topic, settings.changelog_topic])

    first = PartitionTransactions(settings, 0)
    first.initialize(30)
    offsets = [first.commit_outputs([(settings.alerts_topic, b"k", value)], [(b"state", value)]) for value in (b"1", b"2")]
    first.close()
    # A new owner of the partition fences the old producer and commits after it.
    second = PartitionTransactions(settings, 0)
    second.initialize(30)
    offsets.append(second.commit_outputs([(settings.alerts_topic, b"k", b"3")], [(b"state", b"3")]))
    second.close()

    assert offsets == sorted(offsets)
    assert len(set(offsets)) == 3
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": unique_name,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([settings.alerts_topic])
        values: list[bytes] = []
        for _ in range(30):
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                values.append(message.value())
            if len(values) == 3:
                break
    finally:
        consumer.close()
    assert values == [b"1", b"2", b"3"]
