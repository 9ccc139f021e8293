"""The root-cause stage in a running worker: real broker, worker process and RocksDB."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from kdiag.rule_store import RuleDocument, publish_documents

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = REPO_ROOT / "samples" / "corpus"
_spec = importlib.util.spec_from_file_location("rootcause_support", REPO_ROOT / "tests" / "kdiag" / "rootcause" / "rootcause_support.py")
support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(support)


def test_graded_alerts_carry_the_root_cause(pipeline):
    pipeline.start_worker()
    pipeline.replay(str(CORPUS), "--cluster-per-file", "--hold", "1h")
    pipeline.wait_for_alerts()
    graded = [alert for alert in pipeline.graded_alerts() if alert["status"] == "FIRING"]
    for case_file, expected in sorted(support.CORPUS_EXPECTED.items()):
        case = case_file.removesuffix(".yaml")
        causes = {
            (alert["rootCause"]["cause"], alert["rootCause"]["responsibility"])
            for alert in graded
            if alert["cluster"] == case and alert["rootCause"] is not None
        }
        assert causes == {expected}, f"{case}: {causes}"
    # Enrichment from the object the rule stage held: the Pod's owner and node.
    (config_error,) = [
        alert for alert in graded
        if alert["cluster"] == "10-init-createcontainerconfigerror-secret-missing" and alert["rule"] == "PodInitCreateContainerConfigError"
    ]
    assert (config_error["ownerKind"], config_error["node"]) == ("Deployment", "10.0.0.150")
    # Warning Events that no rule matched reach the center as they are, enriched from their object.
    warnings = [alert for alert in graded if alert["rule"] == "KubernetesWarning"]
    assert warnings and all(alert["rootCause"] is None for alert in warnings)

    # The command line shows the same graded alerts, with the root cause.
    printed_json = pipeline.kdiag("alerts", "--graded", "--from-beginning", "--until-caught-up", "--format", "json")
    assert printed_json.returncode == 0, printed_json.stderr
    printed = [json.loads(line) for line in printed_json.stdout.splitlines()]
    assert len(printed) == len(pipeline.graded_alerts())
    assert {record["rootCause"]["responsibility"] for record in printed if record["rootCause"]} == {"USER", "PLATFORM", "UNKNOWN"}
    table = pipeline.kdiag("alerts", "--graded", "--from-beginning", "--until-caught-up")
    assert "image-tag-not-found: Image quay.io/example-org/s3registry:v2.0.0-dev" in table.stdout


GRAPH_WITH_REMOTE_PLUGIN = {
    "OOMWithRemoteCheck": {
        "diagnoses": ["PodOOMKilled"],
        "plugins": {"memory-advisor": {"url": "URL/ok", "timeout": 5}, "broken-advisor": {"url": "URL/invalid-json", "timeout": 5}},
        "nodes": [
            {"name": "history", "plugin": "termination-history"},
            {"name": "advisor", "plugin": "memory-advisor", "inputs": ["history"]},
            {"name": "broken", "plugin": "broken-advisor"},
        ],
        "verdicts": [
            {
                "when": {"node": "advisor", "field": "server", "equals": "advisor-1"},
                "cause": "advised",
                "responsibility": "USER",
                "summary": "The advisor at {advisor.server} saw {advisor.inputs}.",
            }
        ],
    }
}


def test_runtime_remote_plugin_used_without_restart(pipeline, tmp_path: Path):
    server = support.PluginServer("advisor-1")
    try:
        worker = pipeline.start_worker()
        oom_case = str(CORPUS / "07-oomkilled-low-memory-limit.yaml")
        pipeline.replay(oom_case, "--cluster", "before", "--hold", "1h")
        pipeline.wait_for_alerts()
        before = [alert for alert in pipeline.graded_alerts() if alert["cluster"] == "before" and alert["status"] == "FIRING"]
        assert before and before[0]["rootCause"]["cause"] == support.CORPUS_EXPECTED["07-oomkilled-low-memory-limit.yaml"][0]

        document = json.loads(json.dumps(GRAPH_WITH_REMOTE_PLUGIN).replace("URL", server.url("")))
        graph_file = tmp_path / "remote.json"
        graph_file.write_text(json.dumps(document))
        # The shipped ContainerTermination graph covers PodOOMKilled too: a rule has one graph at most.
        deleted = pipeline.kdiag("graphs", "delete", "ContainerTermination")
        assert deleted.returncode == 0, deleted.stderr
        applied = pipeline.kdiag("graphs", "apply", str(graph_file))
        assert applied.returncode == 0, applied.stderr
        pipeline.wait_for_log("OOMWithRemoteCheck")

        pipeline.replay(oom_case, "--cluster", "after", "--hold", "1h")
        pipeline.wait_for_alerts()
        after = [alert for alert in pipeline.graded_alerts() if alert["cluster"] == "after" and alert["status"] == "FIRING"]
        assert after, pipeline.worker_log()[-3000:]
        root_cause = after[0]["rootCause"]
        assert root_cause["cause"] == "advised", root_cause
        assert root_cause["summary"] == "The advisor at advisor-1 saw history=OK."
        # A plugin that returns garbage is reported in its finding, and the graph and the worker go on.
        (broken,) = [finding for finding in root_cause["findings"] if finding["node"] == "broken"]
        assert broken["status"] == "FAILED"
        assert "returned invalid JSON" in broken["error"]
        assert any(request["diagnosis"]["rule"] == "PodOOMKilled" for request in server.requests)
        assert worker.poll() is None, "the worker kept running"
    finally:
        server.close()


def test_invalid_graphs_rejected_graphs_stay(pipeline, tmp_path: Path):
    pipeline.start_worker()
    pipeline.wait_for_log("worker starting")
    graph_file = tmp_path / "bad.yaml"
    body = {"diagnoses": ["PodOOMKilled"], "nodes": [{"name": "a", "plugin": "no-such-plugin"}],
            "verdicts": [{"cause": "x", "responsibility": "USER", "summary": "x"}]}
    graph_file.write_text(json.dumps({"Broken": body}))
    refused = pipeline.kdiag("graphs", "apply", str(graph_file))
    assert refused.returncode == 1
    assert f"{graph_file}: graph 'Broken' at nodes[0].plugin: unknown plugin 'no-such-plugin'" in refused.stdout
    listed = pipeline.kdiag("graphs", "list")
    assert "Broken" not in listed.stdout
    assert "ContainerTermination" in listed.stdout

    # A second graph for a rule that a graph on the topic covers is refused at apply time.
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps({"Clash": {**body, "nodes": [{"name": "a", "plugin": "termination-history"}]}}))
    refused = pipeline.kdiag("graphs", "apply", str(clash))
    assert refused.returncode == 1
    assert "rule 'PodOOMKilled' is already analysed by graph 'ContainerTermination'" in refused.stdout

    # A record that skipped the command's check is rejected by the worker, which keeps its graphs.
    publish_documents(pipeline.settings, pipeline.settings.graphs_topic, [RuleDocument("Broken", body, "test")])
    pipeline.wait_for_log("graph rejected")
    assert "no-such-plugin" in pipeline.worker_log()
    pipeline.replay(str(CORPUS / "07-oomkilled-low-memory-limit.yaml"), "--cluster", "oom", "--hold", "1h")
    pipeline.wait_for_alerts()
    (graded,) = [alert for alert in pipeline.graded_alerts() if alert["status"] == "FIRING"]
    assert graded["rootCause"]["cause"] == support.CORPUS_EXPECTED["07-oomkilled-low-memory-limit.yaml"][0]
