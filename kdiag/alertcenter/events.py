"""The one event model of the alert center, and converters from every source.

Every converter raises DecodeError, naming the field and the problem, on input it cannot convert,
so that a connector can write the input to the dead-letter topic with that reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from kdiag.errors import DecodeError
from kdiag.model import parse_time_ms

DIAGNOSIS = "DIAGNOSIS"
KUBERNETES_EVENT = "KUBERNETES_EVENT"
PROBE_HEARTBEAT = "PROBE_HEARTBEAT"
ALERTMANAGER = "ALERTMANAGER"
SOURCES = (DIAGNOSIS, KUBERNETES_EVENT, PROBE_HEARTBEAT, ALERTMANAGER)

FIRING = "FIRING"
RESOLVED = "RESOLVED"
STATUSES = (FIRING, RESOLVED)

# Rule names of events whose source has no rules of its own.
KUBERNETES_WARNING_RULE = "KubernetesWarning"
PROBE_CHECK_RULE = "ProbeCheckFailed"

ALERTMANAGER_WEBHOOK_VERSION = "4"
# Alertmanager writes Go's zero time for an alert without an end.
GO_ZERO_TIME_PREFIX = "0001-01-01"

# Labels of Alertmanager alerts that name the object an alert is about, as kube-state-metrics and
# node-exporter write them, in order of preference.
OBJECT_LABELS = (
    ("pod", "Pod"),
    ("deployment", "Deployment"),
    ("statefulset", "StatefulSet"),
    ("daemonset", "DaemonSet"),
    ("job_name", "Job"),
    ("cronjob", "CronJob"),
    ("persistentvolumeclaim", "PersistentVolumeClaim"),
    ("node", "Node"),
)

LABELS_CONTEXT_PREFIX = "metadata.labels."


@dataclass(frozen=True, slots=True)
class OwnerRef:
    kind: str
    name: str
    uid: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    """One signal from any source, in the field names of schemas/event.avsc (in snake case)."""

    id: str
    source: str
    source_fingerprint: str
    status: str
    rule: str
    observed_time_ms: int
    starts_at_ms: int
    reason: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    cluster: str = ""
    namespace: str = ""
    kind: str = ""
    name: str = ""
    uid: str = ""
    owners: tuple[OwnerRef, ...] = ()
    node: str = ""
    zone: str = ""
    application: str = ""
    tenant: str = ""
    ends_at_ms: int | None = None
    message: str = ""
    root_cause: Mapping[str, Any] | None = None
    heartbeat: Mapping[str, Any] | None = None

    def with_root_cause(self, root_cause: Mapping[str, Any] | None) -> "Event":
        return replace(self, root_cause=root_cause)

    def to_avro(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "sourceFingerprint": self.source_fingerprint,
            "status": self.status,
            "rule": self.rule,
            "reason": self.reason,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "cluster": self.cluster,
            "namespace": self.namespace,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "owners": [{"kind": owner.kind, "name": owner.name, "uid": owner.uid} for owner in self.owners],
            "node": self.node,
            "zone": self.zone,
            "application": self.application,
            "tenant": self.tenant,
            "observedTime": self.observed_time_ms,
            "startsAt": self.starts_at_ms,
            "endsAt": self.ends_at_ms,
            "message": self.message,
            "rootCause": self.root_cause,
            "heartbeat": self.heartbeat,
        }

    @classmethod
    def from_avro(cls, datum: Mapping[str, Any]) -> "Event":
        return cls(
            id=datum["id"],
            source=datum["source"],
            source_fingerprint=datum["sourceFingerprint"],
            status=datum["status"],
            rule=datum["rule"],
            reason=datum["reason"],
            labels=dict(datum["labels"]),
            annotations=dict(datum["annotations"]),
            cluster=datum["cluster"],
            namespace=datum["namespace"],
            kind=datum["kind"],
            name=datum["name"],
            uid=datum["uid"],
            owners=tuple(OwnerRef(owner["kind"], owner["name"], owner["uid"]) for owner in datum["owners"]),
            node=datum["node"],
            zone=datum["zone"],
            application=datum["application"],
            tenant=datum["tenant"],
            observed_time_ms=datum["observedTime"],
            starts_at_ms=datum["startsAt"],
            ends_at_ms=datum["endsAt"],
            message=datum["message"],
            root_cause=datum["rootCause"],
            heartbeat=datum["heartbeat"],
        )


def event_id(*parts: object) -> str:
    """Hash the parts into a 32-hex-digit id, so the same input always gives the same id."""
    text = "\x1f".join(str(part) for part in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# Diagnoses from the rule worker


def alert_to_event(
    alert: Mapping[str, Any],
    root_cause: Mapping[str, Any] | None = None,
    obj: Mapping[str, Any] | None = None,
) -> Event:
    """Convert an Alert record of the rule worker (schemas/alert.avsc) into a DIAGNOSIS event.

    `root_cause` is the RootCause the root-cause stage attached. `obj`, if given, is the alerting
    object's manifest, whose labels and ownerReferences feed enrichment. Without it, labels come from
    the rule's matched fields under metadata.labels. The event's reason is the value of the first
    matched field (in path order) whose path ends with "reason", e.g. a container's waiting reason.
    """
    where = "Alert"
    status = _required_str(alert, "status", where)
    if status not in STATUSES:
        raise DecodeError(f"{where} field status: expected FIRING or RESOLVED, got {status!r}")
    context = _string_map(alert.get("context") or {}, f"{where} field context")
    active_since = _required_int(alert, "activeSince", where)
    if status == FIRING:
        observed = _required_int(alert, "firedAt", where)
        ends_at = None
    else:
        observed = alert.get("resolvedAt")
        if not isinstance(observed, int):
            raise DecodeError(f"{where} field resolvedAt: a RESOLVED alert needs a time in ms, got {observed!r}")
        ends_at = observed

    labels = {
        path[len(LABELS_CONTEXT_PREFIX):]: value
        for path, value in context.items()
        if path.startswith(LABELS_CONTEXT_PREFIX)
    }
    owners: tuple[OwnerRef, ...] = ()
    if obj is not None:
        metadata = _mapping(obj.get("metadata") or {}, "object field metadata")
        labels.update(_string_map(metadata.get("labels") or {}, "object field metadata.labels"))
        owners = owner_references(metadata)
    reason = next(
        (value for path, value in sorted(context.items()) if path.lower().endswith("reason") and value),
        "",
    )
    kind = _required_str(alert, "kind", where)
    namespace = _required_str(alert, "namespace", where)
    name = _required_str(alert, "name", where)
    rule = _required_str(alert, "rule", where)
    return Event(
        id=event_id(DIAGNOSIS, _required_str(alert, "id", where), status),
        source=DIAGNOSIS,
        source_fingerprint=_required_str(alert, "fingerprint", where),
        status=status,
        rule=rule,
        observed_time_ms=observed,
        starts_at_ms=active_since,
        ends_at_ms=ends_at,
        reason=reason,
        labels=labels,
        annotations=context,
        cluster=_required_str(alert, "cluster", where),
        namespace=namespace,
        kind=kind,
        name=name,
        uid=str(alert.get("uid") or ""),
        owners=owners,
        message=f"{rule} on {kind} {namespace or '-'}/{name}",
        root_cause=root_cause,
    )


def owner_references(metadata: Mapping[str, Any]) -> tuple[OwnerRef, ...]:
    """Return the controller owner (or else the first owner) from metadata.ownerReferences."""
    references = metadata.get("ownerReferences") or []
    if not isinstance(references, list):
        raise DecodeError(f"object field metadata.ownerReferences: expected a list, got {type(references).__name__}")
    chosen = None
    for index, reference in enumerate(references):
        if not isinstance(reference, Mapping) or not reference.get("kind") or not reference.get("name"):
            raise DecodeError(f"object field metadata.ownerReferences[{index}]: expected kind and name, got {reference!r}")
        if chosen is None or reference.get("controller") is True:
            chosen = reference
    if chosen is None:
        return ()
    return (OwnerRef(str(chosen["kind"]), str(chosen["name"]), str(chosen.get("uid") or "")),)


# Kubernetes Events


def kubernetes_event_to_event(
    obj: Mapping[str, Any],
    cluster: str,
    involved_object: Mapping[str, Any] | None = None,
    rule: str = KUBERNETES_WARNING_RULE,
) -> Event | None:
    """Convert a Kubernetes Event object (core/v1 or events.k8s.io/v1) into a KUBERNETES_EVENT event.

    Returns None for events of type Normal: only Warning events become alerts. Kubernetes never
    resolves an Event, so the alert center expires these after a quiet period instead.
    `involved_object`, if given, is the manifest of the object the Event is about, whose labels and
    ownerReferences feed enrichment.
    """
    if not isinstance(obj, Mapping):
        raise DecodeError(f"Kubernetes Event: expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("kind")
    if kind != "Event":
        raise DecodeError(f"Kubernetes Event field kind: expected Event, got {kind!r}")
    event_type = obj.get("type")
    if event_type == "Normal":
        return None
    if event_type != "Warning":
        raise DecodeError(f"Kubernetes Event field type: expected Warning or Normal, got {event_type!r}")
    metadata = _mapping(obj.get("metadata") or {}, "Kubernetes Event field metadata")
    # core/v1 names the object involvedObject, events.k8s.io/v1 names it regarding.
    involved_field = "regarding" if "regarding" in obj else "involvedObject"
    involved = _mapping(obj.get(involved_field), f"Kubernetes Event field {involved_field}")
    involved_kind = _required_str(involved, "kind", f"Kubernetes Event field {involved_field}")
    involved_name = _required_str(involved, "name", f"Kubernetes Event field {involved_field}")
    reason = _required_str(obj, "reason", "Kubernetes Event")

    series = obj.get("series") if isinstance(obj.get("series"), Mapping) else {}
    observed = _first_time(
        obj,
        ("lastTimestamp",),
        extra=[series.get("lastObservedTime"), obj.get("eventTime"), metadata.get("creationTimestamp")],
    )
    if observed is None:
        raise DecodeError(
            "Kubernetes Event fields lastTimestamp, series.lastObservedTime, eventTime and "
            "metadata.creationTimestamp: expected at least one RFC 3339 time, found none"
        )
    first = _first_time(obj, ("firstTimestamp", "eventTime"), extra=[metadata.get("creationTimestamp")])
    source = obj.get("source") if isinstance(obj.get("source"), Mapping) else {}
    node = str(source.get("host") or "") if involved_kind != "Node" else involved_name

    labels: dict[str, str] = {}
    owners: tuple[OwnerRef, ...] = ()
    if involved_object is not None:
        involved_metadata = _mapping(involved_object.get("metadata") or {}, "involved object field metadata")
        labels = _string_map(involved_metadata.get("labels") or {}, "involved object field metadata.labels")
        owners = owner_references(involved_metadata)
    count = obj.get("count") or obj.get("deprecatedCount") or series.get("count") or 1
    namespace = str(involved.get("namespace") or metadata.get("namespace") or "")
    uid = str(involved.get("uid") or "")
    return Event(
        id=event_id(KUBERNETES_EVENT, cluster, metadata.get("uid") or metadata.get("name"), count, observed),
        source=KUBERNETES_EVENT,
        source_fingerprint=uid or f"{involved_kind}/{namespace}/{involved_name}",
        status=FIRING,
        rule=rule,
        observed_time_ms=observed,
        starts_at_ms=first if first is not None else observed,
        reason=reason,
        labels=labels,
        annotations={"count": str(count), "fieldPath": str(involved.get("fieldPath") or "")},
        cluster=cluster,
        namespace=namespace,
        kind=involved_kind,
        name=involved_name,
        uid=uid,
        owners=owners,
        node=node,
        message=str(obj.get("message") or obj.get("note") or ""),
    )


# Probe heartbeats


def probe_heartbeat_event(
    probe: str,
    checks: Sequence[tuple[str, int, str]],
    interval_ms: int,
    observed_ms: int,
    cluster: str = "",
    healthy_codes: range = range(200, 400),
) -> Event:
    """Build the PROBE_HEARTBEAT event of one round of a probe's checks: (name, status code, message).

    The event is FIRING when any check's status code is outside `healthy_codes`, and RESOLVED
    otherwise. Its reason lists the failing checks with their codes, e.g. "api=503".
    """
    if interval_ms <= 0:
        raise DecodeError(f"probe heartbeat field intervalMs: expected a positive number, got {interval_ms}")
    failing = [f"{name}={code}" for name, code, _ in checks if code not in healthy_codes]
    status = FIRING if failing else RESOLVED
    return Event(
        id=event_id(PROBE_HEARTBEAT, cluster, probe, observed_ms),
        source=PROBE_HEARTBEAT,
        source_fingerprint=probe,
        status=status,
        rule=PROBE_CHECK_RULE,
        observed_time_ms=observed_ms,
        starts_at_ms=observed_ms,
        ends_at_ms=None if failing else observed_ms,
        reason=",".join(failing),
        cluster=cluster,
        kind="Probe",
        name=probe,
        message=f"probe {probe}: {len(failing)} of {len(checks)} checks failing",
        heartbeat={
            "probe": probe,
            "intervalMs": interval_ms,
            "checks": [{"name": name, "statusCode": code, "message": text} for name, code, text in checks],
        },
    )


# Alertmanager webhooks


def alertmanager_payload_to_events(payload: bytes | str | Mapping[str, Any], received_ms: int, default_cluster: str = "") -> list[Event]:
    """Convert an Alertmanager webhook payload (version 4) into ALERTMANAGER events, one per alert.

    `received_ms` is the event time of every event: Alertmanager sends a still-firing alert again with
    the same startsAt, so only the time of receipt tells a repeat from the first notification. The
    cluster comes from the alert's cluster label, else `default_cluster`. Raises DecodeError on
    malformed input, naming the field, e.g. alerts[2].startsAt.
    """
    data = _parse_json(payload)
    if not isinstance(data, Mapping):
        raise DecodeError(f"Alertmanager webhook: expected a JSON object, got {type(data).__name__}")
    version = data.get("version")
    if version != ALERTMANAGER_WEBHOOK_VERSION:
        raise DecodeError(f"Alertmanager webhook field version: expected \"4\", got {version!r}")
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        raise DecodeError(f"Alertmanager webhook field alerts: expected a list, got {type(alerts).__name__}")
    common_labels = _string_map(data.get("commonLabels") or {}, "Alertmanager webhook field commonLabels")
    events = []
    for index, alert in enumerate(alerts):
        events.append(_alertmanager_alert(alert, f"alerts[{index}]", common_labels, received_ms, default_cluster))
    return events


def _alertmanager_alert(
    alert: Any, where: str, common_labels: Mapping[str, str], received_ms: int, default_cluster: str
) -> Event:
    if not isinstance(alert, Mapping):
        raise DecodeError(f"Alertmanager webhook field {where}: expected an object, got {type(alert).__name__}")
    raw_status = alert.get("status")
    if raw_status not in ("firing", "resolved"):
        raise DecodeError(f"Alertmanager webhook field {where}.status: expected firing or resolved, got {raw_status!r}")
    labels = {**common_labels, **_string_map(alert.get("labels"), f"Alertmanager webhook field {where}.labels")}
    alertname = labels.get("alertname")
    if not alertname:
        raise DecodeError(f"Alertmanager webhook field {where}.labels.alertname: missing or empty")
    annotations = _string_map(alert.get("annotations") or {}, f"Alertmanager webhook field {where}.annotations")
    starts_at = _am_time(alert.get("startsAt"), f"{where}.startsAt", required=True)
    ends_at = _am_time(alert.get("endsAt"), f"{where}.endsAt", required=False)
    fingerprint = alert.get("fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise DecodeError(f"Alertmanager webhook field {where}.fingerprint: expected a string, got {fingerprint!r}")
    if not fingerprint:
        fingerprint = event_id(*sorted(labels.items()))[:16]

    kind, name = "", ""
    for label, object_kind in OBJECT_LABELS:
        if labels.get(label):
            kind, name = object_kind, labels[label]
            break
    status = FIRING if raw_status == "firing" else RESOLVED
    if status == RESOLVED and ends_at is None:
        ends_at = received_ms
    summary = annotations.get("summary") or annotations.get("description") or annotations.get("message") or ""
    return Event(
        id=event_id(ALERTMANAGER, fingerprint, status, starts_at, ends_at, received_ms),
        source=ALERTMANAGER,
        source_fingerprint=fingerprint,
        status=status,
        rule=alertname,
        observed_time_ms=received_ms,
        starts_at_ms=starts_at,
        ends_at_ms=ends_at,
        reason=labels.get("reason", ""),
        labels=labels,
        annotations=annotations,
        cluster=labels.get("cluster") or default_cluster,
        namespace=labels.get("namespace", ""),
        kind=kind,
        name=name,
        node=labels.get("node", ""),
        message=summary,
    )


def _am_time(value: Any, where: str, required: bool) -> int | None:
    if value is None or value == "" or (isinstance(value, str) and value.startswith(GO_ZERO_TIME_PREFIX)):
        if required:
            raise DecodeError(f"Alertmanager webhook field {where}: missing; expected an RFC 3339 time")
        return None
    time_ms = parse_time_ms(value) if isinstance(value, str) else None
    if time_ms is None:
        raise DecodeError(f"Alertmanager webhook field {where}: expected an RFC 3339 time, got {value!r}")
    return time_ms


# Helpers


def _parse_json(payload: bytes | str | Mapping[str, Any]) -> Any:
    if isinstance(payload, Mapping):
        return payload
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise DecodeError(f"invalid JSON: {error}") from None


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DecodeError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise DecodeError(f"{where}: expected an object of strings, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise DecodeError(f"{where}.{key}: expected a string value, got {type(item).__name__}")
    return dict(value)


def _required_str(data: Mapping[str, Any], name: str, where: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise DecodeError(f"{where} field {name}: expected a string, got {value!r}")
    return value


def _required_int(data: Mapping[str, Any], name: str, where: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"{where} field {name}: expected a time in ms, got {value!r}")
    return value


def _first_time(obj: Mapping[str, Any], names: Sequence[str], extra: Sequence[Any] = ()) -> int | None:
    for value in [obj.get(name) for name in names] + list(extra):
        time_ms = parse_time_ms(value)
        if time_ms is not None:
            return time_ms
    return None
