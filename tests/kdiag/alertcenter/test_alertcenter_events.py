"""Converters into the one event model, and its Avro round trip."""

from __future__ import annotations

import copy

import orjson
import pytest

from kdiag.alertcenter.events import (
    ALERTMANAGER,
    DIAGNOSIS,
    FIRING,
    KUBERNETES_EVENT,
    PROBE_HEARTBEAT,
    RESOLVED,
    Event,
    OwnerRef,
    alert_to_event,
    alertmanager_payload_to_events,
    kubernetes_event_to_event,
    probe_heartbeat_event,
)
from kdiag.codec import codec
from kdiag.errors import DecodeError, KdiagError
from kdiag.model import parse_time_ms

EVENT = codec("Event")

RULE_WORKER_ALERT = {
    "id": "a1",
    "fingerprint": "f1",
    "status": "FIRING",
    "rule": "PodImagePullFailing",
    "cluster": "c1",
    "apiVersion": "v1",
    "kind": "Pod",
    "namespace": "shop",
    "name": "web-7d4b9c6f5-x2k8q",
    "uid": "u1",
    "resourceVersion": "7",
    "activeSince": 1_000,
    "firedAt": 61_000,
    "resolvedAt": None,
    "resolveReason": "",
    "context": {
        "status.containerStatuses[0].state.waiting.reason": "ImagePullBackOff",
        "status.containerStatuses[0].restartCount": "3",
        "metadata.labels.app": "web",
    },
}

ROOT_CAUSE = {
    "cause": "image-tag-not-found",
    "summary": "The image tag does not exist in the registry.",
    "responsibility": "USER",
    "fix": "Push the tag or fix the Deployment's image.",
    "findings": [],
}

# An Alertmanager webhook body of version 4. Firing alerts carry Go's zero time as endsAt.
ALERTMANAGER_PAYLOAD = {
    "version": "4",
    "groupKey": '{}:{alertname="KubePodCrashLooping"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "kdiag",
    "groupLabels": {"alertname": "KubePodCrashLooping"},
    "commonLabels": {"alertname": "KubePodCrashLooping", "cluster": "prod-1", "severity": "warning"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager.example:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"namespace": "shop", "pod": "web-7d4b9c6f5-x2k8q", "container": "web", "reason": "CrashLoopBackOff"},
            "annotations": {"summary": "Pod shop/web-7d4b9c6f5-x2k8q is crash looping."},
            "startsAt": "2024-03-01T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example/graph",
            "fingerprint": "a1b2c3d4e5f60718",
        },
        {
            "status": "resolved",
            "labels": {"namespace": "shop", "pod": "api-5f6d8b9c7-abcde"},
            "annotations": {},
            "startsAt": "2024-03-01T09:00:00Z",
            "endsAt": "2024-03-01T09:30:00Z",
            "generatorURL": "http://prometheus.example/graph",
            "fingerprint": "0718a1b2c3d4e5f6",
        },
    ],
}


def test_alert_to_event_firing():
    event = alert_to_event(RULE_WORKER_ALERT, root_cause=ROOT_CAUSE)
    assert event.source == DIAGNOSIS
    assert event.status == FIRING
    assert event.observed_time_ms == 61_000
    assert event.starts_at_ms == 1_000
    assert event.reason == "ImagePullBackOff"
    assert event.labels == {"app": "web"}
    assert event.annotations["status.containerStatuses[0].restartCount"] == "3"
    assert event.source_fingerprint == "f1"
    assert event.root_cause == ROOT_CAUSE
    assert (event.cluster, event.namespace, event.kind, event.name) == ("c1", "shop", "Pod", "web-7d4b9c6f5-x2k8q")


def test_alert_to_event_resolved_uses_resolved_at():
    alert = dict(RULE_WORKER_ALERT, status="RESOLVED", resolvedAt=99_000, resolveReason="recovered")
    event = alert_to_event(alert)
    assert event.status == RESOLVED
    assert event.observed_time_ms == 99_000
    assert event.ends_at_ms == 99_000
    assert event.id != alert_to_event(RULE_WORKER_ALERT).id


def test_alert_to_event_reads_owner_from_object():
    obj = {
        "metadata": {
            "labels": {"app.kubernetes.io/name": "shop-web"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d4b9c6f5", "uid": "rs1", "controller": True}],
        }
    }
    event = alert_to_event(RULE_WORKER_ALERT, obj=obj)
    assert event.owners == (OwnerRef("ReplicaSet", "web-7d4b9c6f5", "rs1"),)
    assert event.labels["app.kubernetes.io/name"] == "shop-web"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"status": "PENDING"}, "status"),
        ({"firedAt": "soon"}, "firedAt"),
        ({"status": "RESOLVED", "resolvedAt": None}, "resolvedAt"),
        ({"rule": None}, "rule"),
    ],
)
def test_alert_to_event_rejects_field(change, field):
    with pytest.raises(DecodeError, match=field):
        alert_to_event({**RULE_WORKER_ALERT, **change})


def kubernetes_event(event_type: str = "Warning", **changes):
    obj = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "web-7d4b9c6f5-x2k8q.17b", "namespace": "shop", "uid": "ev1"},
        "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web-7d4b9c6f5-x2k8q", "uid": "p1"},
        "reason": "BackOff",
        "message": 'Back-off pulling image "web:1.2"',
        "type": event_type,
        "count": 4,
        "firstTimestamp": "2024-03-01T10:00:00Z",
        "lastTimestamp": "2024-03-01T10:05:00Z",
        "source": {"component": "kubelet", "host": "node-a"},
    }
    obj.update(changes)
    return obj


def test_kubernetes_warning_event_converts():
    event = kubernetes_event_to_event(kubernetes_event(), cluster="c1")
    assert event is not None
    assert event.source == KUBERNETES_EVENT
    assert event.rule == "KubernetesWarning"
    assert event.reason == "BackOff"
    assert event.node == "node-a"
    assert event.source_fingerprint == "p1"
    assert event.observed_time_ms == parse_time_ms("2024-03-01T10:05:00Z")
    assert event.starts_at_ms == parse_time_ms("2024-03-01T10:00:00Z")
    assert event.annotations["count"] == "4"


def test_kubernetes_normal_event_ignored():
    assert kubernetes_event_to_event(kubernetes_event("Normal"), cluster="c1") is None


def test_kubernetes_events_v1_converts():
    obj = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "x", "namespace": "shop", "uid": "ev2"},
        "regarding": {"kind": "Pod", "namespace": "shop", "name": "db-0", "uid": "p2"},
        "reason": "FailedMount",
        "note": "MountVolume.SetUp failed",
        "type": "Warning",
        "eventTime": "2024-03-01T10:00:00.000000Z",
        "series": {"count": 3, "lastObservedTime": "2024-03-01T10:09:00.000000Z"},
    }
    event = kubernetes_event_to_event(obj, cluster="c1")
    assert event.name == "db-0"
    assert event.message == "MountVolume.SetUp failed"
    assert event.observed_time_ms == parse_time_ms("2024-03-01T10:09:00Z")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"type": "Error"}, "type"),
        ({"kind": "Pod"}, "kind"),
        ({"involvedObject": None}, "involvedObject"),
        ({"lastTimestamp": None, "firstTimestamp": None}, "lastTimestamp"),
    ],
)
def test_kubernetes_event_rejects_field(changes, field):
    with pytest.raises(DecodeError, match=field):
        kubernetes_event_to_event(kubernetes_event(**changes), cluster="c1")


def test_alertmanager_payload_becomes_events():
    received = parse_time_ms("2024-03-01T10:10:00Z")
    events = alertmanager_payload_to_events(orjson.dumps(ALERTMANAGER_PAYLOAD), received)
    assert [event.status for event in events] == [FIRING, RESOLVED]
    firing, resolved = events
    assert firing.source == ALERTMANAGER
    assert firing.rule == "KubePodCrashLooping"
    assert firing.cluster == "prod-1"
    assert (firing.kind, firing.name, firing.namespace) == ("Pod", "web-7d4b9c6f5-x2k8q", "shop")
    assert firing.reason == "CrashLoopBackOff"
    assert firing.labels["severity"] == "warning"
    assert firing.observed_time_ms == received
    assert firing.starts_at_ms == parse_time_ms("2024-03-01T10:00:00Z")
    assert firing.ends_at_ms is None
    assert firing.message == "Pod shop/web-7d4b9c6f5-x2k8q is crash looping."
    assert firing.source_fingerprint == "a1b2c3d4e5f60718"
    assert resolved.ends_at_ms == parse_time_ms("2024-03-01T09:30:00Z")


def test_alertmanager_default_cluster():
    payload = copy.deepcopy(ALERTMANAGER_PAYLOAD)
    del payload["commonLabels"]["cluster"]
    events = alertmanager_payload_to_events(payload, 0, default_cluster="lab")
    assert {event.cluster for event in events} == {"lab"}


def _broken(path: str, value):
    payload = copy.deepcopy(ALERTMANAGER_PAYLOAD)
    target = payload
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value is KeyError:
        del target[parts[-1]]
    else:
        target[parts[-1]] = value
    return payload


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"[]", "expected a JSON object"),
        (_broken("version", "3"), "field version"),
        (_broken("alerts", {}), "field alerts"),
        (_broken("alerts.0.status", "pending"), r"alerts\[0\].status"),
        (_broken("alerts.1.startsAt", "yesterday"), r"alerts\[1\].startsAt"),
        (_broken("alerts.1.startsAt", KeyError), r"alerts\[1\].startsAt"),
        (_broken("alerts.0.labels", ["a"]), r"alerts\[0\].labels"),
        (_broken("commonLabels.alertname", ""), r"alerts\[0\].labels.alertname"),
        (_broken("alerts.0.annotations", {"summary": 3}), r"alerts\[0\].annotations.summary"),
    ],
)
def test_alertmanager_payload_rejected(payload, message):
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    with pytest.raises(DecodeError, match=message) as raised:
        alertmanager_payload_to_events(body, 0)
    assert isinstance(raised.value, KdiagError)


def test_probe_heartbeat_event():
    failing = probe_heartbeat_event("edge", [("api", 503, "timeout"), ("web", 200, "")], 30_000, 5_000, cluster="c1")
    assert failing.source == PROBE_HEARTBEAT
    assert failing.status == FIRING
    assert failing.reason == "api=503"
    assert failing.heartbeat["checks"][0] == {"name": "api", "statusCode": 503, "message": "timeout"}
    healthy = probe_heartbeat_event("edge", [("api", 200, "")], 30_000, 35_000)
    assert healthy.status == RESOLVED


def test_events_survive_avro_round_trip():
    events = [
        alert_to_event(RULE_WORKER_ALERT, root_cause=ROOT_CAUSE),
        kubernetes_event_to_event(kubernetes_event(), cluster="c1"),
        probe_heartbeat_event("edge", [("api", 503, "timeout")], 30_000, 5_000),
        *alertmanager_payload_to_events(ALERTMANAGER_PAYLOAD, 7),
        Event(
            id="x", source=DIAGNOSIS, source_fingerprint="s", status=FIRING, rule="r",
            observed_time_ms=1, starts_at_ms=0, owners=(OwnerRef("ReplicaSet", "web-1", "u"),),
        ),
    ]
    for event in events:
        assert Event.from_avro(EVENT.decode(EVENT.encode(event.to_avro()))) == event
