"""Creation of kdiag's topics with the partition count and cleanup policy each needs."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kdiag.errors import KdiagError
from kdiag.settings import Settings

log = logging.getLogger(__name__)


def topic_specs(settings: Settings) -> list[NewTopic]:
    """Topics of one kdiag installation.

    The changelog is compacted and has as many partitions as the changes topic, because partition p of
    the changelog contains the worker state for partition p of the changes topic.
    """
    replication = settings.replication_factor
    return [
        NewTopic(settings.changes_topic, settings.partitions, replication),
        NewTopic(settings.alerts_topic, settings.partitions, replication),
        NewTopic(settings.dead_letter_topic, 1, replication),
        NewTopic(settings.rules_topic, 1, replication, config={"cleanup.policy": "compact"}),
        NewTopic(settings.cluster_objects_topic, 1, replication, config={"cleanup.policy": "compact"}),
        NewTopic(
            settings.center_changelog_topic,
            settings.partitions,
            replication,
            config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
        ),
        NewTopic(settings.graphs_topic, 1, replication, config={"cleanup.policy": "compact"}),
        NewTopic(settings.center_config_topic, 1, replication, config={"cleanup.policy": "compact"}),
        NewTopic(settings.diagnoses_topic, settings.partitions, replication),
        NewTopic(
            settings.root_cause_changelog_topic,
            settings.partitions,
            replication,
            config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
        ),
        NewTopic(settings.events_topic, settings.partitions, replication),
        NewTopic(settings.graded_alerts_topic, settings.partitions, replication),
        NewTopic(settings.actions_topic, settings.partitions, replication),
        NewTopic(
            settings.changelog_topic,
            settings.partitions,
            replication,
            config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
        ),
    ]


def ensure_topics(
    settings: Settings, timeout_seconds: float = 30.0, only: Iterable[str] | None = None
) -> list[str]:
    """Create the missing topics (all, or those named in `only`) and return their names.
    Existing topics are checked, not changed."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    try:
        existing = admin.list_topics(timeout=timeout_seconds).topics
    except KafkaException as error:
        raise KdiagError(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {error}; "
            f"start the broker (make kafka-up) or set KDIAG_BOOTSTRAP_SERVERS"
        ) from None
    created: list[str] = []
    wanted = set(only) if only is not None else None
    specs = [spec for spec in topic_specs(settings) if wanted is None or spec.topic in wanted]
    missing = [spec for spec in specs if spec.topic not in existing]
    if missing:
        futures = admin.create_topics(missing, operation_timeout=timeout_seconds)
        for name, future in futures.items():
            try:
                future.result()
                created.append(name)
                log.info("topic created", extra={"topic": name})
            except KafkaException as error:
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise KdiagError(f"cannot create topic {name}: {error}") from None
    for spec in specs:
        count = _partition_count(admin, spec.topic, timeout_seconds)
        if spec.num_partitions == settings.partitions and count != settings.partitions:
            raise KdiagError(
                f"topic {spec.topic} has {count} partitions, expected {settings.partitions}; "
                f"set KDIAG_PARTITIONS={count} or recreate the topic"
            )
    return created


def _partition_count(admin: AdminClient, topic: str, timeout_seconds: float) -> int:
    """Return the topic's partition count, waiting for a just-created topic to show up in metadata."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        metadata = admin.list_topics(topic=topic, timeout=timeout_seconds).topics.get(topic)
        count = len(metadata.partitions) if metadata is not None and metadata.error is None else 0
        if count or time.monotonic() >= deadline:
            return count
        time.sleep(0.1)


def consumer_lag(settings: Settings, timeout_seconds: float = 30.0, topic: str | None = None) -> int | None:
    """Return how many records of `topic` (default: the changes topic) the worker group has not
    committed yet, counting from its committed offsets to the end of each partition.

    A transactional producer leaves a commit marker after each transaction. The group never commits
    past a marker at the end of a partition, so a partition whose remaining offsets hold only markers
    counts as caught up. Returns None while the group coordinator or a partition leader is
    unavailable, e.g. right after the broker started or the topic was created.
    """
    topic = topic or settings.changes_topic
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.app_id})
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        try:
            committed = consumer.committed(partitions, timeout=timeout_seconds)
            watermarks = [consumer.get_watermark_offsets(partition, timeout=timeout_seconds, cached=False) for partition in committed]
        except KafkaException:
            # E.g. NOT_LEADER_FOR_PARTITION while a new topic's leaders are elected.
            return None
        lag = 0
        for partition, (low, high) in zip(committed, watermarks):
            start = partition.offset if partition.offset >= 0 else low
            if start < high and _has_records(settings, topic, partition.partition, start, timeout_seconds):
                lag += high - start
        return lag
    finally:
        consumer.close()


def _has_records(settings: Settings, topic: str, partition: int, start: int, timeout_seconds: float) -> bool:
    """Return whether committed records, not only transaction markers, follow `start` in the partition."""
    reader = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"{settings.app_id}-lag-check",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        reader.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            message = reader.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is None:
                return True
            if error.code() == KafkaError._PARTITION_EOF:
                return False
        return True
    finally:
        reader.close()
