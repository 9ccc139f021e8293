"""Building Related from a collection of objects, as the worker's tables or a corpus case hold them.

The worker can fill Related itself from its own indexes. This module shows what goes into each
list, and tests use it to turn corpus files into contexts.

Objects match by kind, name and namespace. A missing namespace on either side matches any
namespace, because partial dumps (kubectl get events without -n, for example) often omit it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kdiag.rootcause.context import JsonObject, Related

MAX_OWNER_DEPTH = 5
SCHEDULING_TAINT_EFFECTS = ("NoSchedule", "NoExecute")


def related_from_objects(subject: Mapping[str, Any], objects: Iterable[Mapping[str, Any]]) -> Related:
    """Collect what objects hold about subject, the diagnosed object.

    For an Event subject, the rest is collected about the object the Event is about, when objects
    contain it. The subject itself is never in the result's lists.
    """
    index = _Index(objects)
    target: Mapping[str, Any] | None = subject
    involved = None
    if subject.get("kind") == "Event":
        target = involved = index.involved_object(subject)
        target_ref = _involved_ref(subject)
    else:
        target_ref = _ref(subject)

    events = [event for event in index.by_kind("Event") if _is_warning(event) and _same_object(_involved_ref(event), target_ref)]
    if target is None:
        host = (subject.get("source") or {}).get("host", "")
        return Related(events=events, node=index.find("Node", "", host) if host else None)

    kind = target.get("kind")
    if kind == "Pod":
        return _pod_related(target, involved, events, index)
    if kind == "Node":
        name = _name(target)
        node_pods = [pod for pod in index.by_kind("Pod") if (pod.get("spec") or {}).get("nodeName") == name]
        return Related(involved=involved, events=events, node_pods=node_pods)
    return Related(involved=involved, events=events, owners=index.owner_chain(target))


def _pod_related(pod: Mapping[str, Any], involved: JsonObject | None, events: list[JsonObject], index: "_Index") -> Related:
    spec = pod.get("spec") or {}
    namespace = _namespace(pod)
    node_name = spec.get("nodeName") or ""
    node = index.find("Node", "", node_name) if node_name else None
    pods = [other for other in index.by_kind("Pod") if other is not pod and not _same_object(_ref(other), _ref(pod))]

    owner = controller_reference(pod)
    siblings = []
    if owner is not None:
        siblings = [other for other in pods if _same_owner(controller_reference(other), owner) and _namespace_matches(_namespace(other), namespace)]
    node_pods = [other for other in pods if node_name and (other.get("spec") or {}).get("nodeName") == node_name]

    nodes: list[JsonObject] = []
    sibling_node_names = {(other.get("spec") or {}).get("nodeName") for other in siblings} - {None, "", node_name}
    for name in sorted(sibling_node_names):
        found = index.find("Node", "", name)
        if found is not None:
            nodes.append(found)
    if not node_name:
        nodes.extend(found for found in index.by_kind("Node") if _has_scheduling_taint(found) and found not in nodes)

    secret_names, config_map_names, claim_names = referenced_names(pod)
    account_name = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    account = index.find("ServiceAccount", namespace, account_name)
    if account is not None:
        secret_names |= {entry.get("name", "") for entry in account.get("imagePullSecrets") or () if isinstance(entry, Mapping)}

    return Related(
        involved=involved,
        events=events,
        owners=index.owner_chain(pod),
        node=node,
        nodes=nodes,
        config_maps=[found for name in sorted(config_map_names) if (found := index.find("ConfigMap", namespace, name)) is not None],
        secrets=[found for name in sorted(secret_names) if (found := index.find("Secret", namespace, name)) is not None],
        pvcs=[found for name in sorted(claim_names) if (found := index.find("PersistentVolumeClaim", namespace, name)) is not None],
        service_accounts=[account] if account is not None else [],
        sibling_pods=siblings,
        node_pods=node_pods,
    )


def referenced_names(pod: Mapping[str, Any]) -> tuple[set[str], set[str], set[str]]:
    """Return the names of the Secrets, ConfigMaps and PersistentVolumeClaims a pod references.

    Secrets come from imagePullSecrets, env valueFrom.secretKeyRef, envFrom.secretRef and secret
    and projected volumes. ConfigMaps come from the matching ConfigMap references.
    """
    spec = pod.get("spec") or {}
    secrets = {entry.get("name", "") for entry in spec.get("imagePullSecrets") or () if isinstance(entry, Mapping)}
    config_maps: set[str] = set()
    claims: set[str] = set()
    for container in (*(spec.get("initContainers") or ()), *(spec.get("containers") or ()), *(spec.get("ephemeralContainers") or ())):
        if not isinstance(container, Mapping):
            continue
        for variable in container.get("env") or ():
            source = (variable or {}).get("valueFrom") or {}
            if "secretKeyRef" in source:
                secrets.add((source["secretKeyRef"] or {}).get("name", ""))
            if "configMapKeyRef" in source:
                config_maps.add((source["configMapKeyRef"] or {}).get("name", ""))
        for source in container.get("envFrom") or ():
            if "secretRef" in (source or {}):
                secrets.add((source["secretRef"] or {}).get("name", ""))
            if "configMapRef" in (source or {}):
                config_maps.add((source["configMapRef"] or {}).get("name", ""))
    for volume in spec.get("volumes") or ():
        if not isinstance(volume, Mapping):
            continue
        if "secret" in volume:
            secrets.add((volume["secret"] or {}).get("secretName", ""))
        if "configMap" in volume:
            config_maps.add((volume["configMap"] or {}).get("name", ""))
        if "persistentVolumeClaim" in volume:
            claims.add((volume["persistentVolumeClaim"] or {}).get("claimName", ""))
        for projection in (volume.get("projected") or {}).get("sources") or ():
            if "secret" in (projection or {}):
                secrets.add((projection["secret"] or {}).get("name", ""))
            if "configMap" in (projection or {}):
                config_maps.add((projection["configMap"] or {}).get("name", ""))
    return secrets - {""}, config_maps - {""}, claims - {""}


def controller_reference(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Return the ownerReference with controller: true, or the first one when none is marked.
    Values of another type than the API gives them count as absent."""
    metadata = obj.get("metadata")
    listed = metadata.get("ownerReferences") if isinstance(metadata, Mapping) else None
    references = [ref for ref in listed if isinstance(ref, Mapping)] if isinstance(listed, list) else []
    for reference in references:
        if reference.get("controller"):
            return reference
    return references[0] if references else None


class _Index:
    def __init__(self, objects: Iterable[Mapping[str, Any]]) -> None:
        self._by_kind: dict[str, list[JsonObject]] = {}
        for obj in objects:
            if isinstance(obj, Mapping):
                self._by_kind.setdefault(str(obj.get("kind", "")), []).append(obj)  # type: ignore[arg-type]

    def by_kind(self, kind: str) -> list[JsonObject]:
        return self._by_kind.get(kind, [])

    def find(self, kind: str, namespace: str, name: str, uid: str = "") -> JsonObject | None:
        for obj in self.by_kind(kind):
            metadata = obj.get("metadata") or {}
            if metadata.get("name") != name or not _namespace_matches(metadata.get("namespace", ""), namespace):
                continue
            if uid and metadata.get("uid") and metadata["uid"] != uid:
                continue
            return obj
        return None

    def involved_object(self, event: Mapping[str, Any]) -> JsonObject | None:
        kind, namespace, name, uid = _involved_ref(event)
        return self.find(kind, namespace, name, uid) if kind and name else None

    def owner_chain(self, obj: Mapping[str, Any]) -> list[JsonObject]:
        chain: list[JsonObject] = []
        current = obj
        for _ in range(MAX_OWNER_DEPTH):
            reference = controller_reference(current)
            if reference is None:
                break
            owner = self.find(reference.get("kind", ""), _namespace(obj), reference.get("name", ""), reference.get("uid", ""))
            if owner is None or any(owner is seen for seen in chain):
                break
            chain.append(owner)
            current = owner
        return chain


def _name(obj: Mapping[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("name", "")


def _namespace(obj: Mapping[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("namespace", "")


def _ref(obj: Mapping[str, Any]) -> tuple[str, str, str, str]:
    metadata = obj.get("metadata") or {}
    return (obj.get("kind", ""), metadata.get("namespace", ""), metadata.get("name", ""), metadata.get("uid", ""))


def _involved_ref(event: Mapping[str, Any]) -> tuple[str, str, str, str]:
    involved = event.get("involvedObject") or event.get("regarding") or {}
    namespace = involved.get("namespace") or (event.get("metadata") or {}).get("namespace", "")
    return (involved.get("kind", ""), namespace, involved.get("name", ""), involved.get("uid", ""))


def _same_object(left: tuple[str, str, str, str], right: tuple[str, str, str, str]) -> bool:
    if left[0] != right[0] or left[2] != right[2] or not _namespace_matches(left[1], right[1]):
        return False
    return not (left[3] and right[3] and left[3] != right[3])


def _same_owner(left: Mapping[str, Any] | None, right: Mapping[str, Any]) -> bool:
    if left is None:
        return False
    if left.get("uid") and right.get("uid"):
        return left["uid"] == right["uid"]
    return left.get("kind") == right.get("kind") and left.get("name") == right.get("name")


def _namespace_matches(left: str, right: str) -> bool:
    return not left or not right or left == right


def _is_warning(event: Mapping[str, Any]) -> bool:
    return event.get("type", "Warning") != "Normal"


def _has_scheduling_taint(node: Mapping[str, Any]) -> bool:
    taints = (node.get("spec") or {}).get("taints") or ()
    return any(isinstance(taint, Mapping) and taint.get("effect") in SCHEDULING_TAINT_EFFECTS for taint in taints)
