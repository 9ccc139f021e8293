"""Rule evaluation speed: evaluations per second and the per-change cost of the rule set.

Run: .venv/bin/python -m bench.rules_bench [--repeat N] [--min-seconds S]

The rule set has 100 rules: the starter pack in rules/ plus generated variants of its Pod, Node and
Event rules and rules that use every operator. The objects are Pods from the recorded history and
Nodes and Events from the corpus, enlarged with realistic fields (managedFields, annotations,
env, volumes, images) to 6-20 KB of JSON each. Four figures are measured:

- rule evaluations per second: Rule.evaluate calls on parsed objects, for the rules of each
  object's kind;
- the cost of one change without rules: orjson.loads of the object's JSON;
- the cost of one change with rules: orjson.loads plus every rule of the object's kind, each rule
  on its own;
- the same with one SharedResults per object, so that a condition that several rules have is
  evaluated once;
- the same through one RuleTree per kind, as the worker evaluates them, so that a condition that
  fails also drops every rule that follows it in the tree.

Each figure is given as the median of --repeat runs and as the fastest run. Other processes on
the machine slow some runs down, and the fastest run is the least disturbed one. The output ends
with one line BENCH_JSON {...}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

from kdiag.rules import Rule, RuleSet, SharedResults, load_rules, parse_rules
from kdiag.rules.tree import RuleTree

REPO_ROOT = Path(__file__).resolve().parent.parent
RULE_COUNT = 100
MIN_OBJECT_BYTES = 6 * 1024
MAX_OBJECT_BYTES = 20 * 1024


class _JsonLikeLoader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings, as the API server's JSON has them."""


_JsonLikeLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


# Objects


def load_sample_objects() -> dict[str, list[dict[str, Any]]]:
    """Return the Pods of the recorded history and the Nodes and Events of the corpus, by kind."""
    objects: dict[str, list[dict[str, Any]]] = {"Pod": [], "Node": [], "Event": []}
    history = REPO_ROOT / "samples" / "histories" / "01-pulumi-cloud-ready-checks-workflows.jsonl"
    with history.open(encoding="utf-8") as stream:
        for line in stream:
            obj = json.loads(line)["object"]
            if obj.get("kind") == "Pod":
                objects["Pod"].append(obj)
    for path in sorted((REPO_ROOT / "samples" / "corpus").glob("*.yaml")):
        for obj in yaml.load(path.read_text(encoding="utf-8"), Loader=_JsonLikeLoader):
            if obj.get("kind") in ("Node", "Event"):
                objects[obj["kind"]].append(obj)
    return objects


def managed_fields(manager: str, count: int) -> list[dict[str, Any]]:
    """Build managedFields entries shaped like the API server's, each about 520 bytes of JSON."""
    entries = []
    for index in range(count):
        entries.append(
            {
                "apiVersion": "v1",
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}}, "f:ownerReferences": {".": {}}},
                    "f:spec": {"f:containers": {f'k:{{"name":"container-{index}"}}': {".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:resources": {}}}},
                    "f:status": {"f:conditions": {'k:{"type":"Ready"}': {".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}}},
                },
                "manager": manager,
                "operation": "Update" if index else "Apply",
                "subresource": "status" if index % 2 else None,
                "time": f"2024-05-01T10:{index:02d}:00Z",
            }
        )
    return entries


def enlarge_pod(pod: dict[str, Any], index: int) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    metadata = pod.setdefault("metadata", {})
    metadata.setdefault("labels", {}).update({"app.kubernetes.io/name": "shop", "app.kubernetes.io/part-of": "checkout", "pod-template-hash": f"7d9f8{index:04d}"})
    metadata.setdefault("annotations", {}).update(
        {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "9090",
            "kubectl.kubernetes.io/restartedAt": "2024-05-01T10:00:00Z",
            "checksum/config": "9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab",
        }
    )
    metadata["managedFields"] = managed_fields("kube-controller-manager", 6 + index % 8)
    spec = pod.setdefault("spec", {})
    containers = spec.setdefault("containers", [{"name": "app", "image": "nginx"}])
    for container in containers:
        container["env"] = [{"name": f"SETTING_{number}", "value": f"value-{number}-" + "x" * 20} for number in range(12)] + [
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
            {"name": "LOG_LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}},
        ]
        container["resources"] = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}}
        container["readinessProbe"] = {"httpGet": {"path": "/healthz/ready", "port": 8080}, "periodSeconds": 5, "failureThreshold": 3}
        container["volumeMounts"] = [{"name": f"volume-{number}", "mountPath": f"/etc/config/{number}"} for number in range(4)]
    spec["volumes"] = [{"name": f"volume-{number}", "configMap": {"name": f"config-{number}"}} for number in range(3)] + [
        {"name": "volume-3", "secret": {"secretName": "tls", "items": [{"key": "tls.crt", "path": "crt"}]}}
    ]
    spec["tolerations"] = [
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    ]
    return pod


def enlarge_node(node: dict[str, Any], index: int) -> dict[str, Any]:
    node = copy.deepcopy(node)
    metadata = node.setdefault("metadata", {})
    metadata["labels"] = {
        "kubernetes.io/hostname": metadata.get("name", "node"),
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "m5.xlarge",
        "topology.kubernetes.io/zone": "eu-west-1a",
    }
    metadata["managedFields"] = managed_fields("kubelet", 3)
    status = node.setdefault("status", {})
    status["capacity"] = {"cpu": "4", "memory": "16111700Ki", "pods": "110", "ephemeral-storage": "104845292Ki"}
    status["allocatable"] = {"cpu": "3920m", "memory": "15094868Ki", "pods": "110", "ephemeral-storage": "95551679124"}
    status["nodeInfo"] = {"kubeletVersion": "v1.29.3", "containerRuntimeVersion": "containerd://1.7.11", "osImage": "Ubuntu 22.04.4 LTS", "kernelVersion": "6.5.0-1017-aws"}
    status["addresses"] = [{"type": "InternalIP", "address": "10.0.0.12"}, {"type": "Hostname", "address": metadata.get("name", "node")}]
    status["images"] = [
        {"names": [f"registry.example.com/team/service-{number}@sha256:{number:064x}", f"registry.example.com/team/service-{number}:1.{number}.0"], "sizeBytes": 50_000_000 + number}
        for number in range(40 + index * 10)
    ]
    return node


def enlarge_event(event: dict[str, Any], index: int) -> dict[str, Any]:
    event = copy.deepcopy(event)
    metadata = event.setdefault("metadata", {})
    metadata.setdefault("name", f"event-{index}.17c5d0d1b2a3f4e5")
    metadata["managedFields"] = managed_fields("kubelet", 10 + index % 6)
    metadata["annotations"] = {"example.com/trace": "a" * 400}
    event.setdefault("source", {"component": "kubelet", "host": "node-1"})
    event.setdefault("firstTimestamp", "2024-05-01T10:00:00Z")
    event.setdefault("lastTimestamp", "2024-05-01T10:05:00Z")
    return event


def build_objects() -> list[dict[str, Any]]:
    """Return the enlarged objects, each between MIN_OBJECT_BYTES and MAX_OBJECT_BYTES of JSON."""
    samples = load_sample_objects()
    builders: dict[str, Callable[[dict[str, Any], int], dict[str, Any]]] = {"Pod": enlarge_pod, "Node": enlarge_node, "Event": enlarge_event}
    objects: list[dict[str, Any]] = []
    for kind, builder in builders.items():
        for index, obj in enumerate(samples[kind]):
            enlarged = builder(obj, index)
            size = len(orjson.dumps(enlarged))
            if MIN_OBJECT_BYTES <= size <= MAX_OBJECT_BYTES:
                objects.append(enlarged)
    return objects


# Rules


GENERATED_RULES: dict[str, Any] = {
    "BenchPodRestarting": {"resource": "Pod", "checkField": [{"field": ["status", "containerStatuses", "[*]", "restartCount"], "greaterThan": 5}]},
    "BenchPodMemoryLimitLow": {"resource": "Pod", "checkField": [{"field": ["spec", "containers", "[*]", "resources", "limits", "memory"], "lessThan": "128Mi"}]},
    "BenchPodNoMemoryLimit": {"resource": "Pod", "checkField": [{"field": ["spec", "containers", "[*]", "resources", "limits", "memory"], "exists": False}]},
    "BenchPodLatestImage": {"resource": "Pod", "checkField": [{"field": ["spec", "containers", "[*]", "image"], "regex": "(:latest|^[^:]+)$"}]},
    "BenchPodAllContainersNotReady": {
        "resource": "Pod",
        "filterField": [{"field": ["status", "phase"], "equalValue": ["Running"]}],
        "checkField": [{"field": ["status", "containerStatuses", "[*]", "ready"], "equalValue": ["false"], "match": "all"}],
    },
    "BenchPodManyContainers": {"resource": "Pod", "checkField": [{"field": ["spec", "containers"], "length": {"greaterThan": 8}}]},
    "BenchNodeFewPods": {"resource": "Node", "checkField": [{"field": ["status", "allocatable", "pods"], "lessThan": 20}]},
    "BenchNodeKernelOld": {"resource": "Node", "checkField": [{"field": ["status", "nodeInfo", "kernelVersion"], "prefix": ["4.", "3."]}]},
    "BenchNodeManyImages": {"resource": "Node", "checkField": [{"field": ["status", "images"], "length": {"greaterThan": 500}}]},
    "BenchEventBackOff": {"resource": "Event", "checkField": [{"field": ["message"], "substring": ["Back-off restarting failed container"]}]},
    "BenchEventEvicted": {"resource": "Event", "filterField": [{"field": ["reason"], "equalValue": ["Evicted"]}], "checkField": [{"field": ["message"], "regex": "low on resource: (memory|ephemeral-storage)"}]},
    "BenchEventRepeated": {"resource": "Event", "checkField": [{"field": ["count"], "greaterOrEqual": 100}, {"field": ["type"], "equalValue": ["Warning"]}]},
}


def build_rule_set() -> RuleSet:
    """Return RULE_COUNT rules: the pack, the generated rules, then renamed copies of Pod, Node and Event pack rules."""
    pack = list(load_rules(REPO_ROOT / "rules"))
    rules: list[Rule] = pack + parse_rules(GENERATED_RULES, source="bench")
    templates = [rule for rule in pack if rule.kind in ("Pod", "Node", "Event") and not rule.uses_references]
    copy_number = 0
    while len(rules) < RULE_COUNT:
        template = templates[copy_number % len(templates)]
        copy_number += 1
        rules.append(
            Rule(
                name=f"{template.name}Variant{copy_number}",
                kind=template.kind,
                duration_seconds=template.duration_seconds,
                source="bench",
                filter_fields=template.filter_fields,
                check_fields=template.check_fields,
                duration_from=template.duration_from,
            )
        )
    return RuleSet(rules)


# Measurement


def measure(run: Callable[[], int], repeat: int, min_seconds: float) -> tuple[float, float]:
    """Return (median, fastest) operations per second over repeat runs of at least min_seconds each."""
    rates = []
    for _ in range(repeat):
        operations = 0
        started = time.perf_counter()
        elapsed = 0.0
        while elapsed < min_seconds:
            operations += run()
            elapsed = time.perf_counter() - started
        rates.append(operations / elapsed)
    return statistics.median(rates), max(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rules_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the median and the fastest run are reported (default 5)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="minimum duration of one run, in seconds (default 1.0)")
    args = parser.parse_args(argv)

    rule_set = build_rule_set()
    objects = build_objects()
    payloads = [orjson.dumps(obj) for obj in objects]
    kinds = [obj["kind"] for obj in objects]
    rules_by_object = [rule_set.rules_for_kind(kind) for kind in kinds]
    evaluations_per_pass = sum(len(rules) for rules in rules_by_object)
    sizes = [len(payload) for payload in payloads]

    def evaluate_pass() -> int:
        for obj, rules in zip(objects, rules_by_object):
            for rule in rules:
                rule.evaluate(obj)
        return evaluations_per_pass

    def parse_pass() -> int:
        for payload in payloads:
            orjson.loads(payload)
        return len(payloads)

    def parse_and_evaluate_pass() -> int:
        for payload, kind in zip(payloads, kinds):
            obj = orjson.loads(payload)
            for rule in rule_set.rules_for_kind(kind):
                rule.evaluate(obj)
        return len(payloads)

    def parse_and_evaluate_shared_pass() -> int:
        for payload, kind in zip(payloads, kinds):
            obj = orjson.loads(payload)
            shared = SharedResults(obj)
            for rule in rule_set.rules_for_kind(kind):
                rule.evaluate(obj, shared=shared)
        return len(payloads)

    trees = {kind: RuleTree(kind, rule_set.rules_for_kind(kind)) for kind in set(kinds)}

    def parse_and_evaluate_tree_pass() -> int:
        for payload, kind in zip(payloads, kinds):
            trees[kind].matches(orjson.loads(payload))
        return len(payloads)

    matches = sum(1 for obj, rules in zip(objects, rules_by_object) for rule in rules if rule.evaluate(obj) is not None)
    tree_matches = sum(len(trees[kind].matches(obj)) for obj, kind in zip(objects, kinds))
    if tree_matches != matches:
        raise SystemExit(
            f"the rule trees found {tree_matches} matches and the rules one by one {matches}; "
            f"RuleTree (kdiag/rules/tree.py) must match what Rule.evaluate matches, so fix it before measuring"
        )
    evaluation = measure(evaluate_pass, args.repeat, args.min_seconds)
    parse = measure(parse_pass, args.repeat, args.min_seconds)
    change = measure(parse_and_evaluate_pass, args.repeat, args.min_seconds)
    shared_change = measure(parse_and_evaluate_shared_pass, args.repeat, args.min_seconds)
    tree_change = measure(parse_and_evaluate_tree_pass, args.repeat, args.min_seconds)

    per_kind_rules = {kind: len(rule_set.rules_for_kind(kind)) for kind in ("Pod", "Node", "Event")}
    per_kind_objects = {kind: kinds.count(kind) for kind in ("Pod", "Node", "Event")}
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"rules: {len(rule_set)} in total; per kind {per_kind_rules}")
    print(f"objects: {len(objects)} {per_kind_objects}, JSON size {min(sizes)}-{max(sizes)} bytes, mean {statistics.mean(sizes):.0f}")
    print(f"matches per pass: {matches} of {evaluations_per_pass} evaluations")
    print(f"load average before the runs: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print("                            median                      fastest run")
    for label, (median, fastest), unit in (
        ("rule evaluations", evaluation, "evaluation"),
        ("change, orjson parse only", parse, "change"),
        ("change, parse + rules", change, "change"),
        ("change, parse + rules, shared", shared_change, "change"),
        ("change, parse + rule tree", tree_change, "change"),
    ):
        print(f"{label:26} {median:10,.0f}/s {1e6 / median:7.2f} us   {fastest:10,.0f}/s {1e6 / fastest:7.2f} us  per {unit}")
    print(f"rule set cost per change:  {1e6 / change[0] - 1e6 / parse[0]:7.1f} us (median)   {1e6 / change[1] - 1e6 / parse[1]:7.1f} us (fastest)")
    print(
        f"the same, shared results:  {1e6 / shared_change[0] - 1e6 / parse[0]:7.1f} us (median)   "
        f"{1e6 / shared_change[1] - 1e6 / parse[1]:7.1f} us (fastest)"
    )
    print(
        f"the same, rule trees:      {1e6 / tree_change[0] - 1e6 / parse[0]:7.1f} us (median)   "
        f"{1e6 / tree_change[1] - 1e6 / parse[1]:7.1f} us (fastest)"
    )
    result = {
        "benchmark": "rules",
        "rules": len(rule_set),
        "objects": len(objects),
        "object_bytes_min": min(sizes),
        "object_bytes_max": max(sizes),
        "evaluations_per_second_median": round(evaluation[0]),
        "evaluations_per_second_fastest": round(evaluation[1]),
        "parse_us_per_change_median": round(1e6 / parse[0], 2),
        "parse_us_per_change_fastest": round(1e6 / parse[1], 2),
        "parse_and_evaluate_us_per_change_median": round(1e6 / change[0], 2),
        "parse_and_evaluate_us_per_change_fastest": round(1e6 / change[1], 2),
        "parse_and_evaluate_shared_us_per_change_median": round(1e6 / shared_change[0], 2),
        "parse_and_evaluate_shared_us_per_change_fastest": round(1e6 / shared_change[1], 2),
        "parse_and_evaluate_tree_us_per_change_median": round(1e6 / tree_change[0], 2),
        "parse_and_evaluate_tree_us_per_change_fastest": round(1e6 / tree_change[1], 2),
    }
    print("BENCH_JSON " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
