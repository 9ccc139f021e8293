"""The rule stage's diagnoses and the root-cause stage, with explicit records: no broker, no sleeping.

Each corpus case goes through a PartitionProcessor as changes, and its diagnoses through a
RootCauseProcessor with the shipped graphs. The root causes must equal those the graphs give when
the related objects come straight from the case file, which shows that the worker's tables hold
what the plugins need.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.readers import fill_identity
from kdiag.codec import codec
from kdiag.model import format_time_ms
from kdiag.rootcause import GraphSet
from kdiag.rules import RuleSet, load_rules
from kdiag.rules.kinds import CLUSTER_SCOPED_KINDS
from kdiag.settings import load_settings
from streams.processor import BatchResult, PartitionProcessor
from streams.root_cause import DiagnosisRecord, RootCauseProcessor, RootCauseResult

REPO_ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("rootcause_support", REPO_ROOT / "tests" / "kdiag" / "rootcause" / "rootcause_support.py")
support = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(support)

CHANGE_BATCH = codec("ChangeBatch")
DIAGNOSIS = codec("Diagnosis")
EVENT = codec("Event")
T0 = 1_700_000_000_000
SETTINGS = load_settings(environ={})


@pytest.fixture(scope="module")
def starter_pack() -> RuleSet:
    return load_rules(REPO_ROOT / "rules")


@pytest.fixture(scope="module")
def shipped_graphs() -> Iterator[GraphSet]:
    graphs = GraphSet.from_paths(REPO_ROOT / "rootcause")
    yield graphs
    graphs.close()


def change(obj: dict[str, Any], time_ms: int, change_type: str = "ADDED") -> dict[str, Any]:
    identity = fill_identity("test", obj, 1)
    return {
        "cluster": "test",
        "apiVersion": identity.api_version,
        "kind": identity.kind,
        "namespace": identity.namespace,
        "name": identity.name,
        "uid": identity.uid,
        "resourceVersion": identity.resource_version,
        "changeType": change_type,
        "observedTime": time_ms,
        "object": orjson.dumps(obj),
    }


def diagnose(objects: list[dict[str, Any]], rule_set: RuleSet) -> list[bytes]:
    """Feed objects (Events last, as a cluster creates them) and an hour of ticks; return the diagnoses."""
    processor = PartitionProcessor("changes", 0, rule_set, [], {}, 0)
    result = BatchResult()
    ordered = sorted(objects, key=lambda obj: obj.get("kind") == "Event")
    for offset, obj in enumerate(ordered):
        processor.process(offset, CHANGE_BATCH.encode({"changes": [change(obj, T0 + offset)], "tick": None}), result)
    tick = {"changes": [], "tick": {"cluster": "test", "time": T0 + 3_600_000, "source": "test"}}
    processor.process(len(ordered), CHANGE_BATCH.encode(tick), result)
    assert len(result.diagnoses) == len(result.alerts)
    return [value for _, value in result.diagnoses]


def analyse(diagnoses: list[bytes], graphs: GraphSet) -> tuple[list[dict[str, Any]], RootCauseResult]:
    processor = RootCauseProcessor(SETTINGS, 0, graphs, 0)
    result = RootCauseResult()
    for offset, value in enumerate(diagnoses):
        processor.process(DiagnosisRecord(0, offset, value), result)
    return [EVENT.decode(value) for _, value in result.events], result


def namespaced(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give objects of a partial dump the namespace the case's other objects use, as a cluster would."""
    namespaces = [obj.get("metadata", {}).get("namespace") for obj in objects] + [
        (obj.get("involvedObject") or {}).get("namespace") for obj in objects
    ]
    namespace = next((name for name in namespaces if name), "default")
    for obj in objects:
        metadata = obj.setdefault("metadata", {})
        if obj.get("kind") not in CLUSTER_SCOPED_KINDS and not metadata.get("namespace"):
            metadata["namespace"] = namespace
        involved = obj.get("involvedObject")
        if isinstance(involved, dict) and involved.get("kind") not in CLUSTER_SCOPED_KINDS and not involved.get("namespace"):
            involved["namespace"] = namespace
    return objects


@pytest.mark.parametrize("case_file", sorted(support.CORPUS_EXPECTED))
def test_corpus_root_cause_through_the_worker_tables(case_file: str, starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    events, result = analyse(diagnose(namespaced(support.load_case(case_file)), starter_pack), shipped_graphs)
    analysed = [event for event in events if event["rootCause"] is not None]
    assert analysed, f"no diagnosis of {case_file} had a graph"
    for event in analysed:
        root_cause = event["rootCause"]
        assert (root_cause["cause"], root_cause["responsibility"]) == support.CORPUS_EXPECTED[case_file], (
            f"{event['rule']}: {root_cause['summary']}"
        )
    assert result.analysed == len(analysed)
    assert not result.dead_letters


def test_diagnosis_carries_owner_chain_labels_and_node(starter_pack: RuleSet) -> None:
    objects = namespaced(support.load_case("10-init-createcontainerconfigerror-secret-missing.yaml"))
    records = [DIAGNOSIS.decode(value) for value in diagnose(objects, starter_pack)]
    (diagnosis,) = [record for record in records if record["event"]["kind"] == "Pod"]
    event = diagnosis["event"]
    assert event["status"] == "FIRING"
    assert [owner["kind"] for owner in event["owners"]] == ["ReplicaSet"]
    assert event["labels"], "the Pod's labels feed the alert center's enrichment"
    assert event["node"] == "10.0.0.150"
    assert orjson.loads(diagnosis["object"])["metadata"]["name"] == event["name"]
    related = orjson.loads(diagnosis["related"])
    assert related["events"], "the Pod's Warning Events as they were when the rule fired"
    assert diagnosis["sourceOffset"] >= 0
    # An Event about the Pod is enriched from the Pod, its involved object.
    (about_pod,) = [record["event"] for record in records if record["event"]["kind"] == "Event"]
    assert about_pod["owners"] == event["owners"]
    assert about_pod["labels"] == event["labels"]


def test_image_pull_spread_decides_node_or_image(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    """The same network failure on one node of three is the platform's; on every node, it follows the image."""

    def objects(failing_nodes: list[str]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = []
        for index, node_name in enumerate(["node-a", "node-b", "node-c"]):
            result.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name, "labels": {"topology.kubernetes.io/zone": f"z{index}"}}})
            failing = node_name in failing_nodes
            state = {"waiting": {"reason": "ImagePullBackOff", "message": "dial tcp: i/o timeout"}} if failing else {"running": {}}
            result.append({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"web-7c9d8f6b5d-{index}abcd",
                    "namespace": "shop",
                    "uid": f"pod-{index}",
                    "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7c9d8f6b5d", "uid": "rs-1", "controller": True}],
                },
                "spec": {"nodeName": node_name, "containers": [{"name": "app", "image": "registry.example/web:1"}]},
                "status": {"phase": "Pending", "containerStatuses": [
                    {"name": "app", "image": "registry.example/web:1", "ready": False, "restartCount": 0, "state": state}
                ]},
            })
            if failing:
                result.append({
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": f"web-{index}.pull", "namespace": "shop"},
                    "type": "Warning",
                    "reason": "Failed",
                    "message": 'Failed to pull image "registry.example/web:1": dial tcp 10.0.0.1:443: i/o timeout',
                    "source": {"component": "kubelet", "host": node_name},
                    "involvedObject": {"kind": "Pod", "name": f"web-7c9d8f6b5d-{index}abcd", "namespace": "shop", "uid": f"pod-{index}"},
                })
        return result

    def causes(failing_nodes: list[str]) -> set[tuple[str, str]]:
        events, _ = analyse(diagnose(objects(failing_nodes), starter_pack), shipped_graphs)
        return {
            (event["rootCause"]["responsibility"], event["rootCause"]["cause"])
            for event in events
            if event["rootCause"] is not None and event["kind"] in ("Pod", "Event")
        }

    one_node = causes(["node-b"])
    every_node = causes(["node-a", "node-b", "node-c"])
    assert one_node and {responsibility for responsibility, _ in one_node} == {"PLATFORM"}, one_node
    assert every_node and {responsibility for responsibility, _ in every_node} == {"USER"}, every_node


def test_resolved_and_unknown_rules_pass_without_root_cause(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    objects = namespaced(support.load_case("07-oomkilled-low-memory-limit.yaml"))
    fired = diagnose(objects, starter_pack)
    empty = GraphSet(pool_size=1)
    try:
        events, result = analyse(fired, empty)
    finally:
        empty.close()
    assert events and all(event["rootCause"] is None for event in events)
    assert result.analysed == 0


def test_garbage_dead_lettered_stream_continues(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    fired = diagnose(namespaced(support.load_case("07-oomkilled-low-memory-limit.yaml")), starter_pack)
    events, result = analyse([b"not avro", *fired], shipped_graphs)
    assert len(result.dead_letters) == 1
    letter = result.dead_letters[0]
    assert letter["origin"] == f"{SETTINGS.diagnoses_topic}[0]@0"
    assert "not a Diagnosis record" in letter["reason"]
    assert len(events) == len(fired)


def test_committed_records_are_skipped(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    fired = diagnose(namespaced(support.load_case("07-oomkilled-low-memory-limit.yaml")), starter_pack)
    processor = RootCauseProcessor(SETTINGS, 0, shipped_graphs, next_offset=len(fired))
    result = RootCauseResult()
    for offset, value in enumerate(fired):
        processor.process(DiagnosisRecord(0, offset, value), result)
    assert result.records == 0
    assert processor.take_state_writes() == []


def test_plugin_failure_reported_graph_continues(starter_pack: RuleSet) -> None:
    """A remote plugin whose server is gone gives a FAILED finding, and a verdict still holds."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    graphs = GraphSet(pool_size=1)
    try:
        graphs.replace([
            {
                "OOM": {
                    "diagnoses": ["PodOOMKilled"],
                    "plugins": {"gone": {"url": f"http://127.0.0.1:{port}/x", "timeout": 1}},
                    "nodes": [{"name": "remote", "plugin": "gone"}, {"name": "history", "plugin": "termination-history"}],
                    "verdicts": [{"when": {"node": "history", "field": "category", "equals": "oom-killed"},
                                  "cause": "oom", "responsibility": "USER", "summary": "OOM"}],
                }
            }
        ])
        fired = diagnose(namespaced(support.load_case("07-oomkilled-low-memory-limit.yaml")), starter_pack)
        events, _ = analyse(fired, graphs)
    finally:
        graphs.close()
    (event,) = [event for event in events if event["rootCause"] is not None]
    findings = {finding["node"]: finding for finding in event["rootCause"]["findings"]}
    assert findings["remote"]["status"] == "FAILED"
    assert "gone" in findings["remote"]["error"]
    assert event["rootCause"]["cause"] == "oom"


def warning(name: str, reason: str, message: str, event_type: str = "Warning") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": "shop", "uid": f"{name}-uid"},
        "type": event_type,
        "reason": reason,
        "message": message,
        "lastTimestamp": "2024-03-01T10:00:00Z",
        "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": "shop", "uid": "pod-uid"},
    }


POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web-0", "namespace": "shop", "uid": "pod-uid", "labels": {"app": "web"},
                 "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d8f", "uid": "rs", "controller": True}]},
    "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "web:1"}]},
}


def forwarded(objects: list[dict[str, Any]], rule_set: RuleSet, forward: bool = True) -> list[dict[str, Any]]:
    processor = PartitionProcessor("changes", 0, rule_set, [], {}, 0, forward_warnings=forward)
    result = BatchResult()
    for offset, obj in enumerate(objects):
        processor.process(offset, CHANGE_BATCH.encode({"changes": [change(obj, T0 + offset)], "tick": None}), result)
    return [EVENT.decode(value) for _, value in result.warning_events]


def test_unmatched_warning_goes_to_the_center(starter_pack: RuleSet) -> None:
    (event,) = forwarded([POD, warning("web-0.odd", "ContainerGCFailed", "something unusual")], starter_pack)
    assert (event["source"], event["rule"], event["reason"]) == ("KUBERNETES_EVENT", "KubernetesWarning", "ContainerGCFailed")
    assert (event["kind"], event["name"]) == ("Pod", "web-0")
    assert event["labels"] == {"app": "web"}
    assert event["owners"][0]["name"] == "web-5d8f"


def test_stale_warning_stays(starter_pack: RuleSet) -> None:
    processor = PartitionProcessor("changes", 0, starter_pack, [], {}, 0, warning_max_age_ms=15 * 60_000)
    result = BatchResult()
    for offset, minutes_before in enumerate([16, 14]):
        event = warning(f"web-0.{minutes_before}", "ContainerGCFailed", "something unusual")
        event["lastTimestamp"] = format_time_ms(T0 - minutes_before * 60_000)
        processor.process(offset, CHANGE_BATCH.encode({"changes": [change(event, T0)], "tick": None}), result)

    forwarded = [EVENT.decode(value) for _, value in result.warning_events]
    assert [event["name"] for event in forwarded] == ["web-0"]
    assert [event["startsAt"] for event in forwarded] == [T0 - 14 * 60_000]
    # The alert center orders and expires forwarded events by the change's time.
    assert [event["observedTime"] for event in forwarded] == [T0]
    assert result.stale_warnings == 1


def test_matched_normal_or_disabled_warnings_stay(starter_pack: RuleSet) -> None:
    not_found = warning("web-0.pull", "Failed", 'Failed to pull image "web:1": rpc error: code = NotFound desc = manifest unknown')
    assert forwarded([POD, not_found], starter_pack) == []
    assert forwarded([POD, warning("web-0.ok", "Pulled", "pulled", event_type="Normal")], starter_pack) == []
    assert forwarded([POD, warning("web-0.odd", "ContainerGCFailed", "x")], starter_pack, forward=False) == []


def test_warning_without_times_takes_the_observed_time(starter_pack: RuleSet) -> None:
    partial = warning("web-0.odd", "ContainerGCFailed", "something unusual")
    del partial["lastTimestamp"]
    (event,) = forwarded([POD, partial], starter_pack)
    assert event["observedTime"] == T0 + 1
