"""Cluster-scoped objects that reference rules read, available to every partition of every worker.

Cluster-scoped objects (Node, StorageClass, PersistentVolume, Namespace) all arrive on the partition
of key "<cluster>/", but a Pod on any partition may refer to its Node. The partition that receives
such an object writes its projection to the compacted `<app id>-cluster-objects` topic, in the same
transaction as the rest of its batch. Every worker reads that topic into memory with a ClusterObjects
feed, and its partitions resolve references to cluster-scoped objects from there.

NOTE: a partition learns of a change of a cluster-scoped object when its worker's feed has read it,
which depends on timing, not on event time. Alerts that depend on the order of a Node change and a Pod
change on different partitions can therefore differ between runs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from kdiag.errors import KdiagError
from kdiag.settings import Settings

log = logging.getLogger(__name__)

READ_TIMEOUT_SECONDS = 60.0

ObjectKey = tuple[str, str, str, str]  # cluster, kind, namespace (always ""), name


def encode_key(key: ObjectKey) -> bytes:
    cluster, kind, _, name = key
    return f"{cluster}\x1f{kind}\x1f{name}".encode()


def decode_key(raw: bytes) -> ObjectKey:
    cluster, kind, name = raw.decode().split("\x1f", 2)
    return cluster, kind, "", name


class ClusterObjects:
    """An in-memory copy of the cluster-objects topic, kept current by a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._objects: dict[ObjectKey, dict[str, Any]] = {}
        self._changed: set[ObjectKey] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

    def get(self, key: ObjectKey) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get(key)

    def nodes(self, cluster: str) -> list[dict[str, Any]]:
        """Return the Nodes of a cluster, in name order."""
        with self._lock:
            return [obj for key, obj in sorted(self._objects.items()) if key[0] == cluster and key[1] == "Node"]

    def take_changed(self) -> set[ObjectKey]:
        """Return the keys that changed since the last call."""
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    def start(self) -> None:
        """Read the topic to its end, then follow it in a background thread."""
        topic = self.settings.cluster_objects_topic
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap_servers,
                "group.id": f"{topic}-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
            }
        )
        metadata = self._consumer.list_topics(topic, timeout=READ_TIMEOUT_SECONDS).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise KdiagError(f"topic {topic} not found; run kdiag topics create")
        partitions = [TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in metadata.partitions]
        self._consumer.assign(partitions)
        at_end: set[int] = set()
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        while len(at_end) < len(partitions):
            if time.monotonic() > deadline:
                raise KdiagError(f"timed out after {READ_TIMEOUT_SECONDS} s reading {topic}; check the broker")
            partition = self._poll_once(0.5)
            if partition is not None:
                at_end.add(partition)
        self.take_changed()
        log.info("cluster objects loaded", extra={"topic": topic, "objects": len(self._objects)})
        self._thread = threading.Thread(target=self._run, name="kdiag-cluster-objects", daemon=True)
        self._thread.start()

    def _poll_once(self, wait_seconds: float) -> int | None:
        """Apply the next record. Returns the partition number when its end was reached."""
        assert self._consumer is not None
        message = self._consumer.poll(wait_seconds)
        if message is None:
            return None
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                return message.partition()
            raise KafkaException(error)
        key = decode_key(message.key())
        value = message.value()
        with self._lock:
            if value is None:
                self._objects.pop(key, None)
            else:
                self._objects[key] = orjson.loads(value)
            self._changed.add(key)
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll_once(0.5)
            except KafkaException as error:
                log.warning(
                    "cluster objects read failed",
                    extra={"topic": self.settings.cluster_objects_topic, "error": str(error)},
                )
                time.sleep(1.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._consumer is not None:
            self._consumer.close()
