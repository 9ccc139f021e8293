"""Reading recorded Kubernetes history into resource changes.

Each file is read as a JSON stream or as YAML. A JSON stream contains JSON values one per line or
pretty-printed over several lines, as `kubectl get -w -o json --output-watch-events` prints them.
`.yaml` and `.yml` files are YAML, `.json`, `.jsonl` and `.ndjson` files are JSON, and other files are
JSON when their first character that is not blank or part of a `#` comment line is `{` or `[`.

Every value is one of:
- a watch event `{"type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR", "object": {...}}`,
- a Kubernetes object, a list of objects, or a `List`/`<Kind>List` with `items`,
- a workflow wrapper `{"workflow", "seq", "steps", "source", "object"}`. A file whose first value is a
  wrapper must contain only wrappers. Each workflow is replayed as its own cluster, in `seq` order,
  so such a file is read whole into memory before its first change is returned.

A watch event or wrapper may carry the observed time of its change in a `time` field (RFC 3339).
Otherwise the time comes from the object's timestamps, see object_time_ms.

Invalid input becomes a Rejection that names FILE:LINE, where LINE is the first line of the value.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson
import yaml

from connectors.publisher import dump_json, encode_object
from kdiag.errors import InputError
from kdiag.model import CHANGE_TYPES, ResourceChange, parse_time_ms

CLUSTER_SCOPED_KINDS = frozenset(
    {
        "Node",
        "Namespace",
        "PersistentVolume",
        "StorageClass",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "APIService",
        "PriorityClass",
        "IngressClass",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "CSIDriver",
        "VolumeAttachment",
    }
)
YAML_SUFFIXES = frozenset({".yaml", ".yml"})
JSON_SUFFIXES = frozenset({".json", ".jsonl", ".ndjson"})
INPUT_SUFFIXES = YAML_SUFFIXES | JSON_SUFFIXES

# Fields of a watch-event or wrapper line that may carry the time the change was observed.
RECORD_TIME_FIELD = "time"
EVENT_TIME_FIELDS = (
    ("lastTimestamp",),
    ("series", "lastObservedTime"),
    ("eventTime",),
    ("firstTimestamp",),
    ("metadata", "creationTimestamp"),
)
CONDITION_TIME_FIELDS = ("lastTransitionTime", "lastUpdateTime", "lastHeartbeatTime", "lastProbeTime")
CONTAINER_STATUS_FIELDS = ("containerStatuses", "initContainerStatuses")


class MalformedRecord(Exception):
    """A value that cannot become a change. The message is the reason a dead letter carries."""


@dataclass(frozen=True, slots=True)
class LocatedChange:
    """A change and the FILE:LINE it was read from."""

    change: ResourceChange
    origin: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """Input that was not replayed, with FILE:LINE, the reason and the input as read."""

    origin: str
    reason: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Skipped:
    """Input that carries no change, such as a BOOKMARK watch event."""

    origin: str
    reason: str


ReplayItem = LocatedChange | Rejection | Skipped


# Identity and time of objects


@dataclass(frozen=True, slots=True)
class Identity:
    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    resource_version: str


def fill_identity(cluster: str, obj: dict[str, Any], fallback_version: int) -> Identity:
    """Return the object's identity, filling what a partial dump omits into the object itself.

    Missing namespace: "" for cluster-scoped kinds, the involved object's namespace for an Event, else
    "default". Missing uid: "replay-" and 32 hex digits of the SHA-1 of cluster/apiVersion/kind/namespace/
    name. Missing resourceVersion: `fallback_version`. Missing Event name: the involved object's name
    and 16 hex digits of the SHA-1 of the event's JSON. Missing apiVersion: "v1".
    Raises MalformedRecord for an object without kind or, unless it is an Event, without a name.
    """
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        raise MalformedRecord("object has no kind; expected a Kubernetes object with kind and metadata.name")
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise MalformedRecord(f"metadata of the {kind} is a {type(metadata).__name__}, expected a mapping")
    api_version = obj.get("apiVersion")
    if not isinstance(api_version, str) or not api_version:
        api_version = "v1"

    involved = obj.get("involvedObject") if kind == "Event" else None
    if not isinstance(involved, dict):
        involved = {}

    namespace = metadata.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        if kind in CLUSTER_SCOPED_KINDS:
            namespace = ""
        else:
            # Kubernetes stores an Event in the namespace of the object it is about.
            involved_namespace = involved.get("namespace")
            namespace = involved_namespace if isinstance(involved_namespace, str) and involved_namespace else "default"

    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        if kind != "Event":
            raise MalformedRecord(f"{kind} has no metadata.name")
        involved_name = involved.get("name")
        prefix = involved_name if isinstance(involved_name, str) and involved_name else "event"
        digest = hashlib.sha1(dump_json(obj, sort_keys=True)).hexdigest()
        name = f"{prefix}.{digest[:16]}"

    uid = metadata.get("uid")
    if not isinstance(uid, str) or not uid:
        seed = f"{cluster}/{api_version}/{kind}/{namespace}/{name}"
        uid = "replay-" + hashlib.sha1(seed.encode()).hexdigest()[:32]

    version = metadata.get("resourceVersion")
    if isinstance(version, (str, int)) and not isinstance(version, bool) and str(version):
        resource_version = str(version)
    else:
        resource_version = str(fallback_version)

    filled = {"name": name, "uid": uid}
    if namespace:
        filled["namespace"] = namespace
    if any(metadata.get(key) != value for key, value in filled.items()):
        obj["metadata"] = {**metadata, **filled}
    return Identity(api_version, kind, namespace, name, uid, resource_version)


def object_time_ms(obj: dict[str, Any]) -> int | None:
    """Return the time an object shows it was last changed, in epoch milliseconds, or None.

    For an Event: the first present of lastTimestamp, series.lastObservedTime, eventTime,
    firstTimestamp and metadata.creationTimestamp. For other kinds: the latest of
    metadata.creationTimestamp, metadata.deletionTimestamp minus deletionGracePeriodSeconds,
    status.startTime, the condition times and the container states' startedAt and finishedAt.
    """
    if obj.get("kind") == "Event":
        for path in EVENT_TIME_FIELDS:
            value = _time_at(obj, path)
            if value is not None:
                return value
        return None

    metadata = _mapping(obj.get("metadata"))
    status = _mapping(obj.get("status"))
    candidates = [parse_time_ms(metadata.get("creationTimestamp")), parse_time_ms(status.get("startTime"))]

    deletion = parse_time_ms(metadata.get("deletionTimestamp"))
    if deletion is not None:
        grace = metadata.get("deletionGracePeriodSeconds")
        if isinstance(grace, (int, float)) and not isinstance(grace, bool):
            # The API server sets deletionTimestamp to the request time plus the grace period.
            deletion -= int(grace * 1000)
        candidates.append(deletion)

    for condition in _list(status.get("conditions")):
        condition = _mapping(condition)
        candidates.extend(parse_time_ms(condition.get(name)) for name in CONDITION_TIME_FIELDS)

    for status_field in CONTAINER_STATUS_FIELDS:
        for container in _list(status.get(status_field)):
            container = _mapping(container)
            for state_field in ("state", "lastState"):
                for state in _mapping(container.get(state_field)).values():
                    state = _mapping(state)
                    candidates.append(parse_time_ms(state.get("startedAt")))
                    candidates.append(parse_time_ms(state.get("finishedAt")))

    present = [value for value in candidates if value is not None]
    return max(present) if present else None


def _time_at(obj: dict[str, Any], path: tuple[str, ...]) -> int | None:
    value: Any = obj
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return parse_time_ms(value)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# Changes


@dataclass(slots=True)
class _LiveObject:
    identity: Identity
    object_json: bytes


@dataclass(slots=True)
class _ClusterState:
    clock_ms: int | None = None
    # (kind, namespace, name) -> the newest state of the object that currently has that name.
    live: dict[tuple[str, str, str], _LiveObject] = field(default_factory=dict)
    # uid -> (kind, namespace, name) of every object that was seen and not deleted.
    live_uids: dict[str, tuple[str, str, str]] = field(default_factory=dict)


class ChangeBuilder:
    """Turns objects into ResourceChanges and keeps per-cluster state across files.

    The state is the cluster's clock and the live object of every (kind, namespace, name), which
    decide the observed time and, for inputs without a change type, ADDED, MODIFIED or DELETED.
    """

    def __init__(self, cluster: str, start_ms: int, step_ms: int) -> None:
        self.cluster = cluster
        self.start_ms = start_ms
        self.step_ms = step_ms
        self._clusters: dict[str, _ClusterState] = {}
        self._untimed_changes = 0
        self._file_changes = 0

    def start_file(self) -> None:
        """Restart the per-file counters: the --start/--step sequence and the resourceVersion fallback."""
        self._untimed_changes = 0
        self._file_changes = 0

    @property
    def clusters(self) -> list[str]:
        """Cluster names in the order of their first change."""
        return list(self._clusters)

    def clock_ms(self, cluster: str) -> int | None:
        state = self._clusters.get(cluster)
        return state.clock_ms if state else None

    def workflow_cluster(self, workflow: str) -> str:
        return f"{self.cluster}.{workflow.replace('/', '-')}"

    def from_watch_event(
        self, cluster: str, change_type: str, obj: dict[str, Any], record_time_ms: int | None = None
    ) -> list[ResourceChange]:
        """Build the change of one watch event, whose type is given."""
        identity, state, time_ms = self._prepare(cluster, obj, record_time_ms)
        change = self._change(cluster, identity, change_type, time_ms, encode_object(obj))
        key = (identity.kind, identity.namespace, identity.name)
        if change_type == "DELETED":
            state.live.pop(key, None)
            state.live_uids.pop(identity.uid, None)
        else:
            self._remember(state, key, identity, change.object_json)
        return [change]

    def from_object(self, cluster: str, obj: dict[str, Any], record_time_ms: int | None = None) -> list[ResourceChange]:
        """Build the changes of an object seen without a change type.

        The first sighting of a uid is ADDED and later ones are MODIFIED. When the name was last held
        by another uid, a DELETED of that object, with its last state, comes first.
        """
        identity, state, time_ms = self._prepare(cluster, obj, record_time_ms)
        key = (identity.kind, identity.namespace, identity.name)
        changes: list[ResourceChange] = []
        previous = state.live.get(key)
        if previous is not None and previous.identity.uid != identity.uid:
            changes.append(self._change(cluster, previous.identity, "DELETED", time_ms, previous.object_json))
            del state.live[key]
            state.live_uids.pop(previous.identity.uid, None)
        change_type = "MODIFIED" if identity.uid in state.live_uids else "ADDED"
        change = self._change(cluster, identity, change_type, time_ms, encode_object(obj))
        changes.append(change)
        self._remember(state, key, identity, change.object_json)
        return changes

    def _prepare(
        self, cluster: str, obj: dict[str, Any], record_time_ms: int | None
    ) -> tuple[Identity, _ClusterState, int]:
        self._file_changes += 1
        identity = fill_identity(cluster, obj, self._file_changes)
        candidate = record_time_ms if record_time_ms is not None else object_time_ms(obj)
        if candidate is None:
            candidate = self.start_ms + self._untimed_changes * self.step_ms
            self._untimed_changes += 1
        state = self._clusters.setdefault(cluster, _ClusterState())
        # A cluster's clock never goes backwards, so durations measured on it are never negative.
        if state.clock_ms is None or candidate > state.clock_ms:
            state.clock_ms = candidate
        return identity, state, state.clock_ms

    @staticmethod
    def _remember(state: _ClusterState, key: tuple[str, str, str], identity: Identity, object_json: bytes) -> None:
        old_key = state.live_uids.get(identity.uid)
        if old_key is not None and old_key != key:
            state.live.pop(old_key, None)
        state.live[key] = _LiveObject(identity, object_json)
        state.live_uids[identity.uid] = key

    @staticmethod
    def _change(cluster: str, identity: Identity, change_type: str, time_ms: int, object_json: bytes) -> ResourceChange:
        return ResourceChange(
            cluster=cluster,
            api_version=identity.api_version,
            kind=identity.kind,
            namespace=identity.namespace,
            name=identity.name,
            uid=identity.uid,
            resource_version=identity.resource_version,
            change_type=change_type,  # type: ignore[arg-type]
            observed_time_ms=time_ms,
            object_json=object_json,
        )


# Parsing


@dataclass(frozen=True, slots=True)
class ParsedValue:
    """One top-level JSON or YAML value and the line it starts on.

    `item_lines` gives the start line of each element of the value (a list) or of its `items` (a List
    object) when the parser provides them. The YAML parser does. The JSON parser does not, so the
    elements of a JSON list are reported at the line where the list starts.
    """

    line: int
    value: Any
    item_lines: list[int] | None = None


# First bytes of a line inside a pretty-printed value: indentation, a closing bracket or a line break.
_CONTINUATION_START = frozenset({b" ", b"\t", b"}", b"]", b"\r", b"\n"})
_CLOSING_START = frozenset({b"}", b"]"})


def parse_json_stream(lines: Iterable[tuple[int, bytes]], origin: Callable[[int], str]) -> Iterator[ParsedValue | Rejection]:
    """Parse JSON values written one per line or pretty-printed over several lines.

    Pretty printers such as kubectl indent everything inside a top-level value and close it with `}`
    or `]` in column 0. So a value that does not parse on its first line is collected until it parses
    at such a closing line. A line that starts in column 0 with anything but `}` or `]` begins a new
    value, even when the previous one is incomplete, so one broken value costs only itself.
    """
    buffer: list[bytes] = []
    start = 0
    for number, raw in lines:
        if buffer and raw[:1] not in _CONTINUATION_START:
            yield from _decode_values(start, b"".join(buffer), origin)
            buffer = []
        if not buffer:
            stripped = raw.strip()
            if not stripped:
                continue
            try:
                yield ParsedValue(number, orjson.loads(stripped))
                continue
            except orjson.JSONDecodeError:
                buffer = [raw]
                start = number
                continue
        buffer.append(raw)
        if raw[:1] in _CLOSING_START:
            try:
                value = orjson.loads(b"".join(buffer))
            except orjson.JSONDecodeError:
                continue
            yield ParsedValue(start, value)
            buffer = []
    if buffer:
        yield from _decode_values(start, b"".join(buffer), origin)


def _decode_values(start: int, raw: bytes, origin: Callable[[int], str]) -> Iterator[ParsedValue | Rejection]:
    """Decode one or more whitespace-separated JSON values that start on line `start`."""
    try:
        yield ParsedValue(start, orjson.loads(raw))
        return
    except orjson.JSONDecodeError:
        pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        yield Rejection(origin(start), f"invalid UTF-8: {error.reason} at byte {error.start}", raw)
        return
    decoder = json.JSONDecoder()
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return
        line = start + text.count("\n", 0, position)
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            if error.pos >= len(text.rstrip()):
                reason = "incomplete JSON value: the input ends or the next value starts before its brackets close"
            else:
                reason = f"invalid JSON: {error.msg} at line {start + error.lineno - 1} column {error.colno}"
            yield Rejection(origin(line), reason, text[position:].encode())
            return
        yield ParsedValue(line, value)
        position = end


class _YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML loader that keeps timestamps as the strings written in the file."""


_YamlLoader.add_constructor("tag:yaml.org,2002:timestamp", _YamlLoader.construct_yaml_str)

_DOCUMENT_START = re.compile(rb"^---(\s|$)")
_DOCUMENT_END = re.compile(rb"^\.\.\.(\s|$)")


def _yaml_documents(lines: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """Split YAML into documents at `---` and `...` lines, returning each with its first line number.

    Parsing each document on its own means that a syntax error costs only its own document.
    Comment and directive lines before a `---` stay with the document that follows.
    """
    chunk: list[bytes] = []
    start = 1
    has_content = False
    for number, raw in lines:
        if _DOCUMENT_END.match(raw):
            if has_content:
                yield start, b"".join(chunk)
            chunk, has_content = [], False
            continue
        if _DOCUMENT_START.match(raw) and has_content:
            yield start, b"".join(chunk)
            chunk, has_content = [], False
        if not chunk:
            start = number
        chunk.append(raw)
        has_content = has_content or _is_yaml_content(raw)
    if has_content:
        yield start, b"".join(chunk)


def _is_yaml_content(raw: bytes) -> bool:
    """Return whether a line contains YAML data, as opposed to a blank, comment, directive or bare `---` line."""
    if _DOCUMENT_START.match(raw):
        raw = raw[3:]
    stripped = raw.strip()
    return bool(stripped) and not stripped.startswith((b"#", b"%"))


def parse_yaml_stream(lines: Iterable[tuple[int, bytes]], origin: Callable[[int], str]) -> Iterator[ParsedValue | Rejection]:
    """Parse YAML documents, returning the top-level value of each with its line numbers."""
    for start, text in _yaml_documents(lines):
        loader = _YamlLoader(text)
        try:
            while loader.check_node():
                node = loader.get_node()
                if node is None:
                    continue
                value = loader.construct_document(node)
                if value is None:
                    continue
                line = start + node.start_mark.line
                yield ParsedValue(line, value, _yaml_item_lines(node, start))
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
            line = start + mark.line if mark is not None else start
            problem = getattr(error, "problem", None) or str(error)
            context = getattr(error, "context", None)
            reason = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
            yield Rejection(origin(line), reason, text)
        finally:
            loader.dispose()


def _yaml_item_lines(node: yaml.Node, start: int) -> list[int] | None:
    if isinstance(node, yaml.SequenceNode):
        return [start + item.start_mark.line for item in node.value]
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "items" and isinstance(value, yaml.SequenceNode):
                return [start + item.start_mark.line for item in value.value]
    return None


def detect_format(path: Path, head: bytes) -> str:
    """Return "yaml" or "json" for a file, from its suffix or else from its first significant byte."""
    suffix = path.suffix.lower()
    if suffix in YAML_SUFFIXES:
        return "yaml"
    if suffix in JSON_SUFFIXES:
        return "json"
    for line in head.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(b"#"):
            continue
        return "json" if stripped[:1] in (b"{", b"[") else "yaml"
    return "yaml"


# Records


def _is_watch_event(value: dict[str, Any]) -> bool:
    return "type" in value and "object" in value and "kind" not in value


def _is_wrapper(value: Any) -> bool:
    return isinstance(value, dict) and "workflow" in value and "object" in value and "kind" not in value


def _record_time(record: dict[str, Any]) -> int | None:
    value = record.get(RECORD_TIME_FIELD)
    if value is None:
        return None
    time_ms = parse_time_ms(value)
    if time_ms is None:
        raise MalformedRecord(f"invalid {RECORD_TIME_FIELD} {value!r}; expected RFC 3339, e.g. 2020-01-01T00:00:00Z")
    return time_ms


@dataclass(slots=True)
class _Wrapper:
    origin: str
    workflow: str
    seq: int
    record: dict[str, Any]


def _type_name(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", type(None): "null"}.get(type(value), type(value).__name__)


class FileReader:
    """Reads one file into ReplayItems, using a ChangeBuilder shared by all files of a replay."""

    def __init__(self, path: Path, builder: ChangeBuilder, progress: Callable[[int], object] | None = None) -> None:
        self.path = path
        self.builder = builder
        self.progress = progress

    def origin(self, line: int) -> str:
        return f"{self.path}:{line}"

    def items(self) -> Iterator[ReplayItem]:
        """Return the file's changes, rejections and skipped records, in replay order.

        Raises InputError when the file cannot be opened or read.
        """
        try:
            handle = open(self.path, "rb")
        except OSError as error:
            raise InputError(
                f"failed to open {self.path}: {error.strerror}; check the path and that the file is readable"
            ) from None
        with handle:
            head = handle.read(64 * 1024)
            handle.seek(0)
            fmt = detect_format(self.path, head)
            lines = self._numbered_lines(handle)
            values = parse_yaml_stream(lines, self.origin) if fmt == "yaml" else parse_json_stream(lines, self.origin)
            self.builder.start_file()
            yield from self._records(values)

    def _numbered_lines(self, handle: Any) -> Iterator[tuple[int, bytes]]:
        try:
            for number, raw in enumerate(handle, start=1):
                if self.progress is not None:
                    self.progress(len(raw))
                yield number, raw
        except OSError as error:
            raise InputError(f"failed to read {self.path}: {error.strerror}; check the file and the disk") from None

    def _records(self, values: Iterator[ParsedValue | Rejection]) -> Iterator[ReplayItem]:
        wrappers: list[_Wrapper] | None = None
        first = True
        for entry in values:
            if isinstance(entry, Rejection):
                yield entry
                continue
            if first:
                first = False
                if _is_wrapper(entry.value):
                    wrappers = []
            if wrappers is not None:
                yield from self._collect_wrapper(entry, wrappers)
            else:
                yield from self._value(entry)
        if wrappers:
            yield from self._replay_wrappers(wrappers)

    def _value(self, entry: ParsedValue) -> Iterator[ReplayItem]:
        value = entry.value
        if isinstance(value, list):
            for index, item in enumerate(value):
                line = entry.item_lines[index] if entry.item_lines else entry.line
                yield from self._record(line, item, None)
        else:
            yield from self._record(entry.line, value, entry.item_lines)

    def _record(self, line: int, value: Any, item_lines: list[int] | None) -> Iterator[ReplayItem]:
        origin = self.origin(line)
        if not isinstance(value, dict):
            yield self._reject(origin, f"expected a Kubernetes object or a watch event, got a {_type_name(value)}", value)
            return
        try:
            if _is_wrapper(value):
                raise MalformedRecord(
                    "workflow wrapper in a file whose first record is not a wrapper; keep wrapper lines in their own file"
                )
            if _is_watch_event(value):
                yield from self._watch_event(origin, value)
                return
            kind = value.get("kind")
            if isinstance(kind, str) and kind.endswith("List") and "items" in value:
                yield from self._list_items(line, value, item_lines)
                return
            yield from self._located(origin, self.builder.from_object(self.builder.cluster, value))
        except MalformedRecord as error:
            yield self._reject(origin, str(error), value)
        except orjson.JSONEncodeError as error:
            yield self._reject(origin, f"object is not representable as JSON: {error}", value)

    def _watch_event(self, origin: str, event: dict[str, Any]) -> Iterator[ReplayItem]:
        event_type = event.get("type")
        obj = event.get("object")
        if event_type == "BOOKMARK":
            yield Skipped(origin, "BOOKMARK watch event")
            return
        if event_type == "ERROR":
            status = _mapping(obj)
            details = status.get("message") or status.get("reason") or "no message"
            yield self._reject(origin, f"watch ERROR event: {details}", event)
            return
        if event_type not in CHANGE_TYPES:
            raise MalformedRecord(
                f"unknown watch event type {event_type!r}; expected ADDED, MODIFIED, DELETED, BOOKMARK or ERROR"
            )
        if not isinstance(obj, dict):
            raise MalformedRecord(f"the object of the watch event is a {_type_name(obj)}, expected a mapping")
        time_ms = _record_time(event)
        yield from self._located(origin, self.builder.from_watch_event(self.builder.cluster, event_type, obj, time_ms))

    def _list_items(self, line: int, value: dict[str, Any], item_lines: list[int] | None) -> Iterator[ReplayItem]:
        items = value["items"]
        if not isinstance(items, list):
            raise MalformedRecord(f"items of the {value['kind']} is a {_type_name(items)}, expected a list")
        # The API server leaves kind and apiVersion out of the items of a typed list such as PodList.
        item_kind = value["kind"][: -len("List")] or None
        item_api_version = value.get("apiVersion")
        for index, item in enumerate(items):
            item_line = item_lines[index] if item_lines and index < len(item_lines) else line
            if isinstance(item, dict) and item_kind and "kind" not in item:
                item = {"apiVersion": item_api_version, "kind": item_kind, **item} if item_api_version else {"kind": item_kind, **item}
            yield from self._record(item_line, item, None)

    def _collect_wrapper(self, entry: ParsedValue, wrappers: list[_Wrapper]) -> Iterator[ReplayItem]:
        origin = self.origin(entry.line)
        value = entry.value
        if not _is_wrapper(value):
            yield self._reject(origin, "expected a workflow wrapper {workflow, seq, object} like the first line", value)
            return
        workflow = value.get("workflow")
        seq = value.get("seq")
        if not isinstance(workflow, str) or not workflow:
            yield self._reject(origin, "the wrapper's workflow is missing or not a string", value)
        elif not isinstance(seq, int) or isinstance(seq, bool):
            yield self._reject(origin, f"the wrapper's seq is {seq!r}, expected an integer", value)
        elif not isinstance(value["object"], dict):
            yield self._reject(origin, f"the wrapper's object is a {_type_name(value['object'])}, expected a mapping", value)
        else:
            wrappers.append(_Wrapper(origin, workflow, seq, value))

    def _replay_wrappers(self, wrappers: list[_Wrapper]) -> Iterator[ReplayItem]:
        """Replay workflows in the order of their first line, and each workflow's steps in seq order."""
        first_seen: dict[str, int] = {}
        for wrapper in wrappers:
            first_seen.setdefault(wrapper.workflow, len(first_seen))
        for wrapper in sorted(wrappers, key=lambda item: (first_seen[item.workflow], item.seq)):
            cluster = self.builder.workflow_cluster(wrapper.workflow)
            try:
                time_ms = _record_time(wrapper.record)
                changes = self.builder.from_object(cluster, wrapper.record["object"], time_ms)
            except MalformedRecord as error:
                yield self._reject(wrapper.origin, str(error), wrapper.record)
                continue
            except orjson.JSONEncodeError as error:
                yield self._reject(wrapper.origin, f"object is not representable as JSON: {error}", wrapper.record)
                continue
            yield from self._located(wrapper.origin, changes)

    @staticmethod
    def _located(origin: str, changes: list[ResourceChange]) -> Iterator[LocatedChange]:
        for change in changes:
            yield LocatedChange(change, origin)

    @staticmethod
    def _reject(origin: str, reason: str, value: Any) -> Rejection:
        try:
            payload = dump_json(value)
        except TypeError:
            payload = repr(value).encode()
        return Rejection(origin, reason, payload)


def read_file(path: Path, builder: ChangeBuilder, progress: Callable[[int], object] | None = None) -> Iterator[ReplayItem]:
    """Read one file into changes, rejections and skipped records. See FileReader.items."""
    return FileReader(path, builder, progress).items()


def expand_inputs(arguments: Iterable[str]) -> list[Path]:
    """Return the input files: each file argument, and the files under each folder argument.

    A folder contributes its .json, .jsonl, .ndjson, .yaml and .yml files, recursively and sorted by
    path, skipping hidden files and folders. Raises InputError for a path that does not exist, a file
    that cannot be opened or a folder without input files.
    """
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(
                candidate
                for candidate in path.rglob("*")
                if candidate.is_file()
                and candidate.suffix.lower() in INPUT_SUFFIXES
                and not any(part.startswith(".") for part in candidate.relative_to(path).parts)
            )
            if not found:
                raise InputError(
                    f"no input files in folder {path}; expected files ending in "
                    f"{', '.join(sorted(INPUT_SUFFIXES))}, or name the files themselves"
                )
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            raise InputError(f"input {path} does not exist; check the path")
    for path in paths:
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise InputError(
                f"failed to open {path}: {error.strerror}; check the path and that the file is readable"
            ) from None
    return paths
