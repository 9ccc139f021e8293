"""Fixtures of the root-cause tests: the rule pack, graph sets and HTTP plugin servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from rootcause_support import GRAPHS_DIR, RULES_DIR, PluginServer
from rootcause_test_plugins import TEST_PLUGINS

from kdiag.rootcause import GraphSet, PluginRegistry
from kdiag.rootcause.builtin import BUILTIN_PLUGINS
from kdiag.rules import RuleSet, load_rules


@pytest.fixture(scope="session")
def starter_pack() -> RuleSet:
    return load_rules(RULES_DIR)


@pytest.fixture(scope="session")
def shipped_graphs() -> Iterator[GraphSet]:
    graphs = GraphSet.from_paths(GRAPHS_DIR)
    yield graphs
    graphs.close()


@pytest.fixture
def test_registry() -> PluginRegistry:
    return PluginRegistry((*BUILTIN_PLUGINS, *TEST_PLUGINS))


@pytest.fixture
def test_graphs(test_registry: PluginRegistry) -> Iterator[GraphSet]:
    graphs = GraphSet(test_registry, pool_size=2)
    yield graphs
    graphs.close()


@pytest.fixture
def plugin_server() -> Iterator[Callable[[str], PluginServer]]:
    servers: list[PluginServer] = []

    def start(name: str) -> PluginServer:
        server = PluginServer(name)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
