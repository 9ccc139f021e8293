"""What a root-cause plugin is given: the diagnosis that fired, the object, and related objects.

All objects are parsed Kubernetes JSON (dicts), as the worker's tables hold them. The JSON form
(to_json and from_json) is what process and remote plugins receive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from kdiag.durations import AlertEvent

JsonObject = dict[str, Any]

# Metadata fields kept for ConfigMaps and Secrets. Annotations are dropped because
# kubectl.kubernetes.io/last-applied-configuration contains the whole object, values included.
_CONFIG_METADATA_FIELDS = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
    "ownerReferences",
)
_CONFIG_DATA_FIELDS = ("data", "stringData", "binaryData")


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The firing alert that started the analysis, in the fields of the Alert record."""

    rule: str
    cluster: str = ""
    api_version: str = ""
    kind: str = ""
    namespace: str = ""
    name: str = ""
    uid: str = ""
    resource_version: str = ""
    context: Mapping[str, str] = field(default_factory=dict)
    fired_at_ms: int = 0
    alert_id: str = ""

    @classmethod
    def from_alert(cls, alert: Mapping[str, Any]) -> "Diagnosis":
        """Build from an Alert record as kdiag.codec decodes it (field names of schemas/alert.avsc)."""
        return cls(
            rule=alert["rule"],
            cluster=alert.get("cluster", ""),
            api_version=alert.get("apiVersion", ""),
            kind=alert.get("kind", ""),
            namespace=alert.get("namespace", ""),
            name=alert.get("name", ""),
            uid=alert.get("uid", ""),
            resource_version=alert.get("resourceVersion", ""),
            context=dict(alert.get("context") or {}),
            fired_at_ms=int(alert.get("firedAt") or 0),
            alert_id=alert.get("id", ""),
        )

    @classmethod
    def from_alert_event(cls, event: AlertEvent) -> "Diagnosis":
        """Build from the worker's FIRING AlertEvent."""
        return cls.from_alert(event.to_avro())

    def to_json(self) -> JsonObject:
        return {
            "id": self.alert_id,
            "rule": self.rule,
            "cluster": self.cluster,
            "apiVersion": self.api_version,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "resourceVersion": self.resource_version,
            "context": dict(self.context),
            "firedAt": self.fired_at_ms,
        }


def strip_config_values(obj: Mapping[str, Any]) -> JsonObject:
    """Reduce a ConfigMap or Secret to its identity, type and key names, without any value.

    The result has apiVersion, kind, the metadata fields in _CONFIG_METADATA_FIELDS, type (Secrets),
    immutable when set, and keys: the sorted names of data, stringData and binaryData. Applying it
    twice gives the same result. Fields of another type than the API gives them count as absent.
    """
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        metadata = {}
    listed = obj.get("keys")
    keys: set[str] = {str(key) for key in listed} if isinstance(listed, list) else set()
    for data_field in _CONFIG_DATA_FIELDS:
        data = obj.get(data_field)
        if isinstance(data, Mapping):
            keys.update(str(key) for key in data)
    stripped: JsonObject = {
        "apiVersion": obj.get("apiVersion", "v1"),
        "kind": obj.get("kind", ""),
        "metadata": {name: metadata[name] for name in _CONFIG_METADATA_FIELDS if name in metadata},
        "keys": sorted(keys),
    }
    if "type" in obj:
        stripped["type"] = obj["type"]
    if "immutable" in obj:
        stripped["immutable"] = obj["immutable"]
    return stripped


@dataclass(frozen=True)
class Related:
    """What the worker's tables held about objects related to the diagnosed object when it fired.

    For a diagnosis on an Event, "the subject" below is the object the Event is about (involved);
    for any other diagnosis it is the diagnosed object. Lists may be empty when the worker does not
    know the objects, and plugins must cope with that.
    """

    # For an Event diagnosis: the object named by involvedObject, or None when it is not known.
    involved: JsonObject | None = None
    # Warning Events (and Events without a type) about the subject, as they were at firing.
    events: tuple[JsonObject, ...] = ()
    # The owner chain of the subject, nearest first (ReplicaSet, then Deployment).
    owners: tuple[JsonObject, ...] = ()
    # The Node the subject pod runs on, or the Node an Event came from (source.host).
    node: JsonObject | None = None
    # Other Nodes involved: those of sibling pods and, for a pod not yet scheduled, the Nodes with
    # a NoSchedule or NoExecute taint.
    nodes: tuple[JsonObject, ...] = ()
    # ConfigMaps and Secrets the subject references, reduced by strip_config_values.
    config_maps: tuple[JsonObject, ...] = ()
    secrets: tuple[JsonObject, ...] = ()
    # PersistentVolumeClaims the subject pod mounts.
    pvcs: tuple[JsonObject, ...] = ()
    # The subject pod's ServiceAccount.
    service_accounts: tuple[JsonObject, ...] = ()
    # Other pods of the subject pod's controller owner.
    sibling_pods: tuple[JsonObject, ...] = ()
    # Other pods on the subject pod's node (or on the subject Node).
    node_pods: tuple[JsonObject, ...] = ()

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in ("involved", "node"):
                continue
            if value is None:
                value = ()
            if item.name in ("config_maps", "secrets"):
                value = tuple(strip_config_values(obj) for obj in value)
            elif not isinstance(value, tuple):
                value = tuple(value)
            object.__setattr__(self, item.name, value)

    def all_nodes(self) -> list[JsonObject]:
        """Return node and nodes without repeats, node first."""
        result: list[JsonObject] = []
        seen: set[str] = set()
        for node in (self.node, *self.nodes):
            if node is None:
                continue
            name = (node.get("metadata") or {}).get("name", "")
            if name in seen:
                continue
            seen.add(name)
            result.append(node)
        return result

    def to_json(self) -> JsonObject:
        return {
            "involved": self.involved,
            "events": list(self.events),
            "owners": list(self.owners),
            "node": self.node,
            "nodes": list(self.nodes),
            "configMaps": list(self.config_maps),
            "secrets": list(self.secrets),
            "pvcs": list(self.pvcs),
            "serviceAccounts": list(self.service_accounts),
            "siblingPods": list(self.sibling_pods),
            "nodePods": list(self.node_pods),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Related":
        def items(name: str) -> Iterable[JsonObject]:
            return data.get(name) or ()

        return cls(
            involved=data.get("involved"),
            events=tuple(items("events")),
            owners=tuple(items("owners")),
            node=data.get("node"),
            nodes=tuple(items("nodes")),
            config_maps=tuple(items("configMaps")),
            secrets=tuple(items("secrets")),
            pvcs=tuple(items("pvcs")),
            service_accounts=tuple(items("serviceAccounts")),
            sibling_pods=tuple(items("siblingPods")),
            node_pods=tuple(items("nodePods")),
        )


@dataclass(frozen=True)
class DiagnosisContext:
    """Everything a plugin sees: the diagnosis, the diagnosed object (obj) and its related objects.

    Plugins must treat the objects as read-only: inline plugins share them.
    """

    diagnosis: Diagnosis
    obj: JsonObject
    related: Related = field(default_factory=Related)

    def subject(self) -> JsonObject:
        """Return the object the diagnosis is about.

        For an Event that is the involved object when related contains it, or else a stub with the
        involvedObject's kind, name, namespace and uid. For any other kind it is obj.
        """
        if self.obj.get("kind") != "Event":
            return self.obj
        if self.related.involved is not None:
            return self.related.involved
        involved = self.obj.get("involvedObject") or {}
        metadata = {key: involved[key] for key in ("name", "namespace", "uid") if key in involved}
        return {"apiVersion": involved.get("apiVersion", ""), "kind": involved.get("kind", ""), "metadata": metadata}

    def events(self) -> list[JsonObject]:
        """Return the subject's Events from related, with obj first when it is an Event not among them."""
        events = list(self.related.events)
        if self.obj.get("kind") == "Event" and not any(event is self.obj or event == self.obj for event in events):
            events.insert(0, self.obj)
        return events

    def to_json(self) -> JsonObject:
        return {"diagnosis": self.diagnosis.to_json(), "object": self.obj, "related": self.related.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "DiagnosisContext":
        return cls(
            diagnosis=Diagnosis.from_alert(data["diagnosis"]),
            obj=data["object"],
            related=Related.from_json(data.get("related") or {}),
        )
