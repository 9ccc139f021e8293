"""Finalizer owner: which controller must remove the finalizers that keep an object from being deleted.

Known finalizers map to the component that removes them and to whose side it is on. A finalizer
with another name is reported with owner unknown, because any controller may add one.
"""

from __future__ import annotations

from collections.abc import Mapping

from kdiag.rootcause.builtin import kube
from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.findings import Finding
from kdiag.rootcause.plugins import plugin

# Finalizer name or prefix -> (category, owning component, responsibility).
KNOWN_FINALIZERS: tuple[tuple[str, str, str, str], ...] = (
    ("service.kubernetes.io/load-balancer-cleanup", "load-balancer-cleanup", "the cloud provider's service controller (cloud-controller-manager)", "PLATFORM"),
    ("kubernetes", "namespace-content", "the namespace controller (kube-controller-manager)", "PLATFORM"),
    ("kubernetes.io/pvc-protection", "volume-in-use", "the PVC protection controller, which waits until no pod uses the claim", "USER"),
    ("kubernetes.io/pv-protection", "volume-in-use", "the PV protection controller, which waits until no claim is bound to the volume", "USER"),
    ("foregroundDeletion", "dependents", "the garbage collector, which waits for dependents to be deleted first", "UNKNOWN"),
    ("orphan", "dependents", "the garbage collector, which orphans the dependents first", "UNKNOWN"),
    ("kubernetes.io/pv-controller", "volume-provisioner", "the persistent volume controller", "PLATFORM"),
    ("external-provisioner.volume.kubernetes.io/finalizer", "volume-provisioner", "the CSI external provisioner", "PLATFORM"),
    ("external-attacher/", "volume-attacher", "the CSI external attacher", "PLATFORM"),
    ("service.k8s.aws/", "load-balancer-cleanup", "the AWS Load Balancer Controller", "PLATFORM"),
    ("ingress.k8s.aws/", "load-balancer-cleanup", "the AWS Load Balancer Controller", "PLATFORM"),
    ("group.ingress.k8s.aws/", "load-balancer-cleanup", "the AWS Load Balancer Controller", "PLATFORM"),
    ("networking.gke.io/ingress-finalizer", "load-balancer-cleanup", "the GKE ingress controller", "PLATFORM"),
)


def describe_finalizer(finalizer: str) -> tuple[str, str, str]:
    """Return (category, owner, responsibility) of a finalizer, or ("other", "", "UNKNOWN")."""
    for name, category, owner, responsibility in KNOWN_FINALIZERS:
        if finalizer == name or (name.endswith("/") and finalizer.startswith(name)):
            return category, owner, responsibility
    return "other", "", "UNKNOWN"


@plugin("finalizer-owner")
def finalizer_owner(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    """Name the finalizers of the object being deleted and the controllers that own them."""
    subject = context.subject()
    metadata = kube.mapping(subject.get("metadata"))
    finalizers = [str(item) for item in metadata.get("finalizers") or () if isinstance(item, str)]
    spec_finalizers = [str(item) for item in kube.mapping(subject.get("spec")).get("finalizers") or () if isinstance(item, str)]
    all_finalizers = finalizers + [item for item in spec_finalizers if item not in finalizers]
    values = {
        "deletionTimestamp": str(metadata.get("deletionTimestamp", "")),
        "finalizers": ", ".join(all_finalizers),
        "count": str(len(all_finalizers)),
    }
    if not all_finalizers:
        return {**{key: value for key, value in values.items() if value}, "category": "none"}
    # The first known finalizer names the owner; unknown ones come after known ones.
    described = [(finalizer, *describe_finalizer(finalizer)) for finalizer in all_finalizers]
    described.sort(key=lambda item: item[1] == "other")
    finalizer, category, owner, responsibility = described[0]
    values.update(finalizer=finalizer, category=category, owner=owner or f"the controller that added {finalizer}", ownerResponsibility=responsibility)
    return {key: value for key, value in values.items() if value}
