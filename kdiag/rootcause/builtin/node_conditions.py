"""The node condition check: is the node under disk, memory or PID pressure, not ready, or cordoned?

A Node subject is checked itself. For a pod, the plugin checks its node, or the node an Event came
from. For a pod that is not scheduled yet, it checks the tainted nodes in related.nodes. The
finding reports the most severe problem among them, in the order of SEVERITY.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdiag.rootcause.builtin import kube
from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.findings import Finding
from kdiag.rootcause.plugins import plugin

SEVERITY = ("NotReady", "DiskPressure", "MemoryPressure", "PIDPressure", "NetworkUnavailable", "Unschedulable")
PRESSURE_CONDITIONS = ("DiskPressure", "MemoryPressure", "PIDPressure", "NetworkUnavailable")
# Taints that the node lifecycle controller and the kubelet set for node conditions.
CONDITION_TAINTS = {
    "node.kubernetes.io/not-ready": "NotReady",
    "node.kubernetes.io/unreachable": "NotReady",
    "node.kubernetes.io/disk-pressure": "DiskPressure",
    "node.kubernetes.io/memory-pressure": "MemoryPressure",
    "node.kubernetes.io/pid-pressure": "PIDPressure",
    "node.kubernetes.io/network-unavailable": "NetworkUnavailable",
    "node.kubernetes.io/unschedulable": "Unschedulable",
}


@plugin("node-condition-check")
def check_node_conditions(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    """Report the most severe condition of the nodes involved: NotReady, a pressure, or Unschedulable."""
    subject = context.subject()
    nodes, node_name = _nodes_to_check(context, subject)
    if not nodes:
        values = {"condition": "unknown", "nodeKnown": "false", "detail": "the node is not known"}
        if node_name:
            values["node"] = node_name
        return values

    worst: tuple[int, str, Mapping[str, Any], Mapping[str, Any]] | None = None
    for node in nodes:
        for problem, entry in _problems(node):
            rank = SEVERITY.index(problem)
            if worst is None or rank < worst[0]:
                worst = (rank, problem, node, entry)
    checked = kube.join(kube.name_of(node) for node in nodes)
    if worst is None:
        return {"condition": "none", "nodeKnown": "true", "node": kube.name_of(nodes[0]), "checkedNodes": checked}
    _, problem, node, entry = worst
    taints = [f"{taint.get('key')}:{taint.get('effect')}" for taint in kube.items(kube.mapping(node.get("spec")).get("taints")) if taint.get("key") in CONDITION_TAINTS]
    values = {
        "condition": problem,
        "nodeKnown": "true",
        "node": kube.name_of(node),
        "checkedNodes": checked,
        "reason": str(entry.get("reason", "")),
        "message": str(entry.get("message", "")),
        "since": str(entry.get("lastTransitionTime", "")),
        "taints": ", ".join(taints),
        "zone": kube.node_zone(node),
    }
    return {key: value for key, value in values.items() if value}


def _nodes_to_check(context: DiagnosisContext, subject: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], str]:
    if subject.get("kind") == "Node":
        return [subject], kube.name_of(subject)
    related = context.related
    node_name = str(kube.mapping(subject.get("spec")).get("nodeName", ""))
    if not node_name and context.obj.get("kind") == "Event":
        node_name = str(kube.mapping(context.obj.get("source")).get("host", ""))
    known = {kube.name_of(node): node for node in related.all_nodes()}
    if node_name:
        return ([known[node_name]] if node_name in known else []), node_name
    # A pod that is not scheduled: the tainted nodes that may block it.
    return list(known.values()), ""


def _problems(node: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    problems: list[tuple[str, Mapping[str, Any]]] = []
    ready = kube.condition(node, "Ready")
    if ready and ready.get("status") != "True":
        problems.append(("NotReady", ready))
    for name in PRESSURE_CONDITIONS:
        entry = kube.condition(node, name)
        if entry.get("status") == "True":
            problems.append((name, entry))
    spec = kube.mapping(node.get("spec"))
    if spec.get("unschedulable") is True:
        problems.append(("Unschedulable", {"reason": "Cordoned", "message": "spec.unschedulable is true"}))
    # A condition taint without its condition (a partial dump, or the condition already cleared).
    reported = {problem for problem, _ in problems}
    for taint in kube.items(spec.get("taints")):
        problem = CONDITION_TAINTS.get(str(taint.get("key", "")))
        if problem and problem not in reported:
            problems.append((problem, {"reason": "Tainted", "message": f"the node has the taint {taint.get('key')}:{taint.get('effect')}"}))
            reported.add(problem)
    return problems
