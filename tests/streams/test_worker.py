"""The worker end to end: replayed history through a real broker, worker processes and RocksDB."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from kdiag.codec import codec

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

CORPUS = REPO_ROOT / "samples" / "corpus"
HISTORY = REPO_ROOT / "samples" / "histories" / "01-pulumi-cloud-ready-checks-workflows.jsonl"

# (case file stem, rule, kind, object name or name prefix for Events) the starter pack must fire.
EXPECTED_CORPUS_ALERTS = {
    ("02-image-pull-unauthorized", "ImagePullFailedEvent", "Event", "policy-enforcer-5888cf98bf-xzklp."),
    ("04-image-pull-rate-limit", "ImagePullFailedEvent", "Event", "kafdrop-1-j4969."),
    ("07-oomkilled-low-memory-limit", "PodOOMKilled", "Pod", "memcached-operator-controller-manager-6d57f5fd7-gfnxw"),
    ("10-init-createcontainerconfigerror-secret-missing", "PodInitCreateContainerConfigError", "Pod",
     "sample-mychart-6bfc89db65-j9g9z"),
    ("13-failedscheduling-taint-and-nodeselector", "FailedSchedulingEvent", "Event", "node-admin."),
    ("14-pvc-pending-no-storageclass", "PVCPending", "PersistentVolumeClaim", "hub-db-dir"),
    ("16-namespace-terminating-discovery-failure", "NamespaceDeletionDiscoveryFailed", "Namespace", "metrics"),
    ("16-namespace-terminating-discovery-failure", "NamespaceStuckTerminating", "Namespace", "metrics"),
    ("17-service-terminating-lb-finalizer", "ServiceStuckTerminating", "Service", "ingress-nginx-controller"),
    ("20-ingress-tls-secret-not-found", "IngressSecretNotFoundEvent", "Event", "recommender-mltemplate."),
    ("22-node-notready-pleg", "NodeNotReady", "Node", "hub-node-1"),
    ("23-node-diskpressure", "NodeDiskPressure", "Node", "kubernetes-master"),
    ("25-job-backofflimitexceeded", "JobFailed", "Job", "demo"),
    ("26-deployment-progress-deadline-exceeded", "DeploymentProgressDeadlineExceeded", "Deployment", "app-gui"),
    ("28-hpa-metrics-api-unavailable", "HPAMetricsUnavailable", "HorizontalPodAutoscaler", "worker"),
    ("29-hpa-missing-cpu-request", "HPAMetricsUnavailable", "HorizontalPodAutoscaler", "nginx-hpa"),
    ("01-image-tag-not-found", "ImagePullNotFoundEvent", "Event", "registry-v1-j6noi."),
    ("02-image-pull-unauthorized", "ImagePullUnauthorizedEvent", "Event", "policy-enforcer-5888cf98bf-xzklp."),
    ("04-image-pull-rate-limit", "ImagePullRateLimitedEvent", "Event", "kafdrop-1-j4969."),
    ("05-image-pull-no-space-left", "ImagePullNoSpaceLeftEvent", "Event", "unknown-pod-name."),
    ("08-istio-sidecar-not-ready", "ReadinessProbeFailedEvent", "Event", "nginx."),
    ("10-init-createcontainerconfigerror-secret-missing", "PodSecretNotFoundEvent", "Event",
     "sample-mychart-6bfc89db65-j9g9z."),
    ("11-createcontainerconfigerror-secret-key-missing", "PodSecretKeyNotFoundEvent", "Event",
     "workload-demo-76f5f7dc46-vfldl."),
    ("13-failedscheduling-taint-and-nodeselector", "FailedSchedulingUntoleratedTaintEvent", "Event", "node-admin."),
    ("14-pvc-pending-no-storageclass", "PVCPendingNoStorageClass", "PersistentVolumeClaim", "hub-db-dir"),
    ("17-service-terminating-lb-finalizer", "ServiceLoadBalancerCleanupStuck", "Service", "ingress-nginx-controller"),
    ("28-hpa-metrics-api-unavailable", "HPAResourceMetricsAPIUnavailable", "HorizontalPodAutoscaler", "worker"),
    ("29-hpa-missing-cpu-request", "HPATargetMissingResourceRequest", "HorizontalPodAutoscaler", "nginx-hpa"),
}


def replay_corpus(pipeline) -> None:
    pipeline.replay(str(CORPUS), "--cluster-per-file", "--hold", "1h")


def alert_identity(alert: dict) -> tuple:
    """Every field of an alert that a rerun must reproduce."""
    return (
        alert["id"],
        alert["status"],
        alert["rule"],
        alert["cluster"],
        alert["kind"],
        alert["namespace"],
        alert["name"],
        alert["uid"],
        alert["resourceVersion"],
        alert["activeSince"],
        alert["firedAt"],
        alert["resolvedAt"],
        alert["resolveReason"],
        tuple(sorted(alert["context"].items())),
    )


def test_corpus_replay_fires_expected_alerts(pipeline):
    pipeline.start_worker()
    replay_corpus(pipeline)
    alerts = pipeline.wait_for_alerts()

    firing = {(a["cluster"], a["rule"], a["kind"], a["name"]) for a in alerts if a["status"] == "FIRING"}
    for case, rule, kind, name in EXPECTED_CORPUS_ALERTS:
        found = [
            alert for alert in firing
            if alert[0] == case and alert[1] == rule and alert[2] == kind
            and (alert[3].startswith(name) if name.endswith(".") else alert[3] == name)
        ]
        assert found, f"{rule} did not fire for {kind} {name} of case {case}"
    expected_rules_by_case = {(case, rule) for case, rule, _, _ in EXPECTED_CORPUS_ALERTS}
    unexpected = {(case, rule) for case, rule, _, _ in firing} - expected_rules_by_case
    assert unexpected == set()


def test_node_pressure_trap_stays_quiet(pipeline):
    pipeline.start_worker()
    pipeline.replay(str(CORPUS / "22-node-notready-pleg.yaml"), "--cluster", "pleg", "--hold", "1h")
    rules = {alert["rule"] for alert in pipeline.wait_for_alerts()}
    assert rules == {"NodeNotReady"}


def test_same_replay_twice_gives_identical_alerts(make_pipeline):
    runs = []
    for label in ("a", "b"):
        pipeline = make_pipeline(label)
        pipeline.start_worker()
        replay_corpus(pipeline)
        pipeline.replay(str(HISTORY), "--hold", "1h")
        runs.append(sorted(alert_identity(alert) for alert in pipeline.wait_for_alerts()))
    assert len(runs[0]) > 20
    assert runs[0] == runs[1]


IMMEDIATE_RULES = """
PodImagePullFailingNow:
  resource: Pod
  checkField:
  - field: [status, containerStatuses]
    subIdentifierName: name
    subField: [state, waiting, reason]
    equalValue: [ErrImagePull, ImagePullBackOff]
"""


def test_history_replay_fires_and_resolves(make_pipeline, tmp_path: Path):
    rules_dir = tmp_path / "immediate-rules"
    rules_dir.mkdir()
    (rules_dir / "pods.yaml").write_text(IMMEDIATE_RULES)
    pipeline = make_pipeline()
    pipeline.settings = pipeline.settings.replace(rules_dir=rules_dir)
    pipeline.start_worker()
    pipeline.replay(str(HISTORY), "--hold", "1h")
    alerts = pipeline.wait_for_alerts()

    resolved_case = [a for a in alerts if a["cluster"] == "replay.pod-imagePullErrorResolved"]
    assert [a["status"] for a in resolved_case] == ["FIRING", "RESOLVED"]
    assert resolved_case[0]["id"] == resolved_case[1]["id"]
    assert resolved_case[1]["resolveReason"] == "recovered"
    assert resolved_case[1]["resolvedAt"] >= resolved_case[0]["firedAt"]

    left_failing = [a for a in alerts if a["cluster"] == "replay.pod-imagePullError"]
    assert [a["status"] for a in left_failing] == ["FIRING"]
    assert left_failing[0]["context"] == {
        "status.containerStatuses[name=nginx].state.waiting.reason": "ErrImagePull"
    }


@pytest.mark.parametrize("lose_local_state", [False, True], ids=["keep-rocksdb", "lose-rocksdb"])
def test_kill_during_replay_loses_and_repeats_nothing(make_pipeline, lose_local_state: bool):
    copies = [f"copy{i:02d}" for i in range(40)]

    reference = make_pipeline("ref")
    for cluster in copies:
        reference.replay(str(HISTORY), "--cluster", cluster, "--hold", "1h")
    reference.start_worker()
    expected = reference.wait_for_alerts()

    # The worker is killed while the input is still being written, so the kill lands mid-stream.
    interrupted = make_pipeline("kill")
    worker = interrupted.start_worker()
    seen_before_kill = 0
    for number, cluster in enumerate(copies):
        interrupted.replay(str(HISTORY), "--cluster", cluster, "--hold", "1h")
        if number == len(copies) // 2:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and seen_before_kill == 0:
                time.sleep(0.2)
                seen_before_kill = len(interrupted.alerts())
            interrupted.stop_worker(worker, kill=True)
    assert 0 < seen_before_kill < len(expected), "the kill did not land in the middle of the stream"
    if lose_local_state:
        # A worker on a new machine: the state comes back from the changelog alone.
        shutil.rmtree(interrupted.settings.state_dir)

    interrupted.start_worker()
    actual = interrupted.wait_for_alerts()
    actual_identities = [alert_identity(alert) for alert in actual]
    assert len(actual_identities) == len(set(actual_identities)), "an alert was emitted twice"
    expected_identities = [alert_identity(alert) for alert in expected]
    missing = set(expected_identities) - set(actual_identities)
    extra = set(actual_identities) - set(expected_identities)
    assert (missing, extra) == (set(), set()), interrupted.worker_log()[-3000:]
    assert len(actual_identities) == len(expected_identities)


def test_bad_records_dead_lettered(pipeline, tmp_path: Path):
    settings = pipeline.settings
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    producer.produce(settings.changes_topic, key=b"bad/team-a", value=b"this is not an Avro record")
    bad_object = {
        "cluster": "bad", "apiVersion": "v1", "kind": "Job", "namespace": "team-a", "name": "broken",
        "uid": "u-broken", "resourceVersion": "1", "changeType": "ADDED", "observedTime": 1_600_000_000_000,
        "object": b"{not json",
    }
    producer.produce(
        settings.changes_topic,
        key=b"bad/team-a",
        value=codec("ChangeBatch").encode({"changes": [bad_object], "tick": None}),
    )
    assert producer.flush(30) == 0

    history_file = tmp_path / "bad-lines.jsonl"
    good_line = (CORPUS / "25-job-backofflimitexceeded.yaml")
    lines = ["{this line is broken", orjson.dumps({"type": "ADDED", "object": {"kind": "Job"}}).decode()]
    history_file.write_text("\n".join(lines) + "\n")

    pipeline.start_worker()
    result = pipeline.kdiag("replay", str(history_file), "--cluster", "bad")
    assert result.returncode == 0, result.stderr
    pipeline.replay(str(good_line), "--cluster", "good", "--hold", "1h")
    alerts = pipeline.wait_for_alerts()
    assert {(alert["cluster"], alert["rule"]) for alert in alerts} == {("good", "JobFailed")}

    letters = pipeline.read_topic(settings.dead_letter_topic, "DeadLetter")
    worker_letters = [letter for letter in letters if letter["component"] == "worker"]
    replay_letters = [letter for letter in letters if letter["component"] == "replay"]
    assert len(worker_letters) == 2
    assert any("Avro single-object" in letter["reason"] for letter in worker_letters)
    assert any("team-a/Job/broken" in letter["reason"] for letter in worker_letters)
    assert all(letter["origin"].startswith(f"{settings.changes_topic}[") for letter in worker_letters)
    assert {letter["origin"] for letter in replay_letters} >= {f"{history_file}:1"}
    assert all(letter["reason"] for letter in replay_letters)
