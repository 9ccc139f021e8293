"""The worker end to end: replayed history through a real broker, worker processes and RocksDB."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

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
    ("19-ingress-backend-service-missing", "IngressBackendServiceMissing", "Ingress", "example-ingress"),
    ("29-hpa-missing-cpu-request", "HPATargetWithoutCPURequest", "HorizontalPodAutoscaler", "nginx-hpa"),
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
    ("20-ingress-tls-secret-not-found", "IngressTLSSecretNotTLS", "Ingress", "recommender-mltemplate"),
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


def graded_transitions(pipeline) -> list[tuple]:
    """The FIRING and RESOLVED graded alerts, without levels: escalation follows arrival order."""
    return sorted(
        (record["type"], record["rule"], record["cluster"], record["name"], record["time"], record["resolvedAt"] or 0)
        for record in pipeline.graded_alerts()
        if record["type"] in ("FIRING", "RESOLVED")
    )


def test_alerts_same_across_batches_and_ticks(make_pipeline):
    alerts = []
    graded = []
    for label, batch_max_records, tick_interval in (("a", 50, "1"), ("b", 2, "10")):
        pipeline = make_pipeline(label)
        pipeline.settings = pipeline.settings.replace(batch_max_records=batch_max_records)
        pipeline.start_worker()
        pipeline.replay(str(CORPUS), "--cluster-per-file", "--hold", "1h", "--tick-interval", tick_interval)
        alerts.append(sorted(alert_identity(alert) for alert in pipeline.wait_for_alerts()))
        graded.append(graded_transitions(pipeline))

    assert alerts[0] == alerts[1]
    assert graded[0] == graded[1]
    # The HPA's Warning Events, which no rule matches, make one alert, which expires at the watermark.
    warnings = [(kind, name) for kind, rule, cluster, name, *_ in graded[0]
                if rule == "KubernetesWarning" and cluster == "29-hpa-missing-cpu-request"]
    assert warnings == [("FIRING", "nginx-hpa"), ("RESOLVED", "nginx-hpa")]


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

    reference, expected = replay_reference(make_pipeline, copies)

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
    assert_same_alerts(interrupted, reference, expected)


def test_workers_share_and_hand_over_partitions(make_pipeline, tmp_path: Path):
    copies = [f"copy{i:02d}" for i in range(30)]

    reference, expected = replay_reference(make_pipeline, copies)

    # A second worker joins the group a third of the way in, and the first stops two thirds of the way
    # in, so partitions move between live workers twice while the input is still being written.
    scaled = make_pipeline("scale")
    first = scaled.start_worker()
    second_log = scaled.log_dir / "worker-1.log"
    for number, cluster in enumerate(copies):
        scaled.replay(str(HISTORY), "--cluster", cluster, "--hold", "1h")
        if number == len(copies) // 3:
            scaled.start_worker(state_dir=tmp_path / "second-worker-state")
            deadline = time.monotonic() + 120
            while "partition started" not in second_log.read_text():
                assert time.monotonic() < deadline, f"the second worker took no partition:\n{scaled.worker_log()[-3000:]}"
                time.sleep(0.2)
        if number == 2 * len(copies) // 3:
            scaled.stop_worker(first)
    assert first.returncode == 0, scaled.worker_log()[-3000:]
    assert "partition stopped" in (scaled.log_dir / "worker-0.log").read_text()
    assert_same_alerts(scaled, reference, expected)


def replay_reference(make_pipeline, clusters: list[str]) -> tuple:
    """Replay the history once per cluster name to a single worker and return its pipeline and alerts."""
    reference = make_pipeline("ref")
    for cluster in clusters:
        reference.replay(str(HISTORY), "--cluster", cluster, "--hold", "1h")
    reference.start_worker()
    return reference, reference.wait_for_alerts()


def assert_same_alerts(pipeline, reference, expected: list[dict]) -> None:
    """Check that a pipeline emitted the reference's alerts and graded transitions, none twice."""
    actual = pipeline.wait_for_alerts()
    actual_identities = [alert_identity(alert) for alert in actual]
    assert len(actual_identities) == len(set(actual_identities)), "an alert was emitted twice"
    expected_identities = [alert_identity(alert) for alert in expected]
    missing = set(expected_identities) - set(actual_identities)
    extra = set(actual_identities) - set(expected_identities)
    assert (missing, extra) == (set(), set()), pipeline.worker_log()[-3000:]
    assert len(actual_identities) == len(expected_identities)

    # The alert center graded the same alerts, none twice. Escalation depends on the order in which
    # the rule stage's partitions deliver, so levels are not compared.
    graded = [orjson.dumps(record, option=orjson.OPT_SORT_KEYS) for record in pipeline.graded_alerts()]
    assert len(graded) == len(set(graded)), "a graded alert was emitted twice"
    transitions = {(r["type"], r["id"], r["time"]) for r in pipeline.graded_alerts() if r["type"] in ("FIRING", "RESOLVED")}
    expected_transitions = {
        (r["type"], r["id"], r["time"]) for r in reference.graded_alerts() if r["type"] in ("FIRING", "RESOLVED")
    }
    assert transitions == expected_transitions
    assert len(transitions) > 0


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


def reference_history(path: Path) -> None:
    """Write watch events in which references go missing, appear later, and lack keys, in 8 namespaces."""
    events = []

    def add(change_type: str, obj: dict, second: int) -> None:
        events.append({"type": change_type, "object": obj, "time": f"2021-03-01T10:{second // 60:02d}:{second % 60:02d}Z"})

    for number in range(8):
        namespace = f"team-{number}"

        def meta(name: str) -> dict:
            return {"name": name, "namespace": namespace, "uid": f"{namespace}-{name}"}

        container = {"name": "app", "image": "nginx", "env": [
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]}
        add("ADDED", {"apiVersion": "v1", "kind": "Secret", "metadata": meta("db"), "type": "Opaque",
                      "data": {"username": ""}}, number)
        add("ADDED", {"apiVersion": "v1", "kind": "Pod", "metadata": meta("api-0"),
                      "spec": {"containers": [container], "volumes": [{"name": "c", "configMap": {"name": "api-config"}}]},
                      "status": {"phase": "Pending"}}, 10 + number)
        add("ADDED", {"apiVersion": "v1", "kind": "Pod", "metadata": meta("web-0"),
                      "spec": {"containers": [{"name": "web", "image": "nginx"}],
                               "volumes": [{"name": "c", "configMap": {"name": "web-config"}}]},
                      "status": {"phase": "Pending"}}, 20 + number)
        add("ADDED", {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta("shop"),
                      "spec": {"rules": [{"http": {"paths": [{"path": "/", "backend": {
                          "service": {"name": "shop", "port": {"number": 80}}}}]}}]}}, 30 + number)
        # web-config arrives 30 s after web-0 in even namespaces, before the 60 s pending rule fires,
        # and 90 s after it in odd ones, after the rule fired.
        add("ADDED", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("web-config"), "data": {"a": ""}},
            20 + number + (30 if number % 2 == 0 else 90))
    events.sort(key=lambda event: event["time"])
    path.write_text("".join(orjson.dumps(event).decode() + "\n" for event in events))


def wait_until_assigned(pipeline, workers: int, timeout_seconds: float = 120) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        logs = [path.read_text() for path in sorted(pipeline.log_dir.glob("worker-*.log"))]
        if len(logs) == workers and all('"partitions assigned"' in log for log in logs):
            return
        time.sleep(0.5)
    raise AssertionError(f"{workers} workers did not join within {timeout_seconds} s:\n{pipeline.worker_log()[-3000:]}")


def test_references_same_with_one_and_three_workers(make_pipeline, tmp_path: Path):
    history = tmp_path / "references.jsonl"
    reference_history(history)
    runs = {}
    for workers in (1, 3):
        pipeline = make_pipeline(f"w{workers}")
        for index in range(workers):
            # Workers that run at the same time need a state folder each.
            pipeline.start_worker(state_dir=tmp_path / f"w{workers}-state-{index}")
        wait_until_assigned(pipeline, workers)
        pipeline.replay(str(history), "--cluster", "refs", "--hold", "1h")
        runs[workers] = sorted(alert_identity(alert) for alert in pipeline.wait_for_alerts())

    assert runs[1] == runs[3]
    firing = {(alert[2], alert[5], alert[6]) for alert in runs[1] if alert[1] == "FIRING"}
    for number in range(8):
        namespace = f"team-{number}"
        assert ("PodConfigMapMissing", namespace, "api-0") in firing
        assert ("PodSecretKeyMissing", namespace, "api-0") in firing
        assert ("PodSecretMissing", namespace, "api-0") not in firing
        assert ("IngressBackendServiceMissing", namespace, "shop") in firing
        web_fired = ("PodConfigMapMissing", namespace, "web-0") in firing
        assert web_fired == (number % 2 == 1), f"web-0 of {namespace}"
    resolved = {(alert[2], alert[5], alert[6], alert[12]) for alert in runs[1] if alert[1] == "RESOLVED"}
    assert {("PodConfigMapMissing", f"team-{number}", "web-0", "recovered") for number in (1, 3, 5, 7)} <= resolved


def produce_tick(pipeline, cluster: str, time_ms: int) -> None:
    producer = Producer({"bootstrap.servers": pipeline.settings.bootstrap_servers})
    tick = codec("ChangeBatch").encode({"changes": [], "tick": {"cluster": cluster, "time": time_ms, "source": "test"}})
    for partition in range(pipeline.settings.partitions):
        producer.produce(pipeline.settings.changes_topic, key=cluster.encode(), value=tick, partition=partition)
    assert producer.flush(30) == 0


def test_cluster_scoped_reference_across_partitions(pipeline, tmp_path: Path):
    from kdiag.partitioning import partition_for_key

    partitions = pipeline.settings.partitions
    owner = partition_for_key(b"sc/", partitions)
    namespace = next(f"team-{n}" for n in range(100) if partition_for_key(f"sc/team-{n}".encode(), partitions) != owner)
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "data", "namespace": namespace, "uid": "pvc-1"},
             "spec": {"storageClassName": "fast"}, "status": {"phase": "Pending"}}
    fast = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fast", "uid": "sc-1"},
            "provisioner": "example.com/disk"}
    # The claim's partition learns of the StorageClass through the cluster-objects topic, whose
    # timing is not event time, so the StorageClass is replayed only after the alert fired.
    first = tmp_path / "claim.jsonl"
    first.write_text(orjson.dumps({"type": "ADDED", "object": claim, "time": "2021-03-01T10:00:00Z"}).decode() + "\n")
    later = tmp_path / "storage-class.jsonl"
    later.write_text(orjson.dumps({"type": "ADDED", "object": fast, "time": "2021-03-01T10:05:00Z"}).decode() + "\n")
    pipeline.start_worker()
    pipeline.replay(str(first), "--cluster", "sc", "--hold", "2m")
    fired = [(alert["status"], alert["rule"]) for alert in pipeline.wait_for_alerts() if alert["name"] == "data"]
    assert ("FIRING", "PVCStorageClassMissing") in fired

    pipeline.replay(str(later), "--cluster", "sc", "--start", "2021-03-01T10:05:00Z", "--hold", "1m")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        alerts = [alert for alert in pipeline.wait_for_alerts() if alert["rule"] == "PVCStorageClassMissing"]
        if any(alert["status"] == "RESOLVED" for alert in alerts):
            break
        # A tick gives the claim's partition a batch, in which it rechecks changed cluster objects.
        produce_tick(pipeline, "sc", 1_614_593_220_000)
        time.sleep(1)
    assert [(alert["status"], alert["resolveReason"]) for alert in alerts] == [("FIRING", ""), ("RESOLVED", "recovered")]


def test_compressed_input_topics_processed(pipeline):
    # A topic's compression.type makes the broker store its batches with that codec, whatever the
    # producer sent. Each stage's input topic gets another codec.
    settings = pipeline.settings
    codecs = {settings.changes_topic: "lz4", settings.diagnoses_topic: "zstd", settings.events_topic: "snappy"}
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            topic,
            incremental_configs=[ConfigEntry("compression.type", codec_name, incremental_operation=AlterConfigOpType.SET)],
        )
        for topic, codec_name in codecs.items()
    ]
    for future in admin.incremental_alter_configs(resources).values():
        future.result(30)

    pipeline.start_worker()
    pipeline.replay(str(CORPUS / "25-job-backofflimitexceeded.yaml"), "--hold", "1h")
    alerts = pipeline.wait_for_alerts()

    assert [(alert["rule"], alert["status"]) for alert in alerts] == [("JobFailed", "FIRING")]
    graded = pipeline.graded_alerts()
    assert [(record["rule"], record["type"]) for record in graded] == [("JobFailed", "FIRING")]
