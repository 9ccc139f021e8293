"""The starter rule pack in rules/, on the corpus cases, the recorded history and hand-made objects."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kdiag.rules import RuleSet

RULES_DIR = Path(__file__).resolve().parents[3] / "rules"

CorpusLoader = Callable[[str], list[dict[str, Any]]]


def object_label(obj: dict[str, Any]) -> str:
    """Name an object for assertions: metadata.name, or for an Event without one, the object it is about."""
    name = (obj.get("metadata") or {}).get("name")
    if obj.get("kind") == "Event" and (name is None or "." in name):
        involved = obj.get("involvedObject") or {}
        return f"Event/{involved.get('kind')}/{involved.get('name')}"
    return f"{obj.get('kind')}/{name}"


def fired(rule_set: RuleSet, objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Return (rule name, object label) for every rule that matches one of the objects."""
    result: set[tuple[str, str]] = set()
    for obj in objects:
        for rule in rule_set.rules_for_kind(obj.get("kind")):
            if rule.evaluate(obj) is not None:
                result.add((rule.name, object_label(obj)))
    return result


def fired_rules(rule_set: RuleSet, obj: dict[str, Any]) -> set[str]:
    return {rule.name for rule in rule_set.rules_for_kind(obj.get("kind")) if rule.evaluate(obj) is not None}


def context_of(rule_set: RuleSet, rule_name: str, obj: dict[str, Any]) -> dict[str, str]:
    rule = rule_set.get(rule_name)
    assert rule is not None, f"{rule_name} is not in the pack"
    match = rule.evaluate(obj)
    assert match is not None, f"{rule_name} does not match {object_label(obj)}"
    return match.context


# The pack's whole output on every corpus case. An empty set means the pack stays quiet, either
# because nothing in the case is an anomaly the language can express (rules/README.md lists why)
# or because the objects are healthy.
CORPUS_EXPECTED: dict[str, set[tuple[str, str]]] = {
    "01-image-tag-not-found.yaml": set(),
    "02-image-pull-unauthorized.yaml": {("ImagePullFailedEvent", "Event/Pod/policy-enforcer-5888cf98bf-xzklp")},
    "04-image-pull-rate-limit.yaml": {("ImagePullFailedEvent", "Event/Pod/kafdrop-1-j4969")},
    "05-image-pull-no-space-left.yaml": set(),
    "07-oomkilled-low-memory-limit.yaml": {("PodOOMKilled", "Pod/memcached-operator-controller-manager-6d57f5fd7-gfnxw")},
    "08-istio-sidecar-not-ready.yaml": set(),
    "10-init-createcontainerconfigerror-secret-missing.yaml": {("PodInitCreateContainerConfigError", "Pod/sample-mychart-6bfc89db65-j9g9z")},
    "11-createcontainerconfigerror-secret-key-missing.yaml": set(),
    "13-failedscheduling-taint-and-nodeselector.yaml": {("FailedSchedulingEvent", "Event/Pod/node-admin")},
    "14-pvc-pending-no-storageclass.yaml": {("PVCPending", "PersistentVolumeClaim/hub-db-dir")},
    "16-namespace-terminating-discovery-failure.yaml": {
        ("NamespaceStuckTerminating", "Namespace/metrics"),
        ("NamespaceDeletionDiscoveryFailed", "Namespace/metrics"),
    },
    "17-service-terminating-lb-finalizer.yaml": {("ServiceStuckTerminating", "Service/ingress-nginx-controller")},
    "19-ingress-backend-service-missing.yaml": set(),
    "20-ingress-tls-secret-not-found.yaml": {("IngressSecretNotFoundEvent", "Event/Ingress/recommender-mltemplate")},
    "22-node-notready-pleg.yaml": {("NodeNotReady", "Node/hub-node-1")},
    "23-node-diskpressure.yaml": {("NodeDiskPressure", "Node/kubernetes-master")},
    "25-job-backofflimitexceeded.yaml": {("JobFailed", "Job/demo")},
    "26-deployment-progress-deadline-exceeded.yaml": {("DeploymentProgressDeadlineExceeded", "Deployment/app-gui")},
    "28-hpa-metrics-api-unavailable.yaml": {("HPAMetricsUnavailable", "HorizontalPodAutoscaler/worker")},
    "29-hpa-missing-cpu-request.yaml": {("HPAMetricsUnavailable", "HorizontalPodAutoscaler/nginx-hpa")},
}


# Pack structure


def test_pack_loads(starter_pack: RuleSet) -> None:
    assert len(starter_pack) >= 20
    expected_files = {"pods.yaml", "nodes.yaml", "workloads.yaml", "events.yaml", "storage.yaml", "terminating.yaml", "autoscaling.yaml"}
    assert {Path(rule.source).name for rule in starter_pack} == expected_files


def test_pack_rule_names_camel_case(starter_pack: RuleSet) -> None:
    for name in starter_pack.names:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", name), name


def test_pack_rules_have_comments() -> None:
    for path in sorted(RULES_DIR.glob("*.yaml")):
        previous = ""
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.fullmatch(r"[A-Za-z][A-Za-z0-9]*:\s*", line):
                assert previous.startswith("#"), f"{path.name}: rule {line.rstrip(':')} has no comment above it"
            previous = line


def test_pack_durations_in_range(starter_pack: RuleSet) -> None:
    for rule in starter_pack:
        assert 0 <= rule.duration_seconds <= 900, rule.name


# Corpus cases


def test_corpus_covers_every_case_file() -> None:
    corpus_dir = RULES_DIR.parent / "samples" / "corpus"
    assert {path.name for path in corpus_dir.glob("*.yaml")} == set(CORPUS_EXPECTED)


@pytest.mark.parametrize("case_file", sorted(CORPUS_EXPECTED))
def test_corpus_case(case_file: str, starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    assert fired(starter_pack, corpus_case(case_file)) == CORPUS_EXPECTED[case_file]


def test_image_pull_events_only_short_messages(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    events = corpus_case("02-image-pull-unauthorized.yaml")
    messages = [starter_pack.get("ImagePullFailedEvent").evaluate(event) for event in events]
    matched = [match.context["message"] for match in messages if match is not None]
    assert matched == ["Error: ErrImagePull", "Error: ImagePullBackOff"]


def test_oom_killed_context(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    (pod,) = corpus_case("07-oomkilled-low-memory-limit.yaml")
    context = context_of(starter_pack, "PodOOMKilled", pod)
    assert context == {"status.containerStatuses[name=container-1].lastState.terminated.reason": "OOMKilled"}


def test_init_container_config_error_context(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    pod = corpus_case("10-init-createcontainerconfigerror-secret-missing.yaml")[0]
    context = context_of(starter_pack, "PodInitCreateContainerConfigError", pod)
    assert context == {"status.initContainerStatuses[name=init-myservice].state.waiting.reason": "CreateContainerConfigError"}


def test_failed_scheduling_context_has_message(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    event = corpus_case("13-failedscheduling-taint-and-nodeselector.yaml")[1]
    context = context_of(starter_pack, "FailedSchedulingEvent", event)
    assert context["reason"] == "FailedScheduling"
    assert "had taints that the pod didn't tolerate" in context["message"]


def test_namespace_discovery_failure_context(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    (namespace,) = corpus_case("16-namespace-terminating-discovery-failure.yaml")
    assert context_of(starter_pack, "NamespaceDeletionDiscoveryFailed", namespace) == {
        "status.conditions[type=NamespaceDeletionDiscoveryFailure].status": "True"
    }
    assert context_of(starter_pack, "NamespaceStuckTerminating", namespace) == {"metadata.deletionTimestamp": "2020-07-31T23:19:14Z"}


def test_job_failed_context_has_reason(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    job = corpus_case("25-job-backofflimitexceeded.yaml")[0]
    assert context_of(starter_pack, "JobFailed", job) == {
        "status.conditions[type=Failed].status": "True",
        "status.conditions[type=Failed].reason": "BackoffLimitExceeded",
    }


def test_progress_deadline_despite_available(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    (deployment,) = corpus_case("26-deployment-progress-deadline-exceeded.yaml")
    available = [condition for condition in deployment["status"]["conditions"] if condition["type"] == "Available"]
    assert available[0]["status"] == "True"
    context = context_of(starter_pack, "DeploymentProgressDeadlineExceeded", deployment)
    assert context["status.conditions[type=Progressing].reason"] == "ProgressDeadlineExceeded"


def test_hpa_context_has_reason(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    hpa = corpus_case("28-hpa-metrics-api-unavailable.yaml")[0]
    context = context_of(starter_pack, "HPAMetricsUnavailable", hpa)
    assert context["status.conditions[type=ScalingActive].reason"] == "FailedGetResourceMetric"


# Near misses


def test_node_not_ready_without_pressure(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    (node,) = corpus_case("22-node-notready-pleg.yaml")
    assert fired_rules(starter_pack, node) == {"NodeNotReady"}


def test_healthy_node_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    node = copy.deepcopy(corpus_case("22-node-notready-pleg.yaml")[0])
    for condition in node["status"]["conditions"]:
        if condition["type"] == "Ready":
            condition.update(status="True", reason="KubeletReady", message="kubelet is posting ready status")
    node["status"]["conditions"].append({"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID"})
    assert fired_rules(starter_pack, node) == set()


def test_deployment_new_replica_set_available_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    # The same Deployment before the stalled rollout, as the case's earlier snapshot describes it.
    deployment = copy.deepcopy(corpus_case("26-deployment-progress-deadline-exceeded.yaml")[0])
    deployment["status"]["conditions"][1].update(
        status="True",
        reason="NewReplicaSetAvailable",
        message='ReplicaSet "app-gui-6cbfc8d8bd" has successfully progressed.',
    )
    deployment["status"].update(replicas=1, updatedReplicas=1, unavailableReplicas=0)
    assert fired_rules(starter_pack, deployment) == set()


def test_deployment_progressing_false_other_reason_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    deployment = copy.deepcopy(corpus_case("26-deployment-progress-deadline-exceeded.yaml")[0])
    deployment["status"]["conditions"][1]["reason"] = "ReplicaSetUpdated"
    assert fired_rules(starter_pack, deployment) == set()


def test_running_pod_of_old_replica_set_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    running_pod = corpus_case("11-createcontainerconfigerror-secret-key-missing.yaml")[0]
    assert running_pod["status"]["phase"] == "Running"
    assert fired_rules(starter_pack, running_pod) == set()


def test_job_complete_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    job = copy.deepcopy(corpus_case("25-job-backofflimitexceeded.yaml")[0])
    job["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    assert fired_rules(starter_pack, job) == set()


def test_hpa_scaling_active_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    hpa = copy.deepcopy(corpus_case("28-hpa-metrics-api-unavailable.yaml")[0])
    hpa["status"]["conditions"][1].update(status="True", reason="ValidMetricFound")
    assert fired_rules(starter_pack, hpa) == set()


def test_hpa_scaling_disabled_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    # ScalingActive=False with ScalingDisabled means the target was scaled to zero on purpose.
    hpa = copy.deepcopy(corpus_case("28-hpa-metrics-api-unavailable.yaml")[0])
    hpa["status"]["conditions"][1].update(status="False", reason="ScalingDisabled")
    assert fired_rules(starter_pack, hpa) == set()


def test_service_without_deletion_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    service = copy.deepcopy(corpus_case("17-service-terminating-lb-finalizer.yaml")[0])
    del service["metadata"]["deletionTimestamp"]
    assert fired_rules(starter_pack, service) == set()


def test_image_pull_normal_events_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    events = corpus_case("04-image-pull-rate-limit.yaml")
    normal = [event for event in events if event.get("type") == "Normal"]
    assert normal
    for event in normal:
        assert fired_rules(starter_pack, event) == set()


# Recorded history


@pytest.mark.parametrize(
    ("workflow", "step", "rules"),
    [
        ("pod/crashLoopBackoff", -1, {"PodCrashLoopBackOff", "PodContainerNotReady"}),
        ("pod/containerTerminatedSuccess", -1, {"PodCrashLoopBackOff", "PodContainerNotReady"}),
        ("pod/imagePullError", 3, {"PodImagePullError"}),
        ("pod/imagePullError", 4, {"PodImagePullError"}),
        ("pod/imagePullErrorResolved", 2, {"PodImagePullError", "PodStuckTerminating"}),
        ("pod/unscheduled", -1, {"PodUnschedulable"}),
        ("job/backoffLimitExceeded", -1, {"JobFailed"}),
        ("job/deadlineExceeded", -1, {"JobFailed"}),
    ],
)
def test_history_anomalies(workflow: str, step: int, rules: set[str], starter_pack: RuleSet, history: dict[str, list[dict[str, Any]]]) -> None:
    assert fired_rules(starter_pack, history[workflow][step]) == rules


@pytest.mark.parametrize(
    ("workflow", "step"),
    [
        ("pod/createSuccess", -1),
        ("pod/imagePullErrorResolved", -1),
        ("pod/containerTerminatedSuccessRestartNever", -1),
        ("pod/scheduled", -1),
        ("job/succeeded", -1),
        ("job/backoffLimitResolved", -1),
        ("job/running", -1),
    ],
)
def test_history_healthy_states_quiet(workflow: str, step: int, starter_pack: RuleSet, history: dict[str, list[dict[str, Any]]]) -> None:
    assert fired_rules(starter_pack, history[workflow][step]) == set()


def test_history_deadline_exceeded_reason(starter_pack: RuleSet, history: dict[str, list[dict[str, Any]]]) -> None:
    context = context_of(starter_pack, "JobFailed", history["job/deadlineExceeded"][-1])
    assert context["status.conditions[type=Failed].reason"] == "DeadlineExceeded"


def test_history_crash_loop_names_container(starter_pack: RuleSet, history: dict[str, list[dict[str, Any]]]) -> None:
    context = context_of(starter_pack, "PodCrashLoopBackOff", history["pod/crashLoopBackoff"][-1])
    assert context == {"status.containerStatuses[name=crash].state.waiting.reason": "CrashLoopBackOff"}


def test_history_every_state_evaluates(starter_pack: RuleSet, history: dict[str, list[dict[str, Any]]]) -> None:
    states = [obj for objects in history.values() for obj in objects]
    assert len(states) == 157
    for obj in states:
        for rule in starter_pack.rules_for_kind(obj["kind"]):
            rule.evaluate(obj)


# Hand-made objects for the rules that no corpus case or recorded state exercises.


def pod_with_status(name: str, **status: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"}, "status": status}


def waiting(name: str, reason: str) -> dict[str, Any]:
    return {"name": name, "ready": False, "restartCount": 3, "state": {"waiting": {"reason": reason}}}


def condition_object(kind: str, condition_type: str, status: str, reason: str = "") -> dict[str, Any]:
    condition = {"type": condition_type, "status": status}
    if reason:
        condition["reason"] = reason
    return {"kind": kind, "metadata": {"name": "example"}, "status": {"conditions": [condition]}}


def deleting(kind: str) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": "example", "deletionTimestamp": "2024-05-01T10:00:00Z", "finalizers": ["example.com/cleanup"]}}


HAND_MADE_CASES: list[tuple[str, dict[str, Any], set[str]]] = [
    ("init image pull", pod_with_status("a", phase="Pending", initContainerStatuses=[waiting("fetch", "ImagePullBackOff")]), {"PodInitImagePullError"}),
    ("init crash loop", pod_with_status("b", phase="Pending", initContainerStatuses=[waiting("migrate", "CrashLoopBackOff")]), {"PodInitCrashLoopBackOff"}),
    ("config error", pod_with_status("c", phase="Pending", containerStatuses=[waiting("api", "CreateContainerConfigError")]), {"PodCreateContainerConfigError"}),
    (
        "evicted",
        pod_with_status("d", phase="Failed", reason="Evicted", message="The node was low on resource: memory."),
        {"PodEvicted"},
    ),
    (
        "sidecar not ready",
        pod_with_status(
            "e",
            phase="Running",
            containerStatuses=[{"name": "nginx", "ready": True}, {"name": "istio-proxy", "ready": False, "state": {"running": {}}}],
        ),
        {"PodContainerNotReady"},
    ),
    ("node status unknown", condition_object("Node", "Ready", "Unknown", "NodeStatusUnknown"), {"NodeStatusUnknown"}),
    ("node memory pressure", condition_object("Node", "MemoryPressure", "True", "KubeletHasInsufficientMemory"), {"NodeMemoryPressure"}),
    ("node pid pressure", condition_object("Node", "PIDPressure", "True", "KubeletHasInsufficientPID"), {"NodePIDPressure"}),
    ("replica failure", condition_object("Deployment", "ReplicaFailure", "True", "FailedCreate"), {"DeploymentReplicaFailure"}),
    (
        "namespace content failure",
        condition_object("Namespace", "NamespaceDeletionContentFailure", "True", "ContentDeletionFailed"),
        {"NamespaceDeletionContentFailed"},
    ),
    ("pvc lost", {"kind": "PersistentVolumeClaim", "metadata": {"name": "data"}, "status": {"phase": "Lost"}}, {"PVCLost"}),
    ("pv failed", {"kind": "PersistentVolume", "metadata": {"name": "pv-1"}, "status": {"phase": "Failed"}}, {"PVFailed"}),
    ("pod deleting", deleting("Pod"), {"PodStuckTerminating"}),
    ("pvc deleting", deleting("PersistentVolumeClaim"), {"PVCStuckTerminating"}),
    ("pv deleting", deleting("PersistentVolume"), {"PVStuckTerminating"}),
    ("ingress deleting", deleting("Ingress"), {"IngressStuckTerminating"}),
]


@pytest.mark.parametrize(("obj", "rules"), [case[1:] for case in HAND_MADE_CASES], ids=[case[0] for case in HAND_MADE_CASES])
def test_hand_made_anomalies(obj: dict[str, Any], rules: set[str], starter_pack: RuleSet) -> None:
    assert fired_rules(starter_pack, obj) == rules


def test_unready_container_of_deleting_pod_quiet(starter_pack: RuleSet) -> None:
    pod = pod_with_status("f", phase="Running", containerStatuses=[{"name": "nginx", "ready": False}])
    pod["metadata"]["deletionTimestamp"] = "2024-05-01T10:00:00Z"
    assert fired_rules(starter_pack, pod) == {"PodStuckTerminating"}


def test_namespace_content_failure_false_quiet(starter_pack: RuleSet) -> None:
    namespace = condition_object("Namespace", "NamespaceDeletionContentFailure", "False", "ContentDeleted")
    assert fired_rules(starter_pack, namespace) == set()


def test_every_pack_rule_exercised(
    starter_pack: RuleSet, corpus_case: CorpusLoader, history: dict[str, list[dict[str, Any]]]
) -> None:
    objects = [obj for case_file in CORPUS_EXPECTED for obj in corpus_case(case_file)]
    objects += [obj for states in history.values() for obj in states]
    objects += [case[1] for case in HAND_MADE_CASES]
    exercised = {rule_name for rule_name, _ in fired(starter_pack, objects)}
    assert set(starter_pack.names) - exercised == set()
