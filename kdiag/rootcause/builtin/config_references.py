"""Config reference check: which Secret or ConfigMap, or which key in one, a container cannot read.

The kubelet's messages come first: "couldn't find key VALUE in Secret default/app" means the
object exists and lacks the key, and is checked before 'secret "app" not found', so that a missing
key is never reported as a missing Secret. Without such a message, the pod's references are
compared with related.secrets and related.config_maps, skipping optional references.

category is secret-key-missing, configmap-key-missing, secret-missing, configmap-missing or
unknown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kdiag.rootcause.builtin import kube
from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.findings import Finding
from kdiag.rootcause.plugins import plugin

_KEY_MISSING = re.compile(r"couldn't find key (\S+) in (Secret|ConfigMap) (\S+)")
_OBJECT_MISSING = re.compile(r'\b(secret|configmap)s? "([^"]+)" not found', re.IGNORECASE)
_KINDS = {"secret": "Secret", "configmap": "ConfigMap"}


@plugin("config-reference-check")
def check_config_references(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    """Name the Secret or ConfigMap (and key) that keeps the pod's containers from being created."""
    pod = context.subject()
    namespace = kube.namespace_of(pod)
    for message in _messages(context, pod):
        found = _KEY_MISSING.search(message)
        if found:
            key, kind, qualified = found.groups()
            object_namespace, _, name = qualified.rpartition("/")
            return _values(kind, name, object_namespace or namespace, message, key=key)
        found = _OBJECT_MISSING.search(message)
        if found:
            return _values(_KINDS[found.group(1).lower()], found.group(2), namespace, message)
    if kube.is_pod(pod) and kube.has_spec(pod):
        return _from_references(context, pod, namespace)
    return {"category": "unknown", "detail": "no kubelet message names the reference, and the pod's spec is not known"}


def _messages(context: DiagnosisContext, pod: Mapping[str, Any]) -> list[str]:
    messages = [kube.event_text(event) for event in context.events()]
    if kube.is_pod(pod):
        for _, status in kube.container_statuses(pod):
            waiting = kube.mapping(kube.mapping(status.get("state")).get("waiting"))
            messages.append(str(waiting.get("message", "")))
    return [message for message in messages if message]


def _values(kind: str, name: str, namespace: str, message: str, key: str = "") -> dict[str, str]:
    category = f"{kind.lower()}-{'key-' if key else ''}missing"
    values = {"category": category, "kind": kind, "name": name, "namespace": namespace, "key": key, "message": message[:500]}
    return {field: value for field, value in values.items() if value}


def _from_references(context: DiagnosisContext, pod: Mapping[str, Any], namespace: str) -> dict[str, str]:
    known = {
        "Secret": {kube.name_of(item): item for item in context.related.secrets},
        "ConfigMap": {kube.name_of(item): item for item in context.related.config_maps},
    }
    missing_objects: list[tuple[str, str]] = []
    missing_keys: list[tuple[str, str, str]] = []
    for kind, name, key in _references(pod):
        found = known[kind].get(name)
        if found is None:
            missing_objects.append((kind, name))
        elif key and key not in (found.get("keys") or ()):
            missing_keys.append((kind, name, key))
    if missing_keys:
        kind, name, key = missing_keys[0]
        return _values(kind, name, namespace, "", key=key)
    if missing_objects:
        kind, name = missing_objects[0]
        return _values(kind, name, namespace, "")
    return {"category": "unknown", "detail": "every Secret and ConfigMap the pod references exists with its keys"}


def _references(pod: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Return (kind, name, key) of the pod's required Secret and ConfigMap references (key "" for whole objects)."""
    spec = kube.mapping(pod.get("spec"))
    references: list[tuple[str, str, str]] = []
    for container in (*kube.items(spec.get("initContainers")), *kube.items(spec.get("containers"))):
        for variable in kube.items(container.get("env")):
            source = kube.mapping(variable.get("valueFrom"))
            for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                reference = kube.mapping(source.get(field))
                if reference and not reference.get("optional"):
                    references.append((kind, str(reference.get("name", "")), str(reference.get("key", ""))))
        for source in kube.items(container.get("envFrom")):
            for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                reference = kube.mapping(source.get(field))
                if reference and not reference.get("optional"):
                    references.append((kind, str(reference.get("name", "")), ""))
    for volume in kube.items(spec.get("volumes")):
        secret = kube.mapping(volume.get("secret"))
        if secret and not secret.get("optional"):
            references.append(("Secret", str(secret.get("secretName", "")), ""))
        config_map = kube.mapping(volume.get("configMap"))
        if config_map and not config_map.get("optional"):
            references.append(("ConfigMap", str(config_map.get("name", "")), ""))
    return [reference for reference in references if reference[1]]
