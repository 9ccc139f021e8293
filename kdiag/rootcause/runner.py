"""Running a graph: call each node's plugin in order, then pick the first verdict that holds."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.findings import MAX_ERROR_LENGTH, OK, SKIPPED, Finding, shorten
from kdiag.rootcause.graph import Graph, GraphNode
from kdiag.rootcause.plugins import Outcome, failed

log = logging.getLogger(__name__)

NO_VERDICT_CAUSE = "unknown"


def run_graph(graph: Graph, context: DiagnosisContext) -> dict[str, Any]:
    """Run graph on context and return a RootCause record (schemas/root_cause.avsc) as a dict.

    Blocks for up to the sum of the timeouts of the nodes that run, plus the time to kill and
    replace a hung worker process. A plugin that fails, times
    out or returns invalid output gives a FAILED or TIMED_OUT finding, and the graph goes on: later
    nodes receive that finding and verdicts can still match. findings are in execution order.
    When no verdict holds, the cause is "unknown" with responsibility UNKNOWN.
    """
    findings: dict[str, Finding] = {}
    for node in graph.nodes:
        findings[node.name] = _run_node(graph, node, context, findings)

    for verdict in graph.verdicts:
        if verdict.when is None or verdict.when.holds(findings):
            cause, responsibility = verdict.cause, verdict.responsibility
            summary = verdict.summary.render(findings, context.diagnosis)
            fix = verdict.fix.render(findings, context.diagnosis)
            break
    else:
        cause, responsibility, fix = NO_VERDICT_CAUSE, "UNKNOWN", ""
        summary = f"No verdict of root-cause graph {graph.name} matched the findings."
    return {
        "cause": cause,
        "summary": summary,
        "responsibility": responsibility,
        "fix": fix,
        "findings": [finding.to_avro() for finding in findings.values()],
    }


def _run_node(graph: Graph, node: GraphNode, context: DiagnosisContext, findings: Mapping[str, Finding]) -> Finding:
    plugin = node.plugin
    if node.when is not None and not node.when.holds(findings):
        return Finding(node.name, plugin.name, SKIPPED)
    inputs = {name: findings[name] for name in node.inputs}
    started = time.monotonic()
    try:
        outcome = plugin.call(context, inputs, node.timeout_seconds)
    except Exception as error:  # noqa: BLE001  # A broken call mechanism must not stop the graph either.
        log.exception("root-cause plugin call raised", extra={"graph": graph.name, "node": node.name, "plugin": plugin.name})
        outcome = failed(plugin.name, f"could not be called: {type(error).__name__}: {error}")
    duration_ms = int((time.monotonic() - started) * 1000)
    if outcome.status != OK:
        log.warning(
            "root-cause plugin did not succeed",
            extra={
                "graph": graph.name,
                "node": node.name,
                "plugin": plugin.name,
                "status": outcome.status,
                "error": outcome.error,
                "rule": context.diagnosis.rule,
                "object": f"{context.diagnosis.namespace or '-'}/{context.diagnosis.kind}/{context.diagnosis.name}",
            },
        )
    return _finding(node, outcome, duration_ms)


def _finding(node: GraphNode, outcome: Outcome, duration_ms: int) -> Finding:
    values = dict(outcome.values) if outcome.status == OK else {}
    return Finding(node.name, node.plugin.name, outcome.status, values, shorten(outcome.error, MAX_ERROR_LENGTH), duration_ms)
