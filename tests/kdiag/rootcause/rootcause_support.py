"""Helpers of the root-cause tests: corpus contexts, test graphs and HTTP plugin servers on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from kdiag.rootcause import Diagnosis, DiagnosisContext, GraphSet, related_from_objects, run_graph
from kdiag.rules import RuleSet

REPO_ROOT = Path(__file__).resolve().parents[3]
CORPUS_DIR = REPO_ROOT / "samples" / "corpus"
RULES_DIR = REPO_ROOT / "rules"
GRAPHS_DIR = REPO_ROOT / "rootcause"
SLOW_RESPONSE_SECONDS = 3.0

# Case file -> (cause, responsibility) of every graph that a rule firing on the case leads to.
CORPUS_EXPECTED = {
    "01-image-tag-not-found.yaml": ("image-tag-not-found", "USER"),
    "02-image-pull-unauthorized.yaml": ("image-pull-unauthorized", "USER"),
    "04-image-pull-rate-limit.yaml": ("registry-rate-limited", "PLATFORM"),
    "05-image-pull-no-space-left.yaml": ("node-disk-full", "PLATFORM"),
    "07-oomkilled-low-memory-limit.yaml": ("memory-limit-too-low", "USER"),
    "10-init-createcontainerconfigerror-secret-missing.yaml": ("config-object-missing", "USER"),
    "11-createcontainerconfigerror-secret-key-missing.yaml": ("config-key-missing", "USER"),
    "13-failedscheduling-taint-and-nodeselector.yaml": ("selected-nodes-tainted", "USER"),
    "16-namespace-terminating-discovery-failure.yaml": ("apiservice-unavailable", "PLATFORM"),
    "17-service-terminating-lb-finalizer.yaml": ("load-balancer-cleanup-stuck", "PLATFORM"),
    "22-node-notready-pleg.yaml": ("node-not-ready", "PLATFORM"),
    "23-node-diskpressure.yaml": ("node-disk-pressure", "PLATFORM"),
    "26-deployment-progress-deadline-exceeded.yaml": ("rollout-stalled", "UNKNOWN"),
}


class JsonLikeLoader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings, as the API server's JSON has them."""


JsonLikeLoader.yaml_implicit_resolvers = {
    first_char: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first_char, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_case(file_name: str) -> list[dict[str, Any]]:
    with (CORPUS_DIR / file_name).open(encoding="utf-8") as stream:
        objects = yaml.load(stream, Loader=JsonLikeLoader)
    assert isinstance(objects, list), f"{file_name} must hold a YAML list of objects"
    return objects


def make_context(rule: str, obj: dict[str, Any], objects: list[dict[str, Any]], alert_context: dict[str, str] | None = None) -> DiagnosisContext:
    """Build the context the worker would pass for rule firing on obj, with related taken from objects."""
    metadata = obj.get("metadata") or {}
    diagnosis = Diagnosis(
        rule=rule,
        cluster="test",
        api_version=obj.get("apiVersion", ""),
        kind=obj.get("kind", ""),
        namespace=metadata.get("namespace", ""),
        name=metadata.get("name", ""),
        uid=metadata.get("uid", ""),
        context=dict(alert_context or {}),
        fired_at_ms=1_700_000_000_000,
    )
    return DiagnosisContext(diagnosis, obj, related_from_objects(obj, objects))


def fired_contexts(rule_set: RuleSet, objects: list[dict[str, Any]]) -> list[DiagnosisContext]:
    """Return a context for every rule of rule_set that matches an object of objects."""
    contexts = []
    for obj in objects:
        for rule in rule_set.rules_for_kind(obj.get("kind")):
            match = rule.evaluate(obj)
            if match is not None:
                contexts.append(make_context(rule.name, obj, objects, match.context))
    return contexts


class PluginServer:
    """An HTTP server on 127.0.0.1 whose paths behave as remote plugins do, well or badly."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[dict[str, Any]] = []
        server_ref = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  # The name http.server calls.
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                try:
                    server_ref.requests.append(json.loads(body))
                except ValueError:
                    server_ref.requests.append({"invalid": body.decode(errors="replace")})
                status, payload = server_ref.respond(self.path)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up first, as the timeout tests make it do.
                    return

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # Keep test output quiet.
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def respond(self, path: str) -> tuple[int, bytes]:
        if path == "/ok":
            last = self.requests[-1]
            statuses = ",".join(f"{name}={finding['status']}" for name, finding in sorted(last.get("inputs", {}).items()))
            values = {"server": self.name, "plugin": last.get("plugin", ""), "inputs": statuses, "rule": last["diagnosis"]["rule"]}
            return 200, json.dumps({"values": values}).encode()
        if path == "/invalid-json":
            return 200, b"{not json"
        if path == "/wrong-types":
            return 200, json.dumps({"values": {"count": 1}}).encode()
        if path == "/error":
            return 200, json.dumps({"error": "registry API returned 503"}).encode()
        if path == "/slow":
            time.sleep(SLOW_RESPONSE_SECONDS)
            return 200, json.dumps({"values": {}}).encode()
        return 500, b"internal error"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)




CONTEXT = DiagnosisContext(Diagnosis(rule="TestRule", kind="Pod", namespace="shop", name="web-1"), {"kind": "Pod", "metadata": {"name": "web-1"}})


def graph_document(nodes: list[dict[str, Any]], verdicts: list[dict[str, Any]] | None = None, plugins: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a document with one graph, TestGraph, for rule TestRule."""
    body: dict[str, Any] = {
        "diagnoses": ["TestRule"],
        "nodes": nodes,
        "verdicts": verdicts or [{"cause": "test-fallback", "responsibility": "UNKNOWN", "summary": "No test verdict matched."}],
    }
    if plugins:
        body["plugins"] = plugins
    return {"TestGraph": body}


def run(graphs: GraphSet) -> dict[str, Any]:
    """Run TestGraph of graphs on CONTEXT."""
    graph = graphs.get("TestGraph")
    assert graph is not None
    return run_graph(graph, CONTEXT)


def by_node(root_cause: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {finding["node"]: finding for finding in root_cause["findings"]}
