"""Failure distribution: does an image pull failure follow a node, a zone, the registry or the image?

The owner's pods are the subject pod and its sibling pods. A pod fails when a container waits with
ErrImagePull or ImagePullBackOff, and has pulled when a container's image is on its node. Pods of
other owners on the subject's node count when they pull from the same registry.

scope is:

- node: the owner's pods fail on one node and pulled the image on another, or pods of other owners
  fail to pull from the same registry on that node (a node or network problem);
- zone: they fail on several nodes, all in one zone, and pulled the image in another zone;
- nodes: they fail on several nodes and pulled it on others, without a zone pattern;
- registry: they fail on several nodes and so do pods of other owners from the same registry;
- image: they fail on every node they run on, and nothing else from the registry fails on the
  subject's node (the failure follows the image);
- unknown: one failing pod and nothing to compare it with, or the subject pod is not known.
"""

from __future__ import annotations

from collections.abc import Mapping

from kdiag.rootcause.builtin import kube
from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.findings import Finding
from kdiag.rootcause.plugins import plugin


@plugin("failure-distribution")
def failure_distribution(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    """Compare where the owner's pods fail to pull with where they and other pods pull fine."""
    subject = context.subject()
    if not kube.is_pod(subject) or not kube.mapping(subject.get("status")):
        return {"scope": "unknown", "detail": "the pod's status is not known"}
    registry = _registry(subject, inputs)
    owner_pods = [subject, *context.related.sibling_pods]
    nodes = {kube.name_of(node): node for node in context.related.all_nodes()}

    failing_nodes: set[str] = set()
    pulled_nodes: set[str] = set()
    failing_pods = pulled_pods = 0
    for pod in owner_pods:
        node_name = str(kube.mapping(pod.get("spec")).get("nodeName", ""))
        if kube.image_pull_failing_containers(pod):
            failing_pods += 1
            if node_name:
                failing_nodes.add(node_name)
        elif _pulled_from(pod, registry):
            pulled_pods += 1
            if node_name:
                pulled_nodes.add(node_name)
    pulled_elsewhere = pulled_nodes - failing_nodes

    subject_owner = kube.owner_key(subject)
    others_failing = others_pulled = 0
    for pod in context.related.node_pods:
        if subject_owner is not None and kube.owner_key(pod) == subject_owner:
            continue
        failing = kube.image_pull_failing_containers(pod)
        failing_images = [str(status.get("image", "")) or _spec_image(pod, status) for status in failing]
        if any(kube.image_registry(image) == registry for image in failing_images):
            others_failing += 1
        elif _pulled_from(pod, registry):
            others_pulled += 1

    failing_zones = {kube.node_zone(nodes.get(name)) for name in failing_nodes} - {""}
    pulled_zones = {kube.node_zone(nodes.get(name)) for name in pulled_elsewhere} - {""}
    scope = _scope(failing_nodes, pulled_elsewhere, failing_zones, pulled_zones, others_failing, others_pulled)
    return {
        "scope": scope,
        "registry": registry,
        "failingPods": str(failing_pods),
        "pulledPods": str(pulled_pods),
        "failingNodes": kube.join(failing_nodes),
        "failingNodeCount": str(len(failing_nodes)),
        "pulledNodes": kube.join(pulled_elsewhere),
        "failingZones": kube.join(failing_zones),
        "pulledZones": kube.join(pulled_zones),
        "otherOwnersFailing": str(others_failing),
        "otherOwnersPulled": str(others_pulled),
    }


def _scope(failing_nodes: set[str], pulled_elsewhere: set[str], failing_zones: set[str], pulled_zones: set[str], others_failing: int, others_pulled: int) -> str:
    if not failing_nodes:
        return "unknown"
    if len(failing_nodes) == 1:
        if pulled_elsewhere or others_failing:
            return "node"
        if others_pulled:
            return "image"
        return "unknown"
    if pulled_elsewhere:
        if len(failing_zones) == 1 and pulled_zones and not failing_zones & pulled_zones:
            return "zone"
        return "nodes"
    if others_failing:
        return "registry"
    return "image"


def _registry(subject: Mapping[str, object], inputs: Mapping[str, Finding]) -> str:
    for finding in inputs.values():
        if finding.get("registry"):
            return finding.get("registry")
    for status in kube.image_pull_failing_containers(subject):
        image = str(status.get("image", "")) or _spec_image(subject, status)
        if image:
            return kube.image_registry(image)
    return ""


def _spec_image(pod: Mapping[str, object], status: Mapping[str, object]) -> str:
    return str(kube.container_spec(pod, str(status.get("name", ""))).get("image", ""))


def _pulled_from(pod: Mapping[str, object], registry: str) -> bool:
    return any(kube.image_registry(image) == registry for image in kube.pulled_images(pod))
