"""Reading recorded history into changes: formats, identity, change types, observed time, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from connectors.readers import (
    CLUSTER_SCOPED_KINDS,
    ChangeBuilder,
    LocatedChange,
    Rejection,
    Skipped,
    expand_inputs,
    object_time_ms,
    parse_json_stream,
    read_file,
)
from kdiag.errors import InputError
from kdiag.model import parse_time_ms

DATA = Path(__file__).parent / "data"
SAMPLES = Path(__file__).resolve().parents[2] / "samples"
HISTORY = SAMPLES / "histories" / "01-pulumi-cloud-ready-checks-workflows.jsonl"
START = "2020-01-01T00:00:00Z"
START_MS = parse_time_ms(START)


def ms(text: str) -> int:
    value = parse_time_ms(text)
    assert value is not None, text
    return value


def builder(cluster: str = "test", start_ms: int = START_MS, step_ms: int = 1000) -> ChangeBuilder:
    return ChangeBuilder(cluster, start_ms, step_ms)


def read(path: Path, shared: ChangeBuilder | None = None) -> list:
    return list(read_file(path, shared or builder()))


def changes_of(items: list) -> list:
    return [item.change for item in items if isinstance(item, LocatedChange)]


def rejections_of(items: list) -> list[Rejection]:
    return [item for item in items if isinstance(item, Rejection)]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def one_change(obj: dict, shared: ChangeBuilder | None = None, cluster: str = "test"):
    shared = shared or builder(cluster)
    changes = shared.from_object(cluster, obj)
    assert len(changes) == 1
    return changes[0]


# Formats


def test_watch_events_one_per_line():
    items = read(DATA / "watch-events.jsonl")
    changes = changes_of(items)
    assert [change.change_type for change in changes] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    assert [change.resource_version for change in changes] == ["1001", "1002", "1004", "1005"]
    assert {(change.namespace, change.kind, change.name) for change in changes} == {("shop", "Pod", "web-0")}
    assert [item.origin.rsplit(":", 1)[1] for item in items if isinstance(item, LocatedChange)] == ["1", "2", "4", "6"]


def test_watch_bookmark_skipped_and_error_rejected():
    items = read(DATA / "watch-events.jsonl")
    skipped = [item for item in items if isinstance(item, Skipped)]
    assert [item.origin for item in skipped] == [f"{DATA / 'watch-events.jsonl'}:3"]
    rejected = rejections_of(items)
    assert [item.origin for item in rejected] == [f"{DATA / 'watch-events.jsonl'}:5"]
    assert "watch ERROR event" in rejected[0].reason
    assert "too old resource version" in rejected[0].reason


def test_pretty_printed_watch_events_match_lines():
    lines = changes_of(read(DATA / "watch-events.jsonl"))
    pretty_items = read(DATA / "watch-events-pretty.json")
    assert changes_of(pretty_items) == lines
    origins = [item.origin.rsplit(":", 1)[1] for item in pretty_items]
    assert origins == ["1", "26", "58", "68", "113", "125"]


def test_watch_event_times():
    changes = changes_of(read(DATA / "watch-events.jsonl"))
    assert changes[0].observed_time_ms == ms("2024-03-01T10:00:00Z")
    # The PodScheduled condition moved at 10:00:02.
    assert changes[1].observed_time_ms == ms("2024-03-01T10:00:02Z")
    # Latest of startTime 10:00:02, container startedAt 10:00:08 and Ready at 10:00:09.
    assert changes[2].observed_time_ms == ms("2024-03-01T10:00:09Z")
    # deletionTimestamp 10:05:30 minus the 30 s grace period.
    assert changes[3].observed_time_ms == ms("2024-03-01T10:05:00Z")


def test_yaml_list_with_comments_and_documents():
    path = DATA / "list-with-comments.yaml"
    items = read(path)
    assert rejections_of(items) == []
    summary = [
        (item.origin, item.change.kind, item.change.namespace, item.change.name)
        for item in items
        if isinstance(item, LocatedChange)
    ]
    assert summary[0] == (f"{path}:6", "Deployment", "shop", "checkout")
    assert summary[1] == (f"{path}:18", "Service", "shop", "checkout")
    assert summary[2][:3] == (f"{path}:25", "Event", "shop")
    assert summary[3] == (f"{path}:34", "StorageClass", "", "fast")


def test_yaml_keeps_timestamps_as_written():
    change = changes_of(read(DATA / "list-with-comments.yaml"))[0]
    condition = orjson.loads(change.object_json)["status"]["conditions"][0]
    assert condition["lastTransitionTime"] == "2024-03-03T12:10:00Z"
    assert change.observed_time_ms == ms("2024-03-03T12:10:00Z")


def test_typed_list_items_get_kind_and_api_version():
    changes = changes_of(read(DATA / "pod-list.json"))
    assert [(change.kind, change.api_version, change.name) for change in changes] == [
        ("Pod", "v1", "api-0"),
        ("Pod", "v1", "api-1"),
    ]
    published = orjson.loads(changes[0].object_json)
    assert published["kind"] == "Pod"
    assert published["apiVersion"] == "v1"


def test_json_lines_of_plain_objects():
    changes = changes_of(read(DATA / "objects.jsonl"))
    assert [(change.kind, change.change_type) for change in changes] == [
        ("Node", "ADDED"),
        ("ConfigMap", "ADDED"),
        ("Node", "MODIFIED"),
    ]
    assert changes[0].namespace == ""
    assert changes[1].namespace == "shop"
    assert changes[2].resource_version == "501"


def test_json_file_with_one_list_of_objects(tmp_path):
    objects = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "x"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "x"}},
    ]
    path = write(tmp_path, "dump.json", json.dumps(objects, indent=2))
    assert [change.name for change in changes_of(read(path))] == ["a", "b"]


def test_yaml_single_object_without_suffix(tmp_path):
    path = write(tmp_path, "dump", "# a comment\nkind: Namespace\nmetadata:\n  name: team-a\n")
    changes = changes_of(read(path))
    assert [(change.kind, change.namespace, change.name) for change in changes] == [("Namespace", "", "team-a")]


def test_json_stream_without_suffix_detected(tmp_path):
    path = write(tmp_path, "watch.out", (DATA / "watch-events-pretty.json").read_text())
    assert len(changes_of(read(path))) == 4


# Workflow wrappers


def test_wrapper_workflows_get_own_clusters():
    changes = changes_of(read(HISTORY, builder("replay")))
    clusters = {change.cluster for change in changes}
    assert "replay.pod-imagePullError" in clusters
    assert "replay.pod-imagePullErrorResolved" in clusters
    assert "replay.daemonSet-invalid" in clusters
    assert len(clusters) == 21
    # 157 states, plus the DELETED of the pod that imagePullErrorResolved replaces.
    assert len(changes) == 158


def test_workflows_start_with_added():
    changes = changes_of(read(HISTORY, builder("replay")))
    first_of_cluster: dict[str, str] = {}
    for change in changes:
        first_of_cluster.setdefault(change.cluster, change.change_type)
    assert set(first_of_cluster.values()) == {"ADDED"}


def test_new_uid_deletes_old_uid_first():
    changes = [
        change
        for change in changes_of(read(HISTORY, builder("replay")))
        if change.cluster == "replay.pod-imagePullErrorResolved"
    ]
    old_uid = "ab443c98-9783-11e9-a3c5-025000000001"
    new_uid = "bf876747-9783-11e9-a3c5-025000000001"
    sequence = [(change.change_type, change.uid) for change in changes]
    assert sequence[:5] == [("ADDED", old_uid)] + [("MODIFIED", old_uid)] * 4
    assert sequence[5] == ("DELETED", old_uid)
    assert sequence[6] == ("ADDED", new_uid)
    assert sequence[7:] == [("MODIFIED", new_uid)] * 3
    deleted = changes[5]
    assert deleted.object_json == changes[4].object_json
    assert deleted.resource_version == changes[4].resource_version
    assert deleted.observed_time_ms == changes[6].observed_time_ms


def test_wrapper_steps_run_in_seq_order(tmp_path):
    def wrapper(workflow: str, seq: int, version: str) -> str:
        obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n", "resourceVersion": version}}
        return json.dumps({"workflow": workflow, "seq": seq, "steps": 2, "source": "test", "object": obj})

    lines = [wrapper("b/one", 1, "12"), wrapper("a/two", 0, "20"), wrapper("b/one", 0, "11"), wrapper("a/two", 1, "21")]
    path = write(tmp_path, "wrappers.jsonl", "\n".join(lines) + "\n")
    changes = changes_of(read(path, builder("lab")))
    assert [(change.cluster, change.resource_version, change.change_type) for change in changes] == [
        ("lab.b-one", "11", "ADDED"),
        ("lab.b-one", "12", "MODIFIED"),
        ("lab.a-two", "20", "ADDED"),
        ("lab.a-two", "21", "MODIFIED"),
    ]


def test_wrapper_file_rejects_other_records(tmp_path):
    wrapper = {"workflow": "w", "seq": 0, "steps": 1, "source": "test", "object": {"kind": "Namespace", "metadata": {"name": "a"}}}
    plain = {"kind": "Namespace", "metadata": {"name": "b"}}
    bad_seq = dict(wrapper, seq="first")
    path = write(tmp_path, "mixed.jsonl", "\n".join(json.dumps(item) for item in (wrapper, plain, bad_seq)) + "\n")
    items = read(path)
    assert [change.name for change in changes_of(items)] == ["a"]
    rejected = rejections_of(items)
    assert [item.origin for item in rejected] == [f"{path}:2", f"{path}:3"]
    assert "workflow wrapper" in rejected[0].reason
    assert "seq" in rejected[1].reason


# Change types


def test_repeated_object_becomes_modified():
    shared = builder()
    obj = {"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}}
    first = one_change(dict(obj), shared)
    second = one_change(dict(obj), shared)
    assert (first.change_type, second.change_type) == ("ADDED", "MODIFIED")
    assert first.uid == second.uid


def test_same_name_new_uid_emits_deleted():
    shared = builder()
    old = {"kind": "Pod", "metadata": {"name": "p", "namespace": "n", "uid": "u1", "resourceVersion": "5"}, "status": {"phase": "Failed"}}
    new = {"kind": "Pod", "metadata": {"name": "p", "namespace": "n", "uid": "u2", "resourceVersion": "9"}}
    shared.from_object("test", old)
    changes = shared.from_object("test", new)
    assert [(change.change_type, change.uid, change.resource_version) for change in changes] == [
        ("DELETED", "u1", "5"),
        ("ADDED", "u2", "9"),
    ]
    assert orjson.loads(changes[0].object_json)["status"] == {"phase": "Failed"}


def test_watch_delete_then_object_is_added():
    shared = builder()
    obj = {"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n", "uid": "u1"}}
    shared.from_watch_event("test", "ADDED", dict(obj))
    shared.from_watch_event("test", "DELETED", dict(obj))
    assert one_change(dict(obj), shared).change_type == "ADDED"


def test_same_name_in_other_cluster_is_independent():
    shared = builder()
    shared.from_object("a", {"kind": "Pod", "metadata": {"name": "p", "namespace": "n", "uid": "u1"}})
    changes = shared.from_object("b", {"kind": "Pod", "metadata": {"name": "p", "namespace": "n", "uid": "u2"}})
    assert [change.change_type for change in changes] == ["ADDED"]


# Identity


def test_identity_filled_into_object():
    change = one_change({"kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": "1"}})
    expected_uid = "replay-" + hashlib.sha1(b"test/v1/ConfigMap/default/settings").hexdigest()[:32]
    assert (change.api_version, change.namespace, change.uid) == ("v1", "default", expected_uid)
    published = orjson.loads(change.object_json)
    assert published["metadata"] == {"name": "settings", "namespace": "default", "uid": expected_uid}
    assert published["data"] == {"a": "1"}
    assert "apiVersion" not in published


@pytest.mark.parametrize("kind", sorted(CLUSTER_SCOPED_KINDS))
def test_cluster_scoped_kinds_have_no_namespace(kind):
    change = one_change({"kind": kind, "metadata": {"name": "x"}})
    assert change.namespace == ""
    assert "namespace" not in orjson.loads(change.object_json)["metadata"]


def test_given_identity_kept():
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "n", "uid": "given", "resourceVersion": 77},
    }
    change = one_change(obj)
    assert (change.api_version, change.namespace, change.uid, change.resource_version) == ("apps/v1", "n", "given", "77")


def test_event_name_from_involved_object():
    event = {"kind": "Event", "reason": "BackOff", "involvedObject": {"kind": "Pod", "name": "web-0"}}
    digest = hashlib.sha1(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    change = one_change(json.loads(json.dumps(event)))
    assert change.name == f"web-0.{digest}"
    assert change.namespace == "default"
    other = one_change({"kind": "Event", "reason": "Pulled", "involvedObject": {"kind": "Pod", "name": "web-0"}})
    assert other.name != change.name
    assert other.name.startswith("web-0.")


def test_event_namespace_from_involved_object():
    event = {"kind": "Event", "involvedObject": {"kind": "Pod", "name": "p", "namespace": "shop"}}
    change = one_change(event)
    assert change.namespace == "shop"
    assert orjson.loads(change.object_json)["metadata"]["namespace"] == "shop"


def test_missing_resource_version_counts_per_file(tmp_path):
    text = "".join(json.dumps({"kind": "ConfigMap", "metadata": {"name": f"c{i}", "namespace": "n"}}) + "\n" for i in range(3))
    first = write(tmp_path, "first.jsonl", text)
    second = write(tmp_path, "second.jsonl", text.replace('"c', '"d'))
    shared = builder()
    versions = [change.resource_version for change in changes_of(read(first, shared))]
    versions += [change.resource_version for change in changes_of(read(second, shared))]
    assert versions == ["1", "2", "3", "1", "2", "3"]


def test_object_without_name_rejected(tmp_path):
    path = write(tmp_path, "nameless.jsonl", '{"kind": "Pod", "metadata": {"namespace": "n"}}\n')
    rejected = rejections_of(read(path))
    assert [item.origin for item in rejected] == [f"{path}:1"]
    assert "metadata.name" in rejected[0].reason


def test_managed_fields_and_secret_values_not_published():
    secret = {
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "n", "managedFields": [{"manager": "kubectl"}]},
        "data": {"password": "c2VjcmV0"},
        "type": "Opaque",
    }
    published = orjson.loads(one_change(secret).object_json)
    assert "managedFields" not in published["metadata"]
    assert published["data"] == {"password": ""}
    assert published["type"] == "Opaque"


# Observed time


EVENT = {
    "kind": "Event",
    "lastTimestamp": "2024-01-01T00:00:05Z",
    "series": {"lastObservedTime": "2024-01-01T00:00:04.000000Z"},
    "eventTime": "2024-01-01T00:00:03.000000Z",
    "firstTimestamp": "2024-01-01T00:00:02Z",
    "metadata": {"name": "e", "creationTimestamp": "2024-01-01T00:00:01Z"},
}


@pytest.mark.parametrize(
    ("removed", "expected"),
    [
        ((), "2024-01-01T00:00:05Z"),
        (("lastTimestamp",), "2024-01-01T00:00:04Z"),
        (("lastTimestamp", "series"), "2024-01-01T00:00:03Z"),
        (("lastTimestamp", "series", "eventTime"), "2024-01-01T00:00:02Z"),
        (("lastTimestamp", "series", "eventTime", "firstTimestamp"), "2024-01-01T00:00:01Z"),
    ],
)
def test_event_time_takes_first_present(removed, expected):
    event = {key: value for key, value in EVENT.items() if key not in removed}
    assert object_time_ms(event) == ms(expected)


def test_event_time_skips_null_fields():
    event = dict(EVENT, lastTimestamp=None)
    assert object_time_ms(event) == ms("2024-01-01T00:00:04Z")


def test_pod_time_is_latest_of_its_timestamps():
    pod = {
        "kind": "Pod",
        "metadata": {"name": "p", "creationTimestamp": "2024-01-01T00:00:00Z"},
        "status": {
            "startTime": "2024-01-01T00:00:01Z",
            "conditions": [
                {"type": "PodScheduled", "lastTransitionTime": "2024-01-01T00:00:01Z"},
                {"type": "Ready", "lastProbeTime": None, "lastTransitionTime": "2024-01-01T00:02:00Z"},
            ],
            "initContainerStatuses": [{"state": {"terminated": {"startedAt": "2024-01-01T00:00:02Z", "finishedAt": "2024-01-01T00:00:30Z"}}}],
            "containerStatuses": [
                {
                    "state": {"running": {"startedAt": "2024-01-01T00:01:00Z"}},
                    "lastState": {"terminated": {"finishedAt": "2024-01-01T00:00:50Z"}},
                }
            ],
        },
    }
    assert object_time_ms(pod) == ms("2024-01-01T00:02:00Z")
    pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["finishedAt"] = "2024-01-01T00:03:00Z"
    assert object_time_ms(pod) == ms("2024-01-01T00:03:00Z")


def test_node_time_uses_heartbeat():
    node = {
        "kind": "Node",
        "metadata": {"name": "n"},
        "status": {"conditions": [{"lastHeartbeatTime": "2019-06-03T13:54:18Z", "lastTransitionTime": "2019-06-02T21:39:37Z"}]},
    }
    assert object_time_ms(node) == ms("2019-06-03T13:54:18Z")


def test_service_deletion_minus_grace_period():
    service = {
        "kind": "Service",
        "metadata": {
            "name": "s",
            "creationTimestamp": "2021-07-07T09:04:08Z",
            "deletionTimestamp": "2021-10-07T10:29:31Z",
            "deletionGracePeriodSeconds": 30,
        },
    }
    assert object_time_ms(service) == ms("2021-10-07T10:29:01Z")
    service["metadata"]["deletionGracePeriodSeconds"] = 0
    assert object_time_ms(service) == ms("2021-10-07T10:29:31Z")


def test_object_without_timestamps_has_no_time():
    assert object_time_ms({"kind": "ConfigMap", "metadata": {"name": "c", "creationTimestamp": None}}) is None


def test_untimed_changes_use_start_and_step(tmp_path):
    text = "".join(json.dumps({"kind": "ConfigMap", "metadata": {"name": f"c{i}", "namespace": "n"}}) + "\n" for i in range(3))
    start = ms("2023-05-01T00:00:00Z")
    first = write(tmp_path, "first.jsonl", text)
    changes = changes_of(read(first, builder(start_ms=start, step_ms=2500)))
    assert [change.observed_time_ms for change in changes] == [start, start + 2500, start + 5000]


def test_untimed_counter_restarts_per_file_but_clock_holds(tmp_path):
    text = "".join(json.dumps({"kind": "ConfigMap", "metadata": {"name": f"c{i}", "namespace": "n"}}) + "\n" for i in range(2))
    shared = builder()
    first = changes_of(read(write(tmp_path, "first.jsonl", text), shared))
    other = builder()
    second_alone = changes_of(read(write(tmp_path, "second.jsonl", text), other))
    second = changes_of(read(tmp_path / "second.jsonl", shared))
    assert [change.observed_time_ms for change in first] == [START_MS, START_MS + 1000]
    assert [change.observed_time_ms for change in second_alone] == [START_MS, START_MS + 1000]
    # In the shared cluster, the second file's first change cannot go back before the first file's last.
    assert [change.observed_time_ms for change in second] == [START_MS + 1000, START_MS + 1000]


def test_timed_changes_do_not_use_the_step_sequence():
    shared = builder()
    timed = {"kind": "ConfigMap", "metadata": {"name": "a", "namespace": "n", "creationTimestamp": "2019-01-01T00:00:00Z"}}
    shared.from_object("early", timed)
    untimed = shared.from_object("other", {"kind": "ConfigMap", "metadata": {"name": "b", "namespace": "n"}})
    assert untimed[0].observed_time_ms == START_MS


def test_time_never_goes_backwards_per_cluster():
    shared = builder()
    late = {"kind": "Pod", "metadata": {"name": "a", "namespace": "n", "creationTimestamp": "2024-01-01T00:10:00Z"}}
    early = {"kind": "Pod", "metadata": {"name": "b", "namespace": "n", "creationTimestamp": "2024-01-01T00:00:00Z"}}
    assert shared.from_object("one", late)[0].observed_time_ms == ms("2024-01-01T00:10:00Z")
    assert shared.from_object("one", early)[0].observed_time_ms == ms("2024-01-01T00:10:00Z")
    assert shared.from_object("two", dict(early))[0].observed_time_ms == ms("2024-01-01T00:00:00Z")
    assert shared.clock_ms("one") == ms("2024-01-01T00:10:00Z")


def test_history_time_is_monotonic_per_workflow():
    last: dict[str, int] = {}
    for change in changes_of(read(HISTORY, builder("replay"))):
        assert change.observed_time_ms >= last.get(change.cluster, 0)
        last[change.cluster] = change.observed_time_ms


def test_record_time_field_wins(tmp_path):
    event = {"type": "ADDED", "time": "2030-01-01T00:00:00Z", "object": {"kind": "Namespace", "metadata": {"name": "a", "creationTimestamp": "2020-01-01T00:00:00Z"}}}
    path = write(tmp_path, "timed.jsonl", json.dumps(event) + "\n")
    assert changes_of(read(path))[0].observed_time_ms == ms("2030-01-01T00:00:00Z")


# Invalid input


def test_malformed_json_lines_reported_with_line():
    path = DATA / "malformed.jsonl"
    items = read(path)
    assert [change.name for change in changes_of(items)] == ["first", "last"]
    rejected = [(item.origin, item.reason) for item in rejections_of(items)]
    assert [origin for origin, _ in rejected] == [f"{path}:{line}" for line in (2, 3, 4, 5)]
    assert "incomplete JSON value" in rejected[0][1]
    assert "got a string" in rejected[1][1]
    assert "no kind" in rejected[2][1]
    assert "unknown watch event type 'REPLACED'" in rejected[3][1]


def test_malformed_pretty_json_costs_only_its_value():
    path = DATA / "malformed-pretty.json"
    items = read(path)
    assert [change.name for change in changes_of(items)] == ["before", "after"]
    assert [item.origin for item in rejections_of(items)] == [f"{path}:9"]


def test_invalid_json_reports_start_line(tmp_path):
    path = write(tmp_path, "bad.json", '{\n  "kind": "Pod",\n  "metadata": {"name": "p",}\n}\n')
    rejected = rejections_of(read(path))
    assert [item.origin for item in rejected] == [f"{path}:1"]
    assert "invalid JSON" in rejected[0].reason
    assert "line 3" in rejected[0].reason


def test_truncated_file_reported(tmp_path):
    path = write(tmp_path, "cut.json", '{"kind": "Namespace", "metadata": {"name": "a"}}\n{\n  "kind": "Pod",\n')
    items = read(path)
    assert [change.name for change in changes_of(items)] == ["a"]
    rejected = rejections_of(items)
    assert [item.origin for item in rejected] == [f"{path}:2"]
    assert "incomplete JSON value" in rejected[0].reason


def test_indented_closing_bracket_parses(tmp_path):
    text = '{\n  "kind": "Namespace",\n  "metadata": {"name": "a"} }\n{\n  "kind": "Namespace",\n  "metadata": {"name": "b"}\n  }\n'
    path = write(tmp_path, "indented.json", text)
    items = read(path)
    assert rejections_of(items) == []
    assert [(item.origin, item.change.name) for item in items] == [(f"{path}:1", "a"), (f"{path}:4", "b")]


def test_two_values_on_one_line(tmp_path):
    path = write(tmp_path, "pair.json", '{"kind": "Namespace", "metadata": {"name": "a"}} {"kind": "Namespace", "metadata": {"name": "b"}}\n')
    assert [change.name for change in changes_of(read(path))] == ["a", "b"]


def test_progress_reports_every_byte():
    path = DATA / "watch-events-pretty.json"
    consumed = []
    list(read_file(path, builder(), consumed.append))
    assert sum(consumed) == path.stat().st_size


def test_malformed_yaml_costs_only_its_document():
    path = DATA / "malformed.yaml"
    items = read(path)
    assert [change.name for change in changes_of(items)] == ["good", "also-good"]
    rejected = rejections_of(items)
    assert [item.origin for item in rejected] == [f"{path}:12", f"{path}:19"]
    assert rejected[0].reason.startswith("invalid YAML")
    assert "got a string" in rejected[1].reason


def test_invalid_utf8_rejected(tmp_path):
    path = tmp_path / "binary.jsonl"
    path.write_bytes(b'{"kind": "Namespace", "metadata": {"name": "a"}}\n{"kind": "\xff"}\n')
    items = read(path)
    assert [change.name for change in changes_of(items)] == ["a"]
    assert [item.origin for item in rejections_of(items)] == [f"{path}:2"]


def test_missing_file_is_input_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InputError, match="nope.yaml"):
        expand_inputs([str(missing)])
    with pytest.raises(InputError, match="failed to open"):
        read(missing)


def test_folder_expands_recursively_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b/2.jsonl", "a.yaml", "b/1.json", "notes.md", ".hidden/x.yaml", "c.yml"):
        (tmp_path / name).write_text("")
    found = [path.relative_to(tmp_path).as_posix() for path in expand_inputs([str(tmp_path)])]
    assert found == ["a.yaml", "b/1.json", "b/2.jsonl", "c.yml"]


def test_empty_folder_is_input_error(tmp_path):
    with pytest.raises(InputError, match="no input files"):
        expand_inputs([str(tmp_path)])


def test_corpus_reads_without_rejections():
    shared = builder("replay")
    for path in expand_inputs([str(SAMPLES / "corpus")]):
        assert rejections_of(read(path, shared)) == [], path


# JSON stream parser

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(st.lists(json_objects, min_size=1, max_size=5), st.booleans())
def test_json_stream_layouts_parse_alike(objects, pretty):
    text = "".join((json.dumps(obj, indent=2) if pretty else json.dumps(obj)) + "\n" for obj in objects)
    lines = list(enumerate(text.encode().splitlines(keepends=True), start=1))
    parsed = list(parse_json_stream(lines, lambda line: f"f:{line}"))
    assert [entry.value for entry in parsed] == objects
