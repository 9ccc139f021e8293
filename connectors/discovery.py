"""Requests to the Kubernetes API server: discovery of the resource types to watch, lists, watches, patches.

Requests go through the official client's ApiClient (param_serialize and call_api), so kubeconfig and
in-cluster authentication, token refresh and TLS settings work as in any client. The responses are read
raw and parsed with orjson or msgspec instead of the generated models, because:

- the generated models cost tens of microseconds and several kilobytes per object, and the watcher
  only forwards objects as JSON;
- custom resources have no generated list or watch functions, while a raw path works for every type;
- kubernetes.watch.Watch keeps its own resourceVersion, taken from the last event it yielded rather
  than from the last change Kafka acknowledged, and after an ERROR 410 event it retries once from that
  version by itself. The watcher needs to decide both: it persists a resourceVersion only after every
  change before it was acknowledged, and it relists on 410 Gone.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import msgspec
import orjson
import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from kdiag.errors import ConfigError, KdiagError

log = logging.getLogger(__name__)

# events.k8s.io/v1 serves the same Event objects as the core group, so watching both would publish
# every Event twice.
DEFAULT_EXCLUDES = ("events.k8s.io/*/Event",)
REQUIRED_VERBS = frozenset({"list", "watch"})
REQUEST_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0
# Error bodies are small Status objects. Reading at most this much keeps a misbehaving proxy from
# filling memory.
ERROR_BODY_MAX_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ResourceType:
    """A served resource type at its group's preferred version, as discovery lists it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: frozenset[str] = field(default_factory=frozenset)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def type_id(self) -> str:
        """Key of the type's progress: group and resource, without the version, which may change."""
        return f"{self.group or 'core'}/{self.plural}"

    def collection_path(self, namespace: str | None = None) -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace and self.namespaced:
            return f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{prefix}/{self.plural}"

    def object_path(self, namespace: str, name: str) -> str:
        return f"{self.collection_path(namespace or None)}/{name}"


class ApiError(KdiagError):
    """A request to the API server failed. `status` is the HTTP status, 0 when no response came."""

    def __init__(self, status: int, reason: str, message: str, path: str) -> None:
        super().__init__(f"{path}: HTTP {status} {reason}: {message}" if status else f"{path}: {message}")
        self.status = status
        self.reason = reason
        self.path = path

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later: no response, throttling or a server error."""
        return self.status == 0 or self.status == 429 or self.status >= 500


class GoneError(ApiError):
    """410 Gone: the resourceVersion or continue token is older than the server's history."""


# Patterns


@dataclass(frozen=True)
class KindPattern:
    """A GROUP/VERSION/KIND pattern with shell-style wildcards. KIND also matches the plural resource name.

    Accepted forms: KIND, GROUP/KIND and GROUP/VERSION/KIND. The core group is written as "core" or as
    an empty string, e.g. core/v1/Pod or /v1/Pod. Matching ignores case.
    """

    group: str
    version: str
    kind: str
    text: str

    @classmethod
    def parse(cls, text: str) -> "KindPattern":
        parts = text.strip().split("/")
        if not text.strip() or len(parts) > 3 or not parts[-1]:
            raise ConfigError(
                f"invalid kind pattern {text!r}: expected KIND, GROUP/KIND or GROUP/VERSION/KIND, "
                f"for example Pod, batch/Job or apps/v1/Deployment (core/v1/Pod for the core group)"
            )
        if len(parts) == 1:
            group, version, kind = "*", "*", parts[0]
        elif len(parts) == 2:
            group, version, kind = parts[0], "*", parts[1]
        else:
            group, version, kind = parts
        group = "" if group.lower() == "core" else group
        return cls(group.lower(), (version or "*").lower(), kind.lower(), text)

    def matches(self, resource: ResourceType) -> bool:
        return (
            fnmatch.fnmatchcase(resource.group.lower(), self.group)
            and fnmatch.fnmatchcase(resource.version.lower(), self.version)
            and (
                fnmatch.fnmatchcase(resource.kind.lower(), self.kind)
                or fnmatch.fnmatchcase(resource.plural.lower(), self.kind)
            )
        )


def parse_patterns(texts: list[str] | tuple[str, ...]) -> tuple[KindPattern, ...]:
    """Parse patterns given as repeated options or comma-separated lists."""
    return tuple(KindPattern.parse(part) for text in texts for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class ResourceFilter:
    """Selection of the resource types and namespaces that the watcher publishes.

    A type is watched when it matches an include pattern and no exclude pattern. An object of a
    namespaced type is published when its namespace is in `namespaces` (or that set is empty) and not in
    `excluded_namespaces`. Cluster-scoped objects are not filtered by namespace.
    """

    include: tuple[KindPattern, ...] = (KindPattern("*", "*", "*", "*"),)
    exclude: tuple[KindPattern, ...] = field(default_factory=lambda: parse_patterns(DEFAULT_EXCLUDES))
    namespaces: frozenset[str] = frozenset()
    excluded_namespaces: frozenset[str] = frozenset()

    def allows_type(self, resource: ResourceType) -> bool:
        return any(p.matches(resource) for p in self.include) and not any(p.matches(resource) for p in self.exclude)

    def allows_namespace(self, namespace: str) -> bool:
        if not namespace:
            return True
        if self.namespaces and namespace not in self.namespaces:
            return False
        return namespace not in self.excluded_namespaces


# Raw API access


class _ListMetadata(msgspec.Struct):
    resourceVersion: str = ""
    # The field name is a Python keyword, hence the rename.
    continue_token: str = msgspec.field(default="", name="continue")


class _ListPage(msgspec.Struct):
    metadata: _ListMetadata = msgspec.field(default_factory=_ListMetadata)
    items: list[msgspec.Raw] = msgspec.field(default_factory=list)


_LIST_DECODER = msgspec.json.Decoder(_ListPage)


@dataclass
class ListPage:
    """One page of a list: the list's resourceVersion, the continue token and each item's raw JSON."""

    resource_version: str
    continue_token: str
    items: list[msgspec.Raw]


class KubernetesApi:
    """Raw JSON requests through an ApiClient. Thread-safe: urllib3's pool serves each thread."""

    def __init__(self, api_client: ApiClient, request_timeout_seconds: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.api_client = api_client
        self.request_timeout_seconds = request_timeout_seconds

    def close(self) -> None:
        self.api_client.close()

    def _send(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str | None = None,
        read_timeout_seconds: float | None = None,
    ) -> urllib3.BaseHTTPResponse:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        serialized = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        timeout = (CONNECT_TIMEOUT_SECONDS, read_timeout_seconds or self.request_timeout_seconds)
        try:
            response = self.api_client.call_api(*serialized, _request_timeout=timeout).response
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ApiError(0, "", f"request failed: {type(error).__name__}: {error}", path) from None
        except ApiException as error:
            raise ApiError(error.status or 0, error.reason or "", "request failed", path) from None
        if not 200 <= response.status <= 299:
            raise _error_from_response(response, path)
        return response

    def get_json(self, path: str, query: list[tuple[str, str]] | None = None) -> Any:
        response = self._send("GET", path, query)
        try:
            return orjson.loads(_read_all(response, path))
        except orjson.JSONDecodeError:
            raise ApiError(response.status, "", "response is not JSON", path) from None

    def list_page(
        self,
        resource: ResourceType,
        limit: int,
        continue_token: str = "",
        on_response: Callable[[urllib3.BaseHTTPResponse | None], None] | None = None,
    ) -> ListPage:
        """Return one page of the cluster-wide list of a type. Raises GoneError for an expired token."""
        query = [("limit", str(limit))]
        if continue_token:
            query.append(("continue", continue_token))
        path = resource.collection_path()
        response = self._send("GET", path, query)
        if on_response is not None:
            on_response(response)
        try:
            body = _read_all(response, path)
        finally:
            if on_response is not None:
                on_response(None)
        try:
            page = _LIST_DECODER.decode(body)
        except msgspec.DecodeError as error:
            raise ApiError(response.status, "", f"list response is not a list: {error}", path) from None
        return ListPage(page.metadata.resourceVersion, page.metadata.continue_token, page.items)

    def watch(
        self,
        resource: ResourceType,
        resource_version: str,
        timeout_seconds: int,
        on_response: Callable[[urllib3.BaseHTTPResponse | None], None],
    ) -> Iterator[dict[str, Any]]:
        """Yield the events of a cluster-wide watch from `resource_version`, with bookmarks.

        `on_response` receives the open response, so another thread can shut it down, and None at the
        end. HTTP 410 raises GoneError. An ERROR event is yielded like any other event.
        """
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
            ("resourceVersion", resource_version),
        ]
        path = resource.collection_path()
        # The server ends the watch after timeoutSeconds, so a read that waits longer means the
        # connection is lost.
        response = self._send("GET", path, query, read_timeout_seconds=timeout_seconds + 30)
        on_response(response)
        try:
            buffer = bytearray()
            for chunk in response.stream(amt=64 * 1024, decode_content=True):
                buffer.extend(chunk)
                start = 0
                while True:
                    end = buffer.find(b"\n", start)
                    if end < 0:
                        break
                    line = bytes(buffer[start:end])
                    start = end + 1
                    if line.strip():
                        yield _parse_event(line, path)
                del buffer[:start]
            if buffer.strip():
                yield _parse_event(bytes(buffer), path)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ApiError(0, "", f"watch stream failed: {type(error).__name__}: {error}", path) from None
        finally:
            on_response(None)
            response.release_conn()

    def patch(
        self, resource: ResourceType, namespace: str, name: str, body: Any, content_type: str
    ) -> dict[str, Any]:
        path = resource.object_path(namespace, name)
        response = self._send("PATCH", path, body=body, content_type=content_type)
        return orjson.loads(_read_all(response, path))

    def get_object(self, resource: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        return self.get_json(resource.object_path(namespace, name))


def _read_all(response: urllib3.BaseHTTPResponse, path: str) -> bytes:
    try:
        return response.read()
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise ApiError(0, "", f"reading the response failed: {type(error).__name__}: {error}", path) from None
    finally:
        response.release_conn()


def _parse_event(line: bytes, path: str) -> dict[str, Any]:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ApiError(200, "", "watch event is not JSON", path) from None
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise ApiError(200, "", "watch event has no object", path)
    return event


def _error_from_response(response: urllib3.BaseHTTPResponse, path: str) -> ApiError:
    try:
        raw = response.read(ERROR_BODY_MAX_BYTES)
    except (urllib3.exceptions.HTTPError, OSError):
        raw = b""
    finally:
        response.release_conn()
    message = ""
    reason = response.reason or ""
    try:
        status = orjson.loads(raw)
        if isinstance(status, dict):
            message = str(status.get("message") or "")
            reason = str(status.get("reason") or reason)
    except orjson.JSONDecodeError:
        pass
    error_type = GoneError if response.status == 410 else ApiError
    return error_type(response.status, reason, message or "request failed", path)


# Discovery


@dataclass
class Discovery:
    """Resource types found by one discovery run, and the groups that could not be read."""

    types: list[ResourceType]
    failed_groups: list[str]


def discover(api: KubernetesApi) -> Discovery:
    """List every served resource type that supports list and watch, at its group's preferred version.

    Subresources (names with a slash) are skipped. A group whose version document cannot be read, such
    as an aggregated API whose server is down, is logged and left out. The core group must be readable.
    """
    versions = api.get_json("/api").get("versions") or []
    if "v1" not in versions:
        raise ApiError(200, "", f"the core API offers versions {versions}, not v1", "/api")
    types = _resource_types("", "v1", api.get_json("/api/v1"))
    failed: list[str] = []
    for group in api.get_json("/apis").get("groups") or []:
        name = group.get("name") or ""
        preferred = (group.get("preferredVersion") or {}).get("version")
        if not preferred:
            listed = group.get("versions") or []
            preferred = listed[0].get("version") if listed else None
        if not name or not preferred:
            continue
        try:
            document = api.get_json(f"/apis/{name}/{preferred}")
        except ApiError as error:
            log.warning(
                "API group discovery failed; its types are not watched until the next discovery",
                extra={"group": f"{name}/{preferred}", "status": error.status, "error": str(error)},
            )
            failed.append(f"{name}/{preferred}")
            continue
        types.extend(_resource_types(name, preferred, document))
    return Discovery(types, failed)


def _resource_types(group: str, version: str, document: dict[str, Any]) -> list[ResourceType]:
    types = []
    for entry in document.get("resources") or []:
        name = entry.get("name") or ""
        verbs = frozenset(entry.get("verbs") or ())
        if not name or "/" in name or not REQUIRED_VERBS <= verbs or not entry.get("kind"):
            continue
        types.append(ResourceType(group, version, name, entry["kind"], bool(entry.get("namespaced")), verbs))
    return types
