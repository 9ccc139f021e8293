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


# The pack's whole output on every corpus case, evaluated without a resolver, as the worker does.
# An empty set means the pack stays quiet, either because the case needs rules that read a second
# object (rules/references.yaml, tested further down with a resolver) or because the objects are
# healthy.
CORPUS_EXPECTED: dict[str, set[tuple[str, str]]] = {
    "01-image-tag-not-found.yaml": {("ImagePullNotFoundEvent", "Event/Pod/registry-v1-j6noi")},
    "02-image-pull-unauthorized.yaml": {
        ("ImagePullFailedEvent", "Event/Pod/policy-enforcer-5888cf98bf-xzklp"),
        ("ImagePullUnauthorizedEvent", "Event/Pod/policy-enforcer-5888cf98bf-xzklp"),
    },
    "04-image-pull-rate-limit.yaml": {
        ("ImagePullFailedEvent", "Event/Pod/kafdrop-1-j4969"),
        ("ImagePullRateLimitedEvent", "Event/Pod/kafdrop-1-j4969"),
    },
    "05-image-pull-no-space-left.yaml": {("ImagePullNoSpaceLeftEvent", "Event/Pod/unknown-pod-name")},
    "07-oomkilled-low-memory-limit.yaml": {("PodOOMKilled", "Pod/memcached-operator-controller-manager-6d57f5fd7-gfnxw")},
    "08-istio-sidecar-not-ready.yaml": {("ReadinessProbeFailedEvent", "Event/Pod/nginx")},
    "10-init-createcontainerconfigerror-secret-missing.yaml": {
        ("PodInitCreateContainerConfigError", "Pod/sample-mychart-6bfc89db65-j9g9z"),
        ("PodSecretNotFoundEvent", "Event/Pod/sample-mychart-6bfc89db65-j9g9z"),
    },
    "11-createcontainerconfigerror-secret-key-missing.yaml": {("PodSecretKeyNotFoundEvent", "Event/Pod/workload-demo-76f5f7dc46-vfldl")},
    "13-failedscheduling-taint-and-nodeselector.yaml": {
        ("FailedSchedulingEvent", "Event/Pod/node-admin"),
        ("FailedSchedulingUntoleratedTaintEvent", "Event/Pod/node-admin"),
    },
    "14-pvc-pending-no-storageclass.yaml": {
        ("PVCPending", "PersistentVolumeClaim/hub-db-dir"),
        ("PVCPendingNoStorageClass", "PersistentVolumeClaim/hub-db-dir"),
    },
    "16-namespace-terminating-discovery-failure.yaml": {
        ("NamespaceStuckTerminating", "Namespace/metrics"),
        ("NamespaceDeletionDiscoveryFailed", "Namespace/metrics"),
    },
    "17-service-terminating-lb-finalizer.yaml": {
        ("ServiceStuckTerminating", "Service/ingress-nginx-controller"),
        ("ServiceLoadBalancerCleanupStuck", "Service/ingress-nginx-controller"),
    },
    "19-ingress-backend-service-missing.yaml": set(),
    "20-ingress-tls-secret-not-found.yaml": {("IngressSecretNotFoundEvent", "Event/Ingress/recommender-mltemplate")},
    "22-node-notready-pleg.yaml": {("NodeNotReady", "Node/hub-node-1")},
    "23-node-diskpressure.yaml": {("NodeDiskPressure", "Node/kubernetes-master")},
    "25-job-backofflimitexceeded.yaml": {("JobFailed", "Job/demo")},
    "26-deployment-progress-deadline-exceeded.yaml": {("DeploymentProgressDeadlineExceeded", "Deployment/app-gui")},
    "28-hpa-metrics-api-unavailable.yaml": {
        ("HPAMetricsUnavailable", "HorizontalPodAutoscaler/worker"),
        ("HPAResourceMetricsAPIUnavailable", "HorizontalPodAutoscaler/worker"),
    },
    "29-hpa-missing-cpu-request.yaml": {
        ("HPAMetricsUnavailable", "HorizontalPodAutoscaler/nginx-hpa"),
        ("HPATargetMissingResourceRequest", "HorizontalPodAutoscaler/nginx-hpa"),
    },
}


# Pack structure


def test_pack_loads(starter_pack: RuleSet) -> None:
    assert len(starter_pack) >= 20
    expected_files = {
        "pods.yaml",
        "nodes.yaml",
        "workloads.yaml",
        "events.yaml",
        "storage.yaml",
        "terminating.yaml",
        "autoscaling.yaml",
        "references.yaml",
    }
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
    (
        "configmap not found",
        {
            "kind": "Event",
            "type": "Warning",
            "reason": "Failed",
            "involvedObject": {"kind": "Pod", "name": "api-0"},
            "message": 'Error: configmap "api-settings" not found',
        },
        {"PodConfigMapNotFoundEvent"},
    ),
    (
        "configmap key not found",
        {
            "kind": "Event",
            "type": "Warning",
            "reason": "Failed",
            "involvedObject": {"kind": "Pod", "name": "api-0"},
            "message": "Error: couldn't find key LOG_LEVEL in ConfigMap shop/api-settings",
        },
        {"PodConfigMapKeyNotFoundEvent"},
    ),
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
    # Rules with reference conditions match only with a resolver; test_reference_rules_exercised covers them.
    field_rules = {rule.name for rule in starter_pack if not rule.uses_references}
    assert field_rules - exercised == set()


# Causes read from Event messages, with the traps of samples/corpus/EXPECTED.md


def warning_event(reason: str, message: str, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "type": "Warning",
        "reason": reason,
        "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": "shop"},
        "message": message,
        **fields,
    }


def test_tag_not_found_despite_credentials_phrase(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    (event,) = corpus_case("01-image-tag-not-found.yaml")
    assert "no credentials" in event["message"]
    assert fired_rules(starter_pack, event) == {"ImagePullNotFoundEvent"}
    assert "Tag v2.0.0-dev not found" in context_of(starter_pack, "ImagePullNotFoundEvent", event)["message"]


def test_unauthorized_messages_classified_as_auth(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    events = corpus_case("02-image-pull-unauthorized.yaml")
    long_messages = [event for event in events if str(event.get("message", "")).startswith("Failed to pull image")]
    assert len(long_messages) == 2
    for event in long_messages:
        assert fired_rules(starter_pack, event) == {"ImagePullUnauthorizedEvent"}


def test_rate_limit_message_not_not_found(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    # The message contains "Error reading manifest", which does not mean that the manifest is missing.
    event = corpus_case("04-image-pull-rate-limit.yaml")[4]
    assert "reading manifest" in event["message"]
    assert fired_rules(starter_pack, event) == {"ImagePullRateLimitedEvent"}


def test_no_space_left_in_failed_sync(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    for event in corpus_case("05-image-pull-no-space-left.yaml"):
        assert event["reason"] == "FailedSync"
        assert fired_rules(starter_pack, event) == {"ImagePullNoSpaceLeftEvent"}


@pytest.mark.parametrize(
    ("message", "rules"),
    [
        (
            'Failed to pull image "nginx:nonexist": rpc error: code = NotFound desc = failed to pull and unpack image '
            '"docker.io/library/nginx:nonexist": failed to resolve reference "docker.io/library/nginx:nonexist": '
            "docker.io/library/nginx:nonexist: not found",
            {"ImagePullNotFoundEvent"},
        ),
        (
            'Failed to pull image "nginx:nonexist": rpc error: code = Unknown desc = Error response from daemon: '
            "manifest for nginx:nonexist not found: manifest unknown: manifest unknown",
            {"ImagePullNotFoundEvent"},
        ),
        (
            'Failed to pull image "registry.example.com/team/api:1.2": rpc error: code = Unknown desc = failed to '
            'pull and unpack image "registry.example.com/team/api:1.2": failed to resolve reference '
            '"registry.example.com/team/api:1.2": unexpected status code [manifests 1.2]: 401 Unauthorized',
            {"ImagePullUnauthorizedEvent"},
        ),
        (
            'Failed to pull image "nginx:1.25": rpc error: code = Unknown desc = failed to pull and unpack image: '
            "429 Too Many Requests - Server message: toomanyrequests: You have reached your pull rate limit",
            {"ImagePullRateLimitedEvent"},
        ),
        (
            'Failed to pull image "big/image:1": rpc error: code = Unknown desc = failed to extract layer: '
            "write /var/lib/containerd/tmp/layer: no space left on device",
            {"ImagePullNoSpaceLeftEvent"},
        ),
        ('Failed to pull image "nginx:1.25": rpc error: code = DeadlineExceeded desc = context deadline exceeded', set()),
        ("Error: ErrImagePull", {"ImagePullFailedEvent"}),
    ],
    ids=["containerd not found", "docker manifest unknown", "401", "429", "extract no space", "timeout", "summary"],
)
def test_image_pull_causes(message: str, rules: set[str], starter_pack: RuleSet) -> None:
    assert fired_rules(starter_pack, warning_event("Failed", message)) == rules


def test_image_pull_cause_needs_pod_event(starter_pack: RuleSet) -> None:
    event = warning_event("Failed", "Failed to pull image: toomanyrequests")
    event["involvedObject"]["kind"] = "Node"
    assert fired_rules(starter_pack, event) == set()


def test_image_pull_cause_normal_event_quiet(starter_pack: RuleSet) -> None:
    event = warning_event("Failed", "Failed to pull image: manifest unknown")
    event["type"] = "Normal"
    assert fired_rules(starter_pack, event) == set()


def test_no_space_left_outside_image_pull_quiet(starter_pack: RuleSet) -> None:
    event = warning_event("FailedMount", "MountVolume.SetUp failed for volume data: write /data: no space left on device")
    assert fired_rules(starter_pack, event) == set()


def test_readiness_probe_event_fires(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    event = corpus_case("08-istio-sidecar-not-ready.yaml")[-1]
    context = context_of(starter_pack, "ReadinessProbeFailedEvent", event)
    assert context["message"].startswith("Readiness probe failed: ")


@pytest.mark.parametrize(
    ("message", "count"),
    [
        ("Liveness probe failed: HTTP probe failed with statuscode: 500", 14),
        ("Startup probe failed: dial tcp 10.0.0.6:8080: connect: connection refused", 14),
        ('Readiness probe failed: Get "http://10.0.0.6:15021/healthz/ready": connection refused', 1),
        ('Readiness probe failed: Get "http://10.0.0.6:15021/healthz/ready": connection refused', None),
    ],
    ids=["liveness", "startup", "first failure", "no count"],
)
def test_readiness_probe_near_misses_quiet(message: str, count: int | None, starter_pack: RuleSet) -> None:
    event = warning_event("Unhealthy", message)
    if count is not None:
        event["count"] = count
    assert fired_rules(starter_pack, event) == set()


def test_secret_missing_not_key_missing(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    event = corpus_case("10-init-createcontainerconfigerror-secret-missing.yaml")[-1]
    assert "type" not in event
    assert "reason" not in event
    assert fired_rules(starter_pack, event) == {"PodSecretNotFoundEvent"}


def test_key_missing_not_secret_missing(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    events = corpus_case("11-createcontainerconfigerror-secret-key-missing.yaml")
    failed = [event for event in events if event.get("reason") == "Failed"]
    assert len(failed) == 1
    assert fired_rules(starter_pack, failed[0]) == {"PodSecretKeyNotFoundEvent"}
    pulled = [event for event in events if event.get("reason") == "Pulled"]
    assert fired_rules(starter_pack, pulled[0]) == set()


def test_secret_volume_not_found_fires(starter_pack: RuleSet) -> None:
    event = warning_event("FailedMount", 'MountVolume.SetUp failed for volume "certs" : secret "web-tls" not found')
    assert fired_rules(starter_pack, event) == {"PodSecretNotFoundEvent"}


def test_newer_taint_message_fires(starter_pack: RuleSet) -> None:
    message = "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 node(s) didn't match Pod's node affinity/selector."
    assert fired_rules(starter_pack, warning_event("FailedScheduling", message)) == {
        "FailedSchedulingEvent",
        "FailedSchedulingUntoleratedTaintEvent",
    }


def test_insufficient_cpu_not_taint(starter_pack: RuleSet) -> None:
    message = "0/3 nodes are available: 3 Insufficient cpu."
    assert fired_rules(starter_pack, warning_event("FailedScheduling", message)) == {"FailedSchedulingEvent"}


# New rules on object state


def test_pvc_with_storage_class_not_no_class_rule(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    claim = copy.deepcopy(corpus_case("14-pvc-pending-no-storageclass.yaml")[0])
    claim["spec"]["storageClassName"] = "standard"
    assert fired_rules(starter_pack, claim) == {"PVCPending"}
    claim["spec"]["storageClassName"] = ""
    # "" requests a volume without a class, which is a choice and not a missing default class.
    assert fired_rules(starter_pack, claim) == {"PVCPending"}


def test_pvc_with_beta_annotation_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    claim = copy.deepcopy(corpus_case("14-pvc-pending-no-storageclass.yaml")[0])
    claim["metadata"]["annotations"] = {"volume.beta.kubernetes.io/storage-class": "fast"}
    assert fired_rules(starter_pack, claim) == {"PVCPending"}


def test_pvc_bound_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    claim = copy.deepcopy(corpus_case("14-pvc-pending-no-storageclass.yaml")[0])
    claim["status"]["phase"] = "Bound"
    assert fired_rules(starter_pack, claim) == set()


def test_service_other_finalizer_not_lb_rule(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    service = copy.deepcopy(corpus_case("17-service-terminating-lb-finalizer.yaml")[0])
    service["metadata"]["finalizers"] = ["example.com/cleanup"]
    assert fired_rules(starter_pack, service) == {"ServiceStuckTerminating"}


def test_service_lb_finalizer_without_deletion_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    # Every LoadBalancer Service carries the finalizer while it exists.
    service = copy.deepcopy(corpus_case("17-service-terminating-lb-finalizer.yaml")[0])
    del service["metadata"]["deletionTimestamp"]
    assert fired_rules(starter_pack, service) == set()


def test_lb_cleanup_context_names_finalizer(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    (service,) = corpus_case("17-service-terminating-lb-finalizer.yaml")
    context = context_of(starter_pack, "ServiceLoadBalancerCleanupStuck", service)
    assert context == {"metadata.finalizers[0]": "service.kubernetes.io/load-balancer-cleanup"}


def test_hpa_causes_not_swapped(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    metrics_api = corpus_case("28-hpa-metrics-api-unavailable.yaml")[0]
    missing_request = corpus_case("29-hpa-missing-cpu-request.yaml")[1]
    assert "HPATargetMissingResourceRequest" not in fired_rules(starter_pack, metrics_api)
    assert "HPAResourceMetricsAPIUnavailable" not in fired_rules(starter_pack, missing_request)


def test_hpa_transient_events_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    # "no metrics returned" and "pods might be unready" are transient and not the root cause.
    events = [obj for obj in corpus_case("29-hpa-missing-cpu-request.yaml") if obj["kind"] == "Event"]
    assert len(events) == 5
    for event in events:
        assert fired_rules(starter_pack, event) == set()


# durationFrom in the pack


@pytest.mark.parametrize(
    ("case_file", "index", "rule_name", "start"),
    [
        ("22-node-notready-pleg.yaml", 0, "NodeNotReady", "2019-06-02T21:39:37Z"),
        ("23-node-diskpressure.yaml", 0, "NodeDiskPressure", "2020-08-04T17:32:06Z"),
        ("17-service-terminating-lb-finalizer.yaml", 0, "ServiceStuckTerminating", "2021-10-07T10:29:31Z"),
        ("17-service-terminating-lb-finalizer.yaml", 0, "ServiceLoadBalancerCleanupStuck", "2021-10-07T10:29:31Z"),
        ("16-namespace-terminating-discovery-failure.yaml", 0, "NamespaceDeletionDiscoveryFailed", "2020-07-31T23:19:19Z"),
        ("14-pvc-pending-no-storageclass.yaml", 0, "PVCPending", "2018-08-27T17:27:32Z"),
    ],
)
def test_pack_active_since(case_file: str, index: int, rule_name: str, start: str, starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    from kdiag.rules import parse_rfc3339_ms

    obj = corpus_case(case_file)[index]
    rule = starter_pack.get(rule_name)
    assert rule is not None
    assert rule.active_since_ms(obj) == parse_rfc3339_ms(start)


def test_pack_active_since_absent(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    # Case 28 has no condition times, so the worker falls back to the first matching change.
    hpa = corpus_case("28-hpa-metrics-api-unavailable.yaml")[0]
    assert starter_pack.get("HPAMetricsUnavailable").active_since_ms(hpa) is None
    assert starter_pack.get("PodOOMKilled").active_since_ms(hpa) is None


# Reference rules, evaluated with a resolver over the objects of the same corpus case


def corpus_resolver(objects: list[dict[str, Any]]) -> Callable[[str, str, str], dict[str, Any] | None]:
    """Build a resolver over a case's objects. Objects without a namespace are in default, as kubectl assumes."""
    index: dict[tuple[str, str, str], dict[str, Any]] = {}
    for obj in objects:
        metadata = obj.get("metadata") or {}
        namespace = metadata.get("namespace") or ("" if obj["kind"] in ("Node", "StorageClass", "Namespace") else "default")
        index[(obj["kind"], namespace, metadata.get("name"))] = obj

    def resolve(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return index.get((kind, namespace, name))

    return resolve


def fired_with_references(rule_set: RuleSet, objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    resolve = corpus_resolver(objects)
    result: set[tuple[str, str]] = set()
    for obj in objects:
        for rule in rule_set.rules_for_kind(obj.get("kind")):
            if rule.uses_references and rule.evaluate(obj, resolve) is not None:
                result.add((rule.name, object_label(obj)))
    return result


REFERENCE_CORPUS_EXPECTED: dict[str, set[tuple[str, str]]] = {
    "19-ingress-backend-service-missing.yaml": {("IngressBackendServiceMissing", "Ingress/example-ingress")},
    "20-ingress-tls-secret-not-found.yaml": {("IngressTLSSecretNotTLS", "Ingress/recommender-mltemplate")},
    "29-hpa-missing-cpu-request.yaml": {("HPATargetWithoutCPURequest", "HorizontalPodAutoscaler/nginx-hpa")},
    "14-pvc-pending-no-storageclass.yaml": set(),
}


@pytest.mark.parametrize("case_file", sorted(REFERENCE_CORPUS_EXPECTED))
def test_reference_rules_on_corpus(case_file: str, starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    assert fired_with_references(starter_pack, corpus_case(case_file)) == REFERENCE_CORPUS_EXPECTED[case_file]


def test_reference_rules_need_resolver(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    (ingress,) = corpus_case("19-ingress-backend-service-missing.yaml")
    rule = starter_pack.get("IngressBackendServiceMissing")
    assert rule.uses_references
    assert rule.evaluate(ingress) is None


def test_ingress_default_backend_trap(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    (ingress,) = corpus_case("19-ingress-backend-service-missing.yaml")
    context = starter_pack.get("IngressBackendServiceMissing").evaluate(ingress, corpus_resolver([]))
    assert context is not None
    assert context.context == {"references.services": "Service default/web"}
    assert "default-http-backend" not in str(context.context)


def test_ingress_tls_secret_of_type_tls_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    objects = copy.deepcopy(corpus_case("20-ingress-tls-secret-not-found.yaml"))
    objects[1]["type"] = "kubernetes.io/tls"
    assert fired_with_references(starter_pack, objects) == set()


def test_ingress_tls_secret_absent_fires_missing(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    objects = [obj for obj in corpus_case("20-ingress-tls-secret-not-found.yaml") if obj["kind"] != "Secret"]
    assert fired_with_references(starter_pack, objects) == {("IngressTLSSecretMissing", "Ingress/recommender-mltemplate")}


def test_hpa_target_with_cpu_request_quiet(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    objects = copy.deepcopy(corpus_case("29-hpa-missing-cpu-request.yaml"))
    objects[0]["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "100m"}}
    assert fired_with_references(starter_pack, objects) == set()


def pod_reading_secret(name: str, key: str, optional: bool = False) -> dict[str, Any]:
    """The pod of case 10 with the env var that its Helm values gave it (the dump cut the Environment section)."""
    env = {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}
    if optional:
        env["valueFrom"]["secretKeyRef"]["optional"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sample-mychart-6bfc89db65-j9g9z", "namespace": "default"},
        "spec": {"initContainers": [{"name": "init-myservice", "image": "busybox", "env": [env]}], "containers": [{"name": "app"}]},
        "status": {"phase": "Pending"},
    }


def test_secret_missing_versus_key_missing(starter_pack: RuleSet) -> None:
    pod = pod_reading_secret("my-password", "VALUE")
    secret = {"kind": "Secret", "metadata": {"name": "my-password", "namespace": "default"}, "data": {"OTHER": "eA=="}}
    assert fired_with_references(starter_pack, [pod]) == {("PodSecretMissing", "Pod/sample-mychart-6bfc89db65-j9g9z")}
    assert fired_with_references(starter_pack, [pod, secret]) == {("PodSecretKeyMissing", "Pod/sample-mychart-6bfc89db65-j9g9z")}
    secret["data"]["VALUE"] = "eA=="
    assert fired_with_references(starter_pack, [pod, secret]) == set()


def test_optional_secret_missing_quiet(starter_pack: RuleSet) -> None:
    assert fired_with_references(starter_pack, [pod_reading_secret("my-password", "VALUE", optional=True)]) == set()


def test_service_selecting_no_pods(starter_pack: RuleSet) -> None:
    service = {"kind": "Service", "metadata": {"name": "web", "namespace": "shop"}, "spec": {"selector": {"app": "web"}, "type": "ClusterIP"}}
    empty_endpoints = {"kind": "Endpoints", "metadata": {"name": "web", "namespace": "shop"}}
    ready_endpoints = {**empty_endpoints, "subsets": [{"addresses": [{"ip": "10.0.0.7"}], "ports": [{"port": 80}]}]}
    assert fired_with_references(starter_pack, [service, empty_endpoints]) == {("ServiceSelectsNoPods", "Service/web")}
    assert fired_with_references(starter_pack, [service, ready_endpoints]) == set()
    without_selector = copy.deepcopy(service)
    del without_selector["spec"]["selector"]
    assert fired_with_references(starter_pack, [without_selector, empty_endpoints]) == set()


def test_pvc_storage_class_missing(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    claim = copy.deepcopy(corpus_case("14-pvc-pending-no-storageclass.yaml")[0])
    claim["spec"]["storageClassName"] = "fast-ssd"
    storage_class = {"kind": "StorageClass", "metadata": {"name": "fast-ssd"}, "provisioner": "ebs.csi.aws.com"}
    assert fired_with_references(starter_pack, [claim]) == {("PVCStorageClassMissing", "PersistentVolumeClaim/hub-db-dir")}
    assert fired_with_references(starter_pack, [claim, storage_class]) == set()


def test_reference_rules_exercised(starter_pack: RuleSet, corpus_case: CorpusLoader) -> None:
    fired_names = {name for case_file in REFERENCE_CORPUS_EXPECTED for name, _ in fired_with_references(starter_pack, corpus_case(case_file))}
    secret = {"kind": "Secret", "metadata": {"name": "my-password", "namespace": "default"}, "data": {}}
    fired_names |= {name for name, _ in fired_with_references(starter_pack, [pod_reading_secret("my-password", "VALUE")])}
    fired_names |= {name for name, _ in fired_with_references(starter_pack, [pod_reading_secret("my-password", "VALUE"), secret])}
    config_pod = {
        "kind": "Pod",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {
            "containers": [{"name": "api", "env": [{"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        },
    }
    config_map = {"kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "shop"}, "data": {}}
    claim = {"kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "shop"}}
    fired_names |= {name for name, _ in fired_with_references(starter_pack, [config_pod])}
    fired_names |= {name for name, _ in fired_with_references(starter_pack, [config_pod, config_map, claim])}
    fired_names |= {name for name, _ in fired_with_references(starter_pack, [{"kind": "Service", "metadata": {"name": "a", "namespace": "shop"}, "spec": {"selector": {"app": "a"}}}, {"kind": "Endpoints", "metadata": {"name": "a", "namespace": "shop"}}])}
    claim_with_class = {"kind": "PersistentVolumeClaim", "metadata": {"name": "c", "namespace": "shop"}, "spec": {"storageClassName": "x"}, "status": {"phase": "Pending"}}
    fired_names |= {name for name, _ in fired_with_references(starter_pack, [claim_with_class])}
    hpa_without_target = {
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "api"}},
        "status": {"conditions": [{"type": "AbleToScale", "status": "False", "reason": "FailedGetScale"}]},
    }
    fired_names |= {name for name, _ in fired_with_references(starter_pack, [hpa_without_target])}
    ingress_without_secret = [obj for obj in corpus_case("20-ingress-tls-secret-not-found.yaml") if obj["kind"] != "Secret"]
    fired_names |= {name for name, _ in fired_with_references(starter_pack, ingress_without_secret)}
    reference_rules = {rule.name for rule in starter_pack if rule.uses_references}
    assert reference_rules - fired_names == set()
