"""Owner rollout status: the state and latest change of the Deployment, StatefulSet or DaemonSet.

The workload is the subject itself when it is one, or else the first one in the owner chain
(a pod's ReplicaSet leads to its Deployment). state is:

- stalled: a Deployment's Progressing condition is False with ProgressDeadlineExceeded;
- rolling-out: the controller has not observed the latest generation, or fewer replicas run the
  latest template than desired;
- complete: every desired replica runs the latest template;
- unknown: no workload is known.

replicaFailure is the reason and message of a True ReplicaFailure condition (a quota or an
admission webhook that rejects new pods).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kdiag.rootcause.builtin import kube
from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.findings import Finding
from kdiag.rootcause.plugins import plugin

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
_REPLICA_SET = re.compile(r'ReplicaSet "([^"]+)"')


@plugin("owner-rollout-status")
def owner_rollout_status(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    """Report the workload's rollout: replicas by state, generation and revision, and whether it stalled."""
    subject = context.subject()
    candidates = [subject, *context.related.owners]
    workload = next((item for item in candidates if item.get("kind") in WORKLOAD_KINDS), None)
    if workload is None:
        owner = next(iter(context.related.owners), None)
        values = {"state": "unknown", "detail": "no Deployment, StatefulSet or DaemonSet is known for the object"}
        if owner is not None:
            values["owner"] = f"{owner.get('kind')}/{kube.name_of(owner)}"
        return values

    kind = str(workload.get("kind"))
    metadata = kube.mapping(workload.get("metadata"))
    status = kube.mapping(workload.get("status"))
    spec = kube.mapping(workload.get("spec"))
    generation = metadata.get("generation")
    observed = status.get("observedGeneration")
    values: dict[str, Any] = {
        "kind": kind,
        "name": kube.name_of(workload),
        "generation": _text(generation),
        "observedGeneration": _text(observed),
        "generationObserved": str(observed >= generation).lower() if _is_int(generation) and _is_int(observed) else "unknown",
    }
    replica_failure = kube.condition(workload, "ReplicaFailure")
    if replica_failure.get("status") == "True":
        values["replicaFailure"] = f"{replica_failure.get('reason', '')}: {replica_failure.get('message', '')}".strip(": ")
    if kind == "Deployment":
        values.update(_deployment(workload, spec, status))
    elif kind == "StatefulSet":
        values.update(_stateful_set(spec, status))
    else:
        values.update(_daemon_set(status))
    behind = values.pop("behind", False)
    if "state" not in values:
        values["state"] = "rolling-out" if behind or values["generationObserved"] == "false" else "complete"
    return {key: value for key, value in values.items() if value not in ("", None)}


def _deployment(workload: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    progressing = kube.condition(workload, "Progressing")
    desired = spec.get("replicas", status.get("replicas"))
    updated = status.get("updatedReplicas", 0)
    values: dict[str, Any] = {
        "revision": str(kube.mapping(kube.mapping(workload.get("metadata")).get("annotations")).get("deployment.kubernetes.io/revision", "")),
        "replicas": _text(status.get("replicas")),
        "desiredReplicas": _text(desired),
        "updatedReplicas": _text(status.get("updatedReplicas")),
        "readyReplicas": _text(status.get("readyReplicas")),
        "availableReplicas": _text(status.get("availableReplicas")),
        "unavailableReplicas": _text(status.get("unavailableReplicas")),
        "progressing": str(progressing.get("reason", "")),
        "progressingMessage": str(progressing.get("message", "")),
        "progressDeadlineExceeded": str(progressing.get("reason") == "ProgressDeadlineExceeded").lower(),
    }
    new_replica_set = _REPLICA_SET.search(str(progressing.get("message", "")))
    if new_replica_set:
        values["newReplicaSet"] = new_replica_set.group(1)
    if progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        values["state"] = "stalled"
    else:
        values["behind"] = _behind(updated, desired) or bool(status.get("unavailableReplicas"))
    return values


def _stateful_set(spec: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    current, update = status.get("currentRevision", ""), status.get("updateRevision", "")
    return {
        "revision": str(update),
        "currentRevision": str(current),
        "replicas": _text(status.get("replicas")),
        "desiredReplicas": _text(spec.get("replicas")),
        "updatedReplicas": _text(status.get("updatedReplicas")),
        "readyReplicas": _text(status.get("readyReplicas")),
        "availableReplicas": _text(status.get("availableReplicas")),
        "behind": bool(update and current != update) or _behind(status.get("readyReplicas", 0), spec.get("replicas")),
    }


def _daemon_set(status: Mapping[str, Any]) -> dict[str, Any]:
    desired = status.get("desiredNumberScheduled")
    return {
        "desiredReplicas": _text(desired),
        "updatedReplicas": _text(status.get("updatedNumberScheduled")),
        "readyReplicas": _text(status.get("numberReady")),
        "availableReplicas": _text(status.get("numberAvailable")),
        "unavailableReplicas": _text(status.get("numberUnavailable")),
        "behind": _behind(status.get("updatedNumberScheduled", 0), desired) or bool(status.get("numberUnavailable")),
    }


def _behind(count: Any, desired: Any) -> bool:
    return isinstance(count, int) and isinstance(desired, int) and count < desired


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return "" if value is None else str(value)
