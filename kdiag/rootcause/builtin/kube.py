"""Helpers that read Kubernetes objects for the shipped plugins. None of them raises on odd JSON."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

JsonObject = Mapping[str, Any]

IMAGE_PULL_WAITING_REASONS = ("ErrImagePull", "ImagePullBackOff")
DEFAULT_REGISTRY = "docker.io"
ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")

_STATUS_KEY = re.compile(r"(containerStatuses|initContainerStatuses)\[name=([^\]]+)\]")


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def items(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def name_of(obj: JsonObject | None) -> str:
    return str(mapping(mapping(obj).get("metadata")).get("name", "")) if obj else ""


def namespace_of(obj: JsonObject | None) -> str:
    return str(mapping(mapping(obj).get("metadata")).get("namespace", "")) if obj else ""


def condition(obj: JsonObject | None, condition_type: str) -> Mapping[str, Any]:
    """Return the status condition of the given type, or {}."""
    for entry in items(mapping(mapping(obj).get("status")).get("conditions")):
        if entry.get("type") == condition_type:
            return entry
    return {}


def container_statuses(pod: JsonObject) -> Iterator[tuple[bool, Mapping[str, Any]]]:
    """Yield (is_init, status) for init containers, then containers."""
    status = mapping(pod.get("status"))
    for entry in items(status.get("initContainerStatuses")):
        yield True, entry
    for entry in items(status.get("containerStatuses")):
        yield False, entry


def container_spec(pod: JsonObject, name: str) -> Mapping[str, Any]:
    spec = mapping(pod.get("spec"))
    for entry in (*items(spec.get("initContainers")), *items(spec.get("containers"))):
        if entry.get("name") == name:
            return entry
    return {}


def pod_images(pod: JsonObject) -> list[tuple[str, str]]:
    """Return (container name, image) of every init container and container of the pod's spec."""
    spec = mapping(pod.get("spec"))
    return [(str(entry.get("name", "")), str(entry.get("image", ""))) for entry in (*items(spec.get("initContainers")), *items(spec.get("containers")))]


def waiting_reason(status: Mapping[str, Any]) -> str:
    return str(mapping(mapping(status.get("state")).get("waiting")).get("reason", ""))


def image_pull_failing_containers(pod: JsonObject) -> list[Mapping[str, Any]]:
    """Return the container statuses waiting with ErrImagePull or ImagePullBackOff."""
    return [status for _, status in container_statuses(pod) if waiting_reason(status) in IMAGE_PULL_WAITING_REASONS]


def pulled_images(pod: JsonObject) -> list[str]:
    """Return the images of containers whose image is on the node: running, terminated, or with an imageID."""
    pulled = []
    for _, status in container_statuses(pod):
        state = mapping(status.get("state"))
        if status.get("imageID") or "running" in state or "terminated" in state:
            pulled.append(str(status.get("image", "")))
    return pulled


def container_from_context(context: Mapping[str, str]) -> tuple[str, bool] | None:
    """Return (container name, is_init) from alert context paths such as status.containerStatuses[name=app].ready."""
    for key in context:
        found = _STATUS_KEY.search(key)
        if found:
            return found.group(2), found.group(1) == "initContainerStatuses"
    return None


def image_registry(image: str) -> str:
    """Return the registry host of an image reference, as the container runtime resolves it.

    The first path component is a registry when it contains "." or ":" or is "localhost"; otherwise
    the image is on Docker Hub (docker.io).
    """
    if not image:
        return ""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return DEFAULT_REGISTRY


def node_zone(node: JsonObject | None) -> str:
    labels = mapping(mapping(mapping(node).get("metadata")).get("labels"))
    for label in ZONE_LABELS:
        if labels.get(label):
            return str(labels[label])
    return ""


def controller_of(obj: JsonObject) -> Mapping[str, Any] | None:
    references = items(mapping(obj.get("metadata")).get("ownerReferences"))
    for reference in references:
        if reference.get("controller"):
            return reference
    return references[0] if references else None


def owner_key(obj: JsonObject) -> tuple[str, str] | None:
    """Return a key that is equal for pods of the same controller owner: its uid, or its kind and name."""
    reference = controller_of(obj)
    if reference is None:
        return None
    if reference.get("uid"):
        return ("uid", str(reference["uid"]))
    return (str(reference.get("kind", "")), str(reference.get("name", "")))


def event_text(event: JsonObject) -> str:
    return str(event.get("message") or event.get("note") or "")


def is_pod(obj: JsonObject | None) -> bool:
    return bool(obj) and mapping(obj).get("kind") == "Pod"


def has_spec(obj: JsonObject | None) -> bool:
    return bool(mapping(mapping(obj).get("spec")))


def join(values: Any) -> str:
    """Join names for a finding value: sorted, unique, comma-separated."""
    return ", ".join(sorted({str(value) for value in values if value}))
