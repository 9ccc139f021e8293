"""The shipped graphs on the corpus cases, on synthetic variants of them, and against the rule pack."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from rootcause_support import CORPUS_EXPECTED, fired_contexts, load_case, make_context

from kdiag.codec import codec
from kdiag.rootcause import GraphSet
from kdiag.rules import RuleSet



def diagnose_case(case_file: str, starter_pack: RuleSet, graphs: GraphSet) -> list[tuple[str, dict[str, Any]]]:
    results = []
    for context in fired_contexts(starter_pack, load_case(case_file)):
        root_cause = graphs.diagnose(context)
        if root_cause is not None:
            results.append((context.diagnosis.rule, root_cause))
    return results


# Corpus cases


@pytest.mark.parametrize("case_file", sorted(CORPUS_EXPECTED))
def test_corpus_case_root_cause(case_file: str, starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    results = diagnose_case(case_file, starter_pack, shipped_graphs)
    assert results, f"no rule that fires on {case_file} has a graph"
    for rule, root_cause in results:
        assert (root_cause["cause"], root_cause["responsibility"]) == CORPUS_EXPECTED[case_file], f"{rule}: {root_cause['summary']}"


@pytest.mark.parametrize("case_file", sorted(CORPUS_EXPECTED))
def test_corpus_root_cause_encodes(case_file: str, starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    root_cause_codec = codec("RootCause")
    for _, root_cause in diagnose_case(case_file, starter_pack, shipped_graphs):
        assert root_cause_codec.decode(root_cause_codec.encode(root_cause)) == root_cause


def test_tag_not_found_despite_credentials_phrase(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    ((rule, root_cause),) = diagnose_case("01-image-tag-not-found.yaml", starter_pack, shipped_graphs)
    assert "Tag v2.0.0-dev not found" in root_cause["summary"]
    assert "quay.io/example-org/s3registry:v2.0.0-dev" in root_cause["summary"]
    assert "secret" not in root_cause["fix"].lower()
    classify = root_cause["findings"][0]
    assert classify["node"] == "classify"
    assert classify["values"]["category"] == "not-found"


def test_unauthorized_reads_other_events(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    # ImagePullFailedEvent fires on "Error: ErrImagePull", which gives no cause. The cause is in
    # the pod's other Warning events.
    results = dict(diagnose_case("02-image-pull-unauthorized.yaml", starter_pack, shipped_graphs))
    root_cause = results["ImagePullFailedEvent"]
    assert "unauthorized: authentication required" in root_cause["summary"]
    assert "vendor-a/policy-enforcer:20.7" in root_cause["summary"]


def test_rate_limit_anonymous_is_platform(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    results = dict(diagnose_case("04-image-pull-rate-limit.yaml", starter_pack, shipped_graphs))
    root_cause = results["ImagePullRateLimitedEvent"]
    secrets = next(finding for finding in root_cause["findings"] if finding["node"] == "secrets")
    assert secrets["values"]["status"] == "none"
    assert "mirror" in root_cause["fix"]


def test_no_space_names_node(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    for _, root_cause in diagnose_case("05-image-pull-no-space-left.yaml", starter_pack, shipped_graphs):
        assert "gke-cluster-a-n1-pool-node-1" in root_cause["summary"]
        assert "no space left on device" in root_cause["summary"]


def test_oom_summary_names_limit(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    ((_, root_cause),) = diagnose_case("07-oomkilled-low-memory-limit.yaml", starter_pack, shipped_graphs)
    assert "90Mi" in root_cause["summary"]
    assert "container-1" in root_cause["summary"]
    history = root_cause["findings"][0]["values"]
    assert history["memoryLimitBytes"] == str(90 * 1024 * 1024)
    assert history["lastExitCode"] == "137"
    assert history["lastSignal"] == "SIGKILL"


def test_discovery_failure_names_apiservice(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    for _, root_cause in diagnose_case("16-namespace-terminating-discovery-failure.yaml", starter_pack, shipped_graphs):
        assert "v1beta1.metrics.k8s.io" in root_cause["fix"]
        assert "metrics.k8s.io/v1beta1" in root_cause["summary"]


def test_lb_cleanup_warns_against_removal(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    for _, root_cause in diagnose_case("17-service-terminating-lb-finalizer.yaml", starter_pack, shipped_graphs):
        assert "service.kubernetes.io/load-balancer-cleanup" in root_cause["summary"]
        assert "leaks" in root_cause["fix"]


def test_findings_in_execution_order(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    results = dict(diagnose_case("04-image-pull-rate-limit.yaml", starter_pack, shipped_graphs))
    findings = results["ImagePullFailedEvent"]["findings"]
    assert [finding["node"] for finding in findings] == ["classify", "secrets", "spread", "node"]
    assert [finding["status"] for finding in findings] == ["OK", "OK", "SKIPPED", "SKIPPED"]


# Coverage of the rule pack


def test_graph_diagnoses_are_rules(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    assert shipped_graphs.diagnoses() - set(starter_pack.names) == set()


def test_image_pull_rules_covered(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    image_pull_rules = {name for name in starter_pack.names if "ImagePull" in name}
    assert image_pull_rules
    for name in image_pull_rules:
        graph = shipped_graphs.graph_for(name)
        assert graph is not None, f"{name} has no graph"
        assert graph.name == "ImagePullFailure"


@pytest.mark.parametrize(
    "rule",
    [
        "PodCrashLoopBackOff",
        "PodOOMKilled",
        "FailedSchedulingEvent",
        "PodUnschedulable",
        "ServiceStuckTerminating",
        "NamespaceStuckTerminating",
        "NamespaceDeletionDiscoveryFailed",
        "PodStuckTerminating",
    ],
)
def test_listed_rules_covered(rule: str, shipped_graphs: GraphSet) -> None:
    assert shipped_graphs.graph_for(rule) is not None


# Synthetic image pull variants: where the failure shows decides whose problem it is.

NO_SUCH_HOST = (
    'Failed to pull image "registry.example.com/team/web:1.4": rpc error: code = Unknown desc = failed to pull and unpack image '
    '"registry.example.com/team/web:1.4": failed to resolve reference "registry.example.com/team/web:1.4": failed to do request: '
    "Head \"https://registry.example.com/v2/team/web/manifests/1.4\": dial tcp: lookup registry.example.com on 10.96.0.10:53: no such host"
)
IMAGE = "registry.example.com/team/web:1.4"


def node(name: str, zone: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]},
    }


def pod(name: str, node_name: str, failing: bool, owner: str = "web-5d8f7", image: str = IMAGE, message: str = NO_SUCH_HOST) -> dict[str, Any]:
    if failing:
        state = {"waiting": {"reason": "ErrImagePull", "message": message}}
        status = {"name": "web", "image": image, "imageID": "", "ready": False, "restartCount": 0, "state": state}
    else:
        status = {"name": "web", "image": image, "imageID": f"{image}@sha256:0f1e", "ready": True, "restartCount": 0, "state": {"running": {"startedAt": "2024-05-01T10:00:00Z"}}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": f"uid-{name}",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": f"uid-{owner}", "controller": True}],
        },
        "spec": {"nodeName": node_name, "containers": [{"name": "web", "image": image}]},
        "status": {"phase": "Pending" if failing else "Running", "containerStatuses": [status]},
    }


NODES = [node("node-a", "zone-1"), node("node-b", "zone-2"), node("node-c", "zone-3")]
PULL_CONTEXT = {"status.containerStatuses[name=web].state.waiting.reason": "ErrImagePull"}


def diagnose_pod(objects: list[dict[str, Any]], graphs: GraphSet, rule: str = "PodImagePullError") -> dict[str, Any]:
    root_cause = graphs.diagnose(make_context(rule, objects[0], objects, PULL_CONTEXT))
    assert root_cause is not None
    return root_cause


def finding(root_cause: dict[str, Any], node_name: str) -> dict[str, Any]:
    return next(item for item in root_cause["findings"] if item["node"] == node_name)


def test_failure_on_one_node_is_platform(shipped_graphs: GraphSet) -> None:
    objects = [pod("web-1", "node-a", True), pod("web-2", "node-b", False), pod("web-3", "node-c", False), *NODES]
    root_cause = diagnose_pod(objects, shipped_graphs)
    assert root_cause["cause"] == "registry-unreachable-from-node"
    assert root_cause["responsibility"] == "PLATFORM"
    spread = finding(root_cause, "spread")["values"]
    assert spread["scope"] == "node"
    assert spread["failingNodes"] == "node-a"
    assert spread["pulledNodes"] == "node-b, node-c"
    assert "node-a" in root_cause["summary"]


def test_failure_on_every_node_is_user(shipped_graphs: GraphSet) -> None:
    objects = [pod("web-1", "node-a", True), pod("web-2", "node-b", True), pod("web-3", "node-c", True), *NODES]
    root_cause = diagnose_pod(objects, shipped_graphs)
    assert root_cause["cause"] == "image-registry-unreachable"
    assert root_cause["responsibility"] == "USER"
    spread = finding(root_cause, "spread")["values"]
    assert spread["scope"] == "image"
    assert spread["failingNodeCount"] == "3"


def test_other_owner_failing_same_node(shipped_graphs: GraphSet) -> None:
    other = pod("api-1", "node-a", True, owner="api-77c4", image="registry.example.com/team/api:2.0")
    objects = [pod("web-1", "node-a", True), other, *NODES]
    root_cause = diagnose_pod(objects, shipped_graphs)
    assert root_cause["cause"] == "registry-unreachable-from-node"
    assert root_cause["responsibility"] == "PLATFORM"
    assert finding(root_cause, "spread")["values"]["otherOwnersFailing"] == "1"


def test_other_owners_failing_everywhere(shipped_graphs: GraphSet) -> None:
    other = pod("api-1", "node-a", True, owner="api-77c4", image="registry.example.com/team/api:2.0")
    objects = [pod("web-1", "node-a", True), pod("web-2", "node-b", True), other, *NODES]
    root_cause = diagnose_pod(objects, shipped_graphs)
    assert root_cause["cause"] == "registry-unreachable"
    assert root_cause["responsibility"] == "PLATFORM"


def test_failure_in_one_zone(shipped_graphs: GraphSet) -> None:
    nodes = [node("node-a1", "zone-1"), node("node-a2", "zone-1"), node("node-b1", "zone-2")]
    objects = [pod("web-1", "node-a1", True), pod("web-2", "node-a2", True), pod("web-3", "node-b1", False), *nodes]
    root_cause = diagnose_pod(objects, shipped_graphs)
    assert root_cause["cause"] == "registry-unreachable-from-nodes"
    assert root_cause["responsibility"] == "PLATFORM"
    spread = finding(root_cause, "spread")["values"]
    assert spread["scope"] == "zone"
    assert spread["failingZones"] == "zone-1"


def test_single_pod_network_unknown(shipped_graphs: GraphSet) -> None:
    root_cause = diagnose_pod([pod("web-1", "node-a", True), *NODES], shipped_graphs)
    assert root_cause["cause"] == "registry-unreachable"
    assert root_cause["responsibility"] == "UNKNOWN"


def test_not_found_from_container_status(shipped_graphs: GraphSet) -> None:
    message = (
        'rpc error: code = NotFound desc = failed to pull and unpack image "docker.io/library/nginx:1.99": failed to resolve reference '
        '"docker.io/library/nginx:1.99": docker.io/library/nginx:1.99: not found'
    )
    objects = [pod("web-1", "node-a", True, image="nginx:1.99", message=message), *NODES]
    root_cause = diagnose_pod(objects, shipped_graphs)
    assert root_cause["cause"] == "image-tag-not-found"
    assert root_cause["responsibility"] == "USER"
    assert "docker.io" in root_cause["summary"]


UNAUTHORIZED = 'Failed to pull image "registry.example.com/team/web:1.4": rpc error: code = Unknown desc = failed to authorize: 401 Unauthorized'


def with_pull_secret(pod_object: dict[str, Any], name: str) -> dict[str, Any]:
    changed = copy.deepcopy(pod_object)
    changed["spec"]["imagePullSecrets"] = [{"name": name}]
    return changed


@pytest.mark.parametrize(
    ("secret", "cause", "status"),
    [
        (None, "image-pull-secret-missing", "missing"),
        ({"type": "Opaque", "data": {"token": "c2VjcmV0"}}, "image-pull-secret-invalid", "wrong-type"),
        ({"type": "kubernetes.io/dockerconfigjson", "data": {"other": "e30="}}, "image-pull-secret-invalid", "missing-key"),
        ({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e30="}}, "image-pull-credentials-rejected", "ok"),
    ],
)
def test_unauthorized_pull_secret_variants(secret: dict[str, Any] | None, cause: str, status: str, shipped_graphs: GraphSet) -> None:
    objects = [with_pull_secret(pod("web-1", "node-a", True, message=UNAUTHORIZED), "regcred"), *NODES]
    if secret is not None:
        objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred", "namespace": "shop"}, **secret})
    root_cause = diagnose_pod(objects, shipped_graphs)
    assert root_cause["cause"] == cause
    assert root_cause["responsibility"] == "USER"
    assert finding(root_cause, "secrets")["values"]["status"] == status


def test_pull_secret_values_never_reach_plugins(shipped_graphs: GraphSet) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred", "namespace": "shop", "annotations": {"note": "x"}}, "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "c2VjcmV0LXZhbHVl"}}
    objects = [with_pull_secret(pod("web-1", "node-a", True, message=UNAUTHORIZED), "regcred"), secret]
    context = make_context("PodImagePullError", objects[0], objects, PULL_CONTEXT)
    (stripped,) = context.related.secrets
    assert stripped["keys"] == [".dockerconfigjson"]
    assert "data" not in stripped
    assert "annotations" not in stripped["metadata"]
    assert "c2VjcmV0LXZhbHVl" not in str(context.to_json())


def test_rate_limit_with_credentials_is_user(shipped_graphs: GraphSet) -> None:
    message = 'Failed to pull image "nginx:1.25": toomanyrequests: You have reached your pull rate limit.'
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub", "namespace": "shop"}, "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "e30="}}
    objects = [with_pull_secret(pod("web-1", "node-a", True, image="nginx:1.25", message=message), "hub"), secret, *NODES]
    root_cause = diagnose_pod(objects, shipped_graphs)
    assert root_cause["cause"] == "registry-rate-limited"
    assert root_cause["responsibility"] == "USER"


def test_no_space_with_disk_pressure(shipped_graphs: GraphSet) -> None:
    message = 'failed to pull and unpack image "docker.io/library/postgres:16": failed to extract layer: write /var/lib/containerd/x: no space left on device'
    full_node = node("node-a", "zone-1")
    full_node["status"]["conditions"].append({"type": "DiskPressure", "status": "True", "reason": "KubeletHasDiskPressure"})
    objects = [pod("web-1", "node-a", True, image="postgres:16", message=message), full_node]
    root_cause = diagnose_pod(objects, shipped_graphs)
    assert root_cause["cause"] == "node-disk-full"
    assert root_cause["responsibility"] == "PLATFORM"
    assert "reports DiskPressure" in root_cause["summary"]


def test_init_container_pull_failure(shipped_graphs: GraphSet) -> None:
    failing = pod("web-1", "node-a", True)
    failing["spec"]["initContainers"] = failing["spec"].pop("containers")
    failing["status"]["initContainerStatuses"] = failing["status"].pop("containerStatuses")
    objects = [failing, pod("web-2", "node-b", False), *NODES]
    root_cause = diagnose_pod(objects, shipped_graphs, rule="PodInitImagePullError")
    assert root_cause["cause"] == "registry-unreachable-from-node"


# Synthetic variants of the other graphs


def failed_scheduling(message: str, pod_name: str = "web-1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "type": "Warning",
        "reason": "FailedScheduling",
        "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": "shop"},
        "metadata": {"name": f"{pod_name}.17a", "namespace": "shop"},
        "message": message,
    }


def pending_pod(name: str = "web-1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop"}, "spec": {"containers": [{"name": "web", "image": IMAGE}]}, "status": {"phase": "Pending"}}


@pytest.mark.parametrize(
    ("message", "cause", "responsibility"),
    [
        ("0/3 nodes are available: 3 Insufficient cpu.", "insufficient-capacity", "PLATFORM"),
        ("0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient memory. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod..", "insufficient-capacity", "PLATFORM"),
        ("0/1 nodes are available: 1 node(s) had taint {node.kubernetes.io/disk-pressure: }, that the pod didn't tolerate.", "node-condition-blocks-scheduling", "PLATFORM"),
        ("0/4 nodes are available: 4 node(s) didn't match Pod's node affinity/selector.", "node-selector-matches-no-node", "USER"),
        ("0/2 nodes are available: 2 node(s) had untolerated taint {dedicated: gpu}.", "untolerated-taint", "USER"),
        ("0/3 nodes are available: 3 node(s) were unschedulable.", "nodes-cordoned", "PLATFORM"),
        ("0/5 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, 3 node(s) had volume node affinity conflict.", "node-selector-matches-no-node", "USER"),
        ("0/3 nodes are available: 3 node(s) had volume node affinity conflict.", "volume-placement-conflict", "UNKNOWN"),
        ("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.", "pod-affinity-unsatisfiable", "USER"),
    ],
)
def test_scheduling_variants(message: str, cause: str, responsibility: str, shipped_graphs: GraphSet) -> None:
    event = failed_scheduling(message)
    root_cause = shipped_graphs.diagnose(make_context("FailedSchedulingEvent", event, [event, pending_pod()]))
    assert root_cause is not None
    assert (root_cause["cause"], root_cause["responsibility"]) == (cause, responsibility), root_cause["summary"]


def test_pending_pods_of_diskpressure_node(shipped_graphs: GraphSet) -> None:
    # Case 23 with the scheduler's message of that time, which does not name the taint. The
    # tainted node in related shows that the taint is the disk pressure one.
    objects = load_case("23-node-diskpressure.yaml")
    pending = objects[1]
    event = failed_scheduling("0/1 nodes are available: 1 node(s) had taints that the pod didn't tolerate.", pending["metadata"]["name"])
    event["involvedObject"].pop("namespace")
    objects.append(event)
    root_cause = shipped_graphs.diagnose(make_context("FailedSchedulingUntoleratedTaintEvent", event, objects))
    assert root_cause is not None
    assert root_cause["cause"] == "node-condition-blocks-scheduling"
    assert root_cause["responsibility"] == "PLATFORM"
    assert "kubernetes-master" in root_cause["summary"]
    assert "DiskPressure" in root_cause["summary"]


def test_pod_unschedulable_reads_condition(shipped_graphs: GraphSet) -> None:
    unschedulable = pending_pod()
    unschedulable["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/6 nodes are available: 6 Insufficient memory."}
    ]
    root_cause = shipped_graphs.diagnose(make_context("PodUnschedulable", unschedulable, [unschedulable]))
    assert root_cause is not None
    assert root_cause["cause"] == "insufficient-capacity"
    assert "memory" in root_cause["summary"]


def crashing_pod(exit_code: int, reason: str, limits: dict[str, str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "example/app:3"}
    if limits:
        container["resources"] = {"limits": limits}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app-1", "namespace": "shop"},
        "spec": {"nodeName": "node-a", "containers": [container]},
        "status": {
            "containerStatuses": [
                {
                    "name": "app",
                    "restartCount": 7,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"reason": reason, "exitCode": exit_code}},
                }
            ]
        },
    }


CRASH_CONTEXT = {"status.containerStatuses[name=app].state.waiting.reason": "CrashLoopBackOff"}


@pytest.mark.parametrize(
    ("exit_code", "reason", "cause", "responsibility"),
    [
        (0, "Completed", "command-exits", "USER"),
        (1, "Error", "application-error", "USER"),
        (127, "Error", "command-cannot-start", "USER"),
        (137, "OOMKilled", "oom-killed-without-limit", "UNKNOWN"),
    ],
)
def test_crash_loop_variants(exit_code: int, reason: str, cause: str, responsibility: str, shipped_graphs: GraphSet) -> None:
    crashing = crashing_pod(exit_code, reason)
    root_cause = shipped_graphs.diagnose(make_context("PodCrashLoopBackOff", crashing, [crashing], CRASH_CONTEXT))
    assert root_cause is not None
    assert (root_cause["cause"], root_cause["responsibility"]) == (cause, responsibility), root_cause["summary"]


def test_oom_without_limit_memory_pressure(shipped_graphs: GraphSet) -> None:
    crashing = crashing_pod(137, "OOMKilled")
    pressured = node("node-a", "zone-1")
    pressured["status"]["conditions"].append({"type": "MemoryPressure", "status": "True", "reason": "KubeletHasInsufficientMemory"})
    root_cause = shipped_graphs.diagnose(make_context("PodOOMKilled", crashing, [crashing, pressured], CRASH_CONTEXT))
    assert root_cause is not None
    assert root_cause["cause"] == "node-out-of-memory"
    assert root_cause["responsibility"] == "PLATFORM"


def test_liveness_probe_kills(shipped_graphs: GraphSet) -> None:
    crashing = crashing_pod(137, "Error")
    unhealthy = {
        "apiVersion": "v1",
        "kind": "Event",
        "type": "Warning",
        "reason": "Unhealthy",
        "count": 12,
        "involvedObject": {"kind": "Pod", "name": "app-1", "namespace": "shop", "fieldPath": "spec.containers{app}"},
        "message": "Liveness probe failed: HTTP probe failed with statuscode: 503",
    }
    root_cause = shipped_graphs.diagnose(make_context("PodCrashLoopBackOff", crashing, [crashing, unhealthy], CRASH_CONTEXT))
    assert root_cause is not None
    assert root_cause["cause"] == "liveness-probe-failed"
    assert finding(root_cause, "history")["values"]["probeFailures"] == "12"


def test_pod_stuck_on_not_ready_node(shipped_graphs: GraphSet) -> None:
    stuck = crashing_pod(0, "Completed")
    stuck["metadata"]["deletionTimestamp"] = "2024-05-01T10:00:00Z"
    down = node("node-a", "zone-1")
    down["status"]["conditions"] = [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status."}]
    root_cause = shipped_graphs.diagnose(make_context("PodStuckTerminating", stuck, [stuck, down]))
    assert root_cause is not None
    assert root_cause["cause"] == "node-unreachable"
    assert root_cause["responsibility"] == "PLATFORM"


def test_pvc_protection_is_user(shipped_graphs: GraphSet) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "shop", "deletionTimestamp": "2024-05-01T10:00:00Z", "finalizers": ["kubernetes.io/pvc-protection"]},
    }
    root_cause = shipped_graphs.diagnose(make_context("PVCStuckTerminating", claim, [claim]))
    assert root_cause is not None
    assert root_cause["cause"] == "volume-in-use"
    assert root_cause["responsibility"] == "USER"


def test_key_missing_not_secret_missing(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    ((_, root_cause),) = diagnose_case("11-createcontainerconfigerror-secret-key-missing.yaml", starter_pack, shipped_graphs)
    assert root_cause["summary"] == "Secret default/app-secret-workload-demo exists but has no key VALUE, which the pod reads."
    assert "Create" not in root_cause["fix"]


def pod_reading_secret(optional: bool = False) -> dict[str, Any]:
    reference: dict[str, Any] = {"name": "db", "key": "PASSWORD"}
    if optional:
        reference["optional"] = True
    container = {"name": "api", "image": "example/api:1", "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": reference}}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "api-1", "namespace": "shop"}, "spec": {"containers": [container]}, "status": {"phase": "Pending"}}


@pytest.mark.parametrize(
    ("data", "cause"),
    [(None, "config-object-missing"), ({"USER": "YQ=="}, "config-key-missing"), ({"PASSWORD": "YQ=="}, "container-config-error")],
)
def test_config_reference_from_related(data: dict[str, str] | None, cause: str, shipped_graphs: GraphSet) -> None:
    objects: list[dict[str, Any]] = [pod_reading_secret()]
    if data is not None:
        objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "shop"}, "type": "Opaque", "data": data})
    root_cause = shipped_graphs.diagnose(make_context("PodSecretKeyMissing", objects[0], objects))
    assert root_cause is not None
    assert root_cause["cause"] == cause


def test_optional_reference_not_missing(shipped_graphs: GraphSet) -> None:
    optional = pod_reading_secret(optional=True)
    root_cause = shipped_graphs.diagnose(make_context("PodCreateContainerConfigError", optional, [optional]))
    assert root_cause is not None
    assert root_cause["cause"] == "container-config-error"


def test_rollout_stalled_names_replica_set(starter_pack: RuleSet, shipped_graphs: GraphSet) -> None:
    ((_, root_cause),) = diagnose_case("26-deployment-progress-deadline-exceeded.yaml", starter_pack, shipped_graphs)
    assert "app-gui-5cd74fc875" in root_cause["fix"]
    rollout = root_cause["findings"][0]["values"]
    assert rollout["state"] == "stalled"
    assert rollout["updatedReplicas"] == "1"
