"""Plugins that raise, hang, kill their own process or return garbage: the graph reports them and goes on."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from rootcause_support import CONTEXT, PluginServer, by_node, graph_document, run

from kdiag.codec import codec
from kdiag.rootcause import GraphSet

def test_failures_reported_graph_goes_on(test_graphs: GraphSet, plugin_server: Callable[[str], PluginServer]) -> None:
    server = plugin_server("checks")
    nodes = [
        {"name": "raises", "plugin": "test-raises"},
        {"name": "hangs", "plugin": "test-sleeps", "timeout": 0.3},
        {"name": "exits", "plugin": "test-exits"},
        {"name": "killed", "plugin": "test-kills-itself"},
        {"name": "hangs-in-process", "plugin": "test-sleeps", "isolation": "process", "timeout": 0.5},
        {"name": "invalid-json", "plugin": "checks-invalid"},
        {"name": "after", "plugin": "test-echo", "inputs": ["raises", "hangs", "exits", "killed", "hangs-in-process", "invalid-json"]},
        {"name": "after-in-process", "plugin": "test-echo", "isolation": "process", "inputs": ["killed"]},
        {"name": "remote-after", "plugin": "checks-ok", "inputs": ["invalid-json"]},
    ]
    verdicts = [
        {
            "when": [{"node": "raises", "status": "FAILED"}, {"node": "after", "field": "rule", "equals": "TestRule"}],
            "cause": "checked-despite-failures",
            "responsibility": "UNKNOWN",
            "summary": "The graph reached its verdict; after saw {after.inputs}.",
        }
    ]
    plugins = {"checks-invalid": {"url": server.url("/invalid-json")}, "checks-ok": {"url": server.url("/ok")}}
    test_graphs.replace([graph_document(nodes, verdicts, plugins)])

    started = time.monotonic()
    root_cause = run(test_graphs)
    elapsed = time.monotonic() - started
    findings = by_node(root_cause)

    assert findings["raises"]["status"] == "FAILED"
    assert findings["raises"]["error"] == "plugin test-raises raised RuntimeError: boom"
    assert findings["hangs"]["status"] == "TIMED_OUT"
    assert findings["hangs"]["error"] == "plugin test-sleeps timed out after 0.3 s"
    assert findings["exits"]["status"] == "FAILED"
    assert "exited with code 3" in findings["exits"]["error"]
    assert findings["killed"]["status"] == "FAILED"
    assert "killed by signal SIGKILL" in findings["killed"]["error"]
    assert findings["hangs-in-process"]["status"] == "TIMED_OUT"
    assert findings["hangs-in-process"]["error"] == "plugin test-sleeps timed out after 0.5 s"
    assert findings["invalid-json"]["status"] == "FAILED"
    assert findings["invalid-json"]["error"].startswith("plugin checks-invalid returned invalid JSON from http://127.0.0.1:")
    for name in ("raises", "hangs", "exits", "killed", "hangs-in-process", "invalid-json"):
        assert findings[name]["values"] == {}

    assert findings["after"]["status"] == "OK"
    expected_inputs = "exits=FAILED,hangs=TIMED_OUT,hangs-in-process=TIMED_OUT,invalid-json=FAILED,killed=FAILED,raises=FAILED"
    assert findings["after"]["values"]["inputs"] == expected_inputs
    assert findings["after-in-process"]["status"] == "OK"
    assert findings["after-in-process"]["values"]["pid"] != str(os.getpid())
    assert findings["remote-after"]["status"] == "OK"
    assert findings["remote-after"]["values"]["inputs"] == "invalid-json=FAILED"

    assert root_cause["cause"] == "checked-despite-failures"
    assert expected_inputs in root_cause["summary"]
    assert list(findings) == [node["name"] for node in nodes]
    # The timeouts bound the run: 0.3 s and 0.5 s of waiting plus process starts.
    assert elapsed < 6
    assert codec("RootCause").decode(codec("RootCause").encode(root_cause)) == root_cause


def test_crashed_workers_replaced(test_graphs: GraphSet) -> None:
    nodes = [
        {"name": "killed", "plugin": "test-kills-itself"},
        {"name": "echo", "plugin": "test-echo", "isolation": "process"},
    ]
    test_graphs.replace([graph_document(nodes)])
    pids_before = set(test_graphs.pool.pids())

    first = by_node(run(test_graphs))
    second = by_node(run(test_graphs))

    assert first["killed"]["status"] == "FAILED"
    assert second["killed"]["status"] == "FAILED"
    assert first["echo"]["status"] == "OK"
    assert second["echo"]["status"] == "OK"
    pids_after = set(test_graphs.pool.pids())
    assert len(pids_after) == test_graphs.pool.size
    # Each crash replaced its worker, so no worker of the first set that ran a crash remains.
    assert pids_before - pids_after
    for pid in pids_before - pids_after:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_hung_worker_killed_by_pid(test_graphs: GraphSet) -> None:
    test_graphs.replace([graph_document([{"name": "hangs", "plugin": "test-sleeps", "isolation": "process", "timeout": 0.4}])])
    test_graphs.pool.start()
    pids_before = set(test_graphs.pool.pids())

    finding = by_node(run(test_graphs))["hangs"]

    assert finding["status"] == "TIMED_OUT"
    killed = pids_before - set(test_graphs.pool.pids())
    assert len(killed) == 1
    (pid,) = killed
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize(
    ("plugin", "isolation", "error"),
    [
        ("test-wrong-types", "inline", "plugin test-wrong-types returned invalid output: value 'count' must be a string, got int"),
        ("test-not-a-mapping", "inline", "plugin test-not-a-mapping returned invalid output: expected a mapping of string values, got list"),
        ("test-wrong-types", "process", "plugin test-wrong-types returned invalid output: value 'count' must be a string, got int"),
        ("test-not-json", "process", "plugin test-not-json returned invalid output: Object of type object is not JSON serializable"),
        ("test-plugin-error", "inline", "plugin test-plugin-error failed: the object has no status"),
        ("test-raises", "process", "plugin test-raises raised RuntimeError: boom"),
    ],
)
def test_invalid_output_fails(plugin: str, isolation: str, error: str, test_graphs: GraphSet) -> None:
    test_graphs.replace([graph_document([{"name": "check", "plugin": plugin, "isolation": isolation}])])
    finding = by_node(run(test_graphs))["check"]
    assert finding["status"] == "FAILED"
    assert finding["error"] == error


def test_printing_plugin_keeps_protocol(test_graphs: GraphSet) -> None:
    test_graphs.replace([graph_document([{"name": "prints", "plugin": "test-prints"}, {"name": "echo", "plugin": "test-echo", "isolation": "process"}])])
    findings = by_node(run(test_graphs))
    assert findings["prints"]["status"] == "OK"
    assert findings["prints"]["values"] == {"printed": "true"}
    assert findings["echo"]["status"] == "OK"


@pytest.mark.parametrize(
    ("path", "status", "error_start"),
    [
        ("/wrong-types", "FAILED", "plugin remote returned invalid output: value 'count' must be a string, got int"),
        ("/error", "FAILED", "plugin remote failed: registry API returned 503"),
        ("/missing", "FAILED", "plugin remote returned HTTP 500 from http://127.0.0.1:"),
        ("/slow", "TIMED_OUT", "plugin remote timed out after 0.3 s"),
    ],
)
def test_remote_failures(path: str, status: str, error_start: str, test_graphs: GraphSet, plugin_server: Callable[[str], PluginServer]) -> None:
    server = plugin_server("remote")
    plugins = {"remote": {"url": server.url(path), "timeout": 0.3}}
    test_graphs.replace([graph_document([{"name": "check", "plugin": "remote"}], plugins=plugins)])
    finding = by_node(run(test_graphs))["check"]
    assert finding["status"] == status
    assert finding["error"].startswith(error_start)


def test_remote_unreachable(test_graphs: GraphSet, plugin_server: Callable[[str], PluginServer]) -> None:
    server = plugin_server("gone")
    url = server.url("/ok")
    server.close()
    test_graphs.replace([graph_document([{"name": "check", "plugin": "remote"}], plugins={"remote": {"url": url}})])
    finding = by_node(run(test_graphs))["check"]
    assert finding["status"] == "FAILED"
    assert finding["error"].startswith(f"plugin remote could not be reached at {url}")


def test_skipped_node_and_status_conditions(test_graphs: GraphSet) -> None:
    nodes = [
        {"name": "raises", "plugin": "test-raises"},
        {"name": "on-failure", "plugin": "test-echo", "when": {"node": "raises", "status": ["FAILED", "TIMED_OUT"]}},
        {"name": "on-success", "plugin": "test-echo", "when": {"node": "raises", "status": "OK"}},
        {"name": "negated", "plugin": "test-echo", "when": {"not": {"node": "on-success", "status": "OK"}}},
    ]
    verdicts = [
        {"when": {"node": "on-success", "field": "rule", "exists": True}, "cause": "wrong", "responsibility": "USER", "summary": "wrong"},
        {
            "when": {"any": [{"node": "on-success", "status": "OK"}, {"node": "negated", "field": "rule", "in": ["Other", "TestRule"]}]},
            "cause": "negation-ran",
            "responsibility": "USER",
            "summary": "Skipped value: {on-success.rule|none}; rule {diagnosis.rule} on {diagnosis.kind} {diagnosis.name}.",
        },
    ]
    test_graphs.replace([graph_document(nodes, verdicts)])
    root_cause = run(test_graphs)
    findings = by_node(root_cause)
    assert findings["on-failure"]["status"] == "OK"
    assert findings["on-success"]["status"] == "SKIPPED"
    assert findings["on-success"]["durationMs"] == 0
    assert findings["negated"]["status"] == "OK"
    assert root_cause["cause"] == "negation-ran"
    assert root_cause["summary"] == "Skipped value: none; rule TestRule on Pod web-1."


def test_no_verdict_matches(test_graphs: GraphSet) -> None:
    verdicts = [{"when": {"node": "echo", "status": "FAILED"}, "cause": "never", "responsibility": "USER", "summary": "never"}]
    test_graphs.replace([graph_document([{"name": "echo", "plugin": "test-echo"}], verdicts)])
    root_cause = run(test_graphs)
    assert root_cause["cause"] == "unknown"
    assert root_cause["responsibility"] == "UNKNOWN"
    assert root_cause["summary"] == "No verdict of root-cause graph TestGraph matched the findings."
