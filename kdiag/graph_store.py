"""Root-cause graphs on a compacted Kafka topic, so that every worker picks up a change without restarting.

The graphs topic contains one RuleRecord per graph name, as the rules topic does for rules, and a
record without a value deletes the graph. `kdiag graphs apply|list|delete` write and read it. Each worker
follows it with a RuleFeed over a GraphBook, which replaces the GraphSet's graphs as a whole. A
declaration that fails validation is rejected, and the graphs in force before stay.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from kdiag.errors import RuleError
from kdiag.rootcause.graphset import GraphSet, graph_files, read_documents
from kdiag.rule_store import RuleDocument, named_documents, publish_documents
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
        try:
            self.graphs.replace([{graph: bodies[graph]} for graph in sorted(bodies)], source="graphs topic")
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


def publish_graphs(settings: Settings, documents: Iterable[RuleDocument], graphs: GraphSet) -> list[str]:
    """Validate the documents together with `graphs`' registry, then write them all to the graphs topic.

    Nothing is written if one is invalid. The check covers the new documents on their own. A graph
    that clashes with one already on the topic (the same rule in two graphs) passes here, and the
    workers reject it and keep the graphs in force.
    """
    documents = list(documents)
    for document in documents:
        graphs.replace([{document.name: document.body}], source=document.source)
    graphs.replace([{document.name: document.body} for document in documents])
    return publish_documents(settings, settings.graphs_topic, documents)
