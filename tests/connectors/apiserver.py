"""A Kubernetes API server test double that the official Python client talks to over HTTP.

It serves on 127.0.0.1, on a free port, and implements the parts of the API that the watcher uses:

- discovery: /api, /api/v1, /apis and /apis/<group>/<version>, with subresources and resources that
  cannot be watched, so that filtering is exercised;
- list with limit and continue, served from a snapshot taken at the first page, like the real
  server's paginated reads at one resourceVersion;
- watch with ADDED, MODIFIED, DELETED and, when allowWatchBookmarks is set, BOOKMARK events. A watch
  from resourceVersion N sends the events after N. Without a resourceVersion (or with "0") it first
  sends an ADDED event for every existing object;
- 410 Gone for a resourceVersion older than the compaction point that the test sets with compact(),
  as an ERROR watch event carrying a Status (code 410, reason Expired), or as an HTTP 410 response when
  `gone_as_http_status` is set. An expired continue token is rejected with HTTP 410 too;
- GET of one object, PATCH as JSON merge patch (strategic merge patch is treated the same way) and JSON
  patch, with the resourceVersion precondition of a merge patch (409 Conflict) and failed `test`
  operations (422);
- DELETE with finalizer semantics: an object with finalizers gets a deletionTimestamp and goes only
  when its last finalizer is removed;
- custom resources, added with add_crd() and served under /apis like any other group.

Requests must carry the bearer token given to the constructor. A test drives the server directly with
create(), update(), delete(), compact() and close_watches().

The resourceVersion is one counter for all resource types, as etcd's revision is.
"""

from __future__ import annotations

import base64
import bisect
import copy
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

import orjson

DEFAULT_TOKEN = "kdiag-test-token-0f6b2c"
ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Resource:
    group: str
    versions: tuple[str, ...]
    plural: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = ALL_VERBS
    subresources: tuple[str, ...] = ()

    @property
    def version(self) -> str:
        """The storage version, which objects carry in their apiVersion."""
        return self.versions[0]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)


@dataclass
class _Stored:
    uid: str
    resource_version: int
    data: bytes


@dataclass
class _History:
    """The events of one resource type in resourceVersion order, as parallel lists for bisect."""

    versions: list[int] = field(default_factory=list)
    events: list[tuple[str, str, bytes]] = field(default_factory=list)  # (type, namespace, object JSON)
    dropped_up_to: int = 0


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")


@dataclass
class _Snapshot:
    resource_version: int
    items: list[bytes]


class _HttpError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


BUILTIN_RESOURCES = (
    Resource("", ("v1",), "namespaces", "Namespace", False),
    Resource("", ("v1",), "nodes", "Node", False, subresources=("status",)),
    Resource("", ("v1",), "pods", "Pod", True, subresources=("status", "log", "exec")),
    Resource("", ("v1",), "configmaps", "ConfigMap", True),
    Resource("", ("v1",), "secrets", "Secret", True),
    Resource("", ("v1",), "events", "Event", True),
    # Not watchable: bindings can only be created, componentstatuses only listed.
    Resource("", ("v1",), "bindings", "Binding", True, verbs=("create",)),
    Resource("", ("v1",), "componentstatuses", "ComponentStatus", False, verbs=("get", "list")),
    Resource("apps", ("v1",), "deployments", "Deployment", True, subresources=("status", "scale")),
    Resource("batch", ("v1",), "jobs", "Job", True, subresources=("status",)),
    # The same Events as the core group's, in the newer API. The watcher excludes it by default.
    Resource("events.k8s.io", ("v1",), "events", "Event", True),
    Resource("apiextensions.k8s.io", ("v1",), "customresourcedefinitions", "CustomResourceDefinition", False),
)


class FakeApiServer:
    """The API server double. Use it as a context manager, or call start() and stop()."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        bookmark_interval_seconds: float = 1.0,
        gone_as_http_status: bool = False,
        resources: Iterable[Resource] = BUILTIN_RESOURCES,
    ) -> None:
        self.token = token
        self.bookmark_interval_seconds = bookmark_interval_seconds
        self.gone_as_http_status = gone_as_http_status
        self.requests: list[Request] = []
        self.unavailable_groups: set[str] = set()
        self._condition = threading.Condition()
        self._resource_version = 1
        self._compacted = 0
        self._watch_generation = 0
        self._abrupt_close = False
        self._stopping = False
        self._resources: dict[tuple[str, str], Resource] = {}
        self._group_versions: dict[str, list[str]] = {}
        self._objects: dict[tuple[str, str], dict[tuple[str, str], _Stored]] = {}
        self._history: dict[tuple[str, str], _History] = {}
        self._snapshots: dict[str, _Snapshot] = {}
        self._open_sockets: set[socket.socket] = set()
        for resource in resources:
            self.add_resource(resource)
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._http.daemon_threads = True
        self._http.api = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # Lifecycle

    @property
    def port(self) -> int:
        return self._http.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeApiServer":
        self._thread = threading.Thread(target=self._http.serve_forever, name="fake-apiserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._http.shutdown()
        self._http.server_close()
        self._close_sockets()

    def __enter__(self) -> "FakeApiServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, context: str = "fake") -> Path:
        """Write a kubeconfig with token authentication for this server and return its path."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake-cluster", "cluster": {"server": self.url}}],
            "users": [{"name": "fake-user", "user": {"token": self.token}}],
            "contexts": [{"name": context, "context": {"cluster": "fake-cluster", "user": "fake-user"}}],
            "current-context": context,
        }
        # JSON is valid YAML, and the client's kubeconfig loader reads YAML.
        path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
        return path

    # Resource types

    def add_resource(self, resource: Resource) -> None:
        with self._condition:
            self._resources[resource.key] = resource
            versions = self._group_versions.setdefault(resource.group, [])
            for version in resource.versions:
                if version not in versions:
                    versions.append(version)
            self._objects.setdefault(resource.key, {})
            self._history.setdefault(resource.key, _History())

    def add_crd(self, group: str, version: str, kind: str, plural: str, namespaced: bool = True) -> dict[str, Any]:
        """Create a CustomResourceDefinition object and serve its resource under /apis/<group>/<version>."""
        crd = self.create(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.{group}"},
                "spec": {
                    "group": group,
                    "names": {"kind": kind, "plural": plural},
                    "scope": "Namespaced" if namespaced else "Cluster",
                    "versions": [{"name": version, "served": True, "storage": True}],
                },
            }
        )
        self.add_resource(Resource(group, (version,), plural, kind, namespaced, subresources=("status",)))
        return crd

    def resource_for(self, api_version: str, kind: str) -> Resource:
        group = api_version.rpartition("/")[0]
        for resource in self._resources.values():
            if resource.group == group and resource.kind == kind and "watch" in resource.verbs:
                return resource
        raise KeyError(f"no resource type for {api_version} {kind}")

    # Objects, as the test changes them

    @property
    def resource_version(self) -> int:
        with self._condition:
            return self._resource_version

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new object and send ADDED. Returns the stored object."""
        resource = self.resource_for(obj["apiVersion"], obj["kind"])
        obj = copy.deepcopy(obj)
        metadata = obj.setdefault("metadata", {})
        namespace = metadata.get("namespace", "default") if resource.namespaced else ""
        if resource.namespaced:
            metadata["namespace"] = namespace
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", now_rfc3339())
        with self._condition:
            objects = self._objects[resource.key]
            key = (namespace, metadata["name"])
            if key in objects:
                raise ValueError(f"{resource.kind} {namespace}/{metadata['name']} already exists")
            return self._store(resource, key, obj, "ADDED")

    def create_many(self, objects: Iterable[dict[str, Any]]) -> int:
        """Store new objects without deep copies. The caller gives up the dictionaries. Returns the count."""
        count = 0
        with self._condition:
            for obj in objects:
                resource = self.resource_for(obj["apiVersion"], obj["kind"])
                metadata = obj["metadata"]
                metadata.setdefault("uid", str(uuid.uuid4()))
                key = (metadata.get("namespace", "") if resource.namespaced else "", metadata["name"])
                self._store(resource, key, obj, "ADDED", parse_back=False)
                count += 1
        return count

    def update(self, api_version: str, kind: str, namespace: str, name: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply `change` to a copy of the object, store it and send MODIFIED. Returns the stored object."""
        resource = self.resource_for(api_version, kind)
        with self._condition:
            key, obj = self._load(resource, namespace, name)
            change(obj)
            return self._store(resource, key, obj, "MODIFIED")

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Delete an object as the API server does. Returns the object if it stays because of finalizers."""
        resource = self.resource_for(api_version, kind)
        with self._condition:
            return self._delete(resource, namespace, name)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        resource = self.resource_for(api_version, kind)
        with self._condition:
            stored = self._objects[resource.key].get((namespace if resource.namespaced else "", name))
            return orjson.loads(stored.data) if stored is not None else None

    def objects(self, api_version: str, kind: str) -> list[dict[str, Any]]:
        resource = self.resource_for(api_version, kind)
        with self._condition:
            return [orjson.loads(stored.data) for stored in self._objects[resource.key].values()]

    def compact(self) -> int:
        """Forget every event up to the current resourceVersion and return it.

        Watches and continue tokens from an older resourceVersion then get 410 Gone.
        """
        with self._condition:
            self._compacted = self._resource_version
            for history in self._history.values():
                cut = bisect.bisect_right(history.versions, self._compacted)
                if cut:
                    history.dropped_up_to = history.versions[cut - 1]
                    del history.versions[:cut]
                    del history.events[:cut]
            self._condition.notify_all()
            return self._compacted

    def close_watches(self, abrupt: bool = False) -> None:
        """End every open watch: normally with the last chunk, or abruptly by closing its connection."""
        with self._condition:
            self._watch_generation += 1
            self._condition.notify_all()
        if abrupt:
            self._close_sockets()

    def list_requests(self, plural: str) -> list[Request]:
        return [r for r in list(self.requests) if r.method == "GET" and not r.is_watch and r.path.endswith("/" + plural)]

    def watch_requests(self, plural: str) -> list[Request]:
        return [r for r in list(self.requests) if r.is_watch and r.path.endswith("/" + plural)]

    # Store internals. Callers hold self._condition.

    def _next_version(self) -> int:
        self._resource_version += 1
        return self._resource_version

    def _load(self, resource: Resource, namespace: str, name: str) -> tuple[tuple[str, str], dict[str, Any]]:
        key = (namespace if resource.namespaced else "", name)
        stored = self._objects[resource.key].get(key)
        if stored is None:
            raise _HttpError(404, "NotFound", f'{resource.plural} "{name}" not found')
        return key, orjson.loads(stored.data)

    def _store(
        self, resource: Resource, key: tuple[str, str], obj: dict[str, Any], event: str, parse_back: bool = True
    ) -> dict[str, Any]:
        version = self._next_version()
        obj["apiVersion"] = resource.api_version
        obj["kind"] = resource.kind
        obj["metadata"]["resourceVersion"] = str(version)
        data = orjson.dumps(obj)
        self._objects[resource.key][key] = _Stored(obj["metadata"]["uid"], version, data)
        self._record(resource, event, key[0], version, data)
        return orjson.loads(data) if parse_back else obj

    def _delete(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        key, obj = self._load(resource, namespace, name)
        metadata = obj["metadata"]
        if metadata.get("finalizers"):
            if "deletionTimestamp" not in metadata:
                metadata["deletionTimestamp"] = now_rfc3339()
                metadata["deletionGracePeriodSeconds"] = 0
                return self._store(resource, key, obj, "MODIFIED")
            return obj
        del self._objects[resource.key][key]
        version = self._next_version()
        metadata["resourceVersion"] = str(version)
        self._record(resource, "DELETED", key[0], version, orjson.dumps(obj))
        return None

    def _record(self, resource: Resource, event: str, namespace: str, version: int, data: bytes) -> None:
        history = self._history[resource.key]
        history.versions.append(version)
        history.events.append((event, namespace, data))
        self._condition.notify_all()

    def _close_sockets(self) -> None:
        with self._condition:
            sockets = list(self._open_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # Request handling

    def _resource_at(self, group: str, version: str, plural: str) -> Resource:
        resource = self._resources.get((group, plural))
        if resource is None or version not in resource.versions:
            raise _HttpError(404, "NotFound", f"the server could not find the requested resource ({plural})")
        return resource

    def discovery(self, path: str) -> dict[str, Any] | None:
        """Return the discovery document at `path`, or None if `path` is not a discovery path."""
        parts = [part for part in path.split("/") if part]
        with self._condition:
            if parts == ["api"]:
                return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
            if parts == ["apis"]:
                groups = []
                for group, versions in self._group_versions.items():
                    if not group:
                        continue
                    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
                    groups.append({"name": group, "versions": entries, "preferredVersion": entries[0]})
                return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
            if parts == ["api", "v1"]:
                return self._resource_list("", "v1")
            if len(parts) == 3 and parts[0] == "apis":
                if parts[1] in self.unavailable_groups:
                    raise _HttpError(503, "ServiceUnavailable", "the server is currently unable to handle the request")
                if parts[2] not in self._group_versions.get(parts[1], ()):
                    raise _HttpError(404, "NotFound", "the server could not find the requested resource")
                return self._resource_list(parts[1], parts[2])
        return None

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        entries = []
        for resource in self._resources.values():
            if resource.group != group or version not in resource.versions:
                continue
            entries.append(
                {
                    "name": resource.plural,
                    "singularName": resource.kind.lower(),
                    "namespaced": resource.namespaced,
                    "kind": resource.kind,
                    "verbs": list(resource.verbs),
                }
            )
            for subresource in resource.subresources:
                entries.append(
                    {
                        "name": f"{resource.plural}/{subresource}",
                        "singularName": "",
                        "namespaced": resource.namespaced,
                        "kind": resource.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        group_version = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "groupVersion": group_version, "resources": entries}

    def route(self, path: str) -> tuple[Resource, str | None, str | None]:
        """Return the resource type, namespace (None for all) and object name (None for the collection)."""
        parts = [part for part in path.split("/") if part]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _HttpError(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if len(rest) not in (1, 2):
            raise _HttpError(404, "NotFound", "the server could not find the requested resource")
        resource = self._resource_at(group, version, rest[0])
        return resource, namespace, rest[1] if len(rest) == 2 else None

    def list_body(self, resource: Resource, namespace: str | None, query: dict[str, str]) -> bytes:
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        with self._condition:
            if token:
                snapshot_id, _, offset_text = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
                snapshot = self._snapshots.get(snapshot_id)
                if snapshot is None or snapshot.resource_version < self._compacted:
                    raise _HttpError(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. "
                        "You can start a new list without the continue parameter.",
                    )
                offset = int(offset_text)
            else:
                stored = self._objects[resource.key]
                keys = sorted(key for key in stored if namespace is None or key[0] == namespace)
                snapshot_id = uuid.uuid4().hex
                snapshot = _Snapshot(self._resource_version, [stored[key].data for key in keys])
                offset = 0
                if limit and len(snapshot.items) > limit:
                    self._snapshots[snapshot_id] = snapshot
        end = offset + limit if limit else len(snapshot.items)
        page = snapshot.items[offset:end]
        metadata: dict[str, Any] = {"resourceVersion": str(snapshot.resource_version)}
        if end < len(snapshot.items):
            metadata["continue"] = base64.urlsafe_b64encode(f"{snapshot_id}:{end}".encode()).decode()
            metadata["remainingItemCount"] = len(snapshot.items) - end
        else:
            with self._condition:
                self._snapshots.pop(snapshot_id, None)
        head = {"kind": f"{resource.kind}List", "apiVersion": resource.api_version, "metadata": metadata}
        return orjson.dumps(head)[:-1] + b',"items":[' + b",".join(page) + b"]}"

    def get_body(self, resource: Resource, namespace: str | None, name: str) -> bytes:
        with self._condition:
            stored = self._objects[resource.key].get((namespace or "", name))
            if stored is None:
                raise _HttpError(404, "NotFound", f'{resource.plural} "{name}" not found')
            return stored.data

    def patch(self, resource: Resource, namespace: str | None, name: str, content_type: str, body: bytes) -> bytes:
        try:
            patch = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _HttpError(400, "BadRequest", "the patch is not valid JSON") from None
        with self._condition:
            key, obj = self._load(resource, namespace or "", name)
            old_finalizers = list(obj["metadata"].get("finalizers") or [])
            if content_type.startswith("application/json-patch+json"):
                obj = apply_json_patch(obj, patch)
            elif content_type.startswith(("application/merge-patch+json", "application/strategic-merge-patch+json")):
                wanted = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
                if wanted is not None and wanted != obj["metadata"]["resourceVersion"]:
                    raise _HttpError(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on {resource.plural} "{name}": the object has been modified; '
                        "please apply your changes to the latest version and try again",
                    )
                obj = apply_merge_patch(obj, patch)
            else:
                raise _HttpError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")
            metadata = obj["metadata"]
            finalizers = list(metadata.get("finalizers") or [])
            if "deletionTimestamp" in metadata and any(item not in old_finalizers for item in finalizers):
                raise _HttpError(422, "Invalid", "Forbidden: no new finalizers can be added if the object is being deleted")
            if not finalizers:
                metadata.pop("finalizers", None)
            if "deletionTimestamp" in metadata and not finalizers:
                # As in the real server, an update that removes the last finalizer of an object being
                # deleted completes the delete: watchers get one DELETED event, no MODIFIED.
                del self._objects[resource.key][key]
                version = self._next_version()
                metadata["resourceVersion"] = str(version)
                data = orjson.dumps(obj)
                self._record(resource, "DELETED", key[0], version, data)
                return data
            return orjson.dumps(self._store(resource, key, obj, "MODIFIED"))

    def delete_body(self, resource: Resource, namespace: str | None, name: str) -> bytes:
        with self._condition:
            remaining = self._delete(resource, namespace or "", name)
        if remaining is not None:
            return orjson.dumps(remaining)
        return orjson.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})

    def open_watch(self, resource: Resource, namespace: str | None, query: dict[str, str]) -> tuple[int, list[bytes], int]:
        """Check a watch request. Returns the starting resourceVersion, the initial events and the generation.

        Raises _HttpError(410) for a resourceVersion older than the compaction point when
        gone_as_http_status is set; otherwise such a watch gets one ERROR event.
        """
        requested = query.get("resourceVersion") or ""
        with self._condition:
            generation = self._watch_generation
            if requested in ("", "0"):
                initial = [
                    _event_line("ADDED", stored.data)
                    for (item_namespace, _), stored in sorted(self._objects[resource.key].items())
                    if namespace is None or item_namespace == namespace
                ]
                return self._resource_version, initial, generation
            try:
                start = int(requested)
            except ValueError:
                raise _HttpError(400, "BadRequest", f"invalid resourceVersion {requested!r}") from None
            if start < self._compacted:
                message = f"too old resource version: {start} ({self._compacted})"
                if self.gone_as_http_status:
                    raise _HttpError(410, "Expired", message)
                return start, [orjson.dumps({"type": "ERROR", "object": status_body(410, "Expired", message)})], generation
            return start, [], generation

    def next_watch_events(
        self, resource: Resource, namespace: str | None, after: int, generation: int, wait_seconds: float
    ) -> tuple[list[tuple[int, bytes]], int, bool]:
        """Wait up to `wait_seconds` for events after `after`.

        Returns the (resourceVersion, line) pairs, the newest resourceVersion the events cover (for a
        bookmark) and whether the watch must end.
        """
        with self._condition:
            history = self._history[resource.key]
            start = bisect.bisect_right(history.versions, after)
            if start == len(history.versions) and not self._stopping and generation == self._watch_generation:
                self._condition.wait(wait_seconds)
                start = bisect.bisect_right(history.versions, after)
            ended = self._stopping or generation != self._watch_generation
            if history.dropped_up_to > after:
                # The watcher fell behind the compaction point: the real server ends such a watch too.
                message = f"too old resource version: {after} ({self._compacted})"
                line = orjson.dumps({"type": "ERROR", "object": status_body(410, "Expired", message)})
                return [(after, line)], after, True
            events = []
            for index in range(start, len(history.versions)):
                event, item_namespace, data = history.events[index]
                if namespace is None or item_namespace == namespace:
                    events.append((history.versions[index], _event_line(event, data)))
            return events, self._resource_version, ended

    def bookmark_line(self, resource: Resource, version: int) -> bytes:
        return orjson.dumps(
            {
                "type": "BOOKMARK",
                "object": {
                    "kind": resource.kind,
                    "apiVersion": resource.api_version,
                    "metadata": {"resourceVersion": str(version), "annotations": {"k8s.io/initial-events-end": "false"}},
                },
            }
        )


def _event_line(event: str, data: bytes) -> bytes:
    return b'{"type":"' + event.encode() + b'","object":' + data + b"}"


# Patches


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7386)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def apply_json_patch(target: dict[str, Any], operations: Any) -> dict[str, Any]:
    """Apply a JSON patch (RFC 6902) with the add, remove, replace and test operations."""
    if not isinstance(operations, list):
        raise _HttpError(400, "BadRequest", "a JSON patch must be a list of operations")
    document = copy.deepcopy(target)
    for operation in operations:
        op = operation.get("op")
        tokens = _pointer_tokens(operation.get("path", ""))
        if not tokens:
            raise _HttpError(422, "Invalid", "a JSON patch may not replace the whole object")
        parent = document
        for token in tokens[:-1]:
            parent = _child(parent, token)
        last = tokens[-1]
        if op == "test":
            if _child(parent, last) != operation.get("value"):
                raise _HttpError(422, "Invalid", f"testing value {operation.get('path')} failed")
        elif op == "remove":
            _child(parent, last)
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                del parent[last]
        elif op in ("add", "replace"):
            value = copy.deepcopy(operation.get("value"))
            if isinstance(parent, list):
                if last == "-":
                    parent.append(value)
                elif op == "add":
                    parent.insert(int(last), value)
                else:
                    _child(parent, last)
                    parent[int(last)] = value
            elif isinstance(parent, dict):
                if op == "replace":
                    _child(parent, last)
                parent[last] = value
            else:
                raise _HttpError(422, "Invalid", f"cannot {op} at {operation.get('path')}")
        else:
            raise _HttpError(422, "Invalid", f"unsupported JSON patch operation {op!r}")
    return document


def _pointer_tokens(pointer: str) -> list[str]:
    if not pointer.startswith("/"):
        raise _HttpError(422, "Invalid", f"invalid JSON pointer {pointer!r}")
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def _child(node: Any, token: str) -> Any:
    try:
        if isinstance(node, list):
            return node[int(token)]
        return node[token]
    except (KeyError, IndexError, ValueError, TypeError):
        raise _HttpError(422, "Invalid", f"path element {token!r} not found") from None


# HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    @property
    def api(self) -> FakeApiServer:
        return self.server.api  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        split = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        api = self.api
        api.requests.append(Request(method, split.path, query))
        try:
            if self.headers.get("Authorization") != f"Bearer {api.token}":
                raise _HttpError(401, "Unauthorized", "Unauthorized")
            if method == "GET":
                document = api.discovery(split.path)
                if document is not None:
                    self._send(200, orjson.dumps(document))
                    return
            resource, namespace, name = api.route(split.path)
            if name is None and method == "GET":
                if query.get("watch") in ("true", "1"):
                    self._watch(resource, namespace, query)
                else:
                    self._send(200, api.list_body(resource, namespace, query))
            elif name is not None and method == "GET":
                self._send(200, api.get_body(resource, namespace, name))
            elif name is not None and method == "PATCH":
                self._send(200, api.patch(resource, namespace, name, self.headers.get("Content-Type", ""), body))
            elif name is not None and method == "DELETE":
                self._send(200, api.delete_body(resource, namespace, name))
            else:
                raise _HttpError(405, "MethodNotAllowed", f"{method} is not supported on {split.path}")
        except _HttpError as error:
            self._send(error.code, orjson.dumps(status_body(error.code, error.reason, error.message)))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _watch(self, resource: FakeApiServer | Any, namespace: str | None, query: dict[str, str]) -> None:
        api = self.api
        after, initial, generation = api.open_watch(resource, namespace, query)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query.get("timeoutSeconds") or 1800)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with api._condition:
            api._open_sockets.add(self.connection)
        try:
            for line in initial:
                self._chunk(line)
            if initial and initial[-1].startswith(b'{"type":"ERROR"'):
                self._chunk(b"")
                return
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + api.bookmark_interval_seconds
            while time.monotonic() < deadline:
                wait = max(0.0, min(0.2, next_bookmark - time.monotonic()))
                events, covered, ended = api.next_watch_events(resource, namespace, after, generation, wait)
                for version, line in events:
                    self._chunk(line)
                    after = version
                if events and events[-1][1].startswith(b'{"type":"ERROR"'):
                    break
                if ended:
                    break
                if bookmarks and time.monotonic() >= next_bookmark:
                    after = max(after, covered)
                    self._chunk(api.bookmark_line(resource, after))
                    next_bookmark = time.monotonic() + api.bookmark_interval_seconds
            self._chunk(b"")
        except OSError:
            self.close_connection = True
        finally:
            with api._condition:
                api._open_sockets.discard(self.connection)
            self.close_connection = True

    def _chunk(self, line: bytes) -> None:
        if line:
            payload = line + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
        else:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
