"""Validation of graph documents: every problem names the graph, the path inside it and the problem."""

from __future__ import annotations

from typing import Any

import pytest

from kdiag.errors import RuleError
from kdiag.rootcause import PluginRegistry, check_graphs
from kdiag.rootcause.builtin import BUILTIN_PLUGINS


def problems_of(body: dict[str, Any], registry: PluginRegistry | None = None) -> list[RuleError]:
    _, problems = check_graphs({"G": body}, registry or PluginRegistry(BUILTIN_PLUGINS), source="graphs.yaml")
    return problems


def body(nodes: list[Any], verdicts: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "diagnoses": ["R"],
        "nodes": nodes,
        "verdicts": verdicts if verdicts is not None else [{"cause": "c", "responsibility": "USER", "summary": "S"}],
        **extra,
    }


def only_problem(graph_body: dict[str, Any]) -> RuleError:
    problems = problems_of(graph_body)
    assert len(problems) == 1, [str(problem) for problem in problems]
    return problems[0]


def test_cycle_rejected() -> None:
    problem = only_problem(
        body(
            [
                {"name": "a", "plugin": "image-pull-classifier", "inputs": ["c"]},
                {"name": "b", "plugin": "pull-secret-check", "inputs": ["a"]},
                {"name": "c", "plugin": "failure-distribution", "when": {"node": "b", "field": "status", "equals": "ok"}},
            ]
        )
    )
    assert problem.rule == "G"
    assert problem.path == "nodes[0]"
    assert problem.problem == "cycle a -> b -> c -> a: a node can only use the findings of nodes that run before it"
    assert problem.source == "graphs.yaml"
    assert str(problem) == f"graphs.yaml: graph 'G' at nodes[0]: {problem.problem}"


def test_self_input_rejected() -> None:
    problem = only_problem(body([{"name": "a", "plugin": "image-pull-classifier", "inputs": ["a"]}]))
    assert problem.path == "nodes[0].inputs[0]"
    assert problem.problem == "a node cannot take its own finding as input"


def test_unknown_plugin_rejected() -> None:
    problem = only_problem(body([{"name": "a", "plugin": "image-pull-clasifier"}]))
    assert problem.rule == "G"
    assert problem.path == "nodes[0].plugin"
    assert problem.problem.startswith("unknown plugin 'image-pull-clasifier'. Did you mean image-pull-classifier? Known plugins: config-reference-check, ")
    assert problem.problem.endswith("Declare a remote plugin under plugins with its url, or register a Python plugin")


def test_unknown_input_rejected() -> None:
    problem = only_problem(body([{"name": "a", "plugin": "image-pull-classifier", "inputs": ["missing"]}]))
    assert problem.path == "nodes[0].inputs[0]"
    assert problem.problem == "unknown input node 'missing'. Nodes of this graph: a"


def test_unknown_node_in_condition_rejected() -> None:
    verdicts = [{"when": {"node": "clasify", "field": "category", "equals": "x"}, "cause": "c", "responsibility": "USER", "summary": "S"}]
    problem = only_problem(body([{"name": "classify", "plugin": "image-pull-classifier"}], verdicts))
    assert problem.path == "verdicts[0].when.node"
    assert problem.problem == "unknown node 'clasify'. Known nodes here: classify"


def test_unknown_node_in_when_rejected() -> None:
    nodes = [{"name": "a", "plugin": "image-pull-classifier"}, {"name": "b", "plugin": "pull-secret-check", "when": [{"node": "a", "status": "OK"}, {"node": "zz", "status": "OK"}]}]
    problem = only_problem(body(nodes))
    assert problem.path == "nodes[1].when[1].node"
    assert "unknown node 'zz'" in problem.problem


def test_unknown_node_in_template_rejected() -> None:
    verdicts = [{"cause": "c", "responsibility": "USER", "summary": "Image {clasify.image} is missing."}]
    problem = only_problem(body([{"name": "classify", "plugin": "image-pull-classifier"}], verdicts))
    assert problem.path == "verdicts[0].summary"
    assert problem.problem == "placeholder {clasify.image} names unknown node 'clasify'. Nodes of this graph: classify"


@pytest.mark.parametrize(
    ("condition", "path", "problem"),
    [
        ({"node": "a", "field": "x"}, "verdicts[0].when", "field 'x' needs an operator: one of equals, notEquals, in, notIn, exists"),
        ({"node": "a", "equals": "x"}, "verdicts[0].when", "equals needs field, the name of the value to test"),
        ({"node": "a", "status": "BROKEN"}, "verdicts[0].when.status", "must be one or a list of OK, FAILED, TIMED_OUT, SKIPPED, got the string 'BROKEN'"),
        ({"node": "a", "field": "x", "in": "y"}, "verdicts[0].when.in", "must be a non-empty list of strings, got the string 'y'"),
        ({"node": "a", "field": "n", "equals": 3}, "verdicts[0].when.equals", 'must be a string, got the number 3. Quote it: "3"'),
        ({"node": "a", "field": "x", "equal": "y"}, "verdicts[0].when.equal", "unknown key. Valid keys are node, status, field, equals, notEquals, in, notIn, exists, or one of all, any, not. Did you mean equals?"),
        ({"any": {"node": "a", "status": "OK"}}, "verdicts[0].when.any", "must be a list of conditions, got a mapping"),
        ({"node": "a"}, "verdicts[0].when", "a test needs status or field with an operator"),
    ],
)
def test_condition_problems(condition: dict[str, Any], path: str, problem: str) -> None:
    verdicts = [{"when": condition, "cause": "c", "responsibility": "USER", "summary": "S"}]
    # The first problem is the one named. A misspelt operator also leaves the field without one.
    found = problems_of(body([{"name": "a", "plugin": "image-pull-classifier"}], verdicts))[0]
    assert found.path == path
    assert found.problem == problem


@pytest.mark.parametrize(
    ("verdict", "path", "problem"),
    [
        ({"cause": "Bad Cause", "responsibility": "USER", "summary": "S"}, "verdicts[0].cause", "must be lower-case words joined by '-', such as image-tag-not-found, got the string 'Bad Cause'"),
        ({"cause": "c", "responsibility": "TEAM", "summary": "S"}, "verdicts[0].responsibility", "must be one of USER, PLATFORM, UNKNOWN, got the string 'TEAM'"),
        ({"cause": "c", "responsibility": "USER"}, "verdicts[0].summary", "must be a non-empty string, got null"),
        ({"cause": "c", "responsibility": "USER", "summary": "S {a.b"}, "verdicts[0].summary", "unmatched '{' at character 2. Write {{ for a literal brace"),
        ({"cause": "c", "responsibility": "USER", "summary": "{diagnosis.uid}"}, "verdicts[0].summary", "unknown field in {diagnosis.uid}: diagnosis has rule, kind, namespace, name, cluster"),
    ],
)
def test_verdict_problems(verdict: dict[str, Any], path: str, problem: str) -> None:
    found = only_problem(body([{"name": "a", "plugin": "image-pull-classifier"}], [verdict]))
    assert found.path == path
    assert found.problem == problem


@pytest.mark.parametrize(
    ("declaration", "path", "problem"),
    [
        ({"url": "https://127.0.0.1:8443/x"}, "plugins.probe.url", "URL 'https://127.0.0.1:8443/x' only http URLs are accepted, got scheme 'https'"),
        ({"url": "file:///etc/passwd"}, "plugins.probe.url", "URL 'file:///etc/passwd' only http URLs are accepted, got scheme 'file'"),
        ({"url": "http://user:secret@127.0.0.1/x"}, "plugins.probe.url", "URL 'http://user:secret@127.0.0.1/x' must not contain credentials, because graph files and logs show URLs"),
        ({"url": "http:///x"}, "plugins.probe.url", "URL 'http:///x' has no host"),
        ({}, "plugins.probe.url", "missing required key url"),
        ({"url": "http://127.0.0.1:1/x", "timeout": 0}, "plugins.probe.timeout", "must be a number of seconds greater than 0 and at most 60, got the number 0"),
    ],
)
def test_remote_declaration_problems(declaration: dict[str, Any], path: str, problem: str) -> None:
    found = only_problem(body([{"name": "a", "plugin": "image-pull-classifier"}], plugins={"probe": declaration}))
    assert found.path == path
    assert found.problem == problem


def test_remote_name_shadowing_rejected() -> None:
    found = only_problem(body([{"name": "a", "plugin": "image-pull-classifier"}], plugins={"image-pull-classifier": {"url": "http://127.0.0.1:1/x"}}))
    assert found.path == "plugins.image-pull-classifier"
    assert found.problem == "'image-pull-classifier' is already a registered Python plugin. Give the remote plugin another name"


def test_remote_isolation_rejected() -> None:
    nodes = [{"name": "a", "plugin": "probe", "isolation": "process"}]
    found = only_problem(body(nodes, plugins={"probe": {"url": "http://127.0.0.1:1/x"}}))
    assert found.path == "nodes[0].isolation"


def test_node_problems_all_reported() -> None:
    nodes = [
        {"name": "a", "plugin": "image-pull-classifier", "timeout": "2s"},
        {"name": "a", "plugin": "pull-secret-check"},
        {"name": "diagnosis", "plugin": "pull-secret-check"},
        {"plugin": "pull-secret-check"},
        {"name": "b", "plugin": "pull-secret-check", "retries": 3},
    ]
    problems = problems_of(body(nodes))
    assert [(problem.path, problem.problem) for problem in problems] == [
        ("nodes[1].name", "node name 'a' is used twice"),
        ("nodes[2].name", "'diagnosis' is reserved for templates. Choose another node name"),
        ("nodes[3]", "missing required key name"),
        ("nodes[0].timeout", "must be a number of seconds greater than 0 and at most 60, got the string '2s'"),
        ("nodes[4].retries", "unknown key. Valid keys are name, plugin, inputs, when, timeout, isolation"),
    ]


def test_graph_level_problems() -> None:
    problems = problems_of({"diagnoses": [], "nodes": "x", "extra": 1})
    assert [(problem.path, problem.problem) for problem in problems] == [
        ("extra", "unknown key. Valid keys are diagnoses, description, plugins, nodes, verdicts"),
        ("verdicts", "missing required key verdicts"),
        ("diagnoses", "must be a rule name or a non-empty list of rule names, got a list"),
        ("nodes", "must be a non-empty list of nodes, got the string 'x'"),
    ]


def test_document_not_mapping() -> None:
    _, problems = check_graphs(["G"], PluginRegistry(BUILTIN_PLUGINS))
    assert problems[0].problem == "a graph document must be a mapping of graph name to graph body, got a list"


def test_process_isolation_needs_pool() -> None:
    _, problems = check_graphs({"G": body([{"name": "a", "plugin": "image-pull-classifier", "isolation": "process"}])}, PluginRegistry(BUILTIN_PLUGINS))
    assert [(problem.path, problem.problem) for problem in problems] == [
        ("nodes[0].isolation", "this graph set has no worker process pool, so plugins cannot run in a process")
    ]


def test_execution_order_follows_dependencies() -> None:
    nodes = [
        {"name": "late", "plugin": "pull-secret-check", "inputs": ["early"]},
        {"name": "middle", "plugin": "failure-distribution", "when": {"node": "early", "status": "OK"}},
        {"name": "early", "plugin": "image-pull-classifier"},
    ]
    (graph,), problems = check_graphs({"G": body(nodes)}, PluginRegistry(BUILTIN_PLUGINS))
    assert problems == []
    assert [node.name for node in graph.nodes] == ["early", "late", "middle"]
    assert [node.timeout_seconds for node in graph.nodes] == [2.0, 2.0, 2.0]


def test_shipped_graphs_valid() -> None:
    from pathlib import Path

    from kdiag.rootcause.graphset import graph_files, read_documents

    registry = PluginRegistry(BUILTIN_PLUGINS)
    files = graph_files([Path(__file__).resolve().parents[3] / "rootcause"])
    assert files
    for path in files:
        for document in read_documents(path):
            graphs, problems = check_graphs(document, registry, source=str(path))
            assert problems == []
            assert graphs
