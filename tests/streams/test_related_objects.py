"""RelatedTable with explicit objects: projections, indexes and the snapshot taken when a rule fires."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from kdiag.durations import ObjectRef
from streams.related_objects import RelatedTable, _index_keys, _stored_index_keys, table_projection


def pod(name: str, node: str = "node-1", owner_uid: str = "rs-uid", reason: str = "ImagePullBackOff") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": f"{name}-uid",
            "resourceVersion": "7",
            "labels": {"app": "web"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d8f", "uid": owner_uid, "controller": True}],
            "managedFields": [{"manager": "kubelet"}],
        },
        "spec": {
            "nodeName": node,
            "imagePullSecrets": [{"name": "regcred"}],
            "containers": [{"name": "app", "image": "registry.example/web:1"}],
        },
        "status": {"containerStatuses": [{"name": "app", "image": "registry.example/web:1", "state": {"waiting": {"reason": reason}}}]},
    }


def event(name: str, about: str, event_type: str = "Warning", kind: str = "Pod", namespace: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": namespace},
        "type": event_type,
        "reason": "Failed",
        "message": "Failed to pull image",
        "involvedObject": {"kind": kind, "name": about, "namespace": "" if kind == "Node" else namespace},
    }


REPLICA_SET = {
    "apiVersion": "apps/v1",
    "kind": "ReplicaSet",
    "metadata": {
        "name": "web-5d8f",
        "namespace": "shop",
        "uid": "rs-uid",
        "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "deploy-uid", "controller": True}],
    },
}
DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop", "uid": "deploy-uid"}}
SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "type": "kubernetes.io/dockerconfigjson",
    "metadata": {"name": "regcred", "namespace": "shop"},
    "data": {".dockerconfigjson": "c2VjcmV0"},
}


def node(name: str, zone: str = "zone-a", heartbeat: str = "2024-01-01T00:00:00Z") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "resourceVersion": heartbeat, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}],
            "images": [{"names": ["registry.example/web:1"]}],
        },
    }


def key_of(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    metadata = obj["metadata"]
    return ("c1", obj["kind"], metadata.get("namespace", ""), metadata["name"])


def table_with(*objects: dict[str, Any]) -> RelatedTable:
    table = RelatedTable(lambda key: None, lambda prefix: ())
    for obj in objects:
        table.put(key_of(obj), obj)
    return table


def ref_of(obj: dict[str, Any]) -> ObjectRef:
    metadata = obj["metadata"]
    return ObjectRef("c1", obj["apiVersion"], obj["kind"], metadata.get("namespace", ""), metadata["name"], metadata.get("uid", ""), "1")


def test_projection_keeps_no_secret_values_and_no_heartbeats():
    secret = table_projection(SECRET)
    assert secret["keys"] == [".dockerconfigjson"]
    assert "c2VjcmV0" not in str(secret)
    projected = table_projection(node("node-1"))
    assert "lastHeartbeatTime" not in str(projected)
    assert "images" not in projected["status"]
    assert "resourceVersion" not in projected["metadata"]
    assert "managedFields" not in table_projection(pod("web-1"))["metadata"]


def test_unchanged_projection_stages_nothing():
    committed: dict[bytes, bytes | None] = {}
    table = RelatedTable(committed.get, lambda prefix: sorted(key for key in committed if key.startswith(prefix)))
    assert table.put(key_of(node("node-1")), node("node-1")) is not None
    committed.update(table.take_writes())
    # A status report with a new heartbeat and resourceVersion is not a change of the projection.
    assert table.put(key_of(node("node-1")), node("node-1", heartbeat="2024-01-01T00:05:00Z")) is None
    assert not table.has_writes()
    # A committed table finds what it indexed.
    assert table.put(key_of(pod("web-1")), pod("web-1")) is not None
    committed.update(table.take_writes())
    assert [found["metadata"]["name"] for found in table.pods_on_node("c1", "node-1")] == ["web-1"]


def test_indexes_follow_moves_and_deletes():
    table = table_with(pod("web-1"), pod("web-2"), event("web-1.a", "web-1"), event("web-1.b", "web-1", event_type="Normal"))
    assert [found["metadata"]["name"] for found in table.warning_events("c1", "Pod", "shop", "web-1")] == ["web-1.a"]
    assert len(table.owned_pods("c1", "shop", "rs-uid")) == 2
    table.put(key_of(pod("web-2")), pod("web-2", node="node-2", owner_uid="other-rs"))
    assert [found["metadata"]["name"] for found in table.owned_pods("c1", "shop", "rs-uid")] == ["web-1"]
    assert [found["metadata"]["name"] for found in table.pods_on_node("c1", "node-2")] == ["web-2"]
    assert table.delete(key_of(pod("web-1")))
    assert table.owned_pods("c1", "shop", "rs-uid") == []
    assert table.pods_on_node("c1", "node-1") == []
    assert not table.delete(key_of(pod("web-1")))


def test_pod_snapshot_collects_related_objects():
    table = table_with(
        pod("web-1"),
        pod("web-2", node="node-2"),
        event("web-1.a", "web-1"),
        event("web-2.a", "web-2"),
        REPLICA_SET,
        DEPLOYMENT,
        SECRET,
        node("node-1"),
    )
    remote_nodes = {"node-2": table_projection(node("node-2", zone="zone-b"))}
    snapshot = table.snapshot(ref_of(pod("web-1")), node_lookup=lambda cluster, name: remote_nodes.get(name))
    related = snapshot.related
    assert snapshot.obj is not None and snapshot.obj["metadata"]["name"] == "web-1"
    assert [found["metadata"]["name"] for found in related.events] == ["web-1.a"]
    assert [found["kind"] for found in related.owners] == ["ReplicaSet", "Deployment"]
    assert [(owner.kind, owner.name) for owner in snapshot.owners] == [("ReplicaSet", "web-5d8f"), ("Deployment", "web")]
    assert related.node is not None and related.node["metadata"]["name"] == "node-1"
    assert [found["metadata"]["name"] for found in related.nodes] == ["node-2"]
    assert [found["metadata"]["name"] for found in related.sibling_pods] == ["web-2"]
    assert [found["keys"] for found in related.secrets] == [[".dockerconfigjson"]]
    assert (snapshot.node, snapshot.zone) == ("node-1", "zone-a")
    assert "c2VjcmV0" not in str(related.to_json())


def test_event_snapshot_is_about_the_involved_object():
    table = table_with(pod("web-1"), event("web-1.a", "web-1"), event("web-1.b", "web-1"), REPLICA_SET, node("node-1"))
    snapshot = table.snapshot(ref_of({**event("web-1.a", "web-1"), "metadata": {"name": "web-1.a", "namespace": "shop", "uid": "e1"}}))
    assert snapshot.workload is not None and snapshot.workload["metadata"]["name"] == "web-1"
    assert snapshot.related.involved is not None and snapshot.related.involved["kind"] == "Pod"
    assert sorted(found["metadata"]["name"] for found in snapshot.related.events) == ["web-1.a", "web-1.b"]
    # The ReplicaSet names the Deployment, which the table does not hold.
    assert [owner.name for owner in snapshot.owners] == ["web-5d8f", "web"]
    assert snapshot.node == "node-1"


def test_node_events_are_found_for_a_node():
    table = table_with(node("node-1"), event("node-1.a", "node-1", kind="Node", namespace="default"), pod("web-1"))
    snapshot = table.snapshot(ref_of(node("node-1")))
    assert [found["metadata"]["name"] for found in snapshot.related.events] == ["node-1.a"]
    assert [found["metadata"]["name"] for found in snapshot.related.node_pods] == ["web-1"]


def test_unknown_object_gives_an_empty_snapshot():
    snapshot = RelatedTable(lambda key: None, lambda prefix: ()).snapshot(ref_of(pod("gone")))
    assert snapshot.obj is None
    assert snapshot.related.events == ()


json_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["", "a", "Pod", "Event", "Node", "Warning", "Normal"])
json_values = st.recursive(
    json_scalars, lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["a", "kind", "name"]), children, max_size=3), max_leaves=6
)
owner_references = st.lists(
    st.fixed_dictionaries(
        {},
        optional={"controller": json_values, "uid": json_scalars, "kind": json_scalars, "name": json_scalars},
    )
    | json_scalars,
    max_size=3,
)
metadata = st.fixed_dictionaries(
    {}, optional={"namespace": json_scalars, "name": json_scalars, "ownerReferences": owner_references | json_scalars, "labels": json_values}
)
involved = st.fixed_dictionaries({}, optional={"kind": json_scalars, "name": json_scalars, "namespace": json_scalars})
stored_objects = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.sampled_from(["Pod", "Event", "Node", "ConfigMap"]) | json_scalars,
        "type": json_scalars,
        "metadata": metadata | json_values,
        "spec": st.fixed_dictionaries({}, optional={"nodeName": json_scalars, "containers": json_values}) | json_values,
        "involvedObject": involved | json_values,
        "regarding": involved | json_values,
        "status": json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(stored_objects)
def test_stored_index_keys_match_full_parse(obj):
    assert _stored_index_keys("c1", orjson.dumps(obj)) == _index_keys("c1", obj)


def test_stored_index_keys_of_owned_pod():
    stored = orjson.dumps(table_projection(pod("web-1", node="node-a")))
    assert _stored_index_keys("c1", stored) == _index_keys("c1", orjson.loads(stored))
    assert len(_stored_index_keys("c1", stored)) == 2
