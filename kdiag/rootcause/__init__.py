"""Root-cause analysis of a firing diagnosis: a graph of small plugins, then a verdict.

Each graph (declared in YAML, see graph.py and docs/rootcause.md) covers one or more rule names.
Its nodes call plugins, each of which looks at one thing in a DiagnosisContext and returns a
Finding. Its verdicts map findings to a cause, a summary, a responsibility (USER, PLATFORM or
UNKNOWN) and a fix. run_graph returns a RootCause record as a dict for kdiag.codec.

Typical use::

    graphs = GraphSet.from_paths()                      # the shipped rootcause/ folder
    context = DiagnosisContext(Diagnosis.from_alert(alert), obj, related)
    root_cause = graphs.diagnose(context)               # None when no graph covers the rule
"""

from kdiag.rootcause.context import Diagnosis, DiagnosisContext, Related, strip_config_values
from kdiag.rootcause.findings import FAILED, OK, SKIPPED, TIMED_OUT, Finding, PluginError
from kdiag.rootcause.graph import Graph, check_graphs
from kdiag.rootcause.graphset import DEFAULT_GRAPHS_DIR, GraphSet
from kdiag.rootcause.plugins import PluginRegistry, PythonPlugin, plugin
from kdiag.rootcause.process_pool import ProcessPool
from kdiag.rootcause.related import related_from_objects
from kdiag.rootcause.runner import run_graph

__all__ = [
    "DEFAULT_GRAPHS_DIR",
    "FAILED",
    "OK",
    "SKIPPED",
    "TIMED_OUT",
    "Diagnosis",
    "DiagnosisContext",
    "Finding",
    "Graph",
    "GraphSet",
    "PluginError",
    "PluginRegistry",
    "ProcessPool",
    "PythonPlugin",
    "Related",
    "check_graphs",
    "plugin",
    "related_from_objects",
    "run_graph",
    "strip_config_values",
]
