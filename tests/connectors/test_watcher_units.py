"""Parts of the watcher that need no broker: queue, progress, object encoding, discovery, the test double."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from kubernetes.client import ApiClient

from connectors import watch_command
from connectors.discovery import (
    ApiError,
    KindPattern,
    KubernetesApi,
    ResourceFilter,
    ResourceType,
    discover,
    parse_patterns,
)
from connectors.finalizers import FINALIZER, FinalizerManager
from connectors.progress import IndexEntry, ProgressStore, ResourceProgress
from connectors.publisher import Publisher
from connectors.watcher import (
    REDUCED_ANNOTATION,
    ChangeQueue,
    QueuedChange,
    WatcherMetrics,
    _TickRound,
    prepare_object,
    split_tick,
)
from kdiag.errors import ConfigError
from kdiag.model import ResourceChange
from kdiag.settings import Settings
from tests.connectors.apiserver import FakeApiServer

PODS = ResourceType("", "v1", "pods", "Pod", True, frozenset({"list", "watch", "patch"}))


def queued(uid: str, version: str, progress: ResourceProgress, change_type: str = "MODIFIED", size: int = 10) -> QueuedChange:
    body = orjson.dumps({"v": version, "pad": "x" * size})
    return QueuedChange(PODS, progress, uid, "ns", f"pod-{uid}", version, change_type, body, False, version)


# Queue


def test_queue_keeps_newest_version_per_object():
    queue = ChangeQueue(100, 1 << 20, WatcherMetrics())
    progress = ResourceProgress("1")
    stop = threading.Event()
    queue.put(queued("a", "2", progress, "ADDED"), stop)
    for version in range(3, 50):
        queue.put(queued("a", str(version), progress), stop)
    queue.put(queued("b", "50", progress), stop)
    taken = queue.take(10, 1 << 20, 0)
    assert [entry.uid for entry in taken] == ["a", "b"]
    assert taken[0].resource_version == "49"
    assert taken[0].change_type == "ADDED"
    assert orjson.loads(taken[0].object_json)["v"] == "49"


def test_queue_deleted_replaces_queued_change():
    queue = ChangeQueue(100, 1 << 20, WatcherMetrics())
    progress = ResourceProgress("1")
    stop = threading.Event()
    queue.put(queued("a", "2", progress, "ADDED"), stop)
    queue.put(queued("a", "3", progress, "DELETED"), stop)
    [entry] = queue.take(10, 1 << 20, 0)
    assert entry.change_type == "DELETED"


def test_queue_full_blocks_until_taken():
    queue = ChangeQueue(2, 1 << 20, WatcherMetrics())
    progress = ResourceProgress("1")
    stop = threading.Event()
    queue.put(queued("a", "2", progress), stop)
    queue.put(queued("b", "3", progress), stop)
    done = threading.Event()

    def put_third() -> None:
        queue.put(queued("c", "4", progress), stop)
        done.set()

    thread = threading.Thread(target=put_third)
    thread.start()
    assert not done.wait(0.3)
    # An update of a queued object never waits.
    queue.put(queued("a", "5", progress), stop)
    assert len(queue.take(1, 1 << 20, 0)) == 1
    assert done.wait(5)
    thread.join(5)
    assert len(queue) == 2


def test_queue_full_put_returns_on_stop():
    queue = ChangeQueue(1, 1 << 20, WatcherMetrics())
    progress = ResourceProgress("1")
    stop = threading.Event()
    queue.put(queued("a", "2", progress), stop)
    stop.set()
    assert queue.put(queued("b", "3", progress), stop) is False


def test_queue_bounded_by_bytes():
    queue = ChangeQueue(100, 3000, WatcherMetrics())
    progress = ResourceProgress("1")
    stop = threading.Event()
    queue.put(queued("a", "2", progress, size=2000), stop)
    stop.set()
    assert queue.put(queued("b", "3", progress, size=2000), stop) is False
    assert queue.size_bytes < 3000


def test_queue_linger_holds_young_changes():
    queue = ChangeQueue(100, 1 << 20, WatcherMetrics())
    progress = ResourceProgress("1")
    queue.put(queued("a", "2", progress), threading.Event())
    assert queue.take(10, 1 << 20, 0, linger_ms=10_000) == []
    assert len(queue.take(10, 1 << 20, 0, linger_ms=0)) == 1


def test_requeue_keeps_newer_queued_version():
    queue = ChangeQueue(100, 1 << 20, WatcherMetrics())
    progress = ResourceProgress("1")
    stop = threading.Event()
    queue.put(queued("a", "2", progress), stop)
    [failed] = queue.take(1, 1 << 20, 0)
    queue.put(queued("a", "3", progress), stop)
    queue.requeue(failed)
    [entry] = queue.take(10, 1 << 20, 0)
    assert entry.resource_version == "3"
    # Only the newer change's progress entry is open, so progress stops at its floor.
    assert progress.open_entries() == 1
    assert progress.safe_resource_version() == "2"


def test_requeue_dropped_when_newer_in_flight():
    queue = ChangeQueue(100, 1 << 20, WatcherMetrics())
    progress = ResourceProgress("1")
    stop = threading.Event()
    queue.put(queued("a", "2", progress), stop)
    [failed] = queue.take(1, 1 << 20, 0)
    queue.put(queued("a", "3", progress), stop)
    [newer] = queue.take(1, 1 << 20, 0)
    queue.requeue(failed)
    assert len(queue) == 0
    assert progress.active_changes("a") == 1
    assert newer.resource_version == "3"


def test_requeue_goes_to_front():
    queue = ChangeQueue(100, 1 << 20, WatcherMetrics())
    progress = ResourceProgress("1")
    stop = threading.Event()
    queue.put(queued("a", "2", progress), stop)
    [failed] = queue.take(1, 1 << 20, 0)
    queue.put(queued("b", "3", progress), stop)
    queue.requeue(failed)
    assert [entry.uid for entry in queue.take(10, 1 << 20, 0)] == ["a", "b"]


def test_tick_time_stays_before_queued_changes():
    clock = SimpleNamespace(now=1000.0)
    queue = ChangeQueue(100, 1 << 20, WatcherMetrics(), wall_clock=lambda: clock.now)
    progress = ResourceProgress("1")
    queue.put(queued("a", "2", progress), threading.Event())
    clock.now = 1005.0
    assert queue.begin_tick() == 1_000_000 - 1
    queue.take(10, 1 << 20, 0)
    assert queue.begin_tick() == 1_005_000
    assert queue.begin_tick() is None
    clock.now = 1004.0  # the wall clock stepped back
    queue.put(queued("b", "3", progress), threading.Event())
    [entry] = queue.take(10, 1 << 20, 0)
    assert entry.observed_time_ms > 1_005_000


# Progress


def test_progress_waits_for_oldest_open_entry():
    progress = ResourceProgress("10")
    first = progress.open_entry("a")
    progress.advance("11")
    second = progress.open_entry("b")
    progress.advance("12")
    progress.advance("13")  # a bookmark
    assert progress.safe_resource_version() == "10"
    progress.close_entry(second, "b")
    assert progress.safe_resource_version() == "10"
    progress.close_entry(first, "a")
    assert progress.safe_resource_version() == "13"


def test_progress_tracks_active_uids():
    progress = ResourceProgress(None)
    sequence = progress.open_entry("a")
    assert progress.is_active("a")
    assert progress.safe_resource_version() is None
    progress.close_entry(sequence, "a")
    assert not progress.is_active("a")


def test_store_survives_reopen(tmp_path):
    store = ProgressStore(tmp_path / "state")
    store.save_resource_versions({"core/pods": "42", "apps/deployments": "7"})
    store.write_index(
        [("core/pods", f"uid-{index:03d}", IndexEntry(str(index), "ns", f"pod-{index}")) for index in range(2500)]
    )
    store.write_index([("core/pods", "uid-001", None)])
    store.close()
    store = ProgressStore(tmp_path / "state")
    try:
        assert store.resource_version("core/pods") == "42"
        assert store.resource_versions() == {"core/pods": "42", "apps/deployments": "7"}
        assert store.indexed("core/pods", "uid-002") == IndexEntry("2", "ns", "pod-2")
        assert store.indexed("core/pods", "uid-001") is None
        assert store.indexed("apps/deployments", "uid-002") is None
        assert store.index_size("core/pods") == 2499
    finally:
        store.close()


# Objects


def test_prepare_object_removes_secret_values_and_managed_fields():
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "db",
            "managedFields": [{"manager": "kubectl"}],
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": '{"data":{"password":"aHVudGVyMg=="}}',
                "team": "storage",
            },
        },
        "data": {"password": "aHVudGVyMg=="},
        "stringData": {"token": "hunter2"},
    }
    encoded, removed = prepare_object(secret, 100_000)
    assert removed == ""
    assert b"aHVudGVyMg==" not in encoded
    assert b"hunter2" not in encoded
    result = orjson.loads(encoded)
    assert result["data"] == {"password": ""}
    assert result["stringData"] == {"token": ""}
    assert "managedFields" not in result["metadata"]
    assert result["metadata"]["annotations"] == {"team": "storage"}


def test_prepare_object_reduces_in_order():
    obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "big", "namespace": "ns", "uid": "u1", "annotations": {"small": "x", "huge": "y" * 5000}},
        "status": {"text": "s" * 3000},
        "data": {"k": "d" * 200},
    }
    encoded, removed = prepare_object(obj, 1000)
    result = orjson.loads(encoded)
    assert len(encoded) <= 1000
    assert removed == "metadata.annotations.huge,status"
    assert result["metadata"]["annotations"][REDUCED_ANNOTATION] == removed
    assert result["metadata"]["annotations"]["small"] == "x"
    assert result["data"] == {"k": "d" * 200}
    assert result["metadata"]["uid"] == "u1"


def test_prepare_object_keeps_identity_when_everything_is_large():
    obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "big", "namespace": "ns", "uid": "u1", "labels": {"a": "l" * 2000}},
        "data": {"k": "d" * 5000},
        "binaryData": {"b": "b" * 4000},
    }
    encoded, removed = prepare_object(obj, 600)
    result = orjson.loads(encoded)
    assert len(encoded) <= 600
    assert removed.split(",") == ["data", "binaryData", "metadata.labels"]
    assert result["metadata"]["name"] == "big"
    assert result["metadata"]["uid"] == "u1"


# Patterns and filters


@pytest.mark.parametrize(
    ("text", "resource", "expected"),
    [
        ("Pod", PODS, True),
        ("pods", PODS, True),
        ("core/Pod", PODS, True),
        ("/v1/Pod", PODS, True),
        ("core/v1/pod", PODS, True),
        ("apps/*", PODS, False),
        ("batch/Job", ResourceType("batch", "v1", "jobs", "Job", True), True),
        ("*.example.com/*/*", ResourceType("widgets.example.com", "v1", "widgets", "Widget", True), True),
        ("events.k8s.io/*/Event", ResourceType("", "v1", "events", "Event", True), False),
    ],
)
def test_kind_patterns(text, resource, expected):
    assert KindPattern.parse(text).matches(resource) is expected


@pytest.mark.parametrize("text", ["", "a/b/c/d", "apps/"])
def test_invalid_kind_pattern_names_value(text):
    with pytest.raises(ConfigError) as raised:
        KindPattern.parse(text)
    assert repr(text) in str(raised.value)


def test_filter_excludes_duplicate_events_by_default():
    resource_filter = ResourceFilter()
    assert resource_filter.allows_type(ResourceType("", "v1", "events", "Event", True))
    assert not resource_filter.allows_type(ResourceType("events.k8s.io", "v1", "events", "Event", True))


def test_filter_namespaces():
    resource_filter = ResourceFilter(namespaces=frozenset({"a", "b"}), excluded_namespaces=frozenset({"b"}))
    assert resource_filter.allows_namespace("a")
    assert not resource_filter.allows_namespace("b")
    assert not resource_filter.allows_namespace("c")
    assert resource_filter.allows_namespace("")


def test_parse_patterns_splits_commas():
    assert [pattern.text for pattern in parse_patterns(["Pod,batch/Job", "Node"])] == ["Pod", "batch/Job", "Node"]


# Discovery and the test double


@pytest.fixture
def api_server():
    with FakeApiServer() as server:
        yield server


def make_api(server: FakeApiServer, tmp_path: Path) -> KubernetesApi:
    configuration, _ = watch_command.load_client_configuration(str(server.write_kubeconfig(tmp_path / "kubeconfig")), None)
    return KubernetesApi(ApiClient(configuration))


def test_discovery_lists_watchable_types(api_server, tmp_path):
    api_server.add_crd("widgets.example.com", "v1", "Widget", "widgets")
    api = make_api(api_server, tmp_path)
    found = discover(api)
    ids = {resource.type_id for resource in found.types}
    assert {"core/pods", "core/events", "apps/deployments", "batch/jobs", "widgets.example.com/widgets"} <= ids
    assert "core/bindings" not in ids
    assert "core/componentstatuses" not in ids
    assert not any("/" in resource.plural for resource in found.types)
    assert found.failed_groups == []


def test_discovery_uses_preferred_version(api_server, tmp_path):
    from tests.connectors.apiserver import Resource

    api_server.add_resource(Resource("gadgets.example.com", ("v2", "v1"), "gadgets", "Gadget", True))
    found = discover(make_api(api_server, tmp_path))
    [gadgets] = [resource for resource in found.types if resource.group == "gadgets.example.com"]
    assert gadgets.version == "v2"
    assert gadgets.api_version == "gadgets.example.com/v2"


def test_discovery_skips_unavailable_group(api_server, tmp_path):
    api_server.unavailable_groups.add("batch")
    found = discover(make_api(api_server, tmp_path))
    assert found.failed_groups == ["batch/v1"]
    assert "core/pods" in {resource.type_id for resource in found.types}


def test_wrong_token_rejected(api_server, tmp_path):
    api = make_api(api_server, tmp_path)
    api_server.token = "another-token"
    with pytest.raises(ApiError) as raised:
        discover(api)
    assert raised.value.status == 401


def test_double_merge_patch_conflict(api_server, tmp_path):
    api = make_api(api_server, tmp_path)
    pod = api_server.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}})
    body = {"metadata": {"finalizers": [FINALIZER], "resourceVersion": "1"}}
    with pytest.raises(ApiError) as raised:
        api.patch(PODS, "ns", "p", body, "application/merge-patch+json")
    assert raised.value.status == 409
    body["metadata"]["resourceVersion"] = pod["metadata"]["resourceVersion"]
    patched = api.patch(PODS, "ns", "p", body, "application/merge-patch+json")
    assert patched["metadata"]["finalizers"] == [FINALIZER]


def test_double_json_patch_test_failure(api_server, tmp_path):
    api = make_api(api_server, tmp_path)
    api_server.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "finalizers": ["other"]}})
    operations = [{"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER}, {"op": "remove", "path": "/metadata/finalizers/0"}]
    with pytest.raises(ApiError) as raised:
        api.patch(PODS, "ns", "p", operations, "application/json-patch+json")
    assert raised.value.status == 422
    assert api_server.get("v1", "Pod", "ns", "p")["metadata"]["finalizers"] == ["other"]


def test_double_delete_waits_for_finalizers(api_server, tmp_path):
    api = make_api(api_server, tmp_path)
    api_server.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "finalizers": [FINALIZER]}})
    kept = api_server.delete("v1", "Pod", "ns", "p")
    assert kept is not None and "deletionTimestamp" in kept["metadata"]
    with pytest.raises(ApiError) as raised:
        api.patch(PODS, "ns", "p", {"metadata": {"finalizers": [FINALIZER, "late"]}}, "application/merge-patch+json")
    assert raised.value.status == 422
    operations = [{"op": "remove", "path": "/metadata/finalizers/0"}]
    api.patch(PODS, "ns", "p", operations, "application/json-patch+json")
    assert api_server.get("v1", "Pod", "ns", "p") is None


def test_double_watch_gone_after_compaction(api_server, tmp_path):
    api = make_api(api_server, tmp_path)
    api_server.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}})
    api_server.compact()
    events = list(api.watch(PODS, "1", 5, lambda response: None))
    assert [event["type"] for event in events] == ["ERROR"]
    assert events[0]["object"]["code"] == 410
    assert events[0]["object"]["reason"] == "Expired"


def test_double_watch_sends_events_after_version(api_server, tmp_path):
    api_server.bookmark_interval_seconds = 0.1
    api = make_api(api_server, tmp_path)
    first = api_server.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "ns"}})
    api_server.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b", "namespace": "ns"}})
    threading.Timer(0.5, api_server.close_watches).start()
    events = list(api.watch(PODS, first["metadata"]["resourceVersion"], 5, lambda response: None))
    changes = [(event["type"], event["object"]["metadata"].get("name")) for event in events if event["type"] != "BOOKMARK"]
    assert changes == [("ADDED", "b")]
    assert any(event["type"] == "BOOKMARK" for event in events)


def test_double_list_pages(api_server, tmp_path):
    api = make_api(api_server, tmp_path)
    for index in range(7):
        api_server.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{index}", "namespace": "ns"}})
    names, token, versions = [], "", set()
    while True:
        page = api.list_page(PODS, 3, token)
        versions.add(page.resource_version)
        names += [orjson.loads(memoryview(raw))["metadata"]["name"] for raw in page.items]
        token = page.continue_token
        if not token:
            break
        # Changes after the first page do not show up in later pages.
        api_server.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"late{len(names)}", "namespace": "ns"}})
    assert names == [f"p{index}" for index in range(7)]
    assert len(versions) == 1


# Finalizer classification


def test_finalizer_classification():
    manager = FinalizerManager(api=None, kinds=parse_patterns(["Pod"]))  # type: ignore[arg-type]
    live = {"metadata": {"name": "p", "uid": "u", "resourceVersion": "5"}}
    assert manager.classify(PODS, "ADDED", live) == ("ADDED", False)
    assert manager.pending() == 1
    deleting = {"metadata": {"name": "p", "uid": "u", "deletionTimestamp": "2024-01-01T00:00:00Z", "finalizers": [FINALIZER]}}
    assert manager.classify(PODS, "MODIFIED", deleting) == ("DELETED", True)
    shared = {"metadata": {"name": "p", "uid": "u", "deletionTimestamp": "2024-01-01T00:00:00Z", "finalizers": ["x", FINALIZER]}}
    assert manager.classify(PODS, "MODIFIED", shared) == ("MODIFIED", False)


# Publisher delivery callback


class _Message:
    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0


class _Producer:
    def __init__(self) -> None:
        self.pending = []

    def produce(self, topic, value, key, partition=None, on_delivery=None):
        self.pending.append((topic, on_delivery))

    def poll(self, timeout):
        return 0

    def flush(self, timeout):
        for topic, callback in self.pending:
            callback(None, _Message(topic))
        self.pending.clear()
        return 0

    def list_topics(self, topic=None, timeout=None):
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None, 1: None})})


def test_publisher_reports_contexts_per_record():
    delivered = []
    settings = Settings(changes_topic="changes", dead_letter_topic="dead", batch_max_changes=2, max_record_bytes=4000)
    publisher = Publisher(settings, "watch", producer=_Producer(), on_delivered=lambda contexts, error: delivered.append((list(contexts), error)))
    for index in range(3):
        change = ResourceChange("c", "v1", "Pod", "ns", f"p{index}", f"u{index}", "1", "ADDED", 1, b"{}")
        publisher.publish_change(change, "origin", context=index)
    big = ResourceChange("c", "v1", "Pod", "ns", "big", "u9", "1", "ADDED", 1, b'"' + b"x" * 10_000 + b'"')
    publisher.publish_change(big, "origin", context="big")
    publisher.publish_tick("c", 5, context="tick")
    publisher.publish_change(ResourceChange("c", "v1", "Pod", "ns", "q", "u8", "1", "ADDED", 1, b"{}"), "origin")
    publisher.close()
    # Of 2 partitions, "c/ns" lands on 0, so its record carries change 2 and then the tick.
    assert delivered == [([0, 1], None), (["big"], None), ([2, "tick"], None), (["tick"], None)]


# Command-line options


def parse_watch_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    watch_command.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_options_defaults(tmp_path):
    options = watch_command.build_options(parse_watch_args(), Settings(state_dir=tmp_path / "state"), "prod")
    assert options.cluster == "prod"
    assert options.state_dir == tmp_path / "watcher" / "prod"
    assert options.finalizer_kinds == ()
    assert options.tick_interval_seconds == 1.0
    assert [pattern.text for pattern in options.resource_filter.exclude] == ["events.k8s.io/*/Event"]


def test_exclude_option_replaces_default(tmp_path):
    options = watch_command.build_options(parse_watch_args("--exclude", "Secret"), Settings(), "prod")
    assert [pattern.text for pattern in options.resource_filter.exclude] == ["Secret"]


@pytest.mark.parametrize(("argv", "option"), [(("--list-page-size", "0"), "--list-page-size"), (("--tick-interval", "-1"), "--tick-interval")])
def test_invalid_option_named(argv, option):
    with pytest.raises(ConfigError) as raised:
        watch_command.build_options(parse_watch_args(*argv), Settings(), "prod")
    assert option in str(raised.value)


def test_missing_kubeconfig_named(tmp_path):
    with pytest.raises(ConfigError) as raised:
        watch_command.load_client_configuration(str(tmp_path / "absent"), None)
    assert "absent" in str(raised.value)


def test_in_cluster_needs_service_account_files(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setattr(watch_command, "SERVICE_ACCOUNT_DIR", tmp_path)
    assert not watch_command.in_cluster_available()
    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_text("c")
    assert watch_command.in_cluster_available()


def test_cluster_name_from_context(monkeypatch):
    monkeypatch.delenv("KDIAG_CLUSTER", raising=False)
    assert watch_command.cluster_name(parse_watch_args(), Settings(), "kind-dev") == "kind-dev"
    assert watch_command.cluster_name(parse_watch_args("--cluster", "prod"), Settings(), "kind-dev") == "prod"
    with pytest.raises(ConfigError):
        watch_command.cluster_name(parse_watch_args("--cluster", "a/b"), Settings(), "kind-dev")


def test_queue_take_respects_bytes():
    queue = ChangeQueue(100, 1 << 20, WatcherMetrics())
    progress = ResourceProgress("1")
    for index in range(5):
        queue.put(queued(f"u{index}", str(index + 2), progress, size=1000), threading.Event())
    first = queue.take(10, 2500, 0)
    assert len(first) == 2
    time.sleep(0)
    assert len(queue.take(10, 1 << 20, 0)) == 3


def test_split_tick_from_changes():
    tick_round = _TickRound(time_ms=5, remaining=2)

    assert split_tick(["a", "b", tick_round]) == (["a", "b"], tick_round)
    assert split_tick([tick_round]) == ([], tick_round)
    assert split_tick(["a"]) == (["a"], None)
