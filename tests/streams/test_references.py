"""Reference rules in the partition processor: explicit records, a dict in place of RocksDB."""

import random
from pathlib import Path

import orjson

from kdiag.codec import codec
from kdiag.rules import RuleSet, load_rules, parse_rules
from streams.processor import BatchResult, PartitionProcessor
from kdiag.rules.references import Extractor
from kdiag.rules.schedule import next_check_ms
from streams.references import INDEX_PREFIX, OBJECT_PREFIX, ReferenceStore, index_prefix, references_state_key

RULES = load_rules([Path(__file__).resolve().parents[2] / "rules" / "references.yaml"])
CHANGE_BATCH = codec("ChangeBatch")
T0 = 1_600_000_000_000


def record(obj: dict, time_ms: int, change_type: str = "ADDED", cluster: str = "c1", resource_version: str = "1") -> bytes:
    metadata = obj["metadata"]
    change = {
        "cluster": cluster, "apiVersion": obj.get("apiVersion", "v1"), "kind": obj["kind"],
        "namespace": metadata.get("namespace", ""), "name": metadata["name"], "uid": metadata["uid"],
        "resourceVersion": resource_version, "changeType": change_type, "observedTime": time_ms, "object": orjson.dumps(obj),
    }
    return CHANGE_BATCH.encode({"changes": [change], "tick": None})


def tick(time_ms: int, cluster: str = "c1") -> bytes:
    return CHANGE_BATCH.encode({"changes": [], "tick": {"cluster": cluster, "time": time_ms, "source": "test"}})


def pod_reading(config_map: str | None = None, secret: str | None = None, key: str | None = None) -> dict:
    env = []
    if secret is not None:
        env.append({"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": key or "password"}}})
    volumes = [{"name": "config", "configMap": {"name": config_map}}] if config_map else []
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "team-a", "uid": "pod-1"},
        "spec": {"containers": [{"name": "web", "image": "nginx", "env": env}], "volumes": volumes},
        "status": {"phase": "Pending"},
    }


def config_map(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "team-a", "uid": f"cm-{name}"},
            "data": {"index.html": "<html/>"}}


def secret(name: str, data: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": "team-a", "uid": f"secret-{name}"}, "data": data}


class Harness:
    """A processor whose committed state is a dict, committed after every record like the worker."""

    def __init__(self, partition: int = 0, partitions: int = 1) -> None:
        self.state: dict[bytes, bytes] = {}
        self.partition = partition
        self.partitions = partitions
        self.processor = self._new_processor([], {}, 0)
        self.offset = 0
        self.alerts: list[dict] = []

    def _new_processor(self, entries, clocks, next_offset):
        return PartitionProcessor("changes", self.partition, RULES, entries, clocks, next_offset,
                                  partitions=self.partitions, lookup=self.state.get, scan=self.scan)

    def scan(self, prefix: bytes) -> list[bytes]:
        return sorted(key for key in self.state if key.startswith(prefix))

    def feed(self, value: bytes) -> None:
        result = BatchResult()
        self.processor.process(self.offset, value, result)
        self.offset += 1
        for key, written in self.processor.take_state_writes():
            if written is None:
                self.state.pop(key, None)
            else:
                self.state[key] = written
        self.alerts.extend(event.to_avro() for event in result.alerts)

    def restart(self) -> None:
        """Build a new processor from the committed dict, as a restarted worker does from RocksDB."""
        from kdiag.durations import Entry

        entries = [Entry.from_state(orjson.loads(value)) for key, value in self.state.items() if key.startswith(b"e\x1f")]
        clocks = {key[2:].decode(): int(value) for key, value in self.state.items() if key.startswith(b"c\x1f")}
        self.processor = self._new_processor(entries, clocks, int(self.state[b"o"]))

    def transitions(self) -> list[tuple[str, str, str]]:
        return [(alert["status"], alert["rule"], alert["resolveReason"]) for alert in self.alerts]


def test_missing_config_map_fires_after_duration():
    harness = Harness()
    harness.feed(record(pod_reading(config_map="site"), T0))
    harness.feed(tick(T0 + 59_000))
    assert harness.transitions() == []
    harness.feed(tick(T0 + 60_000))
    assert harness.transitions() == [("FIRING", "PodConfigMapMissing", "")]
    assert harness.alerts[0]["context"] == {"references.configMaps": "ConfigMap team-a/site"}


def test_config_map_created_later_resolves_alert():
    harness = Harness()
    harness.feed(record(pod_reading(config_map="site"), T0))
    harness.feed(tick(T0 + 60_000))
    harness.feed(record(config_map("site"), T0 + 90_000))
    assert harness.transitions() == [("FIRING", "PodConfigMapMissing", ""), ("RESOLVED", "PodConfigMapMissing", "recovered")]
    assert harness.alerts[1]["resolvedAt"] == T0 + 90_000


def test_config_map_before_deadline_cancels_pending():
    harness = Harness()
    harness.feed(record(pod_reading(config_map="site"), T0))
    harness.feed(record(config_map("site"), T0 + 10_000))
    harness.feed(tick(T0 + 600_000))
    assert harness.transitions() == []


def test_existing_config_map_never_pending():
    harness = Harness()
    harness.feed(record(config_map("site"), T0))
    harness.feed(record(pod_reading(config_map="site"), T0 + 1_000))
    harness.feed(tick(T0 + 600_000))
    assert harness.transitions() == []


def test_secret_without_key_is_not_missing_secret():
    harness = Harness()
    harness.feed(record(secret("db", {"user": "YWRtaW4="}), T0))
    harness.feed(record(pod_reading(secret="db", key="password"), T0 + 1_000))
    harness.feed(tick(T0 + 61_000))
    assert harness.transitions() == [("FIRING", "PodSecretKeyMissing", "")]
    assert harness.alerts[0]["context"] == {"references.secrets": "Secret team-a/db key password"}


def test_secret_values_never_stored():
    harness = Harness()
    harness.feed(record(secret("db", {"password": "c3VwZXJzZWNyZXQ="}), T0))
    stored = [value for key, value in harness.state.items() if key.startswith(OBJECT_PREFIX)]
    assert len(stored) == 1
    assert b"c3VwZXJzZWNyZXQ=" not in stored[0]
    assert orjson.loads(stored[0])["data"] == {"password": ""}


def test_unchanged_projection_writes_nothing():
    harness = Harness()
    harness.feed(record(config_map("site"), T0))
    changed = config_map("site")
    changed["metadata"]["resourceVersion"] = "99"
    result = BatchResult()
    harness.processor.process(harness.offset, record(changed, T0 + 1_000), result)
    writes = [key for key, _ in harness.processor.take_state_writes() if key.startswith(OBJECT_PREFIX)]
    assert writes == []


def test_restart_keeps_references_and_dependents():
    harness = Harness()
    harness.feed(record(pod_reading(config_map="site"), T0))
    harness.feed(tick(T0 + 60_000))
    harness.restart()
    harness.feed(record(config_map("site"), T0 + 90_000))
    assert harness.transitions()[-1] == ("RESOLVED", "PodConfigMapMissing", "recovered")


def test_pod_referrer_stored_as_table_key():
    harness = Harness()
    harness.feed(record(pod_reading(config_map="site"), T0))

    stored = orjson.loads(harness.state[b"a\x1fc1\x1fpod-1"])

    assert stored == {"tableKey": ["Pod", "team-a", "web-0"], "resourceVersion": "1"}


def test_recheck_reports_latest_resource_version():
    harness = Harness()
    harness.feed(record(pod_reading(config_map="site"), T0))
    harness.feed(record(pod_reading(config_map="site"), T0 + 1_000, change_type="MODIFIED", resource_version="7"))
    harness.feed(tick(T0 + 60_000))
    harness.feed(record(config_map("site"), T0 + 90_000))

    assert harness.transitions() == [("FIRING", "PodConfigMapMissing", ""), ("RESOLVED", "PodConfigMapMissing", "recovered")]
    assert harness.alerts[1]["resourceVersion"] == "7"


def test_deleted_config_map_makes_referrer_pending():
    harness = Harness()
    harness.feed(record(config_map("site"), T0))
    harness.feed(record(pod_reading(config_map="site"), T0 + 1_000))
    harness.feed(record(config_map("site"), T0 + 2_000, change_type="DELETED"))
    harness.feed(tick(T0 + 61_999))
    assert harness.transitions() == []
    harness.feed(tick(T0 + 62_000))
    assert harness.transitions() == [("FIRING", "PodConfigMapMissing", "")]
    assert harness.alerts[0]["activeSince"] == T0 + 2_000


def ingress(secret_name: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "shop", "namespace": "team-a", "uid": "ingress-1"},
            "spec": {"tls": [{"secretName": secret_name}]}}


def test_referenced_state_arriving_later_fires_referrer():
    harness = Harness()
    harness.feed(record(ingress("shop-tls"), T0))
    harness.feed(tick(T0 + 30_000))
    harness.feed(record(secret("shop-tls", {"tls.crt": "", "tls.key": ""}), T0 + 40_000))
    harness.feed(tick(T0 + 101_000))
    # The Secret arrived 40 s after the Ingress, before the missing-Secret rule's 60 s ran out, so
    # only the rule on the Secret's type fires, from the moment the Secret arrived.
    assert harness.transitions() == [("FIRING", "IngressTLSSecretNotTLS", "")]
    assert harness.alerts[0]["activeSince"] == T0 + 40_000


def test_deleted_referrer_leaves_no_index():
    harness = Harness()
    harness.feed(record(pod_reading(config_map="site"), T0))
    harness.feed(record(pod_reading(config_map="site"), T0 + 1_000, change_type="DELETED"))
    assert [key for key in harness.state if key[:2] in (b"a\x1f", b"k\x1f", b"x\x1f")] == []
    harness.feed(record(config_map("site"), T0 + 2_000))
    harness.feed(tick(T0 + 600_000))
    assert harness.transitions() == []


def pvc(storage_class: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "team-a", "uid": "pvc-1"},
            "spec": {"storageClassName": storage_class}, "status": {"phase": "Pending"}}


def test_cluster_scoped_reference_resolves_only_on_owner_partition():
    from kdiag.partitioning import partition_for_key

    owner = partition_for_key(b"c1/", 6)
    other = (owner + 1) % 6
    quiet = Harness(partition=other, partitions=6)
    quiet.feed(record(pvc("fast"), T0))
    quiet.feed(tick(T0 + 600_000))
    assert quiet.transitions() == []

    owning = Harness(partition=owner, partitions=6)
    owning.feed(record(pvc("fast"), T0))
    owning.feed(tick(T0 + 600_000))
    assert owning.transitions() == [("FIRING", "PVCStorageClassMissing", "")]


PERIODIC_RULES = RuleSet(parse_rules({
    "PodPendingChecked": {
        "resource": "Pod",
        "every": 60,
        "jitter": 0,
        "checkField": [{"field": ["status", "phase"], "equalValue": ["Pending"]}],
    }
}, source="test"))


def periodic_harness() -> Harness:
    harness = Harness()
    harness.processor = PartitionProcessor("changes", 0, PERIODIC_RULES, [], {}, 0, lookup=harness.state.get, scan=harness.scan)
    return harness


def running(obj: dict) -> dict:
    changed = dict(obj)
    changed["status"] = {"phase": "Running"}
    return changed


def test_periodic_rule_runs_at_check_times_only():
    first_check = next_check_ms("PodPendingChecked", "pod-1", T0, 60, 0)
    harness = periodic_harness()
    harness.feed(record(pod_reading(), T0))
    assert harness.transitions() == []
    harness.feed(tick(first_check - 1))
    assert harness.transitions() == []
    harness.feed(tick(first_check))
    assert harness.transitions() == [("FIRING", "PodPendingChecked", "")]
    assert harness.alerts[0]["activeSince"] == first_check

    harness.feed(record(running(pod_reading()), first_check + 10_000, change_type="MODIFIED"))
    assert len(harness.alerts) == 1  # A change alone does not evaluate a periodic rule.
    harness.feed(tick(first_check + 60_000))
    assert harness.transitions()[-1] == ("RESOLVED", "PodPendingChecked", "recovered")
    assert harness.alerts[-1]["resolvedAt"] == first_check + 60_000


def test_periodic_checks_survive_restart():
    first_check = next_check_ms("PodPendingChecked", "pod-1", T0, 60, 0)
    harness = periodic_harness()
    harness.feed(record(pod_reading(), T0))
    harness.feed(tick(first_check - 1))
    harness.processor = PartitionProcessor(
        "changes", 0, PERIODIC_RULES, [], {"c1": first_check - 1}, int(harness.state[b"o"]),
        lookup=harness.state.get, scan=harness.scan,
    )
    harness.feed(tick(first_check))
    assert harness.transitions() == [("FIRING", "PodPendingChecked", "")]


def test_periodic_checks_stop_after_delete():
    harness = periodic_harness()
    harness.feed(record(pod_reading(), T0 + 1_000))
    harness.feed(record(pod_reading(), T0 + 2_000, change_type="DELETED"))
    harness.feed(tick(T0 + 600_000))
    assert harness.transitions() == []
    assert [key for key in harness.state if key.startswith(b"a\x1f")] == []


def test_periodic_check_due_before_delete_runs():
    first_check = next_check_ms("PodPendingChecked", "pod-1", T0, 60, 0)
    harness = periodic_harness()
    harness.feed(record(pod_reading(), T0))
    # No tick reaches the check time before the delete arrives.
    harness.feed(record(pod_reading(), first_check + 5_000, change_type="DELETED"))
    assert harness.transitions() == [("FIRING", "PodPendingChecked", ""), ("RESOLVED", "PodPendingChecked", "deleted")]
    assert harness.alerts[0]["activeSince"] == first_check


def storage_class(name: str) -> dict:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name, "uid": f"sc-{name}"},
            "provisioner": "example.com/disk"}


def test_cluster_scoped_reference_uses_shared_objects_elsewhere():
    from kdiag.partitioning import partition_for_key

    shared: dict = {}
    other = (partition_for_key(b"c1/", 6) + 1) % 6
    harness = Harness(partition=other, partitions=6)
    harness.processor = PartitionProcessor("changes", other, RULES, [], {}, 0, partitions=6,
                                           lookup=harness.state.get, scan=harness.scan, cluster_objects=shared.get)
    harness.feed(record(pvc("fast"), T0))
    harness.feed(tick(T0 + 60_000))
    assert harness.transitions() == [("FIRING", "PVCStorageClassMissing", "")]

    shared[("c1", "StorageClass", "", "fast")] = {"kind": "StorageClass", "metadata": {"name": "fast"}}
    result = BatchResult()
    harness.processor.recheck_cluster_objects({("c1", "StorageClass", "", "fast")}, result)
    assert [(event.status, event.entry.rule) for event in result.alerts] == [("RESOLVED", "PVCStorageClassMissing")]


def test_owner_partition_publishes_cluster_objects():
    from kdiag.partitioning import partition_for_key

    owner = partition_for_key(b"c1/", 6)
    harness = Harness(partition=owner, partitions=6)
    harness.feed(record(storage_class("fast"), T0))
    writes = harness.processor.cluster_object_writes
    assert [key for key, _ in writes] == [("c1", "StorageClass", "", "fast")]
    assert writes[0][1]["metadata"]["name"] == "fast"


def test_pod_change_extracts_each_declaration_once(monkeypatch):
    """The five Pod rules of references.yaml use three declarations, so a Pod change extracts three times."""
    calls = []
    original = Extractor.collect

    def counting_collect(self, obj, found):
        calls.append(self)
        return original(self, obj, found)

    # Each declaration's references are collected from the names that one walk of the pod found.
    monkeypatch.setattr(Extractor, "collect", counting_collect)
    harness = Harness()
    harness.feed(record(pod_reading(config_map="site", secret="db"), T0))
    assert len(calls) == 3
    assert len(set(calls)) == 3
    assert harness.processor.references.references_of("c1", "pod-1") == {
        ("c1", "ConfigMap", "team-a", "site"),
        ("c1", "Secret", "team-a", "db"),
    }


def scanned_referrers(store: ReferenceStore, committed: dict[bytes, bytes], referenced: tuple) -> list[tuple[str, str]]:
    """Return what referrers_of returned before the staged index, from a scan over every staged write."""
    prefix = index_prefix(referenced)
    keys = {key for key in committed if key.startswith(prefix)}
    for key, value in store._staged.items():
        if key.startswith(prefix):
            if value is None:
                keys.discard(key)
            else:
                keys.add(key)
    return [tuple(key[len(prefix):].decode().split("\x1f", 1)) for key in sorted(keys)]


def test_staged_index_matches_scan():
    rng = random.Random(7)
    committed: dict[bytes, bytes] = {}
    store = ReferenceStore(committed.get, lambda prefix: sorted(key for key in committed if key.startswith(prefix)))
    targets = [("c1", "Secret", "team-a", name) for name in ("db", "db-2", "d", "tls")]
    targets.append(("c2", "Node", "", "node-1"))
    compared = 0
    for batch in range(30):
        for _ in range(rng.randint(0, 40)):
            uid = f"pod-{rng.randint(0, 12)}"
            cluster = rng.choice(["c1", "c2"])
            store.set_references(cluster, uid, set(rng.sample(targets, rng.randint(0, 3))))
            if rng.random() < 0.1:
                store.delete_referrer(cluster, uid)
            for target in targets:
                assert store.referrers_of(target) == scanned_referrers(store, committed, target)
                compared += 1
        for key, value in store.take_writes():
            if value is None:
                committed.pop(key, None)
            else:
                committed[key] = value
        for target in targets:
            assert store.referrers_of(target) == scanned_referrers(store, committed, target)
    assert compared > 1000
    assert any(key.startswith(INDEX_PREFIX) for key in committed)


def test_set_references_writes_only_changes():
    committed: dict[bytes, bytes] = {}
    store = ReferenceStore(committed.get, lambda prefix: sorted(key for key in committed if key.startswith(prefix)))
    db = ("c1", "Secret", "team-a", "db")
    tls = ("c1", "Secret", "team-a", "tls")

    # A referrer without references and nothing stored writes nothing.
    store.set_references("c1", "pod-1", set())
    assert store.take_writes() == []

    store.set_references("c1", "pod-1", {tls, db})
    committed.update({key: value for key, value in store.take_writes() if value is not None})
    assert store.references_of("c1", "pod-1") == {db, tls}

    # The same references in another order compare equal to the stored bytes.
    store.set_references("c1", "pod-1", {db, tls})
    assert store.take_writes() == []

    store.set_references("c1", "pod-1", {db})
    writes = dict(store.take_writes())
    assert writes[index_prefix(tls) + b"c1\x1fpod-1"] is None
    assert orjson.loads(writes[references_state_key("c1", "pod-1")]) == [list(db)]


def test_written_projection_not_cached_until_read():
    committed: dict[bytes, bytes] = {}
    store = ReferenceStore(committed.get)
    deployment = ("c1", "Deployment", "team-a", "web")

    store.put(deployment, {"kind": "Deployment", "spec": {"replicas": 3}})

    # A kind that no rule resolves is only written, so a parsed copy would only occupy the heap.
    assert store.cached_projections == 0
    assert store.get(deployment) == {"kind": "Deployment", "spec": {"replicas": 3}}
    assert store.cached_projections == 1


def test_cached_projection_follows_writes():
    committed: dict[bytes, bytes] = {}
    store = ReferenceStore(committed.get)
    secret = ("c1", "Secret", "team-a", "db")
    store.put(secret, {"kind": "Secret", "data": ["password"]})
    assert store.get(secret) == {"kind": "Secret", "data": ["password"]}

    store.put(secret, {"kind": "Secret", "data": ["password", "user"]})
    assert store.get(secret) == {"kind": "Secret", "data": ["password", "user"]}

    assert store.delete(secret)
    assert store.get(secret) is None
    assert store.cached_projections == 1
