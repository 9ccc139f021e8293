"""The shipped plugins, the plugin registry and its entry points, and the context the worker builds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from rootcause_support import load_case, make_context

from kdiag.durations import AlertEvent, Entry, ObjectRef
from kdiag.rootcause import Diagnosis, DiagnosisContext, Finding, PluginRegistry, Related, related_from_objects
from kdiag.rootcause.builtin import BUILTIN_PLUGINS
from kdiag.rootcause.builtin.image_pull import classify_image_pull, classify_message
from kdiag.rootcause.builtin.kube import image_registry
from kdiag.rootcause.builtin.scheduling import parse_scheduler_message
from kdiag.rootcause.plugins import resolve_reference
from kdiag.rootcause.templates import parse_template

# Image pull classifier


@pytest.mark.parametrize(
    ("message", "category"),
    [
        # Case 01: the credentials phrase is Docker's generic text, the details name the tag.
        (
            'Failed to pull image "quay.io/example-org/s3registry:v2.0.0-dev": image pull failed for quay.io/example-org/s3registry:v2.0.0-dev, '
            "this may be because there are no credentials on this request.  details: (Tag v2.0.0-dev not found in repository quay.io/example-org/s3registry)",
            "not-found",
        ),
        ('Failed to pull image "a/b:1": rpc error: code = Unknown desc = Error response from daemon: manifest for a/b:1 not found: manifest unknown: manifest unknown', "not-found"),
        ("Error response from daemon: pull access denied for vendor-a/policy-enforcer, repository does not exist or may require 'docker login'", "unauthorized"),
        ("failed to authorize: failed to fetch anonymous token: unexpected status: 401 Unauthorized", "unauthorized"),
        ("Error reading manifest latest in docker.io/example-org/kafdrop: toomanyrequests: You have reached your pull rate limit.", "rate-limited"),
        ('failed to "StartContainer" for "svc" with ErrImagePull: "failed to register layer: open /srv/x: no space left on device"', "no-space"),
        ("dial tcp: lookup registry.example.com on 10.96.0.10:53: no such host", "network"),
        ("Get https://registry.example.com/v2/: net/http: TLS handshake timeout", "network"),
        ("dial tcp 10.0.0.5:443: i/o timeout", "network"),
        ("dial tcp 10.0.0.5:5000: connect: connection refused", "network"),
        ('Failed to apply default image tag "Bad:Name": couldn\'t parse image reference "Bad:Name": invalid reference format', "invalid-name"),
    ],
)
def test_classify_message(message: str, category: str) -> None:
    classified = classify_message(message)
    assert classified is not None
    assert classified[0] == category


@pytest.mark.parametrize("message", ["Error: ErrImagePull", "Error: ImagePullBackOff", 'Back-off pulling image "nginx:1.25"'])
def test_summary_messages_have_no_cause(message: str) -> None:
    assert classify_message(message) is None


def test_classifier_prefers_specific_cause() -> None:
    events = [
        {"kind": "Event", "type": "Warning", "reason": "Failed", "involvedObject": {"kind": "Pod", "name": "p"}, "message": 'Failed to pull image "r.example.com/a:1": dial tcp: i/o timeout'},
        {"kind": "Event", "type": "Warning", "reason": "Failed", "involvedObject": {"kind": "Pod", "name": "p"}, "message": 'Failed to pull image "r.example.com/a:1": manifest unknown'},
    ]
    context = make_context("ImagePullFailedEvent", events[0], events)
    values = classify_image_pull(context, {})
    assert values["category"] == "not-found"
    assert values["evidence"] == "1"
    assert values["messages"] == "2"
    assert values["image"] == "r.example.com/a:1"
    assert values["registry"] == "r.example.com"


def test_classifier_reads_container_from_field_path() -> None:
    (event,) = load_case("01-image-tag-not-found.yaml")
    values = classify_image_pull(make_context("ImagePullNotFoundEvent", event, [event]), {})
    assert values["container"] == "registry"
    assert values["node"] == "ip-10-0-0-1.eu-west-1.compute.internal"
    assert values["source"] == "event"


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("nginx", "docker.io"),
        ("vendor-a/policy-enforcer:20.7", "docker.io"),
        ("quay.io/example-org/s3registry:v2.0.0-dev", "quay.io"),
        ("localhost/app:1", "localhost"),
        ("registry.local:5000/app@sha256:abc", "registry.local:5000"),
        ("", ""),
    ],
)
def test_image_registry(image: str, registry: str) -> None:
    assert image_registry(image) == registry


# Scheduling reasons


def test_parse_case_13_message() -> None:
    parsed = parse_scheduler_message("0/23 nodes are available: 1 node(s) had taints that the pod didn't tolerate, 22 node(s) didn't match node selector.")
    assert parsed is not None
    assert parsed["total"] == 23
    assert parsed["reasons"] == [(1, "node(s) had taints that the pod didn't tolerate", "taint"), (22, "node(s) didn't match node selector", "nodeSelector")]


def test_parse_taint_with_comma() -> None:
    parsed = parse_scheduler_message("0/1 nodes are available: 1 node(s) had taint {node.kubernetes.io/disk-pressure: }, that the pod didn't tolerate.")
    assert parsed is not None
    assert len(parsed["reasons"]) == 1
    assert parsed["taintKeys"] == ["node.kubernetes.io/disk-pressure"]


def test_parse_ignores_preemption() -> None:
    message = "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    parsed = parse_scheduler_message(message)
    assert parsed is not None
    assert parsed["reasons"] == [(3, "Insufficient cpu", "insufficient")]
    assert parsed["resources"] == ["cpu"]


def test_parse_other_message() -> None:
    assert parse_scheduler_message("pod has unbound immediate PersistentVolumeClaims") is None


# Templates


def test_template_escapes_and_fallbacks() -> None:
    problems: list[tuple[str, str]] = []
    template = parse_template("{{literal}} {a.x} {a.y|none} {b.z} {diagnosis.name}", "summary", {"a", "b"}, lambda path, problem: problems.append((path, problem)))
    assert problems == []
    findings = {"a": Finding("a", "p", "OK", {"x": "1"}), "b": Finding("b", "p", "FAILED", {}, "boom")}
    assert template.render(findings, Diagnosis(rule="R", name="web-1")) == "{literal} 1 none unknown web-1"


# Registry and entry points


def test_registry_rejects_taken_name() -> None:
    registry = PluginRegistry(BUILTIN_PLUGINS)
    impostor = type(BUILTIN_PLUGINS[0])(BUILTIN_PLUGINS[0].name, lambda context, inputs: {}, "elsewhere:impostor")
    with pytest.raises(Exception, match="is already registered by kdiag.rootcause.builtin.image_pull:classify_image_pull"):
        registry.register(impostor)


def test_entry_points_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kdiag_example_plugins.py").write_text(
        "def count_events(context, inputs):\n    return {'events': str(len(context.related.events))}\n", encoding="utf-8"
    )
    dist_info = tmp_path / "kdiag_example_plugins-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdiag-example-plugins\nVersion: 1.0\n", encoding="utf-8")
    (dist_info / "entry_points.txt").write_text(
        "[kdiag.plugins]\n"
        "event-counter = kdiag_example_plugins:count_events\n"
        "broken = kdiag_no_such_module:plugin\n"
        "image-pull-classifier = kdiag.rootcause.builtin.image_pull:classify_image_pull\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    registry = PluginRegistry.default()

    counter = registry.get("event-counter")
    assert counter is not None
    assert counter.reference == "kdiag_example_plugins:count_events"
    assert counter(DiagnosisContext(Diagnosis(rule="R"), {"kind": "Pod"}, Related(events=[{}, {}])), {}) == {"events": "2"}
    # A shipped plugin listed as an entry point too is the same plugin, not a conflict.
    assert "image-pull-classifier" not in registry.load_errors
    assert registry.get("image-pull-classifier") is classify_image_pull
    assert "broken" not in registry
    assert registry.load_errors["broken"].startswith("ModuleNotFoundError")
    sys.modules.pop("kdiag_example_plugins", None)


def test_builtin_references_resolve() -> None:
    # Worker processes and the kdiag.plugins entry points import plugins by these references.
    for builtin in BUILTIN_PLUGINS:
        assert resolve_reference(builtin.reference) is builtin


# Context and related objects


def test_related_of_event_pod() -> None:
    objects = load_case("04-image-pull-rate-limit.yaml")
    event = next(obj for obj in objects if obj.get("message", "").startswith("Failed to pull image"))
    related = related_from_objects(event, objects)
    assert related.involved is objects[0]
    assert [item["reason"] for item in related.events] == ["Failed", "Failed"]
    context = DiagnosisContext(Diagnosis(rule="R"), event, related)
    assert context.subject() is objects[0]


def test_subject_stub_without_involved() -> None:
    (event,) = load_case("01-image-tag-not-found.yaml")
    context = make_context("ImagePullNotFoundEvent", event, [event])
    assert context.subject() == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "registry-v1-j6noi", "namespace": "team-a-ci", "uid": "b5aab60b-c67d-11e5-accd-06606734e5a7"},
    }
    assert context.events() == [event]


def test_related_of_pod_with_owner_chain() -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop", "uid": "d1"}}
    replica_set = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "web-5d8f7", "namespace": "shop", "uid": "r1", "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "d1", "controller": True}]},
    }
    owner = [{"kind": "ReplicaSet", "name": "web-5d8f7", "uid": "r1", "controller": True}]
    pod = {
        "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "ownerReferences": owner},
        "spec": {
            "nodeName": "node-a",
            "serviceAccountName": "builder",
            "containers": [{"name": "web", "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "A"}}}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        },
    }
    sibling = {"kind": "Pod", "metadata": {"name": "web-2", "namespace": "shop", "ownerReferences": owner}, "spec": {"nodeName": "node-b"}}
    neighbour = {"kind": "Pod", "metadata": {"name": "db-1", "namespace": "shop"}, "spec": {"nodeName": "node-a"}}
    account = {"kind": "ServiceAccount", "metadata": {"name": "builder", "namespace": "shop"}, "imagePullSecrets": [{"name": "regcred"}]}
    secret = {"kind": "Secret", "metadata": {"name": "regcred", "namespace": "shop"}, "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e30="}}
    config_map = {"kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "shop"}, "data": {"A": "1"}}
    claim = {"kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "shop"}}
    nodes = [{"kind": "Node", "metadata": {"name": name}} for name in ("node-a", "node-b", "node-c")]
    objects = [deployment, replica_set, pod, sibling, neighbour, account, secret, config_map, claim, *nodes]

    related = related_from_objects(pod, objects)

    assert [item["metadata"]["name"] for item in related.owners] == ["web-5d8f7", "web"]
    assert related.node is nodes[0]
    assert [item["metadata"]["name"] for item in related.nodes] == ["node-b"]
    assert related.sibling_pods == (sibling,)
    assert related.node_pods == (neighbour,)
    assert related.service_accounts == (account,)
    assert related.secrets == ({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred", "namespace": "shop"}, "keys": [".dockerconfigjson"], "type": "kubernetes.io/dockerconfigjson"},)
    assert related.config_maps[0]["keys"] == ["A"]
    assert "data" not in related.config_maps[0]
    assert related.pvcs == (claim,)


def test_context_json_round_trip() -> None:
    objects = load_case("04-image-pull-rate-limit.yaml")
    context = make_context("ImagePullRateLimitedEvent", objects[4], objects, {"message": "x"})
    assert DiagnosisContext.from_json(context.to_json()) == context


def test_diagnosis_from_alert_event() -> None:
    ref = ObjectRef("prod", "v1", "Pod", "shop", "web-1", "uid-1", "42")
    entry = Entry("PodOOMKilled", ref, "firing", 1_000, 1_000, {"status.containerStatuses[name=web].lastState.terminated.reason": "OOMKilled"})
    diagnosis = Diagnosis.from_alert_event(AlertEvent("FIRING", entry))
    assert diagnosis.rule == "PodOOMKilled"
    assert diagnosis.cluster == "prod"
    assert diagnosis.name == "web-1"
    assert diagnosis.fired_at_ms == 1_000
    assert diagnosis.alert_id == entry.alert_id
    assert diagnosis.context == entry.context
