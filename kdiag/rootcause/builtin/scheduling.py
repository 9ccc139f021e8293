"""The scheduling reason parser: why the scheduler found no node for a pod.

It splits a message such as "0/23 nodes are available: 1 node(s) had taints that the pod didn't
tolerate, 22 node(s) didn't match node selector." into reasons with node counts, and sums them by
kind: taint, nodeSelector (node selector or node affinity), podAffinity (pod affinity,
anti-affinity, topology spread), insufficient (CPU, memory, other resources, pods, ports), volume,
unschedulable (cordoned nodes) and other. The preemption part that newer schedulers append is
ignored.

category names what blocks the pod, in order of precedence:

- condition-taint: a named taint is one that nodes get for a condition (disk pressure, not ready);
- insufficient-resources: some nodes lack resources;
- unschedulable: some nodes are cordoned, and the rest are excluded by the pod's constraints;
- taint-and-selector: the nodes that match the selector or affinity carry taints the pod does
  not tolerate;
- node-selector, taint, pod-affinity, volume: only that kind of reason;
- unknown: no message, or none of the above.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kdiag.rootcause.builtin import kube
from kdiag.rootcause.builtin.node_conditions import CONDITION_TAINTS
from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.findings import Finding
from kdiag.rootcause.plugins import plugin

KINDS = ("taint", "nodeSelector", "podAffinity", "insufficient", "volume", "unschedulable", "other")

_HEADER = re.compile(r"(\d+)/(\d+) nodes are available(?::\s*)?(.*)", re.DOTALL)
_ITEM = re.compile(r"(\d+)\s+(.+?)(?=,\s*\d+\s|$)", re.DOTALL)
_PREEMPTION = re.compile(r"\.?\s*preemption:.*$", re.DOTALL)
_TAINT_KEY = re.compile(r"\{([^:}]+):")
_INSUFFICIENT = re.compile(r"Insufficient (\S+?)\.?$")

_KIND_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("taint", re.compile(r"taint", re.IGNORECASE)),
    # Before nodeSelector, because "volume node affinity conflict" is about volumes.
    ("volume", re.compile(r"volume|PersistentVolumeClaim|persistent volumes", re.IGNORECASE)),
    ("podAffinity", re.compile(r"pod affinity|pod anti-affinity|anti-affinity|topology spread", re.IGNORECASE)),
    ("nodeSelector", re.compile(r"node selector|node affinity|nodeSelector|node\(s\) didn't match Pod's node", re.IGNORECASE)),
    ("insufficient", re.compile(r"Insufficient|Too many pods|free ports", re.IGNORECASE)),
    ("unschedulable", re.compile(r"unschedulable", re.IGNORECASE)),
)


def parse_scheduler_message(message: str) -> dict[str, Any] | None:
    """Return {"total", "available", "reasons": [(count, text, kind)], "taintKeys", "resources"}, or None."""
    found = _HEADER.search(message)
    if found is None:
        return None
    body = _PREEMPTION.sub("", found.group(3)).strip().rstrip(".")
    reasons = []
    taint_keys: list[str] = []
    resources: list[str] = []
    for item in _ITEM.finditer(body):
        text = item.group(2).strip().rstrip(".,")
        kind = next((name for name, pattern in _KIND_PATTERNS if pattern.search(text)), "other")
        reasons.append((int(item.group(1)), text, kind))
        taint_keys.extend(key.strip() for key in _TAINT_KEY.findall(text))
        insufficient = _INSUFFICIENT.search(text)
        if insufficient:
            resources.append(insufficient.group(1))
        elif kind == "insufficient":
            resources.append("pods" if "Too many pods" in text else "ports")
    return {"available": int(found.group(1)), "total": int(found.group(2)), "reasons": reasons, "taintKeys": taint_keys, "resources": resources}


@plugin("scheduling-reasons")
def scheduling_reasons(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    """Split the scheduler's FailedScheduling message into reasons with node counts and a category."""
    message = _scheduler_message(context)
    if not message:
        return {"category": "unknown", "detail": "no scheduler message is known for the pod"}
    parsed = parse_scheduler_message(message)
    if parsed is None:
        return {"category": "unknown", "message": message[:500], "detail": "the message is not of the form 0/N nodes are available: ..."}
    counts = dict.fromkeys(KINDS, 0)
    for count, _, kind in parsed["reasons"]:
        counts[kind] += count
    condition_taints = [key for key in parsed["taintKeys"] if key in CONDITION_TAINTS]
    values = {
        "message": message[:500],
        "totalNodes": str(parsed["total"]),
        "reasons": "; ".join(f"{count} {text}" for count, text, _ in parsed["reasons"]),
        "taintKeys": kube.join(parsed["taintKeys"]),
        "conditionTaints": kube.join(condition_taints),
        "nodeCondition": kube.join(CONDITION_TAINTS[key] for key in condition_taints),
        "insufficientResources": kube.join(parsed["resources"]),
        "category": _category(counts, condition_taints),
        **{kind: str(count) for kind, count in counts.items()},
    }
    return {key: value for key, value in values.items() if value}


def _category(counts: Mapping[str, int], condition_taints: list[str]) -> str:
    if condition_taints:
        return "condition-taint"
    if counts["insufficient"]:
        return "insufficient-resources"
    if counts["unschedulable"]:
        return "unschedulable"
    if counts["taint"] and counts["nodeSelector"]:
        return "taint-and-selector"
    for kind, category in (("nodeSelector", "node-selector"), ("taint", "taint"), ("podAffinity", "pod-affinity"), ("volume", "volume")):
        if counts[kind]:
            return category
    return "unknown"


def _scheduler_message(context: DiagnosisContext) -> str:
    obj = context.obj
    if obj.get("kind") == "Event" and obj.get("reason") == "FailedScheduling":
        return kube.event_text(obj)
    subject = context.subject()
    scheduled = kube.condition(subject, "PodScheduled")
    if scheduled.get("status") == "False" and scheduled.get("message"):
        return str(scheduled["message"])
    messages = [kube.event_text(event) for event in context.events() if event.get("reason") == "FailedScheduling"]
    return messages[-1] if messages else ""
