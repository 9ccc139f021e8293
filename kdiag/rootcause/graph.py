"""Graph declarations: their validation and the compiled Graph that run_graph executes.

A graph document maps graph names to graph bodies, in the style of rule documents::

    ImagePullFailure:
      diagnoses: [ImagePullFailedEvent, PodImagePullError]   # rule names the graph analyses
      description: optional text
      plugins:                  # optional: remote plugins, by name
        registry-probe: {url: "http://127.0.0.1:8080/probe", timeout: 3}
      nodes:
      - name: classify
        plugin: image-pull-classifier
      - name: secrets
        plugin: pull-secret-check
        inputs: [classify]      # nodes whose findings the plugin receives
        when: {node: classify, field: category, equals: unauthorized}
        timeout: 2              # seconds, default 2 (or the remote plugin's timeout)
        isolation: process      # Python plugins only: inline (default) or process
      verdicts:                 # the first whose `when` is true wins; no `when` always matches
      - when: {node: secrets, field: status, equals: missing}
        cause: image-pull-secret-missing
        responsibility: USER    # USER, PLATFORM or UNKNOWN
        summary: "The pull secret {secrets.missing} does not exist."
        fix: "Create the Secret or fix spec.imagePullSecrets."

The condition language is described in conditions.py and the templates in templates.py. Nodes run
in dependency order (inputs and the nodes named in `when`), ties in the order they are declared.
Every problem is a RuleError with the graph name as the rule, the path inside the graph body and
the problem.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kdiag.errors import RuleError
from kdiag.rootcause.conditions import Condition, InvalidCondition, describe, parse_condition
from kdiag.rootcause.plugins import INLINE, ISOLATIONS, PROCESS, InlineCall, PluginCall, PluginRegistry
from kdiag.rootcause.remote import RemoteCall, check_url
from kdiag.rootcause.templates import DIAGNOSIS, Template, parse_template

GRAPH_KEYS = ("diagnoses", "description", "plugins", "nodes", "verdicts")
NODE_KEYS = ("name", "plugin", "inputs", "when", "timeout", "isolation")
VERDICT_KEYS = ("when", "cause", "summary", "responsibility", "fix")
REMOTE_KEYS = ("url", "timeout")
RESPONSIBILITIES = ("USER", "PLATFORM", "UNKNOWN")
DEFAULT_TIMEOUT_SECONDS = 2.0
MAX_TIMEOUT_SECONDS = 60.0

_NODE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_PLUGIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CAUSE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


@dataclass(frozen=True)
class GraphNode:
    name: str
    plugin: PluginCall
    inputs: tuple[str, ...]
    when: Condition | None
    timeout_seconds: float


@dataclass(frozen=True)
class Verdict:
    when: Condition | None
    cause: str
    responsibility: str
    summary: Template
    fix: Template


@dataclass(frozen=True)
class Graph:
    """A validated graph. nodes are in execution order."""

    name: str
    diagnoses: tuple[str, ...]
    nodes: tuple[GraphNode, ...]
    verdicts: tuple[Verdict, ...]
    source: str = ""
    description: str = ""

    def uses_processes(self) -> bool:
        return any(node.plugin.kind == PROCESS for node in self.nodes)


ProcessCallFactory = Callable[[Any], PluginCall]


def check_graphs(
    document: Any,
    registry: PluginRegistry,
    process_call: ProcessCallFactory | None = None,
    source: str = "",
) -> tuple[list[Graph], list[RuleError]]:
    """Validate a graph document and return its valid graphs and every problem, in document order.

    process_call(python_plugin) binds a plugin to a worker pool. Without it, nodes that need a
    worker process are rejected.
    """
    if not isinstance(document, Mapping):
        return [], [RuleError("", "", f"a graph document must be a mapping of graph name to graph body, got {describe(document)}", source, subject="graph")]
    graphs: list[Graph] = []
    problems: list[RuleError] = []
    for name, body in document.items():
        if not isinstance(name, str) or not name.strip():
            problems.append(RuleError(str(name), "", f"the graph name must be a non-blank string, got {describe(name)}", source, subject="graph"))
            continue
        parser = _GraphParser(name, source, registry, process_call)
        graph = parser.parse(body)
        problems.extend(parser.problems)
        if graph is not None:
            graphs.append(graph)
    return graphs, problems


class _Invalid(Exception):
    pass


class _GraphParser:
    def __init__(self, name: str, source: str, registry: PluginRegistry, process_call: ProcessCallFactory | None) -> None:
        self.name = name
        self.source = source
        self.registry = registry
        self.process_call = process_call
        self.problems: list[RuleError] = []

    def report(self, path: str, problem: str) -> None:
        self.problems.append(RuleError(self.name, path, problem, self.source, subject="graph"))

    def parse(self, body: Any) -> Graph | None:
        if not isinstance(body, Mapping):
            self.report("", f"the graph body must be a mapping, got {describe(body)}")
            return None
        for key in body:
            if key not in GRAPH_KEYS:
                self.report(str(key), f"unknown key. Valid keys are {', '.join(GRAPH_KEYS)}")
        for required in ("diagnoses", "nodes", "verdicts"):
            if required not in body:
                self.report(required, f"missing required key {required}")

        diagnoses = self._diagnoses(body.get("diagnoses", []))
        description = body.get("description", "")
        if not isinstance(description, str):
            self.report("description", f"must be a string, got {describe(description)}")
        remotes = self._remote_plugins(body.get("plugins", {}))
        nodes = self._nodes(body.get("nodes", []), remotes)
        node_names = {node.name for node in nodes} if nodes is not None else self._declared_names(body.get("nodes"))
        verdicts = self._verdicts(body.get("verdicts", []), node_names)
        if self.problems or nodes is None:
            return None
        return Graph(self.name, diagnoses, nodes, verdicts, self.source, description if isinstance(description, str) else "")

    def _diagnoses(self, value: Any) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            if "diagnoses" not in self.problems_paths():
                self.report("diagnoses", f"must be a rule name or a non-empty list of rule names, got {describe(value)}")
            return ()
        result: list[str] = []
        for index, item in enumerate(items):
            if not isinstance(item, str) or not item.strip():
                self.report(f"diagnoses[{index}]", f"must be a rule name, got {describe(item)}")
            elif item in result:
                self.report(f"diagnoses[{index}]", f"rule {item!r} is listed twice")
            else:
                result.append(item)
        return tuple(result)

    def problems_paths(self) -> set[str]:
        return {problem.path for problem in self.problems}

    def _remote_plugins(self, value: Any) -> dict[str, tuple[str, float | None]]:
        if not isinstance(value, Mapping):
            self.report("plugins", f"must be a mapping of plugin name to {{url, timeout}}, got {describe(value)}")
            return {}
        remotes: dict[str, tuple[str, float | None]] = {}
        for name, declaration in value.items():
            path = f"plugins.{name}"
            if not isinstance(name, str) or not _PLUGIN_NAME.fullmatch(name):
                self.report(path, "a plugin name must start with a letter or digit and contain only letters, digits, '.', '_' and '-'")
                continue
            if name in self.registry:
                self.report(path, f"{name!r} is already a registered Python plugin. Give the remote plugin another name")
                continue
            if not isinstance(declaration, Mapping):
                self.report(path, f"must be a mapping with url and optionally timeout, got {describe(declaration)}")
                continue
            for key in declaration:
                if key not in REMOTE_KEYS:
                    self.report(f"{path}.{key}", f"unknown key. Valid keys are {', '.join(REMOTE_KEYS)}")
            url = declaration.get("url")
            problem = check_url(url) if "url" in declaration else "missing required key url"
            if problem is not None:
                self.report(f"{path}.url", f"{problem}" if "url" not in declaration else f"URL {url!r} {problem}")
                continue
            timeout = self._timeout(declaration["timeout"], f"{path}.timeout") if "timeout" in declaration else None
            remotes[name] = (url, timeout)
        return remotes

    def _declared_names(self, value: Any) -> set[str]:
        if not isinstance(value, list):
            return set()
        return {item["name"] for item in value if isinstance(item, Mapping) and isinstance(item.get("name"), str)}

    def _nodes(self, value: Any, remotes: Mapping[str, tuple[str, float | None]]) -> tuple[GraphNode, ...] | None:
        if not isinstance(value, list) or not value:
            if "nodes" not in self.problems_paths():
                self.report("nodes", f"must be a non-empty list of nodes, got {describe(value)}")
            return None
        count_before = len(self.problems)
        names = self._node_names(value)
        known = set(names.values())
        parsed: dict[int, GraphNode] = {}
        dependencies: dict[str, set[str]] = {}
        for index, item in enumerate(value):
            if index not in names:
                continue
            node = self._node(item, f"nodes[{index}]", known, remotes)
            if node is not None:
                parsed[index] = node
                dependencies[node.name] = set(node.inputs) | (node.when.nodes() if node.when else set())
        if len(self.problems) > count_before:
            return None
        order = self._execution_order(value, names, dependencies)
        if order is None:
            return None
        by_name = {node.name: node for node in parsed.values()}
        return tuple(by_name[name] for name in order)

    def _node_names(self, items: list[Any]) -> dict[int, str]:
        names: dict[int, str] = {}
        for index, item in enumerate(items):
            path = f"nodes[{index}]"
            if not isinstance(item, Mapping):
                self.report(path, f"a node must be a mapping with name and plugin, got {describe(item)}")
                continue
            name = item.get("name")
            if name is None:
                self.report(path, "missing required key name")
            elif not isinstance(name, str) or not _NODE_NAME.fullmatch(name):
                self.report(f"{path}.name", f"must start with a letter and contain only letters, digits, '_' and '-', got {describe(name)}")
            elif name == DIAGNOSIS:
                self.report(f"{path}.name", f"{DIAGNOSIS!r} is reserved for templates. Choose another node name")
            elif name in names.values():
                self.report(f"{path}.name", f"node name {name!r} is used twice")
            else:
                names[index] = name
        return names

    def _node(self, item: Mapping[str, Any], path: str, known: set[str], remotes: Mapping[str, tuple[str, float | None]]) -> GraphNode | None:
        count_before = len(self.problems)
        name = item["name"]
        for key in item:
            if key not in NODE_KEYS:
                self.report(f"{path}.{key}", f"unknown key. Valid keys are {', '.join(NODE_KEYS)}")

        inputs: list[str] = []
        raw_inputs = item.get("inputs", [])
        if not isinstance(raw_inputs, list):
            self.report(f"{path}.inputs", f"must be a list of node names, got {describe(raw_inputs)}")
        else:
            for position, input_name in enumerate(raw_inputs):
                input_path = f"{path}.inputs[{position}]"
                if input_name == name:
                    self.report(input_path, "a node cannot take its own finding as input")
                elif not isinstance(input_name, str) or input_name not in known:
                    self.report(input_path, f"unknown input node {input_name!r}. Nodes of this graph: {', '.join(sorted(known))}")
                else:
                    inputs.append(input_name)

        when = None
        if "when" in item:
            try:
                when = parse_condition(item["when"], f"{path}.when", known - {name}, self.report)
            except InvalidCondition:
                when = None
            if when is not None and name in when.nodes():
                self.report(f"{path}.when", "a node's condition cannot test its own finding")

        call = self._plugin_call(item, path, remotes)
        timeout = self._timeout(item["timeout"], f"{path}.timeout") if "timeout" in item else None
        if timeout is None:
            remote = remotes.get(item.get("plugin")) if isinstance(item.get("plugin"), str) else None
            timeout = (remote[1] if remote else None) or DEFAULT_TIMEOUT_SECONDS
        if len(self.problems) > count_before or call is None:
            return None
        return GraphNode(name, call, tuple(inputs), when, timeout)

    def _plugin_call(self, item: Mapping[str, Any], path: str, remotes: Mapping[str, tuple[str, float | None]]) -> PluginCall | None:
        plugin_name = item.get("plugin")
        isolation = item.get("isolation")
        if isolation is not None and isolation not in ISOLATIONS:
            self.report(f"{path}.isolation", f"must be one of {', '.join(ISOLATIONS)}, got {describe(isolation)}")
            return None
        if plugin_name is None:
            self.report(path, "missing required key plugin")
            return None
        if not isinstance(plugin_name, str):
            self.report(f"{path}.plugin", f"must be a plugin name, got {describe(plugin_name)}")
            return None
        if plugin_name in remotes:
            if isolation is not None:
                self.report(f"{path}.isolation", "isolation applies to Python plugins. A remote plugin always runs behind its URL")
                return None
            return RemoteCall(plugin_name, remotes[plugin_name][0])
        python_plugin = self.registry.get(plugin_name)
        if python_plugin is None:
            reason = self.registry.load_errors.get(plugin_name)
            if reason is not None:
                self.report(f"{path}.plugin", f"plugin {plugin_name!r} could not be loaded from its entry point: {reason}")
            else:
                known = sorted(set(self.registry.names()) | set(remotes))
                close = difflib.get_close_matches(plugin_name, known, n=1)
                hint = f" Did you mean {close[0]}?" if close else ""
                self.report(
                    f"{path}.plugin",
                    f"unknown plugin {plugin_name!r}.{hint} Known plugins: {', '.join(known)}. "
                    "Declare a remote plugin under plugins with its url, or register a Python plugin",
                )
            return None
        if (isolation or python_plugin.isolation) == INLINE:
            return InlineCall(python_plugin)
        if self.process_call is None:
            self.report(f"{path}.isolation", "this graph set has no worker process pool, so plugins cannot run in a process")
            return None
        return self.process_call(python_plugin)

    def _timeout(self, value: Any, path: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_SECONDS:
            self.report(path, f"must be a number of seconds greater than 0 and at most {MAX_TIMEOUT_SECONDS:g}, got {describe(value)}")
            return None
        return float(value)

    def _execution_order(self, items: list[Any], names: dict[int, str], dependencies: dict[str, set[str]]) -> list[str] | None:
        cycle = _find_cycle([names[index] for index in sorted(names)], dependencies)
        if cycle is not None:
            index = next(index for index, name in names.items() if name == cycle[0])
            self.report(
                f"nodes[{index}]",
                f"cycle {' -> '.join(cycle)}: a node can only use the findings of nodes that run before it",
            )
            return None
        order: list[str] = []
        placed: set[str] = set()
        pending = [names[index] for index in sorted(names)]
        while pending:
            ready = next(name for name in pending if dependencies.get(name, set()) <= placed)
            order.append(ready)
            placed.add(ready)
            pending.remove(ready)
        return order

    def _verdicts(self, value: Any, node_names: set[str]) -> tuple[Verdict, ...]:
        if not isinstance(value, list) or not value:
            if "verdicts" not in self.problems_paths():
                self.report("verdicts", f"must be a non-empty list of verdicts, got {describe(value)}")
            return ()
        verdicts: list[Verdict] = []
        for index, item in enumerate(value):
            path = f"verdicts[{index}]"
            if not isinstance(item, Mapping):
                self.report(path, f"a verdict must be a mapping with cause, summary and responsibility, got {describe(item)}")
                continue
            count_before = len(self.problems)
            for key in item:
                if key not in VERDICT_KEYS:
                    self.report(f"{path}.{key}", f"unknown key. Valid keys are {', '.join(VERDICT_KEYS)}")
            when = None
            if "when" in item:
                try:
                    when = parse_condition(item["when"], f"{path}.when", node_names, self.report)
                except InvalidCondition:
                    pass
            cause = item.get("cause")
            if not isinstance(cause, str) or not _CAUSE.fullmatch(cause):
                self.report(f"{path}.cause", f"must be lower-case words joined by '-', such as image-tag-not-found, got {describe(cause)}")
            responsibility = item.get("responsibility")
            if responsibility not in RESPONSIBILITIES:
                self.report(f"{path}.responsibility", f"must be one of {', '.join(RESPONSIBILITIES)}, got {describe(responsibility)}")
            summary = self._template(item.get("summary"), f"{path}.summary", node_names, required=True)
            fix = self._template(item.get("fix", ""), f"{path}.fix", node_names, required=False)
            if len(self.problems) == count_before and summary is not None and fix is not None:
                verdicts.append(Verdict(when, cause, responsibility, summary, fix))
        return tuple(verdicts)

    def _template(self, value: Any, path: str, node_names: set[str], required: bool) -> Template | None:
        if not isinstance(value, str) or (required and not value.strip()):
            self.report(path, f"must be a {'non-empty ' if required else ''}string, got {describe(value)}")
            return None
        return parse_template(value, path, node_names, self.report)


def _find_cycle(names: list[str], dependencies: Mapping[str, set[str]]) -> list[str] | None:
    """Return one cycle as a list of names that starts and ends with the same node, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dependency in sorted(dependencies.get(name, set())):
            if state.get(dependency) == 1:
                return path[path.index(dependency) :] + [dependency]
            if dependency not in state:
                found = visit(dependency)
                if found is not None:
                    return found
        path.pop()
        state[name] = 2
        return None

    for name in names:
        if name not in state:
            found = visit(name)
            if found is not None:
                # Report the cycle in the direction findings flow: from the node that runs first.
                found.reverse()
                return found
    return None

