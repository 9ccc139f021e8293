"""GraphSet: the graphs in force, looked up by rule name, and replaced as a whole at runtime."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kdiag.documents import parse_documents
from kdiag.errors import ConfigError, RuleError
from kdiag.rootcause.context import DiagnosisContext
from kdiag.rootcause.graph import Graph, check_graphs
from kdiag.rootcause.plugins import PluginRegistry, PythonPlugin
from kdiag.rootcause.process_pool import DEFAULT_POOL_SIZE, ProcessCall, ProcessPool
from kdiag.rootcause.runner import run_graph
from kdiag.settings import PROJECT_ROOT

log = logging.getLogger(__name__)

DEFAULT_GRAPHS_DIR = PROJECT_ROOT / "rootcause"
GRAPH_FILE_SUFFIXES = (".json", ".yaml", ".yml")

PathLike = str | os.PathLike[str]


class GraphSet:
    """Validated graphs by name and by the rule names they analyse.

    replace() and load() validate the new graphs completely before they take effect, so an
    invalid declaration leaves the previous graphs in force. Readers on other threads see either
    the old or the new set, never a mix. The set owns the worker process pool of its process
    plugins: call close() when done.
    """

    def __init__(self, registry: PluginRegistry | None = None, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.registry = registry if registry is not None else PluginRegistry.default()
        self.pool = ProcessPool(pool_size)
        self._lock = threading.Lock()
        self._graphs: dict[str, Graph] = {}
        self._by_rule: dict[str, Graph] = {}

    @classmethod
    def from_paths(
        cls,
        paths: PathLike | Iterable[PathLike] = DEFAULT_GRAPHS_DIR,
        registry: PluginRegistry | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> "GraphSet":
        """Create a set from graph files and folders (the shipped rootcause/ folder by default)."""
        graph_set = cls(registry, pool_size)
        try:
            graph_set.load(paths)
        except BaseException:
            graph_set.close()
            raise
        return graph_set

    # Queries

    @property
    def graphs(self) -> tuple[Graph, ...]:
        return tuple(self._graphs.values())

    def graph_for(self, rule: str) -> Graph | None:
        """Return the graph that analyses rule, or None."""
        return self._by_rule.get(rule)

    def get(self, name: str) -> Graph | None:
        return self._graphs.get(name)

    def diagnoses(self) -> set[str]:
        """Return every rule name some graph analyses."""
        return set(self._by_rule)

    # Running

    def diagnose(self, context: DiagnosisContext) -> dict[str, Any] | None:
        """Run the graph of context's rule and return the RootCause dict, or None when no graph covers the rule."""
        graph = self.graph_for(context.diagnosis.rule)
        if graph is None:
            return None
        return run_graph(graph, context)

    # Changes

    def replace(self, documents: Iterable[Any], source: str = "") -> None:
        """Replace every graph by those of documents (parsed graph documents), after validating them all.

        Raises RuleError for the first problem and keeps the current graphs.
        """
        self._replace([(source, document) for document in documents])

    def problems(self, document: Any, source: str = "") -> list[RuleError]:
        """Return every problem of one graph document, checked with this set's plugins, without
        changing the graphs in force."""
        return check_graphs(document, self.registry, self._process_call, source)[1]

    def replace_documents(self, documents: Iterable[tuple[str, Any]]) -> None:
        """Like replace, with (source, document) pairs, so that each problem names its own file.
        When two graphs claim one rule, the later one is rejected."""
        self._replace(list(documents))

    def load(self, paths: PathLike | Iterable[PathLike]) -> None:
        """Replace every graph by those in the given files and folders.

        Folders are read recursively in sorted order, taking .json, .yaml and .yml files and
        skipping names that start with ".". A .json file is one document, a YAML file may hold
        several. Raises ConfigError for a missing path and RuleError for an unreadable or invalid
        document, and keeps the current graphs.
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        documents: list[tuple[str, Any]] = []
        for path in graph_files(paths):
            for document in read_documents(path):
                documents.append((str(path), document))
        self._replace(documents)

    def close(self) -> None:
        """Stop the worker processes. Graphs with process plugins fail their calls after this."""
        self.pool.close()

    def __enter__(self) -> "GraphSet":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _replace(self, documents: list[tuple[str, Any]]) -> None:
        graphs: dict[str, Graph] = {}
        by_rule: dict[str, Graph] = {}
        for source, document in documents:
            parsed, problems = check_graphs(document, self.registry, self._process_call, source)
            if problems:
                raise problems[0]
            for graph in parsed:
                earlier = graphs.get(graph.name)
                if earlier is not None:
                    raise RuleError(graph.name, "", f"duplicate graph name, already defined in {earlier.source or '<no source>'}. Rename one of the two graphs", source, subject="graph")
                for index, rule in enumerate(graph.diagnoses):
                    other = by_rule.get(rule)
                    if other is not None:
                        raise RuleError(
                            graph.name,
                            f"diagnoses[{index}]",
                            f"rule {rule!r} is already analysed by graph {other.name!r}. A rule can have only one graph",
                            source,
                            subject="graph",
                        )
                    by_rule[rule] = graph
                graphs[graph.name] = graph
        if any(graph.uses_processes() for graph in graphs.values()):
            self.pool.start()
        with self._lock:
            self._graphs = graphs
            self._by_rule = by_rule
        log.info("root-cause graphs loaded", extra={"graphs": len(graphs), "rules": len(by_rule)})

    def _process_call(self, plugin: PythonPlugin) -> ProcessCall:
        return ProcessCall(plugin, self.pool)


def graph_files(paths: Iterable[PathLike]) -> list[Path]:
    """List the graph files of the given files and folders, as GraphSet.load reads them."""
    files: list[Path] = []
    seen: set[Path] = set()
    for path_argument in paths:
        path = Path(path_argument)
        if path.is_dir():
            found = []
            for root, directories, names in os.walk(path):
                directories[:] = [name for name in directories if not name.startswith(".")]
                found.extend(Path(root, name) for name in names if not name.startswith(".") and name.lower().endswith(GRAPH_FILE_SUFFIXES))
            candidates = sorted(found)
        elif path.is_file():
            if path.suffix.lower() not in GRAPH_FILE_SUFFIXES:
                raise ConfigError(f"unsupported graph file {path}: expected a name ending in {', '.join(GRAPH_FILE_SUFFIXES)}")
            candidates = [path]
        else:
            raise ConfigError(f"graph path not found: {path}. Check the path given")
        for candidate in candidates:
            resolved = candidate.resolve()
            if resolved not in seen:
                seen.add(resolved)
                files.append(candidate)
    return files


def read_documents(path: Path) -> list[Any]:
    """Parse one graph file. Empty YAML documents are skipped, and a key repeated in a mapping is an error."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise RuleError("", "", f"the file is not valid UTF-8: {error}", source, subject="graph") from None
    except OSError as error:
        raise ConfigError(f"cannot read graph file {source}: {error.strerror or error}") from None
    return parse_documents(text, path.suffix, source, subject="graph")


