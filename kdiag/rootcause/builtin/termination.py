"""Termination history: how a crashing or OOM-killed container last ended, against its limits.

The container is the one the alert context names (status.containerStatuses[name=...]), or else
the one with the most restarts. category is, in order of precedence:

- oom-killed: the last termination was OOMKilled and the container has a memory limit;
- oom-killed-no-limit: OOMKilled without a memory limit, so the node or the pod's cgroup ran out;
- liveness-probe: the kubelet killed it (exit code 137 or 143) after liveness or startup probe
  failures in the pod's Events;
- start-error: the runtime could not start the command (exit code 126 or 127, or reason
  StartError or ContainerCannotRun);
- clean-exit: exit code 0, so the command finished and the kubelet restarted it;
- error-exit: another non-zero exit code;
- unknown: no termination is recorded.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

from kdiag.rootcause.builtin import kube
from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.findings import Finding
from kdiag.rootcause.plugins import plugin
from kdiag.rules.quantities import parse_quantity

START_ERROR_REASONS = ("StartError", "ContainerCannotRun")
KILLED_BY_KUBELET_CODES = (137, 143)


@plugin("termination-history")
def termination_history(context: DiagnosisContext, inputs: Mapping[str, Finding]) -> dict[str, str]:
    """Report the restart count, last termination and memory limit of the diagnosed container."""
    pod = context.subject()
    if not kube.is_pod(pod):
        return {"category": "unknown", "detail": "the pod is not known"}
    status, is_init = _select_container(pod, context.diagnosis.context)
    if status is None:
        return {"category": "unknown", "detail": "the pod has no container statuses"}
    name = str(status.get("name", ""))
    state = kube.mapping(status.get("state"))
    terminated = kube.mapping(kube.mapping(status.get("lastState")).get("terminated")) or kube.mapping(state.get("terminated"))
    reason = str(terminated.get("reason", ""))
    exit_code = terminated.get("exitCode")
    exit_code = exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else None

    limits = kube.mapping(kube.mapping(kube.container_spec(pod, name).get("resources")).get("limits"))
    requests = kube.mapping(kube.mapping(kube.container_spec(pod, name).get("resources")).get("requests"))
    memory_limit = str(limits.get("memory", ""))
    limit_bytes = parse_quantity(memory_limit) if memory_limit else None
    probe_failures = _probe_failures(context, name)

    values: dict[str, Any] = {
        "container": name,
        "init": str(is_init).lower(),
        "restartCount": str(status.get("restartCount", 0)),
        "waitingReason": kube.waiting_reason(status),
        "lastReason": reason,
        "lastExitCode": "" if exit_code is None else str(exit_code),
        "lastSignal": _signal_name(exit_code),
        "lastFinishedAt": str(terminated.get("finishedAt", "")),
        "lastMessage": str(terminated.get("message", ""))[:300],
        "memoryLimit": memory_limit,
        "memoryLimitBytes": "" if limit_bytes is None else str(int(limit_bytes)),
        "memoryRequest": str(requests.get("memory", "")),
        "probeFailures": str(probe_failures),
        "category": _category(reason, exit_code, memory_limit, probe_failures),
    }
    return {key: value for key, value in values.items() if value}


def _select_container(pod: Mapping[str, Any], alert_context: Mapping[str, str]) -> tuple[Mapping[str, Any] | None, bool]:
    statuses = list(kube.container_statuses(pod))
    named = kube.container_from_context(alert_context)
    if named is not None:
        for is_init, status in statuses:
            if status.get("name") == named[0] and is_init == named[1]:
                return status, is_init
    best: tuple[int, bool, Mapping[str, Any]] | None = None
    for is_init, status in statuses:
        restarts = status.get("restartCount", 0)
        restarts = restarts if isinstance(restarts, int) else 0
        if best is None or restarts > best[0]:
            best = (restarts, is_init, status)
    return (best[2], best[1]) if best else (None, False)


def _probe_failures(context: DiagnosisContext, container: str) -> int:
    count = 0
    for event in context.events():
        text = kube.event_text(event)
        if event.get("reason") != "Unhealthy" or not text.startswith(("Liveness probe failed", "Startup probe failed", "Liveness probe errored")):
            continue
        field_path = str(kube.mapping(event.get("involvedObject")).get("fieldPath", ""))
        if container and field_path and f"{{{container}}}" not in field_path:
            continue
        event_count = event.get("count", 1)
        count += event_count if isinstance(event_count, int) and event_count > 0 else 1
    return count


def _category(reason: str, exit_code: int | None, memory_limit: str, probe_failures: int) -> str:
    if reason == "OOMKilled":
        return "oom-killed" if memory_limit else "oom-killed-no-limit"
    if probe_failures and exit_code in KILLED_BY_KUBELET_CODES:
        return "liveness-probe"
    if reason in START_ERROR_REASONS or exit_code in (126, 127):
        return "start-error"
    if exit_code == 0:
        return "clean-exit"
    if exit_code is not None:
        return "error-exit"
    return "unknown"


def _signal_name(exit_code: int | None) -> str:
    """Name the signal of a shell-style exit code above 128 (137 is SIGKILL)."""
    if exit_code is None or not 128 < exit_code < 128 + 65:
        return ""
    try:
        return signal.Signals(exit_code - 128).name
    except ValueError:
        return ""
