"""Publishing of resource changes, ticks and dead letters to Kafka.

Changes are buffered per topic key and sent as one ChangeBatch record per buffer, keyed by
"<cluster>/<namespace>" and partitioned by murmur2 of the key like the Java client. A tick is sent to
every partition of the changes topic, after the buffered changes of its cluster, so that each partition
receives the changes of a cluster before the tick that follows them. A partition that receives some of
those changes gets the tick in the same record as the last of them, so a tick costs no extra record
there.

The publisher does not depend on files, so the replay connector and the Kubernetes watcher can both use it.
Nothing it writes depends on the wall clock or on randomness, except DeadLetter.time.
"""

from __future__ import annotations

import base64
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from kdiag import json_bytes
from kdiag.codec import codec
from kdiag.errors import KdiagError
from kdiag.model import ResourceChange, Tick
from kdiag.partitioning import partition_for_key
from kdiag.settings import Settings

log = logging.getLogger(__name__)

DEAD_LETTER_PAYLOAD_BYTES = 64 * 1024
LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"

# Upper bound of the Avro bytes of a ResourceChange beyond its strings and object: ten fields, each
# with at most a 10-byte varint (a length, the enum index or the timestamp).
CHANGE_OVERHEAD_BYTES = 100
# Upper bound of a ChangeBatch record beyond its changes: the 10-byte single-object header, the array
# block count and end marker, and the union index of the tick.
BATCH_OVERHEAD_BYTES = 32
# Upper bound of a tick's Avro bytes beyond its cluster and source strings: two string lengths and the
# time, each a varint of at most 10 bytes.
TICK_OVERHEAD_BYTES = 30
# Room for the key and Kafka's record framing on top of settings.max_record_bytes. The result stays
# below the broker's default max.message.bytes of 1048588 while max_record_bytes is at most 1 MB.
PRODUCER_MESSAGE_MARGIN_BYTES = 16 * 1024

PRODUCE_ATTEMPTS = 10
METADATA_ATTEMPTS = 3
FAILURES_LOGGED = 10


# Called once per record whose produce call carried contexts, with those contexts and the delivery error
# (None when Kafka acknowledged the record). It runs inside the producer's poll() or flush().
DeliveryCallback = Callable[[Sequence[Any], "KafkaError | None"], None]


class PublishError(KdiagError):
    """A record could not be handed to the producer or was not delivered."""


class ProducerLike(Protocol):
    """The subset of confluent_kafka.Producer that Publisher uses, so tests can pass a fake."""

    def produce(self, topic: str, value: bytes, key: bytes, partition: int = ..., on_delivery: Any = ...) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...

    def list_topics(self, topic: str | None = None, timeout: float = ...) -> Any: ...


@dataclass
class PublishSummary:
    """Counters of one publisher. `ticks` counts ticks, each of which is one record per partition."""

    changes: int = 0
    ticks: int = 0
    batches: int = 0
    dead_letters: int = 0
    records: int = 0
    bytes: int = 0
    delivered: int = 0
    failures: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"{self.changes} changes in {self.batches} batches, {self.ticks} ticks, "
            f"{self.dead_letters} dead letters, {self.records} records, {self.bytes} bytes"
        )


@dataclass
class _Buffer:
    changes: list[dict[str, Any]] = field(default_factory=list)
    contexts: list[Any] = field(default_factory=list)
    size_bytes: int = 0


def producer_config(settings: Settings, delivery_timeout_seconds: float) -> dict[str, Any]:
    """Return the confluent-kafka configuration of an idempotent, uncompressed changes producer."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        # murmur2 of the key, as the Java client and Faust partition, so the worker and any Java
        # producer agree on the partition of every key.
        "partitioner": "murmur2_random",
        "compression.type": "none",
        "linger.ms": settings.producer_linger_seconds * 1000,
        "message.max.bytes": settings.max_record_bytes + PRODUCER_MESSAGE_MARGIN_BYTES,
        "message.timeout.ms": int(delivery_timeout_seconds * 1000),
        # A missing topic is an error here: auto-creation would give it the broker's partition count.
        "allow.auto.create.topics": False,
        # librdkafka's own messages go through this module's logger instead of raw stderr lines.
        "logger": log,
    }


def encode_object(obj: dict[str, Any]) -> bytes:
    """Serialize an object as UTF-8 JSON without metadata.managedFields and without Secret values.

    Secret data and stringData keep their keys with empty values, so rules can still check that a key
    exists. The input dictionary is not changed.
    """
    cleaned = dict(obj)
    is_secret = cleaned.get("kind") == "Secret"
    metadata = cleaned.get("metadata")
    if isinstance(metadata, dict):
        metadata = {key: value for key, value in metadata.items() if key != "managedFields"}
        annotations = metadata.get("annotations")
        if is_secret and isinstance(annotations, dict) and LAST_APPLIED_ANNOTATION in annotations:
            # kubectl apply stores the whole manifest, values included, in this annotation.
            metadata["annotations"] = {
                key: value for key, value in annotations.items() if key != LAST_APPLIED_ANNOTATION
            }
        cleaned["metadata"] = metadata
    if is_secret:
        for field_name in ("data", "stringData"):
            values = cleaned.get(field_name)
            if isinstance(values, dict):
                cleaned[field_name] = {key: "" for key in values}
    return dump_json(cleaned)


def dump_json(value: Any, sort_keys: bool = False) -> bytes:
    """Serialize parsed YAML or JSON, writing bytes (YAML !!binary) as base64 like Kubernetes does."""
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    return json_bytes.dumps(value, option=option, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not representable in JSON")


def change_size_bytes(change: ResourceChange) -> int:
    """Return an upper bound of the Avro size of one change inside a ChangeBatch."""
    strings = (
        change.cluster,
        change.api_version,
        change.kind,
        change.namespace,
        change.name,
        change.uid,
        change.resource_version,
    )
    return sum(len(text.encode()) for text in strings) + len(change.object_json) + CHANGE_OVERHEAD_BYTES


class Publisher:
    """Buffers changes per topic key and produces ChangeBatch, tick and DeadLetter records.

    Call close() at the end: it sends the remaining buffers, waits for every delivery and returns the
    summary, whose `failures` lists every record that was not delivered.
    """

    def __init__(
        self,
        settings: Settings,
        source: str,
        producer: ProducerLike | None = None,
        delivery_timeout_seconds: float = 30.0,
        wall_clock: Callable[[], float] = time.time,
        on_delivered: DeliveryCallback | None = None,
    ) -> None:
        """`on_delivered`, if given, receives the contexts passed to publish_change and
        publish_dead_letter once the record that carries them is acknowledged or has failed.
        """
        self.settings = settings
        self.source = source
        self.summary = PublishSummary()
        self._delivery_timeout_seconds = delivery_timeout_seconds
        self._producer = producer or Producer(producer_config(settings, delivery_timeout_seconds))
        self._wall_clock = wall_clock
        self._on_delivered = on_delivered
        self._batch_codec = codec("ChangeBatch", settings.schemas_dir)
        self._dead_letter_codec = codec("DeadLetter", settings.schemas_dir)
        # Only keys with buffered changes have a buffer. Each cluster's keys are kept in the order
        # their buffers were started, as an ordered set.
        self._buffers: dict[str, _Buffer] = {}
        self._cluster_keys: dict[str, dict[str, None]] = {}
        self._partitions: int | None = None
        self._closed = False

    # Changes

    def publish_change(self, change: ResourceChange, origin: str, context: Any = None) -> None:
        """Buffer a change under its topic key. `origin` names its source in a dead letter.

        A `context` other than None is handed to the on_delivered callback with the record that
        carries the change, which is a dead letter when the change is too large for one record.
        """
        size = change_size_bytes(change)
        limit = self.settings.max_record_bytes
        if size + BATCH_OVERHEAD_BYTES > limit:
            alone = self._batch_codec.encode({"changes": [change.to_avro()], "tick": None})
            if len(alone) > limit:
                # NOTE: such objects are dead-lettered whole until a later change shrinks them to fit.
                log.warning(
                    "object too large for one record; sent to the dead-letter topic",
                    extra={
                        "object": change.object_ref,
                        "origin": origin,
                        "record_bytes": len(alone),
                        "max_record_bytes": limit,
                    },
                )
                self.publish_dead_letter(origin, "object too large", change.object_json, context)
                return

        key = change.key
        buffer = self._buffers.get(key)
        if buffer is not None and buffer.size_bytes + size + BATCH_OVERHEAD_BYTES > limit:
            self._flush_key(change.cluster, key)
            buffer = None
        if buffer is None:
            buffer = self._buffers[key] = _Buffer()
            self._cluster_keys.setdefault(change.cluster, {})[key] = None
        buffer.changes.append(change.to_avro())
        if context is not None:
            buffer.contexts.append(context)
        buffer.size_bytes += size
        self.summary.changes += 1
        if len(buffer.changes) >= self.settings.batch_max_changes:
            self._flush_key(change.cluster, key)

    def flush_cluster(self, cluster: str) -> None:
        """Send the buffered changes of one cluster, in the order their buffers were started."""
        for key in list(self._cluster_keys.get(cluster, ())):
            self._flush_key(cluster, key)

    def flush_changes(self) -> None:
        """Send every buffered change."""
        for cluster in list(self._cluster_keys):
            self.flush_cluster(cluster)

    def _flush_key(self, cluster: str, key: str, tick: dict[str, Any] | None = None, tick_context: Any = None) -> None:
        """Send the changes buffered under `key` in one record, followed by `tick` if given."""
        buffer = self._buffers.pop(key)
        del self._cluster_keys[cluster][key]
        value = self._batch_codec.encode({"changes": buffer.changes, "tick": tick})
        contexts = buffer.contexts + [tick_context] if tick_context is not None else buffer.contexts
        self._produce(self.settings.changes_topic, key.encode(), value, contexts=contexts)
        self.summary.batches += 1

    # Ticks

    def publish_tick(self, cluster: str, time_ms: int, context: Any = None) -> None:
        """Send the cluster's buffered changes, then a tick at `time_ms` to every partition.

        The last record of those changes on a partition carries the tick when it has room. Every other
        partition gets a record with the tick alone. A `context` other than None is handed to the on_delivered callback
        once per partition's record, after the contexts of the changes that share the record.
        """
        tick = Tick(cluster=cluster, time_ms=time_ms, source=self.source).to_avro()
        partitions = self.partition_count()
        partition_of = {key: partition_for_key(key.encode(), partitions) for key in self._cluster_keys.get(cluster, ())}
        last_key = {partition: key for key, partition in partition_of.items()}
        tick_bytes = len(cluster.encode()) + len(self.source.encode()) + TICK_OVERHEAD_BYTES
        carried: set[int] = set()
        for key, partition in partition_of.items():
            fits = self._buffers[key].size_bytes + tick_bytes + BATCH_OVERHEAD_BYTES <= self.settings.max_record_bytes
            if last_key[partition] == key and fits:
                self._flush_key(cluster, key, tick, context)
                carried.add(partition)
            else:
                self._flush_key(cluster, key)
        value = self._batch_codec.encode({"changes": [], "tick": tick})
        contexts = [context] if context is not None else None
        for partition in range(partitions):
            if partition not in carried:
                self._produce(self.settings.changes_topic, cluster.encode(), value, partition, contexts=contexts)
        self.summary.ticks += 1

    def partition_count(self) -> int:
        """Return the partition count of the changes topic, read from topic metadata once."""
        if self._partitions is None:
            self._partitions = self._read_partition_count()
        return self._partitions

    def _read_partition_count(self) -> int:
        topic = self.settings.changes_topic
        for attempt in range(1, METADATA_ATTEMPTS + 1):
            try:
                metadata = self._producer.list_topics(topic=topic, timeout=10.0).topics.get(topic)
            except KafkaException as error:
                if attempt == METADATA_ATTEMPTS:
                    raise PublishError(
                        f"failed to read the metadata of topic {topic} from {self.settings.bootstrap_servers}: "
                        f"{error}; check that the broker is running"
                    ) from None
                log.warning(
                    "reading topic metadata failed; retrying",
                    extra={"topic": topic, "error": str(error), "attempt": f"{attempt}/{METADATA_ATTEMPTS}"},
                )
                continue
            if metadata is not None and metadata.error is None and metadata.partitions:
                return len(metadata.partitions)
            if metadata is not None and metadata.error is not None and metadata.error.retriable():
                log.warning(
                    "topic metadata not available yet; retrying",
                    extra={"topic": topic, "error": str(metadata.error), "attempt": f"{attempt}/{METADATA_ATTEMPTS}"},
                )
                time.sleep(1.0)
                continue
            break
        raise KdiagError(
            f"topic {topic} does not exist on {self.settings.bootstrap_servers}; "
            f"create it with `kdiag topics create` (kdiag replay does so unless --no-create-topics is given)"
        )

    # Dead letters

    def publish_dead_letter(self, origin: str, reason: str, payload: bytes, context: Any = None) -> None:
        """Send a DeadLetter record with the payload cut to 64 KiB and the current wall-clock time.

        A `context` other than None is handed to the on_delivered callback with the record.
        """
        value = self._dead_letter_codec.encode(
            {
                "origin": origin,
                "component": self.source,
                "reason": reason,
                "payload": bytes(payload[:DEAD_LETTER_PAYLOAD_BYTES]),
                "time": int(self._wall_clock() * 1000),
            }
        )
        contexts = [context] if context is not None else None
        self._produce(self.settings.dead_letter_topic, origin.encode(), value, contexts=contexts)
        self.summary.dead_letters += 1

    # Producer

    def _produce(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        partition: int | None = None,
        contexts: Sequence[Any] | None = None,
    ) -> None:
        extra_arguments: dict[str, Any] = {} if partition is None else {"partition": partition}
        on_delivery: Callable[[KafkaError | None, Any], None] = self._on_delivery
        if contexts and self._on_delivered is not None:
            on_delivery = functools.partial(self._on_record_delivery, list(contexts))
        for attempt in range(1, PRODUCE_ATTEMPTS + 1):
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **extra_arguments)
                break
            except BufferError:
                # The local queue is full: serve delivery reports so that it drains, then retry.
                if attempt == PRODUCE_ATTEMPTS:
                    raise PublishError(
                        f"producer queue for {topic} still full after {PRODUCE_ATTEMPTS} attempts; "
                        f"check that the broker at {self.settings.bootstrap_servers} accepts records"
                    ) from None
                log.warning(
                    "producer queue is full; retrying",
                    extra={"topic": topic, "attempt": f"{attempt}/{PRODUCE_ATTEMPTS}"},
                )
                self._producer.poll(1.0)
            except KafkaException as error:
                where = f"{topic}[{partition}]" if partition is not None else topic
                raise PublishError(f"failed to produce a record of {len(value)} bytes to {where}: {error}") from None
        self.summary.records += 1
        self.summary.bytes += len(value)
        self._producer.poll(0)

    def _on_record_delivery(self, contexts: list[Any], error: KafkaError | None, message: Any) -> None:
        self._on_delivery(error, message)
        assert self._on_delivered is not None
        self._on_delivered(contexts, error)

    def _on_delivery(self, error: KafkaError | None, message: Any) -> None:
        if error is None:
            self.summary.delivered += 1
            return
        partition = message.partition()
        # A record that never reached a partition, for example because its topic is missing, has
        # partition None or -1.
        where = f"{message.topic()}[{partition if partition is not None and partition >= 0 else 'unassigned'}]"
        failure = f"{where}: {error.str()}"
        self.summary.failures.append(failure)
        if len(self.summary.failures) <= FAILURES_LOGGED:
            log.error(
                "delivery failed",
                extra={"topic": message.topic(), "partition": message.partition(), "error": error.str()},
            )
        elif len(self.summary.failures) == FAILURES_LOGGED + 1:
            log.error("more deliveries failed; further failures are only counted", extra={"topic": message.topic()})

    def close(self) -> PublishSummary:
        """Send the buffered changes, wait for every delivery and return the summary.

        Waits at most the delivery timeout plus 10 seconds. Records that could not be produced or were
        still undelivered then are added to summary.failures.
        """
        if self._closed:
            return self.summary
        self._closed = True
        try:
            self.flush_changes()
        except PublishError as error:
            self.summary.failures.append(str(error))
        remaining = self._producer.flush(self._delivery_timeout_seconds + 10.0)
        if remaining:
            self.summary.failures.append(
                f"{remaining} records not delivered within {self._delivery_timeout_seconds + 10.0:.0f} s "
                f"to {self.settings.bootstrap_servers}"
            )
        return self.summary
