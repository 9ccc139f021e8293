"""Changing graphs at runtime: new remote plugins, invalid replacements, and loading from files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from rootcause_support import CONTEXT, PluginServer, by_node, graph_document, run

from kdiag.errors import ConfigError, RuleError
from kdiag.rootcause import GraphSet


def test_remote_plugin_added_at_runtime(test_graphs: GraphSet, plugin_server: Callable[[str], PluginServer]) -> None:
    test_graphs.replace([graph_document([{"name": "echo", "plugin": "test-echo"}])])
    assert list(by_node(run(test_graphs))) == ["echo"]

    first = plugin_server("first")
    nodes = [{"name": "echo", "plugin": "test-echo"}, {"name": "probe", "plugin": "registry-probe", "inputs": ["echo"]}]
    verdicts = [
        {
            "when": {"node": "probe", "field": "server", "equals": "first"},
            "cause": "probed",
            "responsibility": "PLATFORM",
            "summary": "Answered by {probe.server}.",
        },
        {"cause": "not-probed", "responsibility": "UNKNOWN", "summary": "Answered by {probe.server|nobody}."},
    ]
    test_graphs.replace([graph_document(nodes, verdicts, {"registry-probe": {"url": first.url("/ok")}})])

    root_cause = run(test_graphs)
    probe = by_node(root_cause)["probe"]
    assert probe["status"] == "OK"
    assert probe["values"] == {"server": "first", "plugin": "registry-probe", "inputs": "echo=OK", "rule": "TestRule"}
    assert root_cause["cause"] == "probed"
    assert first.requests[-1]["object"] == CONTEXT.obj
    assert first.requests[-1]["diagnosis"]["name"] == "web-1"

    # The same declaration pointed at another server is used by the next run.
    second = plugin_server("second")
    test_graphs.replace([graph_document(nodes, verdicts, {"registry-probe": {"url": second.url("/ok")}})])
    root_cause = run(test_graphs)
    assert by_node(root_cause)["probe"]["values"]["server"] == "second"
    assert root_cause["summary"] == "Answered by second."
    assert len(first.requests) == 1
    assert len(second.requests) == 1


def test_invalid_replace_keeps_previous(test_graphs: GraphSet) -> None:
    test_graphs.replace([graph_document([{"name": "echo", "plugin": "test-echo"}])])
    previous = test_graphs.get("TestGraph")

    with pytest.raises(RuleError) as raised:
        test_graphs.replace([graph_document([{"name": "echo", "plugin": "no-such-plugin"}])], source="update.yaml")

    assert raised.value.source == "update.yaml"
    assert test_graphs.get("TestGraph") is previous
    assert test_graphs.graph_for("TestRule") is previous
    assert by_node(run(test_graphs))["echo"]["status"] == "OK"


def test_rule_in_two_graphs_rejected(test_graphs: GraphSet) -> None:
    first = graph_document([{"name": "echo", "plugin": "test-echo"}])
    second = {"OtherGraph": dict(first["TestGraph"])}
    with pytest.raises(RuleError) as raised:
        test_graphs.replace([first, second])
    assert raised.value.rule == "OtherGraph"
    assert raised.value.path == "diagnoses[0]"
    assert raised.value.problem == "rule 'TestRule' is already analysed by graph 'TestGraph'. A rule can have only one graph"


def test_load_from_folder(tmp_path: Path, test_graphs: GraphSet) -> None:
    (tmp_path / "a.yaml").write_text(
        "# comment\nFirst:\n  diagnoses: [RuleA]\n  nodes:\n  - {name: echo, plugin: test-echo}\n"
        "  verdicts:\n  - {cause: a, responsibility: USER, summary: A}\n---\n",
        encoding="utf-8",
    )
    (tmp_path / "b.json").write_text(
        '{"Second": {"diagnoses": "RuleB", "nodes": [{"name": "echo", "plugin": "test-echo"}], "verdicts": [{"cause": "b", "responsibility": "USER", "summary": "B"}]}}',
        encoding="utf-8",
    )
    (tmp_path / ".hidden.yaml").write_text("not: [valid", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("ignored", encoding="utf-8")
    test_graphs.load(tmp_path)
    assert sorted(graph.name for graph in test_graphs.graphs) == ["First", "Second"]
    assert test_graphs.graph_for("RuleB").source == str(tmp_path / "b.json")


def test_load_rejects_duplicate_yaml_key(tmp_path: Path, test_graphs: GraphSet) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("G:\n  diagnoses: [R]\n  diagnoses: [S]\n", encoding="utf-8")
    with pytest.raises(RuleError, match="found duplicate key 'diagnoses'"):
        test_graphs.load(path)


def test_load_missing_path(tmp_path: Path, test_graphs: GraphSet) -> None:
    with pytest.raises(ConfigError, match="graph path not found"):
        test_graphs.load(tmp_path / "missing")


def test_graph_without_match_returns_none(test_graphs: GraphSet) -> None:
    test_graphs.replace([graph_document([{"name": "echo", "plugin": "test-echo"}])])
    other = type(CONTEXT)(type(CONTEXT.diagnosis)(rule="OtherRule"), CONTEXT.obj)
    assert test_graphs.diagnose(other) is None
    assert test_graphs.diagnose(CONTEXT) is not None
