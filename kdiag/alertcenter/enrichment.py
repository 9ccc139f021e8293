"""Enrichment of events: owner chain, application, tenant, node and zone, and the alert fingerprint.

Owner chain. When the source had the object, its ownerReferences give the nearest owner
(ownerSource "ownerReferences"). Otherwise, and to go one step further up from a ReplicaSet or Job,
the chain is inferred from Kubernetes' naming conventions (ownerSource "naming"):

- a Deployment's ReplicaSet is named <deployment>-<pod-template-hash>, and its Pods
  <replicaset>-<5 random characters>. The hash is taken from the pod-template-hash label when the
  object has it. Without the label, the hash (6 to 10 characters) and the suffix (5) must consist
  only of the characters Kubernetes uses for generated names: consonants and the digits 2, 4-9.
  So ordinary words such as "exporter" are not mistaken for a hash;
- a StatefulSet's Pods are named <statefulset>-<ordinal> and carry the label
  statefulset.kubernetes.io/pod-name;
- a DaemonSet's Pods are named <daemonset>-<5 random characters> and carry the label
  pod-template-generation;
- a Job's Pods carry the label job-name (or batch.kubernetes.io/job-name), and a CronJob's Jobs are
  named <cronjob>-<scheduled time in minutes>, 8 or more digits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from kdiag.alertcenter.config import AlertCenterConfig
from kdiag.alertcenter.events import Event, OwnerRef

# Characters of names that Kubernetes generates (k8s.io/apimachinery's rand.String and SafeEncodeString).
GENERATED = "[bcdfghjklmnpqrstvwxz2456789]"
_POD_OF_REPLICASET = re.compile(rf"^(.+)-({GENERATED}{{6,10}})-{GENERATED}{{5}}$")
_REPLICASET_OF_DEPLOYMENT = re.compile(rf"^(.+)-({GENERATED}{{6,10}})$")
_POD_OF_DAEMONSET = re.compile(rf"^(.+)-{GENERATED}{{5}}$")
_POD_OF_STATEFULSET = re.compile(r"^(.+)-(\d+)$")
_JOB_OF_CRONJOB = re.compile(r"^(.+)-(\d{8,})$")

OWNER_REFERENCES = "ownerReferences"
NAMING = "naming"

NamespaceLabels = Callable[[str, str], Mapping[str, str] | None]


@dataclass(frozen=True, slots=True)
class Enrichment:
    owners: tuple[OwnerRef, ...]
    owner_source: str
    application: str
    tenant: str
    node: str
    zone: str

    @property
    def top_owner(self) -> OwnerRef | None:
        return self.owners[-1] if self.owners else None


def owner_chain(kind: str, name: str, labels: Mapping[str, str], owners: tuple[OwnerRef, ...]) -> tuple[tuple[OwnerRef, ...], str]:
    """Return the owner chain, nearest owner first, and how its nearest owner was found.

    The second value is ownerReferences, naming or "" (no owner). Owners above the nearest one are
    always inferred by naming, because an object's ownerReferences name only its direct owner.
    """
    if owners:
        chain = list(owners)
        source = OWNER_REFERENCES
    else:
        nearest = _infer_nearest_owner(kind, name, labels)
        if nearest is None:
            return (), ""
        chain = [nearest]
        source = NAMING
    while True:
        parent = _infer_parent(chain[-1], labels)
        if parent is None:
            return tuple(chain), source
        chain.append(parent)


def _infer_nearest_owner(kind: str, name: str, labels: Mapping[str, str]) -> OwnerRef | None:
    if kind == "ReplicaSet":
        return _deployment_of(name, labels)
    if kind != "Pod":
        return None
    template_hash = labels.get("pod-template-hash")
    if template_hash:
        match = re.match(rf"^(.+-{re.escape(template_hash)})-[a-z0-9]{{5}}$", name)
        if match:
            return OwnerRef("ReplicaSet", match.group(1))
    if labels.get("statefulset.kubernetes.io/pod-name") == name:
        match = _POD_OF_STATEFULSET.match(name)
        if match:
            return OwnerRef("StatefulSet", match.group(1))
    job_name = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
    if job_name:
        return OwnerRef("Job", job_name)
    if "pod-template-generation" in labels:
        match = _POD_OF_DAEMONSET.match(name)
        if match:
            return OwnerRef("DaemonSet", match.group(1))
    match = _POD_OF_REPLICASET.match(name)
    if match:
        return OwnerRef("ReplicaSet", f"{match.group(1)}-{match.group(2)}")
    return None


def _infer_parent(owner: OwnerRef, labels: Mapping[str, str]) -> OwnerRef | None:
    if owner.kind == "ReplicaSet":
        return _deployment_of(owner.name, labels)
    if owner.kind == "Job":
        match = _JOB_OF_CRONJOB.match(owner.name)
        if match:
            return OwnerRef("CronJob", match.group(1))
    return None


def _deployment_of(replicaset: str, labels: Mapping[str, str]) -> OwnerRef | None:
    template_hash = labels.get("pod-template-hash")
    if template_hash and replicaset.endswith(f"-{template_hash}"):
        return OwnerRef("Deployment", replicaset[: -len(template_hash) - 1])
    match = _REPLICASET_OF_DEPLOYMENT.match(replicaset)
    if match:
        return OwnerRef("Deployment", match.group(1))
    return None


def enrich(event: Event, config: AlertCenterConfig, namespace_labels: NamespaceLabels | None = None) -> Enrichment:
    """Return the owner chain, application, tenant, node and zone of the event's object.

    Values the source already set on the event win over derived ones.
    """
    settings = config.enrichment
    owners, owner_source = owner_chain(event.kind, event.name, event.labels, event.owners)
    top = owners[-1] if owners else None

    application = event.application
    if not application:
        application = next((event.labels[label] for label in settings.application_labels if event.labels.get(label)), "")
    if not application and settings.application_from_owner and top is not None:
        application = top.name

    tenant = event.tenant or event.labels.get(settings.tenant_label, "")
    if not tenant and namespace_labels is not None and event.namespace:
        tenant = (namespace_labels(event.cluster, event.namespace) or {}).get(settings.tenant_label, "")
    if not tenant and event.namespace:
        tenant = next((value for pattern, value in settings.namespace_tenants if fnmatchcase(event.namespace, pattern)), "")

    node = event.node or event.labels.get("node", "") or (event.name if event.kind == "Node" else "")
    zone = event.zone or next((event.labels[label] for label in settings.zone_labels if event.labels.get(label)), "")
    return Enrichment(owners, owner_source, application, tenant, node, zone)


def alert_subject(event: Event, enrichment: Enrichment) -> tuple[str, str]:
    """Return the (kind, name) that an alert is about: the top owner when known, else the object,
    else ("Application", application), else ("", "")."""
    top = enrichment.top_owner
    if top is not None:
        return top.kind, top.name
    if event.name:
        return event.kind, event.name
    if enrichment.application:
        return "Application", enrichment.application
    return "", ""


def alert_fingerprint(event: Event, enrichment: Enrichment, config: AlertCenterConfig) -> str:
    """Hash the alert's stable identity into 16 hex digits.

    The identity is the rule, cluster, namespace, the subject from alert_subject, and the values of
    config.identity_labels. Left out on purpose: the reason (ImagePullBackOff and ErrImagePull
    alternate on one Pod), annotations such as restart counts, the Pod's name and uid when an owner is
    known (a replaced Pod continues the same alert), and every other label.
    """
    kind, name = alert_subject(event, enrichment)
    parts = [event.rule, event.cluster, event.namespace, kind, name]
    parts += [f"{label}={event.labels.get(label, '')}" for label in config.identity_labels]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]
