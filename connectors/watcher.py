"""The Kubernetes watcher: list and watch every resource type and publish the changes to Kafka.

Threads:
- one ResourceWatch per resource type lists it when it has no usable resourceVersion, then watches it
  with bookmarks, and puts each change into the ChangeQueue;
- the PublishLoop thread takes changes from the queue, publishes them with the Publisher, handles
  delivery reports, persists resourceVersions and writes ticks;
- a discovery thread starts watches for new resource types (such as new CRDs) and stops removed ones;
- in finalizer mode, the FinalizerManager's workers add and remove our finalizer.

No object cache: the queue contains at most one pending change per object, its newest version, as JSON
bytes, and only until the change is handed to the producer. A newer event of a queued object replaces
the queued version (coalescing). The queue is bounded by a number of objects and of bytes, and the
PublishLoop keeps a bounded number of changes in flight, so when Kafka stops acknowledging, the
watches block on the full queue (back-pressure) and nothing is dropped.

A resource type's resourceVersion is persisted only when every change before it was acknowledged by
Kafka (see progress.ResourceProgress). Kafka's acknowledgement also writes the object's uid and
resourceVersion to the on-disk index, which serves two purposes: events that Kafka already has are
skipped after a restart, and after 410 Gone the relist publishes DELETED for indexed objects that are
no longer listed.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import hashlib
import logging
import random
import threading
import time
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import orjson
import urllib3
from confluent_kafka import KafkaError, Producer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from connectors.discovery import (
    ApiError,
    GoneError,
    KindPattern,
    KubernetesApi,
    ResourceFilter,
    ResourceType,
    discover,
)
from connectors.finalizers import FinalizerManager, FinalizerTask, backoff_seconds, release_finalizers
from connectors.progress import IndexEntry, IndexWrite, ProgressStore, ResourceProgress
from connectors.publisher import (
    BATCH_OVERHEAD_BYTES,
    CHANGE_OVERHEAD_BYTES,
    Publisher,
    PublishError,
    encode_object,
    producer_config,
)
from kdiag import json_bytes
from kdiag.errors import KdiagError
from kdiag.model import ResourceChange
from kdiag.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "kdiag-watch"
REDUCED_ANNOTATION = "kdiag.io/reduced"
# Marks a DELETED change that the relist after a 410 Gone inferred from the index: the object
# disappeared while the watch was not running, so its final state is unknown.
FINAL_STATE_UNKNOWN_ANNOTATION = "kdiag.io/final-state-unknown"
# Annotation values longer than this are the first thing a too-large object loses.
LARGE_ANNOTATION_BYTES = 1024
REDUCED_MARKER_MAX_BYTES = 1024
# Metadata fields that a reduced object keeps to the end, because rules and the worker identify and
# time objects by them.
IDENTITY_METADATA = frozenset(
    {
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "finalizers",
        "annotations",
    }
)
CHANGE_TYPES = ("ADDED", "MODIFIED", "DELETED")
LOG_EVERY_INVALID_OBJECTS = 100
# How often the publish loop hands freed heap memory back to the operating system.
MALLOC_TRIM_INTERVAL_SECONDS = 1.0


def _load_malloc_trim() -> Any:
    """Return glibc's malloc_trim, or None elsewhere (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


# Objects of 1 to 100 KB pass through the queue all the time. glibc keeps the memory they freed in the
# heap, scattered between live blocks, so RSS grows by tens of MB during a large list unless
# malloc_trim returns the free pages.
_MALLOC_TRIM = _load_malloc_trim()


class WatcherError(KdiagError):
    """The watcher cannot go on, e.g. a resource type failed more often than the retry limit."""


@dataclass(frozen=True)
class WatchOptions:
    """Settings of one watcher. Sizes in bytes, times in seconds."""

    cluster: str
    state_dir: Path
    resource_filter: ResourceFilter = field(default_factory=ResourceFilter)
    finalizer_kinds: tuple[KindPattern, ...] = ()
    tick_interval_seconds: float = 1.0
    queue_max_objects: int = 10_000
    queue_max_bytes: int = 4 * 1024 * 1024
    max_in_flight_changes: int = 5_000
    max_in_flight_bytes: int = 2 * 1024 * 1024
    list_page_size: int = 100
    max_concurrent_lists: int = 2
    watch_timeout_seconds: int = 300
    discovery_interval_seconds: float = 60.0
    max_attempts: int = 10
    delivery_timeout_seconds: float = 120.0
    drain_timeout_seconds: float = 30.0
    progress_interval_seconds: float = 0.2
    metrics_port: int | None = None


# Metrics


class WatcherMetrics:
    """Prometheus metrics of one watcher, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("kdiag_watch_events", "Watch events received", ["resource", "type"], registry=r)
        self.listed = Counter("kdiag_watch_listed_objects", "Objects received from lists", ["resource"], registry=r)
        self.published = Counter(
            "kdiag_watch_changes_published", "Changes acknowledged by Kafka", ["resource", "type"], registry=r
        )
        self.skipped = Counter(
            "kdiag_watch_changes_skipped", "Changes not queued because Kafka already has them", ["resource"], registry=r
        )
        self.coalesced = Counter(
            "kdiag_watch_changes_coalesced", "Changes replaced in the queue by a newer version", ["resource"], registry=r
        )
        self.queue_depth = Gauge("kdiag_watch_queue_depth", "Objects with a change waiting to be published", registry=r)
        self.queue_bytes = Gauge("kdiag_watch_queue_bytes", "Bytes of the changes waiting to be published", registry=r)
        self.in_flight = Gauge("kdiag_watch_in_flight_changes", "Changes produced but not yet acknowledged", registry=r)
        self.relists = Counter("kdiag_watch_relists", "Full lists of a resource type", ["resource"], registry=r)
        self.gone = Counter("kdiag_watch_gone", "410 Gone responses and watch events", ["resource"], registry=r)
        self.restarts = Counter("kdiag_watch_restarts", "Watch requests after the first one", ["resource"], registry=r)
        self.api_errors = Counter("kdiag_watch_api_errors", "Failed list and watch requests", ["resource"], registry=r)
        self.delivery_failures = Counter("kdiag_watch_delivery_failures", "Records Kafka did not acknowledge", registry=r)
        self.reduced = Counter(
            "kdiag_watch_reduced_objects", "Objects published in reduced form to fit a record", ["resource"], registry=r
        )
        self.ticks = Counter("kdiag_watch_ticks", "Tick rounds written to every partition", registry=r)
        self.finalizer_patches = Counter(
            "kdiag_watch_finalizer_patches", "Finalizer patches", ["operation", "result"], registry=r
        )
        self.publish_latency = Histogram(
            "kdiag_watch_publish_latency_seconds",
            "Time from receiving a change to Kafka's acknowledgement",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )

    def value(self, name: str, **labels: str) -> float:
        """Return a sample's current value, 0 if absent. Used by tests and the benchmark."""
        result = self.registry.get_sample_value(name, labels)
        return result if result is not None else 0.0


# Objects


def object_limit_bytes(max_record_bytes: int, strings: Sequence[str]) -> int:
    """Return the largest object JSON that fits one change in a record of max_record_bytes."""
    return max_record_bytes - BATCH_OVERHEAD_BYTES - CHANGE_OVERHEAD_BYTES - sum(len(text.encode()) for text in strings)


def prepare_object(obj: dict[str, Any], limit_bytes: int) -> tuple[bytes, str]:
    """Encode an object for publishing: without managedFields and Secret values, reduced to fit.

    Returns the JSON bytes and, for a reduced object, what was removed (also written to the
    kdiag.io/reduced annotation), else "". Reduction removes, until the object fits: annotation values
    over 1 KiB, then status, then other top-level fields largest first, then metadata fields other
    than the identity, time and finalizer fields, largest first.
    """
    encoded = encode_object(obj)
    if len(encoded) <= limit_bytes:
        return encoded, ""
    reduced = orjson.loads(encoded)
    metadata = reduced.setdefault("metadata", {})
    removed: list[str] = []

    def fits() -> bytes | None:
        annotations = dict(metadata.get("annotations") or {})
        annotations[REDUCED_ANNOTATION] = _removed_marker(removed)
        metadata["annotations"] = annotations
        candidate = orjson.dumps(reduced)
        return candidate if len(candidate) <= limit_bytes else None

    annotations = metadata.get("annotations") or {}
    for key in sorted(annotations, key=lambda k: -len(str(annotations[k]))):
        if len(str(annotations[key]).encode()) > LARGE_ANNOTATION_BYTES:
            del annotations[key]
            removed.append(f"metadata.annotations.{key}")
    if (result := fits()) is not None:
        return result, _removed_marker(removed)

    for name in ["status"] + sorted(
        (k for k in reduced if k not in ("apiVersion", "kind", "metadata", "status")),
        key=lambda k: -len(orjson.dumps(reduced[k])),
    ):
        if name in reduced:
            del reduced[name]
            removed.append(name)
            if (result := fits()) is not None:
                return result, _removed_marker(removed)

    for name in sorted(
        (k for k in metadata if k not in IDENTITY_METADATA), key=lambda k: -len(orjson.dumps(metadata[k]))
    ):
        del metadata[name]
        removed.append(f"metadata.{name}")
        if (result := fits()) is not None:
            return result, _removed_marker(removed)

    # Only identity fields and the marker are left; the remaining annotations go last.
    metadata["annotations"] = {}
    removed.append("metadata.annotations")
    result = fits()
    return result if result is not None else orjson.dumps(reduced), _removed_marker(removed)


def _removed_marker(removed: list[str]) -> str:
    marker = ",".join(removed)
    if len(marker) > REDUCED_MARKER_MAX_BYTES:
        marker = marker[: REDUCED_MARKER_MAX_BYTES - 3] + "..."
    return marker


def uid_hash(uid: str) -> int:
    """Hash a uid to 64 bits, so that a relist remembers 150,000 listed uids in 1.2 MB."""
    return int.from_bytes(hashlib.blake2b(uid.encode(), digest_size=8).digest(), "little")


# The queue


@dataclass(slots=True, eq=False)
class PendingChange:
    """The newest unpublished change of one object, or a published one awaiting acknowledgement."""

    resource: ResourceType
    progress: ResourceProgress
    uid: str
    namespace: str
    name: str
    resource_version: str
    change_type: str
    object_json: bytes
    observed_time_ms: int
    # When the first event that this entry carries was queued: no queued change is older.
    first_queued_ms: int
    first_queued_monotonic: float
    received_monotonic: float
    sequence: int
    # Event order among the type's changes, to tell which of two versions of an object is newer.
    event_order: int
    release_finalizer: bool = False
    attempts: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.resource.type_id, self.uid)

    def to_change(self, cluster: str) -> ResourceChange:
        return ResourceChange(
            cluster=cluster,
            api_version=self.resource.api_version,
            kind=self.resource.kind,
            namespace=self.namespace,
            name=self.name,
            uid=self.uid,
            resource_version=self.resource_version,
            change_type=self.change_type,  # type: ignore[arg-type]
            observed_time_ms=self.observed_time_ms,
            object_json=self.object_json,
        )


@dataclass(frozen=True, slots=True)
class QueuedChange:
    """A change of one event or listed object, as a watch hands it to the queue."""

    resource: ResourceType
    progress: ResourceProgress
    uid: str
    namespace: str
    name: str
    resource_version: str
    change_type: str
    object_json: bytes
    release_finalizer: bool
    # The event's resourceVersion, to which the type's progress advances; None for a listed object.
    advance_to: str | None


class ChangeQueue:
    """Pending changes, at most one per object, in the order their objects were first queued.

    put() blocks while the queue holds max_objects objects or max_bytes bytes and the object has no
    queued change (back-pressure). Queued changes carry the time they were queued as their observed
    time, so a tick computed by tick_time() never passes a change that is still queued.
    """

    def __init__(self, max_objects: int, max_bytes: int, metrics: WatcherMetrics, wall_clock=time.time) -> None:
        self.max_objects = max_objects
        self.max_bytes = max_bytes
        self._metrics = metrics
        self._wall_clock = wall_clock
        self._condition = threading.Condition()
        self._entries: OrderedDict[tuple[str, str], PendingChange] = OrderedDict()
        self._bytes = 0
        self._event_order = 0
        self._last_tick_ms = 0

    def __len__(self) -> int:
        with self._condition:
            return len(self._entries)

    @property
    def size_bytes(self) -> int:
        with self._condition:
            return self._bytes

    def _now_ms(self) -> int:
        # Always after the last tick, even if the wall clock steps back.
        return max(int(self._wall_clock() * 1000), self._last_tick_ms + 1)

    def put(self, queued: QueuedChange, stop: threading.Event) -> bool:
        """Queue a change, replacing the object's queued change. Returns False if `stop` was set while waiting."""
        key = (queued.resource.type_id, queued.uid)
        size = len(queued.object_json)
        with self._condition:
            while True:
                existing = self._entries.get(key)
                if existing is not None:
                    self._coalesce(existing, queued)
                    break
                if len(self._entries) < self.max_objects and (self._bytes + size <= self.max_bytes or not self._entries):
                    self._insert(queued)
                    break
                if stop.is_set():
                    return False
                self._condition.wait(0.5)
            if queued.advance_to is not None:
                queued.progress.advance(queued.advance_to)
            self._update_gauges()
            self._condition.notify_all()
        return True

    def _insert(self, queued: QueuedChange) -> None:
        now_ms = self._now_ms()
        self._event_order += 1
        entry = PendingChange(
            resource=queued.resource,
            progress=queued.progress,
            uid=queued.uid,
            namespace=queued.namespace,
            name=queued.name,
            resource_version=queued.resource_version,
            change_type=queued.change_type,
            object_json=queued.object_json,
            observed_time_ms=now_ms,
            first_queued_ms=now_ms,
            first_queued_monotonic=time.monotonic(),
            received_monotonic=time.monotonic(),
            sequence=queued.progress.open_entry(queued.uid),
            event_order=self._event_order,
            release_finalizer=queued.release_finalizer,
        )
        self._entries[entry.key] = entry
        self._bytes += len(entry.object_json)

    def _coalesce(self, entry: PendingChange, queued: QueuedChange) -> None:
        self._event_order += 1
        self._bytes += len(queued.object_json) - len(entry.object_json)
        # Kafka has not seen an object whose ADDED is still queued, so a later MODIFIED stays ADDED.
        if not (entry.change_type == "ADDED" and queued.change_type == "MODIFIED"):
            entry.change_type = queued.change_type
        entry.resource_version = queued.resource_version
        entry.object_json = queued.object_json
        entry.namespace = queued.namespace
        entry.name = queued.name
        entry.observed_time_ms = self._now_ms()
        entry.received_monotonic = time.monotonic()
        entry.event_order = self._event_order
        entry.release_finalizer = queued.release_finalizer
        self._metrics.coalesced.labels(entry.resource.type_id).inc()

    def take(self, max_count: int, max_bytes: int, timeout_seconds: float, linger_ms: int = 0) -> list[PendingChange]:
        """Remove and return up to max_count changes (at least one if any) totalling about max_bytes.

        Only changes queued at least `linger_ms` ago are taken, so that a burst of updates to one object
        is coalesced into few changes, unless max_count changes are waiting.
        """
        with self._condition:
            if not self._entries and timeout_seconds > 0:
                self._condition.wait(timeout_seconds)
            taken: list[PendingChange] = []
            taken_bytes = 0
            newest = time.monotonic() - linger_ms / 1000
            if len(self._entries) >= max_count:
                newest = time.monotonic()
            while self._entries and len(taken) < max_count:
                key = next(iter(self._entries))
                entry = self._entries[key]
                if entry.first_queued_monotonic > newest:
                    break
                if taken and taken_bytes + len(entry.object_json) > max_bytes:
                    break
                del self._entries[key]
                taken.append(entry)
                taken_bytes += len(entry.object_json)
                self._bytes -= len(entry.object_json)
            if taken:
                self._update_gauges()
                self._condition.notify_all()
            return taken

    def requeue(self, entry: PendingChange) -> None:
        """Queue a change again after a failed delivery, at the front, unless a newer version exists.

        Of two versions of one object the newer is kept. The other one's progress entry is closed: the
        kept version is newer and keeps the type's progress at or below its own floor. A version that
        is not queued but awaits acknowledgement is newer too, because a change is queued only after
        the previous one left the queue, and Kafka reports the deliveries of one partition, which has
        every change of the object, in order.
        """
        with self._condition:
            existing = self._entries.get(entry.key)
            if existing is None and entry.progress.active_changes(entry.uid) > 1:
                entry.progress.close_entry(entry.sequence, entry.uid)
                return
            if existing is not None:
                if existing.event_order >= entry.event_order:
                    entry.progress.close_entry(entry.sequence, entry.uid)
                    return
                existing.progress.close_entry(existing.sequence, existing.uid)
                self._bytes -= len(existing.object_json)
                del self._entries[entry.key]
            self._entries[entry.key] = entry
            self._entries.move_to_end(entry.key, last=False)
            self._bytes += len(entry.object_json)
            self._update_gauges()
            self._condition.notify_all()

    def begin_tick(self) -> int | None:
        """Return the time of the next tick, or None if it would not be newer than the last one.

        The time is before every queued change, and every change queued later gets a later time, so
        each partition receives every change with a time up to the tick before the tick.
        """
        with self._condition:
            time_ms = int(self._wall_clock() * 1000)
            if self._entries:
                time_ms = min(time_ms, next(iter(self._entries.values())).first_queued_ms - 1)
            if time_ms <= self._last_tick_ms:
                return None
            self._last_tick_ms = time_ms
            return time_ms

    def wake(self) -> None:
        with self._condition:
            self._condition.notify_all()

    def _update_gauges(self) -> None:
        self._metrics.queue_depth.set(len(self._entries))
        self._metrics.queue_bytes.set(self._bytes)


# One resource type


class _Stopped(Exception):
    pass


class ResourceWatch:
    """Lists and watches one resource type in a thread of its own."""

    def __init__(self, watcher: "Watcher", resource: ResourceType) -> None:
        self.watcher = watcher
        self.resource = resource
        self.type_id = resource.type_id
        self.progress = ResourceProgress(watcher.store.resource_version(self.type_id))
        self.finalized = watcher.finalizers is not None and watcher.finalizers.applies_to(resource)
        self.failed = False
        self._stop = threading.Event()
        self._response_lock = threading.Lock()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._watches_opened = 0
        self._invalid_objects = 0
        # Objects published as DELETED in finalizer mode whose DELETED event has not arrived yet: their
        # remaining events are not published again.
        self._finalized_uids: set[str] = set()
        self._thread = threading.Thread(target=self._run, name=f"kdiag-watch-{self.type_id}", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop and unblock a pending read."""
        self._stop.set()
        with self._response_lock:
            response = self._response
        if response is not None:
            try:
                response.shutdown()
            except (OSError, AttributeError):
                pass

    def join(self, timeout_seconds: float) -> None:
        self._thread.join(timeout_seconds)

    def _set_response(self, response: urllib3.BaseHTTPResponse | None) -> None:
        with self._response_lock:
            self._response = response
        if response is not None and self._stop.is_set():
            response.shutdown()

    def _run(self) -> None:
        log.info(
            "watch started",
            extra={"resource": self.type_id, "api_version": self.resource.api_version, "resource_version": self.progress.latest},
        )
        try:
            self._loop()
        except _Stopped:
            pass
        except Exception as error:  # noqa: BLE001 - a crashed watch must stop the watcher, not vanish
            log.exception("watch crashed", extra={"resource": self.type_id})
            self.watcher.fail(WatcherError(f"watch of {self.type_id} crashed: {type(error).__name__}: {error}"))
        log.info("watch stopped", extra={"resource": self.type_id})

    def _loop(self) -> None:
        options = self.watcher.options
        version = self.progress.latest
        failures = 0
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist()
                self._watch(version)
                failures = 0
            except GoneError as error:
                self.watcher.metrics.gone.labels(self.type_id).inc()
                log.warning(
                    "resourceVersion expired (410 Gone); relisting",
                    extra={"resource": self.type_id, "resource_version": version, "error": str(error)},
                )
                failures = 0
                version = None
                continue
            except ApiError as error:
                if self._stop.is_set():
                    return
                self.watcher.metrics.api_errors.labels(self.type_id).inc()
                if error.status in (401, 403, 404):
                    self.failed = True
                    log.error(
                        "resource type cannot be watched; retrying at the next discovery",
                        extra={"resource": self.type_id, "status": error.status, "error": str(error)},
                    )
                    return
                failures += 1
                if failures >= options.max_attempts:
                    self.watcher.fail(
                        WatcherError(f"watch of {self.type_id} failed {failures} times in a row; last error: {error}")
                    )
                    return
                log.warning(
                    "list or watch failed; retrying",
                    extra={"resource": self.type_id, "error": str(error), "attempt": f"{failures}/{options.max_attempts}"},
                )
                if self._stop.wait(backoff_seconds(failures)):
                    return
            # The next watch resumes after the last event received, queued or not.
            version = self.progress.latest if version is not None else None

    # Watch

    def _watch(self, version: str) -> None:
        options = self.watcher.options
        timeout = random.randint(options.watch_timeout_seconds, 2 * options.watch_timeout_seconds)
        if self._watches_opened:
            self.watcher.metrics.restarts.labels(self.type_id).inc()
        self._watches_opened += 1
        events = self.watcher.metrics.events
        for event in self.watcher.api.watch(self.resource, version, timeout, self._set_response):
            if self._stop.is_set():
                raise _Stopped
            event_type = event.get("type")
            obj = event["object"]
            events.labels(self.type_id, str(event_type)).inc()
            if event_type == "BOOKMARK":
                bookmark = (obj.get("metadata") or {}).get("resourceVersion")
                if bookmark:
                    self.progress.advance(str(bookmark))
            elif event_type == "ERROR":
                code = obj.get("code") or 0
                reason = str(obj.get("reason") or "")
                message = str(obj.get("message") or "watch error")
                error_type = GoneError if code == 410 else ApiError
                raise error_type(int(code), reason, message, self.resource.collection_path())
            elif event_type in CHANGE_TYPES:
                self._handle(str(event_type), obj, from_watch=True)
            else:
                log.warning("unknown watch event type; ignored", extra={"resource": self.type_id, "type": str(event_type)})
        if self._stop.is_set():
            raise _Stopped

    # List

    def _relist(self) -> str:
        """List the type, queue changed objects and DELETED for vanished ones. Returns the list's resourceVersion."""
        self.watcher.metrics.relists.labels(self.type_id).inc()
        self._wait_until_acknowledged()
        with self.watcher.list_slots:
            log.info("list started", extra={"resource": self.type_id})
            started = time.monotonic()
            seen, list_version, listed = self._list_all()
        seen_sorted = array("Q", sorted(seen))
        del seen
        deleted = self._delete_unlisted(seen_sorted, list_version)
        self.progress.advance(list_version)
        log.info(
            "list done",
            extra={
                "resource": self.type_id,
                "objects": listed,
                "deleted": deleted,
                "resource_version": list_version,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return list_version

    def _wait_until_acknowledged(self) -> None:
        """Wait until Kafka acknowledged every queued change of the type, so that the index is complete."""
        next_log = time.monotonic() + 30
        while self.progress.open_entries():
            if self._stop.wait(0.1):
                raise _Stopped
            if time.monotonic() >= next_log:
                next_log += 30
                log.warning(
                    "relist waits for Kafka to acknowledge earlier changes",
                    extra={"resource": self.type_id, "open_changes": self.progress.open_entries()},
                )

    def _list_all(self) -> tuple[array, str, int]:
        api = self.watcher.api
        page_size = self.watcher.options.list_page_size
        listed_counter = self.watcher.metrics.listed.labels(self.type_id)
        while True:
            seen = array("Q")
            list_version = ""
            continue_token = ""
            listed = 0
            try:
                while True:
                    page = api.list_page(self.resource, page_size, continue_token, self._set_response)
                    list_version = list_version or page.resource_version
                    for raw in page.items:
                        if self._stop.is_set():
                            raise _Stopped
                        obj = orjson.loads(memoryview(raw))
                        uid = (obj.get("metadata") or {}).get("uid")
                        if uid:
                            seen.append(uid_hash(uid))
                        self._handle_listed(obj)
                        listed += 1
                    listed_counter.inc(len(page.items))
                    continue_token = page.continue_token
                    # Drop the page before the next request, so that two pages are never in memory.
                    del page
                    if not continue_token:
                        return seen, list_version, listed
            except GoneError as error:
                if not continue_token:
                    raise
                self.watcher.metrics.gone.labels(self.type_id).inc()
                log.warning(
                    "continue token expired (410 Gone); listing again from the start",
                    extra={"resource": self.type_id, "error": str(error)},
                )

    def _handle_listed(self, obj: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        indexed = self.watcher.store.indexed(self.type_id, str(metadata.get("uid") or ""))
        event_type = "MODIFIED" if indexed is not None else "ADDED"
        self._handle(event_type, obj, from_watch=False)

    def _delete_unlisted(self, seen: array, list_version: str) -> int:
        """Queue DELETED for indexed objects that the list did not return. Returns how many."""
        deleted = 0
        after: str | None = None
        store = self.watcher.store
        while chunk := store.index_chunk(self.type_id, after):
            after = chunk[-1][0]
            for uid, entry in chunk:
                position = bisect.bisect_left(seen, uid_hash(uid))
                if position < len(seen) and seen[position] == uid_hash(uid):
                    continue
                if self.progress.is_active(uid):
                    continue
                self._queue_final_state_unknown(uid, entry, list_version)
                deleted += 1
        return deleted

    def _queue_final_state_unknown(self, uid: str, entry: IndexEntry, list_version: str) -> None:
        metadata: dict[str, Any] = {
            "name": entry.name,
            "uid": uid,
            "resourceVersion": list_version,
            "annotations": {FINAL_STATE_UNKNOWN_ANNOTATION: "true"},
        }
        if entry.namespace:
            metadata["namespace"] = entry.namespace
        obj = {"apiVersion": self.resource.api_version, "kind": self.resource.kind, "metadata": metadata}
        log.info(
            "object deleted while the watch was interrupted",
            extra={"resource": self.type_id, "object": f"{entry.namespace or '-'}/{self.resource.kind}/{entry.name}"},
        )
        queued = QueuedChange(
            self.resource, self.progress, uid, entry.namespace, entry.name, list_version, "DELETED",
            json_bytes.dumps(obj), False, None,
        )
        if not self.watcher.queue.put(queued, self._stop):
            raise _Stopped

    # Both

    def _handle(self, event_type: str, obj: dict[str, Any], from_watch: bool) -> None:
        metadata = obj.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        uid = str(metadata.get("uid") or "")
        version = str(metadata.get("resourceVersion") or "")
        name = str(metadata.get("name") or "")
        namespace = str(metadata.get("namespace") or "")
        advance_to = version if from_watch and version else None
        if not uid or not version or not name:
            self._invalid_objects += 1
            if self._invalid_objects % LOG_EVERY_INVALID_OBJECTS == 1:
                log.warning(
                    "object without uid, resourceVersion or name; skipped",
                    extra={"resource": self.type_id, "object": f"{namespace or '-'}/{self.resource.kind}/{name}", "count": self._invalid_objects},
                )
            self._advance(advance_to)
            return
        if self.resource.namespaced and not self.watcher.options.resource_filter.allows_namespace(namespace):
            self._advance(advance_to)
            return
        if uid in self._finalized_uids:
            if event_type == "DELETED":
                self._finalized_uids.discard(uid)
            self._advance(advance_to)
            return
        if self._already_published(event_type, uid, version):
            self.watcher.metrics.skipped.labels(self.type_id).inc()
            self._advance(advance_to)
            return

        change_type, release = event_type, False
        if self.finalized:
            assert self.watcher.finalizers is not None
            change_type, release = self.watcher.finalizers.classify(self.resource, event_type, obj)
            if release:
                self._finalized_uids.add(uid)
        obj["apiVersion"] = obj.get("apiVersion") or self.resource.api_version
        obj["kind"] = obj.get("kind") or self.resource.kind
        limit = object_limit_bytes(
            self.watcher.settings.max_record_bytes,
            (self.watcher.options.cluster, self.resource.api_version, self.resource.kind, namespace, name, uid, version),
        )
        object_json, removed = prepare_object(obj, limit)
        if removed:
            self.watcher.metrics.reduced.labels(self.type_id).inc()
            log.info(
                "object too large for one record; published in reduced form",
                extra={"resource": self.type_id, "object": f"{namespace or '-'}/{self.resource.kind}/{name}", "removed": removed},
            )
        queued = QueuedChange(
            self.resource, self.progress, uid, namespace, name, version, change_type, object_json, release, advance_to
        )
        if not self.watcher.queue.put(queued, self._stop):
            raise _Stopped

    def _already_published(self, event_type: str, uid: str, version: str) -> bool:
        """Return whether Kafka already has this change, e.g. after a restart from an older resourceVersion."""
        if event_type == "DELETED":
            # Check for a queued or unacknowledged change first: its acknowledgement writes the index.
            if self.progress.is_active(uid):
                return False
            return self.watcher.store.indexed(self.type_id, uid) is None
        indexed = self.watcher.store.indexed(self.type_id, uid)
        return indexed is not None and indexed.resource_version == version

    def _advance(self, version: str | None) -> None:
        if version is not None:
            self.progress.advance(version)


# Publishing


@dataclass(eq=False)
class _TickRound:
    """One tick written to every partition; the next tick waits until Kafka acknowledged all of them."""

    time_ms: int
    remaining: int


def split_tick(contexts: Sequence[Any]) -> tuple[Sequence[PendingChange], _TickRound | None]:
    """Return the changes and the tick round of one record's delivery contexts. A record carries
    changes, a tick, or changes followed by a tick."""
    if isinstance(contexts[-1], _TickRound):
        return contexts[:-1], contexts[-1]
    return contexts, None


class PublishLoop:
    """Moves changes from the queue to Kafka in one thread, which also runs every delivery report.

    The thread owns the Publisher and the producer: delivery reports arrive inside its poll() calls, so
    index writes, progress entries and persisted resourceVersions change in that thread only.
    """

    def __init__(self, watcher: "Watcher", producer: Any = None) -> None:
        self.watcher = watcher
        options = watcher.options
        if producer is None:
            producer = Producer(producer_config(watcher.settings, options.delivery_timeout_seconds))
        self.producer = producer
        self.publisher = Publisher(
            watcher.settings,
            source=SOURCE,
            producer=producer,
            # Publisher.close() waits this long plus 10 s for deliveries, after the drain already waited.
            delivery_timeout_seconds=min(options.delivery_timeout_seconds, options.drain_timeout_seconds),
            on_delivered=self._on_delivered,
        )
        self.in_flight = 0
        self.in_flight_bytes = 0
        self._tick_round: _TickRound | None = None
        self._consecutive_failures = 0
        self._paused_until = 0.0
        self._last_failure_log = 0.0
        self._saved_versions: dict[str, str] = {}
        self._drain_deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="kdiag-publish", daemon=True)
        self.finished = threading.Event()

    def start(self) -> None:
        self._saved_versions = self.watcher.store.resource_versions()
        self._thread.start()

    def drain(self, timeout_seconds: float) -> bool:
        """Publish what is queued and wait for its acknowledgements, then end the thread.

        Returns False if changes were still queued or unacknowledged after `timeout_seconds`.
        """
        self._drain_deadline = time.monotonic() + timeout_seconds
        self.watcher.queue.wake()
        if self._thread.is_alive():
            self._thread.join(timeout_seconds + 5)
        return len(self.watcher.queue) == 0 and self.in_flight == 0

    def _run(self) -> None:
        options = self.watcher.options
        next_tick = time.monotonic()
        next_persist = time.monotonic()
        next_trim = time.monotonic() + MALLOC_TRIM_INTERVAL_SECONDS
        last_flush = time.monotonic()
        try:
            while True:
                draining = self._drain_deadline is not None
                if draining and len(self.watcher.queue) == 0 and self.in_flight == 0:
                    break
                if draining and time.monotonic() > self._drain_deadline:
                    log.warning(
                        "stopping with unacknowledged changes; their resourceVersions are not persisted",
                        extra={"queued": len(self.watcher.queue), "in_flight": self.in_flight},
                    )
                    break
                taken = self._publish_some()
                now = time.monotonic()
                if not taken or now - last_flush >= self.watcher.settings.linger_seconds:
                    self.publisher.flush_changes()
                    last_flush = now
                self.producer.poll(0)
                if now >= next_tick and options.tick_interval_seconds > 0:
                    self._tick()
                    next_tick = now + options.tick_interval_seconds
                if now >= next_persist:
                    self._persist()
                    next_persist = now + options.progress_interval_seconds
                if now >= next_trim and _MALLOC_TRIM is not None:
                    _MALLOC_TRIM(0)
                    next_trim = now + MALLOC_TRIM_INTERVAL_SECONDS
                self.watcher.metrics.in_flight.set(self.in_flight)
            self.publisher.flush_changes()
            self.producer.poll(0)
            self._persist()
        except PublishError as error:
            self.watcher.fail(WatcherError(f"publishing failed: {error}"))
        except Exception as error:  # noqa: BLE001 - any crash here must stop the watcher
            log.exception("publish loop crashed")
            self.watcher.fail(WatcherError(f"publish loop crashed: {type(error).__name__}: {error}"))
        finally:
            try:
                self._persist()
            except Exception:  # noqa: BLE001 - the store may already be unusable after a crash
                log.exception("persisting resourceVersions failed")
            self.finished.set()

    def _publish_some(self) -> list[PendingChange]:
        options = self.watcher.options
        room = options.max_in_flight_changes - self.in_flight
        room_bytes = options.max_in_flight_bytes - self.in_flight_bytes
        if time.monotonic() < self._paused_until or room <= 0 or room_bytes <= 0:
            self.producer.poll(0.05)
            return []
        linger_ms = int(self.watcher.settings.linger_seconds * 1000)
        taken = self.watcher.queue.take(min(room, 500), room_bytes, timeout_seconds=0.05, linger_ms=linger_ms)
        if not taken and len(self.watcher.queue):
            # Changes younger than the linger time are waiting.
            time.sleep(min(0.01, self.watcher.settings.linger_seconds))
        cluster = self.watcher.options.cluster
        for entry in taken:
            self.in_flight += 1
            self.in_flight_bytes += len(entry.object_json)
            origin = f"{entry.resource.type_id} {entry.namespace or '-'}/{entry.name}"
            self.publisher.publish_change(entry.to_change(cluster), origin, context=entry)
        return taken

    def _tick(self) -> None:
        if self._tick_round is not None or time.monotonic() < self._paused_until:
            return  # the previous tick is unacknowledged, so Kafka is slow or down
        time_ms = self.watcher.queue.begin_tick()
        if time_ms is None:
            return
        tick_round = _TickRound(time_ms, self.publisher.partition_count())
        self._tick_round = tick_round
        self.publisher.publish_tick(self.watcher.options.cluster, time_ms, context=tick_round)
        self.watcher.metrics.ticks.inc()

    def _persist(self) -> None:
        changed: dict[str, str] = {}
        for watch in self.watcher.watch_list():
            version = watch.progress.safe_resource_version()
            if version is not None and self._saved_versions.get(watch.type_id) != version:
                changed[watch.type_id] = version
        if changed:
            self.watcher.store.save_resource_versions(changed)
            self._saved_versions.update(changed)

    def _on_delivered(self, contexts: Sequence[Any], error: KafkaError | None) -> None:
        entries, tick_round = split_tick(contexts)
        if tick_round is not None:
            tick_round.remaining -= 1
            if (tick_round.remaining <= 0 or error is not None) and self._tick_round is tick_round:
                self._tick_round = None
        if not entries:
            return
        self.in_flight -= len(entries)
        self.in_flight_bytes -= sum(len(entry.object_json) for entry in entries)
        if error is None:
            self._acknowledged(entries)
        else:
            self._failed(entries, error)

    def _acknowledged(self, entries: Sequence[PendingChange]) -> None:
        writes: list[IndexWrite] = []
        for entry in entries:
            indexed = None if entry.change_type == "DELETED" else IndexEntry(entry.resource_version, entry.namespace, entry.name)
            writes.append((entry.resource.type_id, entry.uid, indexed))
        # The index is written before the progress entries close, so a persisted resourceVersion
        # never covers a change that the index lacks.
        self.watcher.store.write_index(writes)
        metrics = self.watcher.metrics
        now = time.monotonic()
        finalizers = self.watcher.finalizers
        for entry in entries:
            entry.progress.close_entry(entry.sequence, entry.uid)
            metrics.published.labels(entry.resource.type_id, entry.change_type).inc()
            metrics.publish_latency.observe(now - entry.received_monotonic)
            if entry.release_finalizer and finalizers is not None:
                finalizers.submit(
                    FinalizerTask(entry.resource, entry.namespace, entry.name, entry.uid, add=False)
                )
        if self._consecutive_failures:
            log.info("Kafka acknowledges records again", extra={"failures": self._consecutive_failures})
            self._consecutive_failures = 0

    def _failed(self, entries: Sequence[PendingChange], error: KafkaError) -> None:
        metrics = self.watcher.metrics
        metrics.delivery_failures.inc()
        max_attempts = self.watcher.options.max_attempts
        if error.fatal():
            self.watcher.fail(WatcherError(f"the Kafka producer failed fatally: {error.str()}"))
            return
        attempt = 0
        for entry in entries:
            entry.attempts += 1
            attempt = max(attempt, entry.attempts)
        if attempt >= max_attempts:
            self.watcher.fail(
                WatcherError(f"Kafka did not acknowledge a record after {attempt} attempts; last error: {error.str()}")
            )
            return
        self._consecutive_failures += 1
        now = time.monotonic()
        if now - self._last_failure_log >= 5.0:
            self._last_failure_log = now
            log.warning(
                "delivery failed; queuing the changes again",
                extra={"error": error.str(), "changes": len(entries), "attempt": f"{attempt}/{max_attempts}"},
            )
        for entry in entries:
            self.watcher.queue.requeue(entry)
        self._paused_until = now + backoff_seconds(self._consecutive_failures)


# The watcher


@dataclass
class WatchSummary:
    resource_types: int
    published: int
    drained: bool
    error: BaseException | None


class Watcher:
    """Discovers resource types, runs a ResourceWatch per type and publishes their changes.

    Call start(), then wait() until a stop is requested or a fatal error occurs, then stop(), which
    drains the queue, releases finalizers and persists progress.
    """

    def __init__(self, options: WatchOptions, settings: Settings, api: KubernetesApi, producer: Any = None) -> None:
        self.options = options
        self.settings = settings
        self.api = api
        self.metrics = WatcherMetrics()
        try:
            self.store = ProgressStore(options.state_dir)
        except Exception as error:  # noqa: BLE001 - rocksdict raises plain Exception for I/O errors
            raise WatcherError(
                f"cannot open the watcher state in {options.state_dir}: {error}; "
                f"another watcher may be using it, so give each watcher its own --state-dir"
            ) from None
        self.queue = ChangeQueue(options.queue_max_objects, options.queue_max_bytes, self.metrics)
        self.finalizers: FinalizerManager | None = None
        if options.finalizer_kinds:
            self.finalizers = FinalizerManager(
                api,
                options.finalizer_kinds,
                options.max_attempts,
                on_patch=lambda operation, result: self.metrics.finalizer_patches.labels(operation, result).inc(),
            )
        self.list_slots = threading.Semaphore(options.max_concurrent_lists)
        self.fatal_error: BaseException | None = None
        self._watches: dict[str, ResourceWatch] = {}
        self._watches_lock = threading.Lock()
        self._stop = threading.Event()
        self._publish = PublishLoop(self, producer)
        self._discovery_thread = threading.Thread(target=self._discovery_loop, name="kdiag-discovery", daemon=True)
        self._metrics_server: Any = None
        self._started = False

    # Lifecycle

    def start(self) -> None:
        log.info("watcher starting", extra={"cluster": self.options.cluster, "topic": self.settings.changes_topic})
        # Reads the topic's metadata, so a missing topic or broker fails here.
        self._publish.publisher.partition_count()
        if self.options.metrics_port is not None:
            self._metrics_server, _ = start_http_server(
                self.options.metrics_port, addr="127.0.0.1", registry=self.metrics.registry
            )
        types = self._discover_with_retries()
        self._publish.start()
        if self.finalizers is not None:
            self.finalizers.start()
        self._sync_watches(types)
        self._discovery_thread.start()
        self._started = True
        log.info(
            "watcher started",
            extra={"cluster": self.options.cluster, "resource_types": len(types), "finalizer_mode": self.finalizers is not None},
        )

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_server.server_port if self._metrics_server is not None else None

    def wait(self, timeout_seconds: float | None = None) -> bool:
        """Block until a stop is requested or a fatal error occurs. Returns False on timeout."""
        return self._stop.wait(timeout_seconds)

    def request_stop(self) -> None:
        self._stop.set()

    def fail(self, error: BaseException) -> None:
        if self.fatal_error is None:
            self.fatal_error = error
            log.error("watcher failed; stopping", extra={"error": str(error)})
        self._stop.set()

    def stop(self) -> WatchSummary:
        """Stop the watches, publish what is queued, release finalizers and persist progress."""
        log.info("watcher stopping", extra={"cluster": self.options.cluster})
        self._stop.set()
        watches = self.watch_list()
        for watch in watches:
            watch.stop()
        for watch in watches:
            watch.join(10)
        self.queue.wake()
        drained = self._publish.drain(self.options.drain_timeout_seconds) if self._started else True
        if self.finalizers is not None:
            self.finalizers.drain(self.options.drain_timeout_seconds)
            self._release_finalizers(watches)
            self.finalizers.stop()
        summary = self._publish.publisher.close()
        if self._discovery_thread.is_alive():
            self._discovery_thread.join(5)
        self.store.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        published = int(sum(sample.value for sample in self._samples("kdiag_watch_changes_published_total")))
        log.info(
            "watcher stopped",
            extra={
                "cluster": self.options.cluster,
                "published": published,
                "drained": drained,
                "undelivered_records": len(summary.failures),
            },
        )
        return WatchSummary(len(watches), published, drained, self.fatal_error)

    def _release_finalizers(self, watches: list[ResourceWatch]) -> None:
        assert self.finalizers is not None
        types = [watch.resource for watch in watches if watch.finalized]
        released, failed = release_finalizers(self.api, types, self.options.max_attempts)
        log.info("finalizers released", extra={"released": released, "failed": failed})

    def _samples(self, name: str) -> list[Any]:
        return [
            sample
            for metric in self.metrics.registry.collect()
            for sample in metric.samples
            if sample.name == name
        ]

    # Watches

    def watch_list(self) -> list[ResourceWatch]:
        with self._watches_lock:
            return list(self._watches.values())

    def watch_for(self, type_id: str) -> ResourceWatch | None:
        with self._watches_lock:
            return self._watches.get(type_id)

    def _discover(self) -> list[ResourceType]:
        found = discover(self.api)
        return [resource for resource in found.types if self.options.resource_filter.allows_type(resource)]

    def _discover_with_retries(self) -> list[ResourceType]:
        attempts = self.options.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return self._discover()
            except ApiError as error:
                if not error.retryable or attempt == attempts:
                    raise WatcherError(f"API discovery failed: {error}") from None
                log.warning("API discovery failed; retrying", extra={"error": str(error), "attempt": f"{attempt}/{attempts}"})
                if self._stop.wait(backoff_seconds(attempt)):
                    raise WatcherError("stopped during API discovery") from None
        raise AssertionError("unreachable")

    def _sync_watches(self, types: list[ResourceType]) -> None:
        wanted = {resource.type_id: resource for resource in types}
        started: list[ResourceWatch] = []
        with self._watches_lock:
            for type_id, watch in list(self._watches.items()):
                replacement = wanted.get(type_id)
                if replacement is None:
                    log.info("resource type no longer served; watch stopped", extra={"resource": type_id})
                    watch.stop()
                    del self._watches[type_id]
                elif replacement != watch.resource or (watch.failed and not watch.alive):
                    watch.stop()
                    watch.join(10)
                    del self._watches[type_id]
            for type_id, resource in wanted.items():
                if type_id not in self._watches and not self._stop.is_set():
                    watch = ResourceWatch(self, resource)
                    self._watches[type_id] = watch
                    started.append(watch)
        for watch in started:
            watch.start()

    def _discovery_loop(self) -> None:
        while not self._stop.wait(self.options.discovery_interval_seconds):
            try:
                types = self._discover()
            except ApiError as error:
                log.warning("API discovery failed; keeping the current watches", extra={"error": str(error)})
                continue
            self._sync_watches(types)
