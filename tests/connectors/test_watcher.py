"""The watcher against the API server double and a real broker: restarts, 410 Gone, coalescing, Kafka
outages, Secrets, finalizer mode, CRDs and ticks."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from kubernetes.client import ApiClient

from connectors import watch_command
from connectors.discovery import KubernetesApi, parse_patterns
from connectors.finalizers import FINALIZER
from connectors.progress import ProgressStore
from connectors.watcher import FINAL_STATE_UNKNOWN_ANNOTATION, REDUCED_ANNOTATION, WatchOptions, Watcher
from kdiag.codec import codec
from kdiag.settings import Settings
from kdiag.topics import ensure_topics
from tests.connectors.apiserver import FakeApiServer

REPO = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = REPO / "scripts" / "kafka.sh"
BATCH = codec("ChangeBatch")
WAIT_SECONDS = 30.0


def topic_settings(bootstrap: str, prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "changes_topic": f"{prefix}-changes",
        "alerts_topic": f"{prefix}-alerts",
        "dead_letter_topic": f"{prefix}-dead",
        "app_id": f"{prefix}-worker",
        "partitions": 3,
    }
    values.update(overrides)
    return Settings(**values)


def start_watcher(server: FakeApiServer, settings: Settings, state_dir: Path, **overrides: Any) -> Watcher:
    """Create the topics and start an in-process watcher of the double with short test timings."""
    kubeconfig = server.write_kubeconfig(state_dir.parent / f"{state_dir.name}.kubeconfig")
    configuration, _ = watch_command.load_client_configuration(str(kubeconfig), None)
    values: dict[str, Any] = {
        "cluster": "test",
        "state_dir": state_dir,
        "watch_timeout_seconds": 30,
        "tick_interval_seconds": 0.2,
        "delivery_timeout_seconds": 60.0,
        "drain_timeout_seconds": 20.0,
    }
    values.update(overrides)
    ensure_topics(settings)
    watcher = Watcher(WatchOptions(**values), settings, KubernetesApi(ApiClient(configuration)))
    watcher.start()
    return watcher


def wait_until(predicate: Callable[[], bool], message: str, timeout_seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_seconds} s: {message}"
        time.sleep(0.05)


def wait_caught_up(watcher: Watcher, server: FakeApiServer, type_id: str = "core/pods", timeout_seconds: float = WAIT_SECONDS) -> None:
    """Wait until Kafka acknowledged every change of the type up to the server's current resourceVersion.

    Bookmarks carry the server's resourceVersion, so an idle type catches up too.
    """
    target = server.resource_version

    def caught_up() -> bool:
        watch = watcher.watch_for(type_id)
        if watch is None:
            return False
        safe = watch.progress.safe_resource_version()
        return safe is not None and int(safe) >= target

    wait_until(caught_up, f"{type_id} did not reach resourceVersion {target}", timeout_seconds)


@dataclass
class RawRecord:
    partition: int
    offset: int
    key: bytes
    value: bytes

    def decoded(self) -> dict[str, Any]:
        return BATCH.decode(self.value)


def read_records(settings: Settings, topic: str | None = None, timeout_seconds: float = 30.0) -> list[RawRecord]:
    """Read every record of a topic up to its current end, in partition and offset order."""
    topic = topic or settings.changes_topic
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"{topic}-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        positions = {p: 0 for p in partitions}
        records: list[RawRecord] = []
        deadline = time.monotonic() + timeout_seconds
        while any(positions[p] < ends[p] for p in partitions):
            assert time.monotonic() < deadline, f"timed out reading {topic}: at {positions}, end {ends}"
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                continue
            records.append(RawRecord(message.partition(), message.offset(), message.key(), message.value()))
            positions[message.partition()] = message.offset() + 1
        return sorted(records, key=lambda record: (record.partition, record.offset))
    finally:
        consumer.close()


def read_changes(settings: Settings, kind: str | None = None) -> list[dict[str, Any]]:
    """Return the published changes, optionally of one kind, in partition and offset order."""
    changes = [change for record in read_records(settings) for change in record.decoded()["changes"]]
    return [change for change in changes if kind is None or change["kind"] == kind]


def pod(name: str, namespace: str = "default", **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, **fields}


def set_label(key: str, value: str) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        obj["metadata"].setdefault("labels", {})[key] = value

    return change


def identities(changes: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(change["name"], change["changeType"], change["resourceVersion"]) for change in changes]


@pytest.fixture
def api_server():
    with FakeApiServer(bookmark_interval_seconds=0.2) as server:
        yield server


@pytest.fixture
def settings(kafka_bootstrap, unique_name):
    return topic_settings(kafka_bootstrap, unique_name)


# Restarts and 410 Gone


def test_restart_resumes_without_relist(api_server, settings, tmp_path):
    state = tmp_path / "state"
    for index in range(10):
        api_server.create(pod(f"pod-{index}"))
    watcher = start_watcher(api_server, settings, state)
    try:
        wait_caught_up(watcher, api_server)
        api_server.update("v1", "Pod", "default", "pod-0", set_label("step", "1"))
        api_server.delete("v1", "Pod", "default", "pod-1")
        wait_caught_up(watcher, api_server)
    finally:
        watcher.stop()
    store = ProgressStore(state)
    persisted = store.resource_version("core/pods")
    store.close()
    assert persisted is not None
    assert int(persisted) >= api_server.resource_version - 1
    lists_before = len(api_server.list_requests("pods"))

    api_server.create(pod("pod-10"))
    api_server.update("v1", "Pod", "default", "pod-2", set_label("step", "2"))
    api_server.delete("v1", "Pod", "default", "pod-3")
    watches_before = len(api_server.watch_requests("pods"))
    watcher = start_watcher(api_server, settings, state)
    try:
        wait_caught_up(watcher, api_server)
    finally:
        watcher.stop()

    assert len(api_server.list_requests("pods")) == lists_before
    assert watcher.metrics.value("kdiag_watch_relists_total", resource="core/pods") == 0
    assert api_server.watch_requests("pods")[watches_before].query["resourceVersion"] == persisted
    changes = read_changes(settings, "Pod")
    assert len(identities(changes)) == len(set(identities(changes)))
    expected = {(f"pod-{index}", "ADDED") for index in range(11)}
    expected |= {("pod-0", "MODIFIED"), ("pod-1", "DELETED"), ("pod-2", "MODIFIED"), ("pod-3", "DELETED")}
    assert sorted((name, change_type) for name, change_type, _ in identities(changes)) == sorted(expected)


@pytest.mark.parametrize("gone_as_http_status", [False, True], ids=["error-event", "http-410"])
def test_gone_relists_once_and_deletes_vanished(api_server, settings, tmp_path, gone_as_http_status):
    state = tmp_path / "state"
    for index in range(6):
        api_server.create(pod(f"pod-{index}"))
    watcher = start_watcher(api_server, settings, state)
    try:
        wait_caught_up(watcher, api_server)
    finally:
        watcher.stop()
    first_run = len(read_changes(settings, "Pod"))

    gone = [api_server.get("v1", "Pod", "default", name)["metadata"]["uid"] for name in ("pod-0", "pod-1")]
    api_server.delete("v1", "Pod", "default", "pod-0")
    api_server.delete("v1", "Pod", "default", "pod-1")
    api_server.update("v1", "Pod", "default", "pod-2", set_label("step", "gap"))
    api_server.create(pod("pod-6"))
    api_server.compact()
    api_server.gone_as_http_status = gone_as_http_status

    watcher = start_watcher(api_server, settings, state)
    try:
        wait_caught_up(watcher, api_server)
    finally:
        watcher.stop()

    assert watcher.metrics.value("kdiag_watch_gone_total", resource="core/pods") == 1
    assert watcher.metrics.value("kdiag_watch_relists_total", resource="core/pods") == 1
    after = read_changes(settings, "Pod")[first_run:]
    assert sorted((change["name"], change["changeType"]) for change in after) == [
        ("pod-0", "DELETED"),
        ("pod-1", "DELETED"),
        ("pod-2", "MODIFIED"),
        ("pod-6", "ADDED"),
    ]
    for change in after:
        if change["changeType"] == "DELETED":
            assert change["uid"] in gone
            annotations = orjson.loads(change["object"])["metadata"]["annotations"]
            assert annotations[FINAL_STATE_UNKNOWN_ANNOTATION] == "true"


# Coalescing and back-pressure


def test_burst_of_updates_coalesced(api_server, settings, tmp_path):
    api_server.create(pod("hot"))
    watcher = start_watcher(api_server, settings, tmp_path / "state")
    try:
        wait_caught_up(watcher, api_server)
        for step in range(1000):
            api_server.update("v1", "Pod", "default", "hot", set_label("step", str(step)))
        newest = api_server.get("v1", "Pod", "default", "hot")["metadata"]["resourceVersion"]
        wait_caught_up(watcher, api_server)
    finally:
        watcher.stop()
    updates = [change for change in read_changes(settings, "Pod") if change["changeType"] == "MODIFIED"]
    assert 1 <= len(updates) <= 100, f"{len(updates)} records for 1000 updates"
    assert updates[-1]["resourceVersion"] == newest
    assert orjson.loads(updates[-1]["object"])["metadata"]["labels"]["step"] == "999"
    versions = [int(change["resourceVersion"]) for change in updates]
    assert versions == sorted(versions)
    assert watcher.metrics.value("kdiag_watch_changes_coalesced_total", resource="core/pods") >= 900


def free_port_pair() -> int:
    for port in range(23000 + os.getpid() % 4000, 32000, 7):
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
                return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free TCP ports on 127.0.0.1")


def kafka_script(command: str, env: dict[str, str]) -> None:
    result = subprocess.run([str(KAFKA_SCRIPT), command], env=env, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, f"scripts/kafka.sh {command} failed: {result.stderr[-2000:]}"


@pytest.fixture
def own_broker(tmp_path_factory):
    """A broker of this test alone, which the test may stop and start again with the same data."""
    port = free_port_pair()
    env = dict(os.environ, KAFKA_PORT=str(port), KAFKA_DATA_DIR=str(tmp_path_factory.mktemp("own-kafka")))
    kafka_script("up", env)
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        kafka_script("down", env)


@pytest.mark.integration
def test_kafka_outage_loses_nothing(api_server, own_broker, unique_name, tmp_path):
    bootstrap, env = own_broker
    settings = topic_settings(bootstrap, unique_name)
    for index in range(5):
        api_server.create(pod(f"before-{index}"))
    watcher = start_watcher(api_server, settings, tmp_path / "state", delivery_timeout_seconds=120.0)
    try:
        wait_caught_up(watcher, api_server)
        kafka_script("down", env)
        outage_started = time.monotonic()
        store_before = watcher.watch_for("core/pods").progress.safe_resource_version()

        first = api_server.create(pod("during-0"))
        first_version = int(first["metadata"]["resourceVersion"])
        for index in range(1, 20):
            api_server.create(pod(f"during-{index}"))
        for step in range(5):
            api_server.update("v1", "Pod", "default", "before-0", set_label("step", str(step)))
        api_server.delete("v1", "Pod", "default", "before-1")
        newest_before_0 = api_server.get("v1", "Pod", "default", "before-0")["metadata"]["resourceVersion"]

        while time.monotonic() - outage_started < 30:
            persisted = watcher.store.resource_version("core/pods")
            assert persisted is not None and int(persisted) < first_version, "persisted before Kafka acknowledged"
            safe = watcher.watch_for("core/pods").progress.safe_resource_version()
            assert safe is not None and int(safe) < first_version
            time.sleep(0.5)
        assert int(watcher.store.resource_version("core/pods")) == int(store_before)

        kafka_script("up", env)
        wait_caught_up(watcher, api_server, timeout_seconds=120)
    finally:
        summary = watcher.stop()
    assert summary.error is None
    changes = read_changes(settings, "Pod")
    names = {(change["name"], change["changeType"]) for change in changes}
    assert {(f"during-{index}", "ADDED") for index in range(20)} <= names
    assert ("before-1", "DELETED") in names
    before_0 = [change for change in changes if change["name"] == "before-0"]
    assert before_0[-1]["resourceVersion"] == newest_before_0


# Hygiene


SECRET_VALUES = ("s3cr3t-Pa55word-7f1e", "tok-9b2d4c11-never-log")


def test_secret_values_never_published_or_logged(api_server, settings, tmp_path, caplog):
    encoded = [base64.b64encode(value.encode()).decode() for value in SECRET_VALUES]
    last_applied = orjson.dumps({"kind": "Secret", "data": {"password": encoded[0]}, "stringData": {"token": SECRET_VALUES[1]}}).decode()
    api_server.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "db",
                "namespace": "default",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": last_applied},
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:data": {"f:password": {}}}}],
            },
            "data": {"password": encoded[0]},
            "stringData": {"token": SECRET_VALUES[1]},
        }
    )
    with caplog.at_level("DEBUG"):
        watcher = start_watcher(api_server, settings, tmp_path / "state")
        try:
            wait_caught_up(watcher, api_server, "core/secrets")
            api_server.update("v1", "Secret", "default", "db", lambda obj: obj["data"].update(password=encoded[1]))
            wait_caught_up(watcher, api_server, "core/secrets")
        finally:
            watcher.stop()

    records = read_records(settings)
    everything = b"".join(record.value for record in records)
    for value in (*SECRET_VALUES, *encoded):
        assert value.encode() not in everything
        assert value not in caplog.text
    assert api_server.token not in caplog.text
    secrets = [change for record in records for change in record.decoded()["changes"] if change["kind"] == "Secret"]
    assert [change["changeType"] for change in secrets] == ["ADDED", "MODIFIED"]
    published = orjson.loads(secrets[-1]["object"])
    assert published["data"] == {"password": ""}
    assert "managedFields" not in published["metadata"]
    assert "kubectl.kubernetes.io/last-applied-configuration" not in published["metadata"].get("annotations", {})


def test_oversized_object_published_reduced(api_server, kafka_bootstrap, unique_name, tmp_path):
    settings = topic_settings(kafka_bootstrap, unique_name, max_record_bytes=20_000)
    api_server.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "big", "namespace": "default", "annotations": {"blob": "a" * 30_000}},
            "data": {"small": "kept"},
        }
    )
    watcher = start_watcher(api_server, settings, tmp_path / "state")
    try:
        wait_caught_up(watcher, api_server, "core/configmaps")
    finally:
        watcher.stop()
    [change] = read_changes(settings, "ConfigMap")
    obj = orjson.loads(change["object"])
    assert obj["metadata"]["annotations"][REDUCED_ANNOTATION] == "metadata.annotations.blob"
    assert obj["data"] == {"small": "kept"}
    assert watcher.metrics.value("kdiag_watch_reduced_objects_total", resource="core/configmaps") == 1


# Finalizer mode


def test_finalizer_mode_adds_removes_and_releases(api_server, settings, tmp_path):
    api_server.create(pod("doomed"))
    api_server.create(pod("survivor"))
    api_server.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "plain", "namespace": "default"}})
    watcher = start_watcher(api_server, settings, tmp_path / "state", finalizer_kinds=parse_patterns(["Pod"]))
    try:
        wait_until(
            lambda: all(FINALIZER in (p["metadata"].get("finalizers") or []) for p in api_server.objects("v1", "Pod")),
            "finalizers added to every pod",
        )
        doomed_uid = api_server.get("v1", "Pod", "default", "doomed")["metadata"]["uid"]
        assert api_server.delete("v1", "Pod", "default", "doomed") is not None
        wait_until(lambda: api_server.get("v1", "Pod", "default", "doomed") is None, "delete of doomed completed")
        wait_caught_up(watcher, api_server)
    finally:
        watcher.stop()
    survivor = api_server.get("v1", "Pod", "default", "survivor")
    assert FINALIZER not in (survivor["metadata"].get("finalizers") or [])
    assert "finalizers" not in api_server.get("v1", "ConfigMap", "default", "plain")["metadata"]
    deleted = [c for c in read_changes(settings, "Pod") if c["uid"] == doomed_uid and c["changeType"] == "DELETED"]
    assert len(deleted) == 1
    assert "deletionTimestamp" in orjson.loads(deleted[0]["object"])["metadata"]


def run_watch_process(kubeconfig: Path, settings: Settings, state: Path, log_path: Path, *extra: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        KDIAG_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        KDIAG_CHANGES_TOPIC=settings.changes_topic,
        KDIAG_ALERTS_TOPIC=settings.alerts_topic,
        KDIAG_DEAD_LETTER_TOPIC=settings.dead_letter_topic,
        KDIAG_APP_ID=settings.app_id,
        KDIAG_PARTITIONS=str(settings.partitions),
    )
    command = [sys.executable, "-m", "connectors.watch_command", "--log-level", "DEBUG", "--kubeconfig", str(kubeconfig)]
    command += ["--state-dir", str(state), "--cluster", "test", "--watch-timeout", "30", *extra]
    with log_path.open("ab") as log_file:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL)


def carries_finalizer(server: FakeApiServer) -> list[bool]:
    return [FINALIZER in (p["metadata"].get("finalizers") or []) for p in server.objects("v1", "Pod")]


def test_finalizers_released_after_stop_and_crash(api_server, settings, tmp_path):
    for index in range(3):
        api_server.create(pod(f"pod-{index}"))
    kubeconfig = api_server.write_kubeconfig(tmp_path / "kubeconfig")
    log_path = tmp_path / "watch.log"

    process = run_watch_process(kubeconfig, settings, tmp_path / "state", log_path, "--finalizer-kinds", "Pod")
    try:
        wait_until(lambda: all(carries_finalizer(api_server)), "finalizers added by the watcher process")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert not any(carries_finalizer(api_server)), "a clean stop leaves no finalizer"

    process = run_watch_process(kubeconfig, settings, tmp_path / "state", log_path, "--finalizer-kinds", "Pod")
    try:
        wait_until(lambda: all(carries_finalizer(api_server)), "finalizers added again")
    finally:
        process.kill()
        process.wait(10)
    assert all(carries_finalizer(api_server)), "a killed watcher leaves its finalizers"

    result = subprocess.run(
        [sys.executable, "-m", "connectors.watch_command", "--kubeconfig", str(kubeconfig), "--release-finalizers"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "released 3 finalizers" in result.stdout
    assert not any(carries_finalizer(api_server))

    logs = log_path.read_text() + result.stderr
    assert '"message":"watcher stopped"' in logs
    assert api_server.token not in logs


# Discovery of CRDs


def test_crd_objects_discovered_and_published(api_server, settings, tmp_path):
    api_server.add_crd("widgets.example.com", "v1", "Widget", "widgets")
    api_server.create({"apiVersion": "widgets.example.com/v1", "kind": "Widget", "metadata": {"name": "w1", "namespace": "team-a"}})
    watcher = start_watcher(api_server, settings, tmp_path / "state", discovery_interval_seconds=0.3)
    try:
        wait_caught_up(watcher, api_server, "widgets.example.com/widgets")
        api_server.add_crd("gizmos.example.com", "v1alpha1", "Gizmo", "gizmos", namespaced=False)
        api_server.create({"apiVersion": "gizmos.example.com/v1alpha1", "kind": "Gizmo", "metadata": {"name": "g1"}})
        wait_until(lambda: watcher.watch_for("gizmos.example.com/gizmos") is not None, "new CRD discovered")
        wait_caught_up(watcher, api_server, "gizmos.example.com/gizmos")
        wait_caught_up(watcher, api_server, "apiextensions.k8s.io/customresourcedefinitions")
    finally:
        watcher.stop()
    changes = read_changes(settings)
    published = {(change["apiVersion"], change["kind"], change["namespace"], change["name"]) for change in changes}
    assert ("widgets.example.com/v1", "Widget", "team-a", "w1") in published
    assert ("gizmos.example.com/v1alpha1", "Gizmo", "", "g1") in published
    crds = {change["name"] for change in changes if change["kind"] == "CustomResourceDefinition"}
    assert crds == {"widgets.widgets.example.com", "gizmos.gizmos.example.com"}


# Ticks, metrics and filters


def test_ticks_reach_every_partition_after_changes(api_server, settings, tmp_path):
    for index in range(20):
        api_server.create(pod(f"pod-{index}", namespace=f"ns-{index % 5}"))
    watcher = start_watcher(api_server, settings, tmp_path / "state", metrics_port=0)
    try:
        wait_caught_up(watcher, api_server)
        time.sleep(1.0)
        with urllib.request.urlopen(f"http://127.0.0.1:{watcher.metrics_port}/metrics", timeout=10) as response:
            metrics_text = response.read().decode()
    finally:
        watcher.stop()
    assert 'kdiag_watch_events_total{resource="core/pods",type="BOOKMARK"}' in metrics_text
    assert "kdiag_watch_queue_depth" in metrics_text
    assert "kdiag_watch_publish_latency_seconds_bucket" in metrics_text

    by_partition: dict[int, list[dict[str, Any]]] = {}
    for record in read_records(settings):
        by_partition.setdefault(record.partition, []).append(record.decoded())
    assert sorted(by_partition) == [0, 1, 2]
    for partition, batches in by_partition.items():
        ticks = [batch["tick"]["time"] for batch in batches if batch["tick"] is not None]
        assert len(ticks) >= 2, f"partition {partition} has {len(ticks)} ticks"
        assert ticks == sorted(ticks)
        last_tick = 0
        for batch in batches:
            # A record's changes come before its tick.
            for change in batch["changes"]:
                assert change["observedTime"] > last_tick, "a change arrived after a tick that covers its time"
            if batch["tick"] is not None:
                last_tick = batch["tick"]["time"]
                assert batch["tick"]["source"] == "kdiag-watch"


def test_namespace_and_kind_filters(api_server, settings, tmp_path):
    from connectors.discovery import ResourceFilter

    api_server.create(pod("kept", namespace="team-a"))
    api_server.create(pod("dropped", namespace="kube-system"))
    api_server.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "team-a"}})
    resource_filter = ResourceFilter(include=parse_patterns(["Pod"]), excluded_namespaces=frozenset({"kube-system"}))
    watcher = start_watcher(api_server, settings, tmp_path / "state", resource_filter=resource_filter)
    try:
        wait_caught_up(watcher, api_server)
        assert watcher.watch_for("core/configmaps") is None
    finally:
        watcher.stop()
    assert [change["name"] for change in read_changes(settings)] == ["kept"]
