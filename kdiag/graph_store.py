"""Root-cause graphs on a compacted Kafka topic, so that every worker picks up a change without restarting.

The graphs topic contains one RuleRecord per graph name, as the rules topic does for rules, and a
record without a value deletes the graph. `kdiag graphs apply|list|delete` write and read it. Each worker
follows it with a RuleFeed over a GraphBook, which replaces the GraphSet's graphs as a whole. A
declaration that fails validation is rejected, and the graphs in force before stay.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from kdiag.errors import RuleError
from kdiag.rootcause.graphset import GraphSet, graph_files, read_documents
from kdiag.rule_store import RuleDocument, named_documents, publish_documents, read_rules
from kdiag.settings import Settings

log = logging.getLogger(__name__)


class GraphBook:
    """The graph declarations read from the graphs topic, in force in `graphs`."""

    def __init__(self, graphs: GraphSet) -> None:
        self.graphs = graphs
        self._bodies: dict[str, Any] = {}
        self._sources: dict[str, str] = {}

    def apply(self, name: str, record: Mapping[str, Any] | None) -> str:
        """Apply one graphs-topic record. Returns added, changed, unchanged, deleted or rejected."""
        bodies = dict(self._bodies)
        sources = dict(self._sources)
        if record is None:
            if name not in bodies:
                return "unchanged"
            del bodies[name]
            del sources[name]
            outcome = "deleted"
        else:
            try:
                body = orjson.loads(record["document"])
            except orjson.JSONDecodeError as error:
                log.error("graph rejected", extra={"graph": name, "problem": f"document is not JSON: {error}"})
                return "rejected"
            if bodies.get(name) == body:
                return "unchanged"
            outcome = "changed" if name in bodies else "added"
            bodies[name] = body
            sources[name] = record["source"]
        # The changed graph goes last, so that a clash with a graph in force rejects the changed one.
        order = [graph for graph in sorted(bodies) if graph != name] + ([name] if name in bodies else [])
        try:
            self.graphs.replace_documents((sources[graph], {graph: bodies[graph]}) for graph in order)
        except RuleError as error:
            log.error(
                "graph rejected; the graphs in force stay",
                extra={"graph": name, "path": error.path, "problem": error.problem, "source": error.source},
            )
            return "rejected"
        self._bodies, self._sources = bodies, sources
        log.info("graph applied", extra={"graph": name, "outcome": outcome, "source": sources.get(name, "")})
        return outcome

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._bodies))


def read_graph_documents(paths: Iterable[Any]) -> list[RuleDocument]:
    """Read graph declarations from files and folders, one RuleDocument per graph."""
    return named_documents(((str(path), document) for path in graph_files(list(paths)) for document in read_documents(path)), "graph")


def check_graph_documents(documents: Sequence[RuleDocument], graphs: GraphSet, in_force: Sequence[RuleDocument] = ()) -> list[RuleError]:
    """Return every problem of the documents, checked with `graphs`' plugin registry, and then, if
    each is valid on its own, the first clash with each other or with the graphs `in_force` (the
    same rule in two graphs). Graphs of `in_force` that the documents replace are left out."""
    problems: list[RuleError] = []
    for document in documents:
        problems.extend(graphs.problems({document.name: document.body}, document.source))
    if problems:
        return problems
    names = {document.name for document in documents}
    merged = [(document.source, {document.name: document.body}) for document in in_force if document.name not in names]
    merged += [(document.source, {document.name: document.body}) for document in documents]
    try:
        graphs.replace_documents(merged)
    except RuleError as error:
        return [error]
    return []


def graphs_on_topic(settings: Settings) -> list[RuleDocument]:
    """Return the graphs on the graphs topic now."""
    records = read_rules(settings, topic=settings.graphs_topic)
    return [RuleDocument(name, orjson.loads(record["document"]), record["source"]) for name, record in sorted(records.items())]


def publish_graphs(settings: Settings, documents: Iterable[RuleDocument], graphs: GraphSet, in_force: Sequence[RuleDocument] = ()) -> list[str]:
    """Validate the documents together with the graphs `in_force`, then write them all to the graphs
    topic. Raises the first RuleError, and writes nothing, if there is a problem."""
    documents = list(documents)
    problems = check_graph_documents(documents, graphs, in_force)
    if problems:
        raise problems[0]
    return publish_documents(settings, settings.graphs_topic, documents)
