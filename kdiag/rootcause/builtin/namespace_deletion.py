"""Namespace deletion status: which of the namespace controller's deletion conditions hold, and why.

For NamespaceDeletionDiscoveryFailure the failing API groups are read from the message (for
example "metrics.k8s.io/v1beta1: the server is currently unable to handle the request"), and
apiServices names the APIService objects that serve them (v1beta1.metrics.k8s.io).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from kdiag.rootcause.builtin import kube
from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.findings import Finding
from kdiag.rootcause.plugins import plugin

# Condition type -> category, in the order that decides the category when several hold.
CONDITIONS = (
    ("NamespaceDeletionDiscoveryFailure", "discovery-failure"),
    ("NamespaceDeletionGroupVersionParsingFailure", "group-version-parsing-failure"),
    ("NamespaceDeletionContentFailure", "content-failure"),
    ("NamespaceFinalizersRemaining", "finalizers-remaining"),
    ("NamespaceContentRemaining", "content-remaining"),
)
_GROUP_VERSION = re.compile(r"([a-z0-9][a-z0-9.-]*\.[a-z0-9.-]+)/(v[0-9][a-z0-9]*): ")


@plugin("namespace-deletion-status")
def namespace_deletion_status(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    """Report the first namespace deletion condition that is True, with the API groups it names."""
    namespace = context.subject()
    if namespace.get("kind") != "Namespace":
        return {"category": "unknown", "detail": "the object is not a Namespace"}
    phase = str(kube.mapping(namespace.get("status")).get("phase", ""))
    for condition_type, category in CONDITIONS:
        entry = kube.condition(namespace, condition_type)
        if entry.get("status") != "True":
            continue
        message = str(entry.get("message", ""))
        groups = _GROUP_VERSION.findall(message)
        values = {
            "category": category,
            "condition": condition_type,
            "reason": str(entry.get("reason", "")),
            "message": message[:500],
            "groupVersions": ", ".join(f"{group}/{version}" for group, version in groups),
            "apiServices": ", ".join(f"{version}.{group}" for group, version in groups),
            "phase": phase,
        }
        return {key: value for key, value in values.items() if value}
    return {key: value for key, value in {"category": "none", "phase": phase}.items() if value}
