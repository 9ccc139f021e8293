"""Finalizer mode: the watcher's finalizer keeps an object until Kafka has its DELETED change.

For the chosen resource types, the watcher adds the finalizer kdiag.io/watch to every object that is
not being deleted. When such an object is deleted, the API server only sets its deletionTimestamp. Once
ours is the last finalizer left, the watcher publishes the object as a DELETED change and removes the
finalizer after Kafka acknowledged that change, so the API server can finish the delete.

The risk: while the watcher is down, deletes of these objects wait. The watcher removes its finalizers
on a clean shutdown, and `kdiag watch --release-finalizers` removes them from every object after a crash.

Patches:
- adding is a JSON merge patch of metadata.finalizers with metadata.resourceVersion as a precondition,
  so a concurrent change of the list fails with 409 Conflict instead of being overwritten. The newer
  version then arrives as a watch event and the watcher tries again;
- removing is a JSON patch that tests the uid and the finalizer at its index before it removes it, so
  it never removes another controller's finalizer. A failed test (422) or conflict means the object
  changed: the watcher reads it again and retries.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import orjson

from connectors.discovery import ApiError, KindPattern, KubernetesApi, ResourceType

log = logging.getLogger(__name__)

FINALIZER = "kdiag.io/watch"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
RELEASE_LIST_PAGE_SIZE = 500
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0


def backoff_seconds(attempt: int, base: float = BACKOFF_BASE_SECONDS, maximum: float = BACKOFF_MAX_SECONDS) -> float:
    """Return a random wait up to base * 2^(attempt-1) seconds, at most `maximum` (full-jitter backoff)."""
    return random.uniform(0, min(maximum, base * 2 ** (attempt - 1)))


def object_ref(resource: ResourceType, namespace: str, name: str) -> str:
    return f"{namespace or '-'}/{resource.kind}/{name}"


@dataclass(frozen=True, slots=True)
class FinalizerTask:
    """Add or remove our finalizer on one object."""

    resource: ResourceType
    namespace: str
    name: str
    uid: str
    add: bool
    # For an add: the object's resourceVersion and finalizers as the event showed them.
    resource_version: str = ""
    finalizers: tuple[str, ...] = ()


class FinalizerManager:
    """Classifies events of the chosen types and adds or removes our finalizer in worker threads.

    Tasks are coalesced per object: a newer task for the same uid replaces a queued one.
    """

    def __init__(
        self,
        api: KubernetesApi,
        kinds: tuple[KindPattern, ...],
        max_attempts: int = 10,
        workers: int = 2,
        on_patch: Callable[[str, str], None] | None = None,
    ) -> None:
        self.api = api
        self.kinds = kinds
        self.max_attempts = max_attempts
        self._on_patch = on_patch or (lambda operation, result: None)
        self._condition = threading.Condition()
        self._tasks: OrderedDict[str, FinalizerTask] = OrderedDict()
        self._busy = 0
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"kdiag-finalizers-{index}", daemon=True) for index in range(workers)
        ]

    @property
    def enabled(self) -> bool:
        return bool(self.kinds)

    def applies_to(self, resource: ResourceType) -> bool:
        return any(pattern.matches(resource) for pattern in self.kinds) and "patch" in resource.verbs

    def start(self) -> None:
        # NOTE: the first list of a type queues one patch per object without our finalizer, so a
        # type with 100,000 objects needs 100,000 patches at the start, two at a time.
        for thread in self._threads:
            thread.start()

    def classify(self, resource: ResourceType, event_type: str, obj: dict[str, Any]) -> tuple[str, bool]:
        """Return the change type to publish and whether to remove our finalizer once Kafka has it.

        Queues an add for a live object without our finalizer. An object whose only finalizer is ours,
        with a deletionTimestamp and no grace period left, is deleted as far as anyone else is
        concerned, so it becomes DELETED. A pod in graceful termination has a grace period until the
        kubelet's final delete sets it to 0, so it stays MODIFIED until then.
        """
        metadata = obj.get("metadata") or {}
        finalizers = metadata.get("finalizers") or []
        if event_type == "DELETED":
            return event_type, False
        if metadata.get("deletionTimestamp"):
            if finalizers == [FINALIZER] and not metadata.get("deletionGracePeriodSeconds"):
                return "DELETED", True
            return event_type, False
        if FINALIZER not in finalizers:
            self.submit(
                FinalizerTask(
                    resource,
                    metadata.get("namespace") or "",
                    metadata.get("name") or "",
                    metadata.get("uid") or "",
                    add=True,
                    resource_version=str(metadata.get("resourceVersion") or ""),
                    finalizers=tuple(finalizers),
                )
            )
        return event_type, False

    def submit(self, task: FinalizerTask) -> None:
        with self._condition:
            previous = self._tasks.get(task.uid)
            if previous is not None and not previous.add and task.add:
                return  # a removal is never replaced by an add: the object is being deleted
            self._tasks[task.uid] = task
            self._condition.notify()

    def pending(self) -> int:
        with self._condition:
            return len(self._tasks) + self._busy

    def drain(self, timeout_seconds: float) -> bool:
        """Wait until every queued task is done. Returns False on timeout."""
        deadline = time.monotonic() + timeout_seconds
        with self._condition:
            while self._tasks or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(min(remaining, 0.2))
        return True

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._tasks and not self._stopping:
                    self._condition.wait(1.0)
                if self._stopping and not self._tasks:
                    return
                _, task = self._tasks.popitem(last=False)
                self._busy += 1
            try:
                if task.add:
                    self._add(task)
                else:
                    remove_finalizer(self.api, task.resource, task.namespace, task.name, task.uid, self.max_attempts)
                    self._on_patch("remove", "ok")
            except ApiError as error:
                self._on_patch("add" if task.add else "remove", "failed")
                log.error(
                    "finalizer patch failed; giving up on this object",
                    extra={
                        "resource": task.resource.type_id,
                        "object": object_ref(task.resource, task.namespace, task.name),
                        "operation": "add" if task.add else "remove",
                        "error": str(error),
                    },
                )
            finally:
                with self._condition:
                    self._busy -= 1
                    self._condition.notify_all()

    def _add(self, task: FinalizerTask) -> None:
        body = {"metadata": {"finalizers": [*task.finalizers, FINALIZER], "resourceVersion": task.resource_version}}
        ref = object_ref(task.resource, task.namespace, task.name)
        for attempt in range(1, self.max_attempts + 1):
            try:
                self.api.patch(task.resource, task.namespace, task.name, body, MERGE_PATCH)
                self._on_patch("add", "ok")
                log.debug("finalizer added", extra={"resource": task.resource.type_id, "object": ref})
                return
            except ApiError as error:
                if error.status in (404, 409, 422):
                    # Gone, changed since the event (the newer event queues a new add) or being
                    # deleted: nothing to do for this version.
                    self._on_patch("add", "skipped")
                    return
                if not error.retryable or attempt == self.max_attempts:
                    raise
                log.warning(
                    "adding the finalizer failed; retrying",
                    extra={
                        "resource": task.resource.type_id,
                        "object": ref,
                        "error": str(error),
                        "attempt": f"{attempt}/{self.max_attempts}",
                    },
                )
                time.sleep(backoff_seconds(attempt))


def remove_finalizer(
    api: KubernetesApi, resource: ResourceType, namespace: str, name: str, uid: str, max_attempts: int = 10
) -> bool:
    """Remove our finalizer from one object. Returns False if the object is gone or does not carry it.

    Raises ApiError when the object cannot be patched after `max_attempts`.
    """
    ref = object_ref(resource, namespace, name)
    for attempt in range(1, max_attempts + 1):
        try:
            obj = api.get_object(resource, namespace, name)
            metadata = obj.get("metadata") or {}
            finalizers = metadata.get("finalizers") or []
            if (uid and metadata.get("uid") != uid) or FINALIZER not in finalizers:
                return False
            position = finalizers.index(FINALIZER)
            operations = [
                {"op": "test", "path": "/metadata/uid", "value": metadata.get("uid")},
                {"op": "test", "path": f"/metadata/finalizers/{position}", "value": FINALIZER},
                {"op": "remove", "path": f"/metadata/finalizers/{position}"},
            ]
            api.patch(resource, namespace, name, operations, JSON_PATCH)
            log.debug("finalizer removed", extra={"resource": resource.type_id, "object": ref})
            return True
        except ApiError as error:
            if error.status == 404:
                return False
            if error.status in (409, 422) and attempt < max_attempts:
                continue  # the object changed between the read and the patch: read it again
            if not error.retryable or attempt == max_attempts:
                raise
            log.warning(
                "removing the finalizer failed; retrying",
                extra={"resource": resource.type_id, "object": ref, "error": str(error), "attempt": f"{attempt}/{max_attempts}"},
            )
            time.sleep(backoff_seconds(attempt))
    return False


def release_finalizers(api: KubernetesApi, resources: Iterable[ResourceType], max_attempts: int = 10) -> tuple[int, int]:
    """Remove our finalizer from every object of the given types that carries it.

    Lists each type with pagination and patches only the objects that carry the finalizer. Returns the
    number of finalizers removed and the number of objects that could not be patched.
    """
    released = 0
    failed = 0
    for resource in resources:
        continue_token = ""
        while True:
            page = _list_page_with_retries(api, resource, continue_token, max_attempts)
            if page is None:
                failed += 1
                break
            for raw in page.items:
                obj = orjson.loads(memoryview(raw))
                metadata = obj.get("metadata") or {}
                if FINALIZER not in (metadata.get("finalizers") or []):
                    continue
                namespace = metadata.get("namespace") or ""
                name = metadata.get("name") or ""
                try:
                    if remove_finalizer(api, resource, namespace, name, metadata.get("uid") or "", max_attempts):
                        released += 1
                except ApiError as error:
                    failed += 1
                    log.error(
                        "releasing the finalizer failed",
                        extra={"resource": resource.type_id, "object": object_ref(resource, namespace, name), "error": str(error)},
                    )
            continue_token = page.continue_token
            if not continue_token:
                break
    return released, failed


def _list_page_with_retries(api: KubernetesApi, resource: ResourceType, continue_token: str, max_attempts: int) -> Any:
    for attempt in range(1, max_attempts + 1):
        try:
            return api.list_page(resource, RELEASE_LIST_PAGE_SIZE, continue_token)
        except ApiError as error:
            if error.status == 410 and continue_token:
                # The continue token expired: list the type again from the start. Objects already
                # released no longer carry the finalizer, so they are skipped.
                continue_token = ""
                continue
            if not error.retryable or attempt == max_attempts:
                log.error(
                    "listing objects to release finalizers failed",
                    extra={"resource": resource.type_id, "error": str(error), "attempt": f"{attempt}/{max_attempts}"},
                )
                return None
            log.warning(
                "listing objects to release finalizers failed; retrying",
                extra={"resource": resource.type_id, "error": str(error), "attempt": f"{attempt}/{max_attempts}"},
            )
            time.sleep(backoff_seconds(attempt))
    return None
