"""PartitionProcessor on generated objects whose fields have types the API server would not give them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdiag.rootcause import Related
from kdiag.rules import load_rules
from streams.processor import CHANGE_BATCH, DIAGNOSIS, BatchResult, PartitionProcessor

PACK = load_rules(Path(__file__).resolve().parents[2] / "rules")
T0 = 1_700_000_000_000
KINDS = [
    "Pod",
    "Event",
    "Node",
    "Secret",
    "ConfigMap",
    "Deployment",
    "ReplicaSet",
    "Service",
    "PersistentVolumeClaim",
    "ServiceAccount",
    "Job",
    "StatefulSet",
    "DaemonSet",
]

scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "x", "Pod", "Warning", "True", "web-0"])
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["name", "kind", "type", "reason", "status", "key", "x"]), children, max_size=3),
    max_leaves=8,
)
named = st.fixed_dictionaries({}, optional={"name": scalars, "kind": scalars, "namespace": scalars, "uid": scalars, "key": scalars})
containers = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "name": scalars,
            "image": scalars,
            "env": st.lists(st.fixed_dictionaries({}, optional={"name": scalars, "valueFrom": values}), max_size=2) | values,
            "envFrom": st.lists(st.fixed_dictionaries({}, optional={"secretRef": named | values, "configMapRef": named | values}), max_size=2) | values,
            "resources": values,
        },
    )
    | values,
    max_size=2,
)
statuses = st.lists(
    st.fixed_dictionaries({}, optional={"name": scalars, "state": values, "lastState": values, "restartCount": scalars, "ready": scalars})
    | values,
    max_size=2,
)
objects = st.builds(
    lambda kind, body: {"kind": kind, **body},
    st.sampled_from(KINDS),
    st.fixed_dictionaries(
        {},
        optional={
            "metadata": st.fixed_dictionaries(
                {},
                optional={
                    "name": scalars,
                    "namespace": scalars,
                    "ownerReferences": st.lists(named | values, max_size=2) | values,
                    "deletionTimestamp": scalars | st.just("2024-01-01T00:00:00Z"),
                    "labels": values,
                },
            )
            | values,
            "spec": st.fixed_dictionaries(
                {},
                optional={
                    "nodeName": scalars,
                    "containers": containers | values,
                    "initContainers": containers,
                    "volumes": st.lists(st.fixed_dictionaries({}, optional={"secret": values, "configMap": values, "persistentVolumeClaim": values}), max_size=2) | values,
                    "imagePullSecrets": st.lists(named, max_size=2) | values,
                    "serviceAccountName": scalars,
                    "replicas": scalars,
                },
            )
            | values,
            "status": st.fixed_dictionaries(
                {},
                optional={
                    "phase": scalars,
                    "conditions": st.lists(st.fixed_dictionaries({}, optional={"type": scalars, "status": scalars, "reason": scalars}) | values, max_size=2) | values,
                    "containerStatuses": statuses | values,
                    "initContainerStatuses": statuses,
                },
            )
            | values,
            "type": scalars,
            "reason": scalars,
            "message": scalars,
            "involvedObject": named | values,
            "regarding": named | values,
            "data": values,
        },
    ),
)


def record(kind: str, obj: Any, time_ms: int, change_type: str) -> bytes:
    change = {
        "cluster": "c1",
        "apiVersion": "v1",
        "kind": kind,
        "namespace": "" if kind == "Node" else "team-a",
        "name": "object-1",
        "uid": "u1",
        "resourceVersion": str(time_ms),
        "changeType": change_type,
        "observedTime": time_ms,
        "object": orjson.dumps(obj),
    }
    return CHANGE_BATCH.encode({"changes": [change], "tick": None})


def tick(time_ms: int) -> bytes:
    return CHANGE_BATCH.encode({"changes": [], "tick": {"cluster": "c1", "time": time_ms, "source": "test"}})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(objects, min_size=1, max_size=3))
def test_odd_field_types_never_raise(changed):
    processor = PartitionProcessor("changes", 0, PACK, [], {}, 0)
    result = BatchResult()
    offset = 0
    for step, obj in enumerate(changed):
        processor.process(offset, record(obj["kind"], obj, T0 + step * 1_000, "ADDED" if step == 0 else "MODIFIED"), result)
        offset += 1
    # A tick a day later fires every pending entry. The diagnosis of each firing object reads the
    # table's projections of the generated objects.
    processor.process(offset, tick(T0 + 86_400_000), result)
    processor.diagnose(result)
    processor.process(offset + 1, record(changed[-1]["kind"], changed[-1], T0 + 86_401_000, "DELETED"), result)
    assert result.changes == len(changed) + 1
    assert result.dead_letters == []


def test_snapshot_failure_leaves_out_related(caplog):
    # A deletionTimestamp makes the pack's stuck-terminating rule fire. The volume's secret is a
    # boolean, which the snapshot's reader of referenced names cannot read.
    pod = {
        "kind": "Pod",
        "metadata": {"name": "object-1", "namespace": "team-a", "deletionTimestamp": "2023-11-14T00:00:00Z"},
        "spec": {"volumes": [{"secret": True}]},
    }
    processor = PartitionProcessor("changes", 0, PACK, [], {}, 0)
    result = BatchResult()
    processor.process(0, record("Pod", pod, T0, "MODIFIED"), result)
    with caplog.at_level("WARNING", logger="streams.processor"):
        processor.process(1, tick(T0 + 86_400_000), result)
    firing = [event for event in result.alerts if event.status == "FIRING"]
    assert firing
    assert "related objects left out of a diagnosis" in caplog.messages
    diagnosis = DIAGNOSIS.decode(result.diagnoses[-1][1])
    assert orjson.loads(diagnosis["object"])["spec"] == {"volumes": [{"secret": True}]}
    assert orjson.loads(diagnosis["related"]) == Related().to_json()
