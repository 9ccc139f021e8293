"""Deterministic synthetic Kubernetes cluster history for the benchmarks.

`python -m bench.loadgen --pods N --hours H --seed S --out FILE` writes the history as watch-event
JSON lines, ``{"type": "ADDED", "time": "<RFC 3339>", "object": {...}}``, which `kdiag replay` reads
(the optional `time` field is the observed time of the change). With --bootstrap-servers and
--changes-topic instead of --out it produces ChangeBatch records straight to the changes topic
through connectors/publisher.py, which is faster than a file for big runs.

The cluster: Nodes (one per 30 pods), namespaces of about 100 pods with their kube-root-ca.crt
ConfigMap, Deployments of 1 to 12 replicas, each with a Service, Endpoints, a ConfigMap and a Secret,
and their Pods. The objects follow the shape of real ones (samples/histories
and samples/corpus): full metadata with labels, annotations and ownerReferences, specs with
containers, env, volumes, resources, probes and tolerations, and status with conditions and
containerStatuses. Pods, Nodes and Deployments are 5-22 KiB of JSON. Services, Endpoints, ConfigMaps,
Secrets and Events are 0.5-4 KiB, the size of real ones.

The history: every object is ADDED in the first minute. Then, at rates per hour of simulated time,
come Node status reports every 5 minutes, readiness flaps of running pods, and Deployment rollouts
that replace their pods one by one. A replacement creates, schedules, starts and readies the new
pod, then terminates and deletes the old one, with the kubelet's and the scheduler's Events, which
expire after an hour. Injected failures: image pull errors, crash loops, OOM kills, pods stuck
terminating, unschedulable pods and Nodes that go NotReady or Unknown. The same seed and options
always give the same history, byte for byte.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import heapq
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
from confluent_kafka import Producer

from connectors.publisher import Publisher, encode_object, producer_config
from kdiag.model import ResourceChange, format_time_ms, parse_time_ms
from kdiag.settings import load_settings

DEFAULT_START = "2024-05-01T00:00:00Z"
PODS_PER_NODE = 30
PODS_PER_NAMESPACE = 100
EVENT_TTL_MS = 3_600_000
NODE_REPORT_INTERVAL_MS = 300_000
INITIAL_LIST_SPREAD_MS = 60_000

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class ChurnRates:
    """Rates of the history's activities, per object per hour of simulated time."""

    readiness_flaps_per_pod: float = 0.05
    rollouts_per_deployment: float = 0.5 / 24
    image_pull_failures_per_pod: float = 0.01 / 24
    crash_loops_per_pod: float = 0.02 / 24
    oom_kills_per_pod: float = 0.01 / 24
    stuck_terminating_per_pod: float = 0.003 / 24
    unschedulable_per_pod: float = 0.005 / 24
    node_failures_per_node: float = 0.05 / 24


# Names and fixed values. Registries and domains are placeholders.

APP_WORDS = (
    "payments", "checkout", "catalog", "search", "orders", "billing", "ledger", "auth", "gateway", "profile",
    "inventory", "shipping", "notify", "reports", "pricing", "cart", "media", "thumbnails", "recommend", "audit",
    "sessions", "ratings", "loyalty", "fraud", "export", "import", "scheduler", "metrics", "webhooks", "tenant",
)
APP_SUFFIXES = ("api", "worker", "web", "consumer", "cron", "grpc", "frontend", "backend", "sync", "proxy")
TEAMS = ("core", "commerce", "platform", "data", "growth", "identity", "risk", "infra")
ZONES = ("eu-west-1a", "eu-west-1b", "eu-west-1c")
INSTANCE_TYPES = ("m6i.2xlarge", "m6i.4xlarge", "r6i.2xlarge", "c6i.4xlarge")
REGISTRY = "registry.example.internal"
ENV_NAMES = (
    "LOG_LEVEL", "LOG_FORMAT", "HTTP_PORT", "GRPC_PORT", "METRICS_PORT", "DATABASE_HOST", "DATABASE_PORT",
    "DATABASE_NAME", "DATABASE_POOL_SIZE", "REDIS_URL", "KAFKA_BROKERS", "KAFKA_TOPIC_PREFIX", "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "FEATURE_FLAGS_URL", "CACHE_TTL_SECONDS", "REQUEST_TIMEOUT_MS",
    "MAX_CONCURRENCY", "JAVA_TOOL_OPTIONS", "GOMAXPROCS", "GOMEMLIMIT", "REGION", "ENVIRONMENT", "SENTRY_DSN",
    "S3_BUCKET", "S3_REGION", "UPSTREAM_URL", "RATE_LIMIT_RPS", "SHUTDOWN_GRACE_SECONDS", "TZ", "LANG",
)
ISTIO_PROXY_ARGS = [
    "proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local", "--proxyLogLevel=warning",
    "--proxyComponentLogLevel=misc:error", "--log_output_level=default:info", "--concurrency", "2",
]
TOLERATIONS = [
    {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
    {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300},
]
NODE_CONDITION_TEXT = {
    "MemoryPressure": ("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    "DiskPressure": ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    "PIDPressure": ("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
}


def _ts(time_ms: int) -> str:
    """Format an object timestamp: Kubernetes writes them in whole seconds."""
    return _format_seconds(time_ms // 1000)


@lru_cache(maxsize=1 << 16)
def _format_seconds(seconds: int) -> str:
    return format_time_ms(seconds * 1000)


def _format_ms(time_ms: int) -> str:
    """Format RFC 3339 with milliseconds, as format_time_ms does, with the seconds part cached."""
    return f"{_format_seconds(time_ms // 1000)[:-1]}.{time_ms % 1000:03d}Z"


# Cluster model


@dataclass(slots=True)
class Node:
    name: str
    uid: str
    index: int
    zone: str
    instance_type: str
    created_ms: int
    ip: str
    labels: dict[str, str]
    annotations: dict[str, str]
    images: list[dict[str, Any]]
    capacity: dict[str, str]
    allocatable: dict[str, str]
    node_info: dict[str, str]
    ready: str = "True"
    ready_since_ms: int = 0
    heartbeat_ms: int = 0
    failing: bool = False


@dataclass(slots=True)
class Revision:
    """One ReplicaSet of a Deployment: the pod template of one rollout."""

    hash: str
    uid: str
    image: str
    labels: dict[str, str]
    owner_references: list[dict[str, Any]]
    containers: list[dict[str, Any]]
    init_containers: list[dict[str, Any]]
    spec: dict[str, Any]
    template: dict[str, Any]


@dataclass(slots=True)
class Deployment:
    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]
    replicas: int
    created_ms: int
    env: list[dict[str, Any]]
    sidecar: bool
    revision: Revision
    generation: int = 1
    pods: list["Pod"] = field(default_factory=list)
    progressing_ok: bool = True
    progressing_changed_ms: int = 0
    rolling: bool = False
    service: "Service | None" = None
    config_map: dict[str, Any] | None = None
    secret: dict[str, Any] | None = None


@dataclass(slots=True)
class Service:
    namespace: str
    name: str
    uid: str
    created_ms: int
    obj: dict[str, Any]
    endpoints_uid: str
    deletion_ms: int | None = None


@dataclass(slots=True)
class ContainerStatus:
    name: str
    image: str
    state: dict[str, Any]
    last_state: dict[str, Any]
    ready: bool
    started: bool
    restart_count: int
    container_id: str


@dataclass(slots=True)
class Pod:
    name: str
    uid: str
    deployment: Deployment
    revision: Revision
    created_ms: int
    node: Node | None = None
    phase: str = "Pending"
    ip: str = ""
    start_ms: int | None = None
    scheduled_ms: int | None = None
    unschedulable_since_ms: int | None = None
    initialized_ms: int | None = None
    ready_ms: int | None = None
    ready: bool = False
    containers: list[ContainerStatus] = field(default_factory=list)
    deletion_ms: int | None = None
    busy: bool = False
    alive: bool = True
    index: int = -1


@dataclass(slots=True)
class Event:
    namespace: str
    name: str
    uid: str
    obj: dict[str, Any]
    count: int = 1


@dataclass(frozen=True, slots=True)
class GeneratedChange:
    """One watch event: its type, the object, its identity and the observed time."""

    change_type: str
    kind: str
    api_version: str
    namespace: str
    name: str
    uid: str
    resource_version: str
    time_ms: int
    obj: dict[str, Any]


class RandomPool:
    """Objects to pick uniformly at random, with O(1) add and remove."""

    def __init__(self) -> None:
        self.items: list[Pod] = []

    def add(self, pod: Pod) -> None:
        pod.index = len(self.items)
        self.items.append(pod)

    def remove(self, pod: Pod) -> None:
        index = pod.index
        if index < 0:
            return
        last = self.items.pop()
        if last is not pod:
            self.items[index] = last
            last.index = index
        pod.index = -1

    def pick(self, rng: random.Random) -> Pod | None:
        return self.items[rng.randrange(len(self.items))] if self.items else None


class SyntheticCluster:
    """Generates the history of one cluster in event-time order."""

    def __init__(
        self,
        pods: int,
        hours: float,
        seed: int,
        start_ms: int | None = None,
        rates: ChurnRates | None = None,
    ) -> None:
        if pods < 1:
            raise ValueError(f"pods must be at least 1, got {pods}")
        if hours < 0:
            raise ValueError(f"hours must be at least 0, got {hours}")
        self.rng = random.Random(seed)
        self.pod_count = pods
        self.start_ms = start_ms if start_ms is not None else parse_time_ms(DEFAULT_START)
        self.end_ms = self.start_ms + INITIAL_LIST_SPREAD_MS + int(hours * HOUR_MS)
        self.rates = rates or ChurnRates()
        self.resource_version = 1_000_000
        self.nodes: list[Node] = []
        self.namespaces: list[str] = []
        self.deployments: list[Deployment] = []
        self.root_ca: dict[str, dict[str, Any]] = {}
        self.running = RandomPool()
        self.failures: Counter[str] = Counter()
        self._queue: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._sequence = 0
        self._out: list[GeneratedChange] = []
        self._ip_counter = 0

    # Identity helpers

    def _uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _hex(self, digits: int) -> str:
        return f"{self.rng.getrandbits(digits * 4):0{digits}x}"

    def _suffix(self, length: int) -> str:
        alphabet = "bcdfghjklmnpqrstvwxz2456789"
        return "".join(self.rng.choice(alphabet) for _ in range(length))

    def _next_rv(self) -> str:
        self.resource_version += 1
        return str(self.resource_version)

    def _pod_ip(self) -> str:
        self._ip_counter += 1
        value = self._ip_counter
        return f"10.{64 + (value >> 16) % 64}.{(value >> 8) & 255}.{value & 255}"

    # Scheduling

    def _at(self, time_ms: int, action: Callable[..., None], *args: Any) -> None:
        if time_ms <= self.end_ms:
            self._sequence += 1
            heapq.heappush(self._queue, (time_ms, self._sequence, action, args))

    def _poisson(self, rate_per_hour: float, action: Callable[[int], None], now_ms: int) -> None:
        """Run `action` as a Poisson process with the given total rate per hour."""
        if rate_per_hour <= 0:
            return
        self._at(now_ms + int(self.rng.expovariate(rate_per_hour) * HOUR_MS) + 1, self._poisson_step, rate_per_hour, action)

    def _poisson_step(self, now_ms: int, rate_per_hour: float, action: Callable[[int], None]) -> None:
        action(now_ms)
        self._poisson(rate_per_hour, action, now_ms)

    def _emit(self, change_type: str, kind: str, api_version: str, obj: dict[str, Any], time_ms: int) -> None:
        metadata = obj["metadata"]
        self._out.append(
            GeneratedChange(
                change_type=change_type,
                kind=kind,
                api_version=api_version,
                namespace=metadata.get("namespace", ""),
                name=metadata["name"],
                uid=metadata["uid"],
                resource_version=metadata["resourceVersion"],
                time_ms=time_ms,
                obj=obj,
            )
        )

    # The whole history

    def changes(self) -> Iterator[GeneratedChange]:
        """Yield every change in observed-time order."""
        self._build()
        n_pods = sum(len(deployment.pods) for deployment in self.deployments)
        n_nodes = len(self.nodes)
        n_deployments = len(self.deployments)
        now = self.start_ms + INITIAL_LIST_SPREAD_MS
        rates = self.rates
        self._poisson(rates.readiness_flaps_per_pod * n_pods, self._readiness_flap, now)
        self._poisson(rates.rollouts_per_deployment * n_deployments, self._rollout, now)
        self._poisson(rates.image_pull_failures_per_pod * n_pods, self._image_pull_failure, now)
        self._poisson(rates.crash_loops_per_pod * n_pods, self._crash_loop, now)
        self._poisson(rates.oom_kills_per_pod * n_pods, self._oom_kill, now)
        self._poisson(rates.stuck_terminating_per_pod * n_pods, self._stuck_terminating, now)
        self._poisson(rates.unschedulable_per_pod * n_pods, self._unschedulable, now)
        self._poisson(rates.node_failures_per_node * n_nodes, self._node_failure, now)
        for node in self.nodes:
            self._at(now + self.rng.randrange(NODE_REPORT_INTERVAL_MS), self._node_report, node)

        yield from self._initial_list()
        while self._queue:
            time_ms, _, action, args = heapq.heappop(self._queue)
            action(time_ms, *args)
            if self._out:
                yield from self._out
                self._out.clear()

    # Initial objects

    def _build(self) -> None:
        rng = self.rng
        node_count = max(3, -(-self.pod_count // PODS_PER_NODE))
        for index in range(node_count):
            self.nodes.append(self._new_node(index))
        namespace_count = max(2, -(-self.pod_count // PODS_PER_NAMESPACE))
        self.namespaces = [
            f"{TEAMS[index % len(TEAMS)]}-{APP_WORDS[(index * 7) % len(APP_WORDS)]}-{index}" for index in range(namespace_count)
        ]
        self.root_ca = {namespace: self._root_ca_config_map(namespace) for namespace in self.namespaces}
        remaining = self.pod_count
        index = 0
        while remaining > 0:
            replicas = min(remaining, rng.choice((1, 1, 2, 2, 2, 3, 3, 4, 5, 6, 8, 12)))
            namespace = self.namespaces[index % namespace_count]
            name = f"{APP_WORDS[rng.randrange(len(APP_WORDS))]}-{APP_SUFFIXES[rng.randrange(len(APP_SUFFIXES))]}-{index}"
            deployment = self._new_deployment(namespace, name, replicas)
            self.deployments.append(deployment)
            for _ in range(replicas):
                pod = self._new_pod(deployment, deployment.revision, self.start_ms - rng.randrange(1, 30 * 86_400_000))
                pod.node = self.nodes[rng.randrange(node_count)]
                pod.ip = self._pod_ip()
                pod.phase = "Running"
                pod.scheduled_ms = pod.initialized_ms = pod.created_ms + 1000
                pod.start_ms = pod.created_ms + 2000
                pod.ready_ms = pod.created_ms + 15_000
                pod.ready = True
                for status in pod.containers:
                    status.state = {"running": {"startedAt": _ts(pod.created_ms + 4000)}}
                    status.ready = status.started = True
                deployment.pods.append(pod)
                self.running.add(pod)
            remaining -= replicas
            index += 1

    def _initial_list(self) -> Iterator[GeneratedChange]:
        objects: list[tuple[str, Any]] = [("Node", node) for node in self.nodes]
        objects += [("Object", config_map) for config_map in self.root_ca.values()]
        for deployment in self.deployments:
            objects.append(("Object", deployment.config_map))
            objects.append(("Object", deployment.secret))
            objects.append(("Deployment", deployment))
            objects.append(("Service", deployment.service))
            objects.append(("Endpoints", deployment))
            objects.extend(("Pod", pod) for pod in deployment.pods)
        step = INITIAL_LIST_SPREAD_MS / max(1, len(objects))
        for position, (kind, item) in enumerate(objects):
            now = self.start_ms + int(position * step)
            if kind == "Node":
                self._emit_node("ADDED", item, now)
            elif kind == "Deployment":
                self._emit_deployment("ADDED", item, now)
            elif kind == "Service":
                self._emit_service("ADDED", item, now)
            elif kind == "Endpoints":
                self._emit_endpoints("ADDED", item, now)
            elif kind == "Object":
                item["metadata"]["resourceVersion"] = self._next_rv()
                self._emit("ADDED", item["kind"], item["apiVersion"], item, now)
            else:
                self._emit_pod("ADDED", item, now)
            yield from self._out
            self._out.clear()

    def _new_node(self, index: int) -> Node:
        rng = self.rng
        zone = ZONES[index % len(ZONES)]
        instance_type = INSTANCE_TYPES[rng.randrange(len(INSTANCE_TYPES))]
        name = f"ip-10-0-{index // 250}-{index % 250 + 1}.eu-west-1.compute.internal"
        ip = f"10.0.{index // 250}.{index % 250 + 1}"
        created_ms = self.start_ms - rng.randrange(86_400_000, 60 * 86_400_000)
        labels = {
            "beta.kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/instance-type": instance_type,
            "beta.kubernetes.io/os": "linux",
            "eks.amazonaws.com/capacityType": rng.choice(("ON_DEMAND", "SPOT")),
            "eks.amazonaws.com/nodegroup": f"workers-{zone[-1]}",
            "eks.amazonaws.com/nodegroup-image": "ami-0a1b2c3d4e5f67890",
            "failure-domain.beta.kubernetes.io/region": "eu-west-1",
            "failure-domain.beta.kubernetes.io/zone": zone,
            "k8s.io/cloud-provider-aws": self._hex(32),
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "node.kubernetes.io/instance-type": instance_type,
            "topology.ebs.csi.aws.com/zone": zone,
            "topology.kubernetes.io/region": "eu-west-1",
            "topology.kubernetes.io/zone": zone,
        }
        annotations = {
            "alpha.kubernetes.io/provided-node-ip": ip,
            "csi.volume.kubernetes.io/nodeid": orjson.dumps({"ebs.csi.aws.com": f"i-{self._hex(17)}"}).decode(),
            "node.alpha.kubernetes.io/ttl": "0",
            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        }
        images = []
        for image_index in range(rng.randrange(40, 75)):
            repository = f"{REGISTRY}/{TEAMS[image_index % len(TEAMS)]}/{APP_WORDS[(image_index * 3 + index) % len(APP_WORDS)]}"
            digest = self._hex(64)
            images.append(
                {
                    "names": [f"{repository}@sha256:{digest}", f"{repository}:v1.{rng.randrange(80)}.{rng.randrange(10)}"],
                    "sizeBytes": rng.randrange(5_000_000, 900_000_000),
                }
            )
        cpu = {"m6i.2xlarge": 8, "m6i.4xlarge": 16, "r6i.2xlarge": 8, "c6i.4xlarge": 16}[instance_type]
        capacity = {
            "attachable-volumes-aws-ebs": "25",
            "cpu": str(cpu),
            "ephemeral-storage": "104845292Ki",
            "hugepages-1Gi": "0",
            "hugepages-2Mi": "0",
            "memory": f"{cpu * 4 * 1024 * 1024 - 500_000}Ki",
            "pods": "110",
        }
        allocatable = dict(capacity, cpu=f"{cpu * 1000 - 90}m", memory=f"{cpu * 4 * 1024 * 1024 - 1_500_000}Ki")
        node_info = {
            "architecture": "amd64",
            "bootID": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "containerRuntimeVersion": "containerd://1.7.11",
            "kernelVersion": "5.10.205-195.807.amzn2.x86_64",
            "kubeProxyVersion": "v1.28.5-eks-5e0fdde",
            "kubeletVersion": "v1.28.5-eks-5e0fdde",
            "machineID": self._hex(32),
            "operatingSystem": "linux",
            "osImage": "Amazon Linux 2",
            "systemUUID": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        }
        return Node(
            name=name,
            uid=self._uid(),
            index=index,
            zone=zone,
            instance_type=instance_type,
            created_ms=created_ms,
            ip=ip,
            labels=labels,
            annotations=annotations,
            images=images,
            capacity=capacity,
            allocatable=allocatable,
            node_info=node_info,
            ready_since_ms=created_ms + 60_000,
            heartbeat_ms=self.start_ms,
        )

    def _new_deployment(self, namespace: str, name: str, replicas: int) -> Deployment:
        rng = self.rng
        team = TEAMS[rng.randrange(len(TEAMS))]
        labels = {
            "app": name,
            "app.kubernetes.io/name": name,
            "app.kubernetes.io/instance": f"{name}-prod",
            "app.kubernetes.io/part-of": namespace,
            "app.kubernetes.io/managed-by": "Helm",
            "helm.sh/chart": f"{name}-{rng.randrange(1, 9)}.{rng.randrange(30)}.{rng.randrange(10)}",
            "team": team,
            "tier": rng.choice(("frontend", "backend", "worker")),
        }
        env = []
        for env_name in rng.sample(ENV_NAMES, rng.randrange(8, 24)):
            if rng.random() < 0.2:
                env.append(
                    {"name": env_name, "valueFrom": {"secretKeyRef": {"key": env_name.lower(), "name": f"{name}-secrets"}}}
                )
            else:
                env.append({"name": env_name, "value": f"{env_name.lower().replace('_', '-')}-{self._hex(rng.randrange(4, 24))}"})
        env.append({"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}})
        env.append({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}})
        deployment = Deployment(
            namespace=namespace,
            name=name,
            uid=self._uid(),
            labels=labels,
            annotations={
                "deployment.kubernetes.io/revision": "1",
                "meta.helm.sh/release-name": f"{name}-prod",
                "meta.helm.sh/release-namespace": namespace,
            },
            replicas=replicas,
            created_ms=self.start_ms - rng.randrange(86_400_000, 90 * 86_400_000),
            env=env,
            sidecar=rng.random() < 0.6,
            revision=None,  # type: ignore[arg-type]
        )
        deployment.revision = self._new_revision(deployment, f"v1.{rng.randrange(100)}.{rng.randrange(10)}")
        deployment.service = self._new_service(deployment)
        deployment.config_map, deployment.secret = self._config_objects(deployment)
        return deployment

    def _object_metadata(self, namespace: str, name: str, labels: dict[str, str], created_ms: int) -> dict[str, Any]:
        return {
            "creationTimestamp": _ts(created_ms),
            "labels": labels,
            "name": name,
            "namespace": namespace,
            "resourceVersion": "0",
            "uid": self._uid(),
        }

    def _root_ca_config_map(self, namespace: str) -> dict[str, Any]:
        """Build the kube-root-ca.crt ConfigMap that every namespace has and every pod's token volume reads."""
        body = "".join(self._hex(32) + "\n" for _ in range(24))
        certificate = f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"
        metadata = self._object_metadata(namespace, "kube-root-ca.crt", {}, self.start_ms - 90 * 86_400_000)
        metadata["annotations"] = {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {"ca.crt": certificate}}

    def _config_objects(self, deployment: Deployment) -> tuple[dict[str, Any], dict[str, Any]]:
        """Build the ConfigMap and Secret that a Deployment's pods read through envFrom, env and volumes."""
        labels = {"app": deployment.name, "app.kubernetes.io/managed-by": "Helm"}
        config_lines = [f"{key.lower()}: {self._hex(12)}" for key in ENV_NAMES[: self.rng.randrange(6, 20)]]
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self._object_metadata(deployment.namespace, f"{deployment.name}-config", labels, deployment.created_ms),
            "data": {"config.yaml": "\n".join(config_lines) + "\n", "LOG_LEVEL": "info"},
        }
        keys = [entry["valueFrom"]["secretKeyRef"]["key"] for entry in deployment.env if "secretKeyRef" in entry.get("valueFrom", {})]
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self._object_metadata(deployment.namespace, f"{deployment.name}-secrets", labels, deployment.created_ms),
            "type": "Opaque",
            "data": {key: base64.b64encode(self._hex(24).encode()).decode() for key in keys} or {"placeholder": ""},
        }
        return config_map, secret

    def _new_revision(self, deployment: Deployment, tag: str) -> Revision:
        rng = self.rng
        name = deployment.name
        image = f"{REGISTRY}/{deployment.labels['team']}/{name}:{tag}"
        revision_hash = self._suffix(10)
        uid = self._uid()
        labels = {**deployment.labels, "pod-template-hash": revision_hash, "version": tag}
        http_port = 8080
        app = {
            "name": name,
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "args": ["--config=/etc/app/config.yaml", f"--listen=:{http_port}", "--metrics=:9090"],
            "env": deployment.env,
            "envFrom": [{"configMapRef": {"name": f"{name}-config"}}],
            "ports": [
                {"containerPort": http_port, "name": "http", "protocol": "TCP"},
                {"containerPort": 9090, "name": "metrics", "protocol": "TCP"},
            ],
            "resources": {
                "limits": {"cpu": f"{rng.choice((500, 1000, 2000))}m", "memory": f"{rng.choice((256, 512, 1024, 2048))}Mi"},
                "requests": {"cpu": f"{rng.choice((100, 250, 500))}m", "memory": f"{rng.choice((128, 256, 512))}Mi"},
            },
            "livenessProbe": {
                "failureThreshold": 3,
                "httpGet": {"path": "/healthz", "port": http_port, "scheme": "HTTP"},
                "initialDelaySeconds": 10,
                "periodSeconds": 10,
                "successThreshold": 1,
                "timeoutSeconds": 2,
            },
            "readinessProbe": {
                "failureThreshold": 3,
                "httpGet": {"path": "/ready", "port": http_port, "scheme": "HTTP"},
                "periodSeconds": 5,
                "successThreshold": 1,
                "timeoutSeconds": 2,
            },
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "runAsUser": 10001,
            },
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "volumeMounts": [
                {"mountPath": "/etc/app", "name": "config", "readOnly": True},
                {"mountPath": "/var/run/secrets/app", "name": "secrets", "readOnly": True},
                {"mountPath": "/tmp", "name": "tmp"},
                {"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": "kube-api-access", "readOnly": True},
            ],
        }
        containers = [app]
        init_containers: list[dict[str, Any]] = []
        volumes: list[dict[str, Any]] = [
            {"configMap": {"defaultMode": 420, "name": f"{name}-config"}, "name": "config"},
            {"name": "secrets", "secret": {"defaultMode": 420, "secretName": f"{name}-secrets"}},
            {"emptyDir": {"sizeLimit": "256Mi"}, "name": "tmp"},
            {
                "name": "kube-api-access",
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"items": [{"key": "ca.crt", "path": "ca.crt"}], "name": "kube-root-ca.crt"}},
                        {
                            "downwardAPI": {
                                "items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}, "path": "namespace"}]
                            }
                        },
                    ],
                },
            },
        ]
        if deployment.sidecar:
            proxy_image = f"{REGISTRY}/istio/proxyv2:1.20.2"
            containers.append(
                {
                    "name": "istio-proxy",
                    "image": proxy_image,
                    "args": ISTIO_PROXY_ARGS,
                    "env": [
                        {"name": "PILOT_CERT_PROVIDER", "value": "istiod"},
                        {"name": "CA_ADDR", "value": "istiod.istio-system.svc:15012"},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
                        {"name": "INSTANCE_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
                        {"name": "SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.serviceAccountName"}}},
                        {"name": "HOST_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.hostIP"}}},
                        {"name": "ISTIO_CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"divisor": "0", "resource": "limits.cpu"}}},
                        {"name": "PROXY_CONFIG", "value": "{}\n"},
                        {"name": "ISTIO_META_POD_PORTS", "value": '[\n    {"name":"http","containerPort":8080,"protocol":"TCP"}\n]'},
                        {"name": "ISTIO_META_APP_CONTAINERS", "value": name},
                        {"name": "ISTIO_META_CLUSTER_ID", "value": "Kubernetes"},
                        {"name": "ISTIO_META_NODE_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}},
                        {"name": "ISTIO_META_INTERCEPTION_MODE", "value": "REDIRECT"},
                        {"name": "ISTIO_META_WORKLOAD_NAME", "value": name},
                        {"name": "ISTIO_META_OWNER", "value": f"kubernetes://apis/apps/v1/namespaces/{deployment.namespace}/deployments/{name}"},
                        {"name": "ISTIO_META_MESH_ID", "value": "cluster.local"},
                        {"name": "TRUST_DOMAIN", "value": "cluster.local"},
                    ],
                    "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
                    "readinessProbe": {
                        "failureThreshold": 30,
                        "httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"},
                        "initialDelaySeconds": 1,
                        "periodSeconds": 2,
                        "successThreshold": 1,
                        "timeoutSeconds": 3,
                    },
                    "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "privileged": False,
                        "readOnlyRootFilesystem": True,
                        "runAsGroup": 1337,
                        "runAsNonRoot": True,
                        "runAsUser": 1337,
                    },
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "volumeMounts": [
                        {"mountPath": "/var/run/secrets/workload-spiffe-uds", "name": "workload-socket"},
                        {"mountPath": "/var/lib/istio/data", "name": "istio-data"},
                        {"mountPath": "/etc/istio/proxy", "name": "istio-envoy"},
                        {"mountPath": "/var/run/secrets/tokens", "name": "istio-token"},
                        {"mountPath": "/etc/istio/pod", "name": "istio-podinfo"},
                    ],
                }
            )
            init_containers.append(
                {
                    "name": "istio-init",
                    "image": proxy_image,
                    "args": ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"],
                    "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
                    "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}, "runAsUser": 0},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                }
            )
            volumes += [
                {"emptyDir": {}, "name": "workload-socket"},
                {"emptyDir": {"medium": "Memory"}, "name": "istio-envoy"},
                {"emptyDir": {}, "name": "istio-data"},
                {"name": "istio-token", "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
                {
                    "downwardAPI": {
                        "defaultMode": 420,
                        "items": [
                            {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels"}, "path": "labels"},
                            {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.annotations"}, "path": "annotations"},
                        ],
                    },
                    "name": "istio-podinfo",
                },
            ]
        spec = {
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": name}}, "topologyKey": "topology.kubernetes.io/zone"},
                            "weight": 100,
                        }
                    ]
                }
            },
            "containers": containers,
            "dnsPolicy": "ClusterFirst",
            "enableServiceLinks": False,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "securityContext": {"fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "serviceAccount": name,
            "serviceAccountName": name,
            "terminationGracePeriodSeconds": 30,
            "tolerations": TOLERATIONS,
            "topologySpreadConstraints": [
                {"labelSelector": {"matchLabels": {"app": name}}, "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
            ],
            "volumes": volumes,
        }
        if init_containers:
            spec["initContainers"] = init_containers
        template = {
            "metadata": {
                "annotations": {"kubectl.kubernetes.io/restartedAt": _ts(self.start_ms - 86_400_000), "prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
                "creationTimestamp": None,
                "labels": {key: value for key, value in labels.items() if key != "pod-template-hash"},
            },
            "spec": spec,
        }
        owner_references = [
            {
                "apiVersion": "apps/v1",
                "blockOwnerDeletion": True,
                "controller": True,
                "kind": "ReplicaSet",
                "name": f"{name}-{revision_hash}",
                "uid": uid,
            }
        ]
        return Revision(revision_hash, uid, image, labels, owner_references, containers, init_containers, spec, template)

    def _new_service(self, deployment: Deployment) -> Service:
        rng = self.rng
        name = deployment.name
        ports = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]
        ports += [
            {"name": f"tcp-{port}", "port": port, "protocol": "TCP", "targetPort": port}
            for port in rng.sample((443, 8443, 9000, 9090, 9443, 15020, 5432, 6379), rng.randrange(1, 6))
        ]
        selector = {"app": name, "app.kubernetes.io/instance": f"{name}-prod"}
        labels = {key: value for key, value in deployment.labels.items() if not key.startswith("tier")}
        load_balancer = rng.random() < 0.2
        spec: dict[str, Any] = {
            "clusterIP": f"172.20.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": ports,
            "selector": selector,
            "sessionAffinity": "None",
            "type": "LoadBalancer" if load_balancer else "ClusterIP",
        }
        spec["clusterIPs"] = [spec["clusterIP"]]
        applied = {"apiVersion": "v1", "kind": "Service", "metadata": {"labels": labels, "name": name, "namespace": deployment.namespace}, "spec": {"ports": ports, "selector": selector, "type": spec["type"]}}
        annotations = {
            "kubectl.kubernetes.io/last-applied-configuration": orjson.dumps(applied).decode() + "\n",
            "meta.helm.sh/release-name": f"{name}-prod",
            "meta.helm.sh/release-namespace": deployment.namespace,
            "prometheus.io/scrape": "true",
        }
        status: dict[str, Any] = {"loadBalancer": {}}
        if load_balancer:
            annotations.update(
                {
                    "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
                    "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal",
                    "service.beta.kubernetes.io/aws-load-balancer-backend-protocol": "tcp",
                    "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled": "true",
                }
            )
            status = {"loadBalancer": {"ingress": [{"hostname": f"{name}-{self._hex(16)}.elb.eu-west-1.amazonaws.com"}]}}
            spec["allocateLoadBalancerNodePorts"] = True
            spec["externalTrafficPolicy"] = "Cluster"
        created_ms = deployment.created_ms
        uid = self._uid()
        obj = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "annotations": annotations,
                "creationTimestamp": _ts(created_ms),
                "finalizers": ["service.kubernetes.io/load-balancer-cleanup"] if load_balancer else [],
                "labels": labels,
                "name": name,
                "namespace": deployment.namespace,
                "resourceVersion": "0",
                "uid": uid,
            },
            "spec": spec,
            "status": status,
        }
        return Service(deployment.namespace, name, uid, created_ms, obj, self._uid())

    def _new_pod(self, deployment: Deployment, revision: Revision, created_ms: int) -> Pod:
        pod = Pod(
            name=f"{deployment.name}-{revision.hash}-{self._suffix(5)}",
            uid=self._uid(),
            deployment=deployment,
            revision=revision,
            created_ms=created_ms,
        )
        pod.containers = [
            ContainerStatus(
                name=container["name"],
                image=container["image"],
                state={"waiting": {"reason": "ContainerCreating"}},
                last_state={},
                ready=False,
                started=False,
                restart_count=0,
                container_id="",
            )
            for container in revision.containers
        ]
        return pod

    # Renderers

    def _emit_node(self, change_type: str, node: Node, now: int) -> None:
        node.heartbeat_ms = now
        heartbeat = _ts(now)
        conditions = [
            {
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": _ts(node.created_ms + 60_000),
                "message": text[1],
                "reason": text[0],
                "status": "False",
                "type": condition_type,
            }
            for condition_type, text in NODE_CONDITION_TEXT.items()
        ]
        if node.ready == "True":
            ready = {"reason": "KubeletReady", "message": "kubelet is posting ready status", "status": "True"}
        elif node.ready == "False":
            ready = {
                "reason": "KubeletNotReady",
                "message": "PLEG is not healthy: pleg was last seen active 3m12.8s ago; threshold is 3m0s",
                "status": "False",
            }
        else:
            ready = {"reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status.", "status": "Unknown"}
        conditions.append({"lastHeartbeatTime": heartbeat, "lastTransitionTime": _ts(node.ready_since_ms), "type": "Ready", **ready})
        spec: dict[str, Any] = {
            "podCIDR": f"10.{64 + node.index // 256}.{node.index % 256}.0/24",
            "podCIDRs": [f"10.{64 + node.index // 256}.{node.index % 256}.0/24"],
            "providerID": f"aws:///{node.zone}/i-{node.node_info['machineID'][:17]}",
        }
        if node.ready != "True":
            effect_key = "node.kubernetes.io/not-ready" if node.ready == "False" else "node.kubernetes.io/unreachable"
            spec["taints"] = [
                {"effect": "NoSchedule", "key": effect_key, "timeAdded": _ts(node.ready_since_ms)},
                {"effect": "NoExecute", "key": effect_key, "timeAdded": _ts(node.ready_since_ms)},
            ]
        obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "annotations": node.annotations,
                "creationTimestamp": _ts(node.created_ms),
                "labels": node.labels,
                "name": node.name,
                "resourceVersion": self._next_rv(),
                "uid": node.uid,
            },
            "spec": spec,
            "status": {
                "addresses": [
                    {"address": node.ip, "type": "InternalIP"},
                    {"address": node.name, "type": "InternalDNS"},
                    {"address": node.name, "type": "Hostname"},
                ],
                "allocatable": node.allocatable,
                "capacity": node.capacity,
                "conditions": conditions,
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "images": node.images,
                "nodeInfo": node.node_info,
            },
        }
        self._emit(change_type, "Node", "v1", obj, now)

    def _emit_deployment(self, change_type: str, deployment: Deployment, now: int) -> None:
        revision = deployment.revision
        ready = sum(1 for pod in deployment.pods if pod.ready and pod.alive)
        updated = sum(1 for pod in deployment.pods if pod.alive and pod.revision is revision)
        spec = {
            "progressDeadlineSeconds": 600,
            "replicas": deployment.replicas,
            "revisionHistoryLimit": 10,
            "selector": {"matchLabels": {"app": deployment.name, "app.kubernetes.io/instance": f"{deployment.name}-prod"}},
            "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}, "type": "RollingUpdate"},
            "template": revision.template,
        }
        applied = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"labels": deployment.labels, "name": deployment.name, "namespace": deployment.namespace},
            "spec": {"replicas": deployment.replicas, "selector": spec["selector"], "template": revision.template},
        }
        if deployment.progressing_ok:
            progressing = {
                "reason": "NewReplicaSetAvailable" if not deployment.rolling else "ReplicaSetUpdated",
                "message": f'ReplicaSet "{deployment.name}-{revision.hash}" '
                + ("has successfully progressed." if not deployment.rolling else "is progressing."),
                "status": "True",
            }
        else:
            progressing = {
                "reason": "ProgressDeadlineExceeded",
                "message": f'ReplicaSet "{deployment.name}-{revision.hash}" has timed out progressing.',
                "status": "False",
            }
        available = ready >= max(1, deployment.replicas - deployment.replicas // 4)
        obj = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "annotations": {
                    **deployment.annotations,
                    "deployment.kubernetes.io/revision": str(deployment.generation),
                    "kubectl.kubernetes.io/last-applied-configuration": orjson.dumps(applied).decode() + "\n",
                },
                "creationTimestamp": _ts(deployment.created_ms),
                "generation": deployment.generation,
                "labels": deployment.labels,
                "name": deployment.name,
                "namespace": deployment.namespace,
                "resourceVersion": self._next_rv(),
                "uid": deployment.uid,
            },
            "spec": spec,
            "status": {
                "availableReplicas": ready,
                "conditions": [
                    {
                        "lastTransitionTime": _ts(deployment.created_ms + 30_000),
                        "lastUpdateTime": _ts(now),
                        "message": "Deployment has minimum availability." if available else "Deployment does not have minimum availability.",
                        "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                        "status": "True" if available else "False",
                        "type": "Available",
                    },
                    {
                        "lastTransitionTime": _ts(deployment.progressing_changed_ms or deployment.created_ms),
                        "lastUpdateTime": _ts(now),
                        "type": "Progressing",
                        **progressing,
                    },
                ],
                "observedGeneration": deployment.generation,
                "readyReplicas": ready,
                "replicas": sum(1 for pod in deployment.pods if pod.alive),
                "updatedReplicas": updated,
            },
        }
        self._emit(change_type, "Deployment", "apps/v1", obj, now)

    def _emit_service(self, change_type: str, service: Service, now: int) -> None:
        obj = dict(service.obj)
        metadata = dict(obj["metadata"], resourceVersion=self._next_rv())
        if service.deletion_ms is not None:
            metadata["deletionTimestamp"] = _ts(service.deletion_ms)
            metadata["deletionGracePeriodSeconds"] = 0
        obj["metadata"] = metadata
        self._emit(change_type, "Service", "v1", obj, now)

    def _emit_endpoints(self, change_type: str, deployment: Deployment, now: int) -> None:
        """Emit the Endpoints of a Deployment's Service: the addresses of its ready pods."""
        service = deployment.service
        if service is None:
            return
        ready = [pod for pod in deployment.pods if pod.alive and pod.ready and pod.deletion_ms is None and pod.node is not None]
        not_ready = [pod for pod in deployment.pods if pod.alive and not pod.ready and pod.deletion_ms is None and pod.node is not None]

        def address(pod: Pod) -> dict[str, Any]:
            return {
                "ip": pod.ip,
                "nodeName": pod.node.name if pod.node is not None else "",
                "targetRef": {"kind": "Pod", "name": pod.name, "namespace": deployment.namespace, "uid": pod.uid},
            }

        subsets = []
        if ready or not_ready:
            subset: dict[str, Any] = {
                "ports": [{"name": port["name"], "port": 8080 if port["name"] == "http" else port["port"], "protocol": "TCP"} for port in service.obj["spec"]["ports"]]
            }
            if ready:
                subset["addresses"] = [address(pod) for pod in ready]
            if not_ready:
                subset["notReadyAddresses"] = [address(pod) for pod in not_ready]
            subsets.append(subset)
        obj = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": _ts(now)},
                "creationTimestamp": _ts(service.created_ms),
                "labels": service.obj["metadata"]["labels"],
                "name": service.name,
                "namespace": service.namespace,
                "resourceVersion": self._next_rv(),
                "uid": service.endpoints_uid,
            },
            "subsets": subsets,
        }
        self._emit(change_type, "Endpoints", "v1", obj, now)

    def _emit_pod(self, change_type: str, pod: Pod, now: int) -> None:
        revision = pod.revision
        metadata: dict[str, Any] = {
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": revision.template["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"],
                "prometheus.io/port": "9090",
                "prometheus.io/scrape": "true",
            },
            "creationTimestamp": _ts(pod.created_ms),
            "generateName": f"{pod.deployment.name}-{revision.hash}-",
            "labels": revision.labels,
            "name": pod.name,
            "namespace": pod.deployment.namespace,
            "ownerReferences": revision.owner_references,
            "resourceVersion": self._next_rv(),
            "uid": pod.uid,
        }
        if pod.deployment.sidecar:
            metadata["annotations"]["sidecar.istio.io/status"] = (
                '{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["workload-socket",'
                '"istio-envoy","istio-data","istio-podinfo","istio-token"],"imagePullSecrets":null,"revision":"default"}'
            )
        if pod.ip:
            metadata["annotations"]["cni.projectcalico.org/podIP"] = f"{pod.ip}/32"
            metadata["annotations"]["cni.projectcalico.org/podIPs"] = f"{pod.ip}/32"
        if pod.deletion_ms is not None:
            metadata["deletionTimestamp"] = _ts(pod.deletion_ms)
            metadata["deletionGracePeriodSeconds"] = 30
        spec = revision.spec
        if pod.node is not None:
            spec = dict(spec, nodeName=pod.node.name)
        created = _ts(pod.created_ms)
        scheduled_condition: dict[str, Any] = {"lastProbeTime": None, "type": "PodScheduled"}
        if pod.scheduled_ms is not None:
            scheduled_condition.update(status="True", lastTransitionTime=_ts(pod.scheduled_ms))
        else:
            scheduled_condition.update(
                status="False",
                lastTransitionTime=_ts(pod.unschedulable_since_ms or pod.created_ms),
                reason="Unschedulable",
                message="0/%d nodes are available: 3 node(s) had untolerated taint {dedicated: gpu}, "
                "%d Insufficient memory. preemption: 0/%d nodes are available: %d No preemption victims found for "
                "incoming pod." % (len(self.nodes), len(self.nodes) - 3, len(self.nodes), len(self.nodes)),
            )
        unready = [status.name for status in pod.containers if not status.ready]
        ready_text = {"status": "True"} if pod.ready else {
            "status": "False",
            "reason": "ContainersNotReady",
            "message": f"containers with unready status: [{' '.join(unready)}]",
        }
        conditions: list[dict[str, Any]] = [scheduled_condition]
        if pod.scheduled_ms is not None:
            conditions = [
                {"lastProbeTime": None, "lastTransitionTime": _ts(pod.initialized_ms or pod.scheduled_ms), "status": "True", "type": "PodReadyToStartContainers"},
                {"lastProbeTime": None, "lastTransitionTime": _ts(pod.initialized_ms or pod.scheduled_ms), "status": "True", "type": "Initialized"},
                {"lastProbeTime": None, "lastTransitionTime": _ts(pod.ready_ms or pod.scheduled_ms), "type": "Ready", **ready_text},
                {"lastProbeTime": None, "lastTransitionTime": _ts(pod.ready_ms or pod.scheduled_ms), "type": "ContainersReady", **ready_text},
                scheduled_condition,
            ]
        status: dict[str, Any] = {"conditions": conditions, "phase": pod.phase, "qosClass": "Burstable"}
        if pod.node is not None:
            status["hostIP"] = pod.node.ip
            status["hostIPs"] = [{"ip": pod.node.ip}]
        if pod.start_ms is not None:
            status["startTime"] = _ts(pod.start_ms)
        if pod.ip:
            status["podIP"] = pod.ip
            status["podIPs"] = [{"ip": pod.ip}]
        if pod.scheduled_ms is not None:
            status["containerStatuses"] = [self._container_status(status_) for status_ in pod.containers]
            if revision.init_containers:
                init = revision.init_containers[0]
                status["initContainerStatuses"] = [
                    {
                        "containerID": f"containerd://{hashlib.sha256(pod.uid.encode()).hexdigest()}",
                        "image": init["image"],
                        "imageID": init["image"].split(":")[0] + "@sha256:" + hashlib.sha256(init["image"].encode()).hexdigest(),
                        "lastState": {},
                        "name": init["name"],
                        "ready": True,
                        "restartCount": 0,
                        "started": False,
                        "state": {
                            "terminated": {
                                "containerID": f"containerd://{hashlib.sha256(pod.uid.encode()).hexdigest()}",
                                "exitCode": 0,
                                "finishedAt": created,
                                "reason": "Completed",
                                "startedAt": created,
                            }
                        },
                    }
                ]
        obj = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}
        self._emit(change_type, "Pod", "v1", obj, now)

    @staticmethod
    def _container_status(status: ContainerStatus) -> dict[str, Any]:
        rendered: dict[str, Any] = {
            "image": status.image,
            "imageID": status.image.split(":")[0] + "@sha256:" + hashlib.sha256(status.image.encode()).hexdigest(),
            "lastState": status.last_state,
            "name": status.name,
            "ready": status.ready,
            "restartCount": status.restart_count,
            "started": status.started,
            "state": status.state,
        }
        if status.container_id:
            rendered["containerID"] = status.container_id
        return rendered

    def _event(self, now: int, involved: Pod | Node, event_type: str, reason: str, message: str, component: str = "kubelet", repeat: Event | None = None) -> Event:
        """Emit a new Event, or a MODIFIED one with count+1 when `repeat` is given."""
        if repeat is not None:
            repeat.count += 1
            obj = dict(repeat.obj)
            obj["count"] = repeat.count
            obj["lastTimestamp"] = _ts(now)
            obj["metadata"] = dict(obj["metadata"], resourceVersion=self._next_rv())
            repeat.obj = obj
            self._emit("MODIFIED", "Event", "v1", obj, now)
            return repeat
        if isinstance(involved, Node):
            namespace = "default"
            involved_object = {"kind": "Node", "name": involved.name, "uid": involved.name}
            host = involved.name
        else:
            namespace = involved.deployment.namespace
            involved_object = {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": involved.name,
                "namespace": namespace,
                "resourceVersion": str(self.resource_version),
                "uid": involved.uid,
            }
            if component == "kubelet":
                involved_object["fieldPath"] = f"spec.containers{{{involved.containers[0].name}}}"
            host = involved.node.name if involved.node is not None else ""
        name = f"{involved_object['name']}.{self._hex(16)}"
        timestamp = _ts(now)
        obj = {
            "apiVersion": "v1",
            "count": 1,
            "eventTime": None,
            "firstTimestamp": timestamp,
            "involvedObject": involved_object,
            "kind": "Event",
            "lastTimestamp": timestamp,
            "message": message,
            "metadata": {
                "creationTimestamp": timestamp,
                "name": name,
                "namespace": namespace,
                "resourceVersion": self._next_rv(),
                "uid": self._uid(),
            },
            "reason": reason,
            "reportingComponent": component if component != "kubelet" else "",
            "reportingInstance": host if component == "kubelet" else "",
            "source": {"component": component, "host": host} if host else {"component": component},
            "type": event_type,
        }
        event = Event(namespace, name, obj["metadata"]["uid"], obj)
        self._emit("ADDED", "Event", "v1", obj, now)
        self._at(now + EVENT_TTL_MS, self._expire_event, event)
        return event

    def _expire_event(self, now: int, event: Event) -> None:
        last = parse_time_ms(event.obj["lastTimestamp"]) or now
        if last + EVENT_TTL_MS > now:
            self._at(last + EVENT_TTL_MS, self._expire_event, event)
            return
        self._emit("DELETED", "Event", "v1", event.obj, now)

    # Node activity

    def _node_report(self, now: int, node: Node) -> None:
        if node.ready != "Unknown":
            self._emit_node("MODIFIED", node, now)
        self._at(now + NODE_REPORT_INTERVAL_MS + self.rng.randrange(-5000, 5000), self._node_report, node)

    def _node_failure(self, now: int) -> None:
        node = self.nodes[self.rng.randrange(len(self.nodes))]
        if node.failing:
            return
        node.failing = True
        node.ready = self.rng.choice(("False", "Unknown"))
        node.ready_since_ms = now
        self.failures[f"node_{node.ready.lower()}"] += 1
        self._emit_node("MODIFIED", node, now)
        self._event(now, node, "Normal", "NodeNotReady", f"Node {node.name} status is now: NodeNotReady", component="node-controller")
        self._at(now + self.rng.randrange(180_000, 1_800_000), self._node_recover, node)

    def _node_recover(self, now: int, node: Node) -> None:
        node.failing = False
        node.ready = "True"
        node.ready_since_ms = now
        self._emit_node("MODIFIED", node, now)
        self._event(now, node, "Normal", "NodeReady", f"Node {node.name} status is now: NodeReady")

    # Pod activity

    def _pick_running(self) -> Pod | None:
        for _ in range(5):
            pod = self.running.pick(self.rng)
            if pod is not None and not pod.busy and pod.alive and pod.deletion_ms is None:
                return pod
        return None

    def _readiness_flap(self, now: int) -> None:
        pod = self._pick_running()
        if pod is None:
            return
        pod.busy = True
        pod.ready = False
        pod.ready_ms = now
        pod.containers[-1].ready = False
        self._emit_pod("MODIFIED", pod, now)
        self._event(now, pod, "Warning", "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503")
        self._at(now + self.rng.randrange(5_000, 120_000), self._become_ready, pod)

    def _become_ready(self, now: int, pod: Pod) -> None:
        if not pod.alive or pod.deletion_ms is not None:
            return
        for status in pod.containers:
            status.ready = True
            status.started = True
        pod.ready = True
        pod.ready_ms = now
        pod.busy = False
        self._emit_pod("MODIFIED", pod, now)
        self._emit_endpoints("MODIFIED", pod.deployment, now)
        self._update_deployment(pod.deployment, now)

    def _crash_loop(self, now: int) -> None:
        pod = self._pick_running()
        if pod is None:
            return
        pod.busy = True
        self.failures["crash_loop"] += 1
        self._crash(now, pod, 0, now + self.rng.randrange(600_000, 3_600_000), None)

    def _crash(self, now: int, pod: Pod, attempt: int, until_ms: int, backoff_event: Event | None) -> None:
        """Make the app container exit and wait in CrashLoopBackOff, then run again, until `until_ms`."""
        if not pod.alive:
            return
        status = pod.containers[0]
        started = status.state.get("running", {}).get("startedAt", _ts(now - 5000))
        status.last_state = {
            "terminated": {
                "containerID": status.container_id,
                "exitCode": 1,
                "finishedAt": _ts(now),
                "reason": "Error",
                "startedAt": started,
            }
        }
        status.restart_count += 1
        delay_s = min(300, 10 * 2**attempt)
        status.state = {
            "waiting": {
                "message": f"back-off {delay_s // 60}m{delay_s % 60}s restarting failed container={status.name} pod={pod.name}_{pod.deployment.namespace}({pod.uid})"
                if delay_s >= 60
                else f"back-off {delay_s}s restarting failed container={status.name} pod={pod.name}_{pod.deployment.namespace}({pod.uid})",
                "reason": "CrashLoopBackOff",
            }
        }
        status.ready = status.started = False
        pod.ready = False
        pod.ready_ms = now
        self._emit_pod("MODIFIED", pod, now)
        backoff_event = self._event(
            now, pod, "Warning", "BackOff", "Back-off restarting failed container", repeat=backoff_event
        )
        restart_ms = now + delay_s * 1000
        self._at(restart_ms, self._crash_restart, pod, attempt, until_ms, backoff_event)

    def _crash_restart(self, now: int, pod: Pod, attempt: int, until_ms: int, backoff_event: Event) -> None:
        if not pod.alive:
            return
        status = pod.containers[0]
        status.container_id = f"containerd://{self._hex(64)}"
        status.state = {"running": {"startedAt": _ts(now)}}
        status.started = True
        self._emit_pod("MODIFIED", pod, now)
        if now >= until_ms:
            self._at(now + 10_000, self._become_ready, pod)
            return
        self._at(now + self.rng.randrange(2_000, 20_000), self._crash, pod, attempt + 1, until_ms, backoff_event)

    def _oom_kill(self, now: int) -> None:
        pod = self._pick_running()
        if pod is None:
            return
        self.failures["oom_killed"] += 1
        status = pod.containers[0]
        status.last_state = {
            "terminated": {
                "containerID": status.container_id,
                "exitCode": 137,
                "finishedAt": _ts(now),
                "reason": "OOMKilled",
                "startedAt": status.state.get("running", {}).get("startedAt", _ts(now - 60_000)),
            }
        }
        status.restart_count += 1
        status.container_id = f"containerd://{self._hex(64)}"
        status.state = {"running": {"startedAt": _ts(now + 1000)}}
        self._emit_pod("MODIFIED", pod, now)
        if pod.node is not None:
            self._event(now, pod.node, "Warning", "OOMKilling", f"Memory cgroup out of memory: Killed process {self.rng.randrange(1000, 99999)} ({pod.deployment.name})", component="kernel-monitor")

    def _stuck_terminating(self, now: int) -> None:
        pod = self._pick_running()
        if pod is None:
            return
        self.failures["stuck_terminating"] += 1
        pod.busy = True
        self._terminate(now, pod, delete_after_ms=self.rng.randrange(900_000, 5_400_000))

    def _unschedulable(self, now: int) -> None:
        """Add a replica to a Deployment that finds no node for a while, then starts."""
        deployment = self.deployments[self.rng.randrange(len(self.deployments))]
        if deployment.rolling:
            return
        self.failures["unschedulable"] += 1
        pod = self._new_pod(deployment, deployment.revision, now)
        pod.unschedulable_since_ms = now
        deployment.pods.append(pod)
        deployment.replicas += 1
        self._emit_pod("ADDED", pod, now)
        message = f"0/{len(self.nodes)} nodes are available: 3 node(s) had untolerated taint {{dedicated: gpu}}, {len(self.nodes) - 3} Insufficient memory."
        event = self._event(now, pod, "Warning", "FailedScheduling", message, component="default-scheduler")
        until = now + self.rng.randrange(120_000, 1_200_000)
        self._at(now + 60_000, self._still_unschedulable, pod, event, until)

    def _still_unschedulable(self, now: int, pod: Pod, event: Event, until: int) -> None:
        if now >= until:
            self._schedule(now, pod)
            return
        self._event(now, pod, "Warning", "FailedScheduling", "", repeat=event)
        self._at(now + 60_000, self._still_unschedulable, pod, event, until)

    def _image_pull_failure(self, now: int) -> None:
        """Roll a Deployment out to an image tag that does not exist, then roll it back."""
        deployment = self.deployments[self.rng.randrange(len(self.deployments))]
        if deployment.rolling:
            return
        self.failures["image_pull"] += 1
        deployment.rolling = True
        deployment.generation += 1
        old_revision = deployment.revision
        bad_revision = self._new_revision(deployment, f"v9.{self.rng.randrange(100)}.0-rc{self.rng.randrange(9)}")
        deployment.revision = bad_revision
        self._emit_deployment("MODIFIED", deployment, now)
        pod = self._new_pod(deployment, bad_revision, now)
        deployment.pods.append(pod)
        self._emit_pod("ADDED", pod, now)
        pod.node = self.nodes[self.rng.randrange(len(self.nodes))]
        pod.scheduled_ms = pod.initialized_ms = now + 1000
        pod.start_ms = now + 1000
        pod.ip = self._pod_ip()
        self._event(now + 1000, pod, "Normal", "Scheduled", f"Successfully assigned {deployment.namespace}/{pod.name} to {pod.node.name}", component="default-scheduler")
        until = now + self.rng.randrange(300_000, 2_400_000)
        self._at(now + 3000, self._pull_fails, pod, 0, until, old_revision, None)

    def _pull_fails(self, now: int, pod: Pod, attempt: int, until: int, old_revision: Revision, events: tuple[Event, Event, Event] | None) -> None:
        deployment = pod.deployment
        status = pod.containers[0]
        reason = "ErrImagePull" if attempt % 2 == 0 else "ImagePullBackOff"
        message = (
            f'rpc error: code = NotFound desc = failed to pull and unpack image "{status.image}": failed to resolve reference '
            f'"{status.image}": {status.image}: not found'
            if reason == "ErrImagePull"
            else f'Back-off pulling image "{status.image}"'
        )
        status.state = {"waiting": {"message": message, "reason": reason}}
        pod.phase = "Pending"
        self._emit_pod("MODIFIED", pod, now)
        if events is None:
            events = (
                self._event(now, pod, "Warning", "Failed", f'Failed to pull image "{status.image}": {message}'),
                self._event(now, pod, "Warning", "Failed", "Error: ErrImagePull"),
                self._event(now, pod, "Warning", "Failed", "Error: ImagePullBackOff"),
            )
        else:
            self._event(now, pod, "", "", "", repeat=events[1] if reason == "ErrImagePull" else events[2])
        if deployment.progressing_ok and now - pod.created_ms > 600_000:
            deployment.progressing_ok = False
            deployment.progressing_changed_ms = now
            self._emit_deployment("MODIFIED", deployment, now)
        if now >= until:
            self._rollback(now, pod, old_revision)
            return
        delay = min(300_000, 10_000 * 2 ** (attempt // 2))
        self._at(now + delay, self._pull_fails, pod, attempt + 1, until, old_revision, events)

    def _rollback(self, now: int, pod: Pod, old_revision: Revision) -> None:
        deployment = pod.deployment
        deployment.revision = old_revision
        deployment.generation += 1
        deployment.progressing_ok = True
        deployment.progressing_changed_ms = now
        self._terminate(now, pod, delete_after_ms=2000)
        deployment.rolling = False
        self._emit_deployment("MODIFIED", deployment, now + 1)

    def _terminate(self, now: int, pod: Pod, delete_after_ms: int) -> None:
        pod.deletion_ms = now + 30_000
        self.running.remove(pod)
        self._emit_pod("MODIFIED", pod, now)
        self._emit_endpoints("MODIFIED", pod.deployment, now)
        if pod.scheduled_ms is not None and pod.containers[0].state.get("running"):
            self._event(now, pod, "Normal", "Killing", f"Stopping container {pod.containers[0].name}")
        self._at(now + delete_after_ms, self._delete_pod, pod)

    def _delete_pod(self, now: int, pod: Pod) -> None:
        if not pod.alive:
            return
        pod.alive = False
        for status in pod.containers:
            status.ready = False
            if status.state.get("running"):
                status.state = {
                    "terminated": {
                        "containerID": status.container_id,
                        "exitCode": 0,
                        "finishedAt": _ts(now),
                        "reason": "Completed",
                        "startedAt": status.state["running"]["startedAt"],
                    }
                }
        pod.ready = False
        self._emit_pod("DELETED", pod, now)
        deployment = pod.deployment
        if pod in deployment.pods:
            deployment.pods.remove(pod)

    # Rollouts

    def _rollout(self, now: int) -> None:
        deployment = self.deployments[self.rng.randrange(len(self.deployments))]
        if deployment.rolling:
            return
        deployment.rolling = True
        deployment.generation += 1
        deployment.revision = self._new_revision(deployment, f"v1.{self.rng.randrange(100)}.{self.rng.randrange(10)}")
        self._emit_deployment("MODIFIED", deployment, now)
        old_pods = [pod for pod in deployment.pods if pod.alive and pod.deletion_ms is None]
        for position, old in enumerate(old_pods):
            old.busy = True
            self._at(now + position * 25_000 + 1000, self._replace_pod, deployment, old, position == len(old_pods) - 1)
        if not old_pods:
            deployment.rolling = False

    def _replace_pod(self, now: int, deployment: Deployment, old: Pod, last: bool) -> None:
        pod = self._new_pod(deployment, deployment.revision, now)
        deployment.pods.append(pod)
        self._emit_pod("ADDED", pod, now)
        self._at(now + self.rng.randrange(200, 2000), self._schedule, pod)
        self._at(now + 20_000, self._retire, deployment, old, last)

    def _retire(self, now: int, deployment: Deployment, old: Pod, last: bool) -> None:
        if old.alive and old.deletion_ms is None:
            self._terminate(now, old, delete_after_ms=self.rng.randrange(2_000, 30_000))
        if last:
            deployment.rolling = False
            self._emit_deployment("MODIFIED", deployment, now + 1)

    def _schedule(self, now: int, pod: Pod) -> None:
        if not pod.alive:
            return
        pod.node = self.nodes[self.rng.randrange(len(self.nodes))]
        pod.scheduled_ms = pod.initialized_ms = now
        pod.unschedulable_since_ms = None
        pod.start_ms = now
        pod.ip = self._pod_ip()
        self._emit_pod("MODIFIED", pod, now)
        self._event(now, pod, "Normal", "Scheduled", f"Successfully assigned {pod.deployment.namespace}/{pod.name} to {pod.node.name}", component="default-scheduler")
        self._at(now + self.rng.randrange(1_000, 15_000), self._start, pod)

    def _start(self, now: int, pod: Pod) -> None:
        if not pod.alive:
            return
        pod.phase = "Running"
        for status in pod.containers:
            status.container_id = f"containerd://{self._hex(64)}"
            status.state = {"running": {"startedAt": _ts(now)}}
            status.started = True
        self._event(now, pod, "Normal", "Pulled", f'Container image "{pod.containers[0].image}" already present on machine')
        self._event(now, pod, "Normal", "Created", f"Created container {pod.containers[0].name}")
        self._event(now, pod, "Normal", "Started", f"Started container {pod.containers[0].name}")
        self._emit_pod("MODIFIED", pod, now)
        self.running.add(pod)
        self._at(now + self.rng.randrange(3_000, 30_000), self._become_ready, pod)

    def _update_deployment(self, deployment: Deployment, now: int) -> None:
        if deployment.rolling:
            self._emit_deployment("MODIFIED", deployment, now)


# Sinks


def watch_event_line(change: GeneratedChange) -> bytes:
    """Return the change as one watch-event JSON line with its observed time."""
    return b'{"type":"%s","time":"%s","object":%s}\n' % (
        change.change_type.encode(),
        _format_ms(change.time_ms).encode(),
        orjson.dumps(change.obj),
    )


@dataclass
class GenerationSummary:
    changes: int = 0
    bytes: int = 0
    seconds: float = 0.0
    first_ms: int | None = None
    last_ms: int | None = None
    by_kind: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)
    kind_bytes: Counter[str] = field(default_factory=Counter)
    kind_min: dict[str, int] = field(default_factory=dict)
    kind_max: dict[str, int] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    records: int = 0

    def count(self, change: GeneratedChange, size: int) -> None:
        self.changes += 1
        self.bytes += size
        if self.first_ms is None:
            self.first_ms = change.time_ms
        self.last_ms = change.time_ms
        kind = change.kind
        self.by_kind[kind] += 1
        self.by_type[change.change_type] += 1
        self.kind_bytes[kind] += size
        if size < self.kind_min.get(kind, 1 << 40):
            self.kind_min[kind] = size
        if size > self.kind_max.get(kind, 0):
            self.kind_max[kind] = size

    def lines(self) -> list[str]:
        span_hours = ((self.last_ms or 0) - (self.first_ms or 0)) / HOUR_MS
        rate = self.changes / self.seconds if self.seconds else 0.0
        out = [
            f"{self.changes} changes over {span_hours:.2f} h of event time, {self.bytes / 1e6:.1f} MB of object JSON, "
            f"generated in {self.seconds:.1f} s ({rate:,.0f} changes/s)",
            "types: " + ", ".join(f"{name} {count}" for name, count in sorted(self.by_type.items())),
        ]
        for kind, count in sorted(self.by_kind.items()):
            out.append(
                f"{kind}: {count} changes, object JSON {self.kind_min[kind] / 1024:.1f}-{self.kind_max[kind] / 1024:.1f} KiB, "
                f"mean {self.kind_bytes[kind] / count / 1024:.1f} KiB"
            )
        out.append("injected failures: " + (", ".join(f"{name} {count}" for name, count in sorted(self.failures.items())) or "none"))
        return out

    def figures(self) -> dict[str, Any]:
        return {
            "changes": self.changes,
            "object_bytes": self.bytes,
            "mean_object_bytes": round(self.bytes / self.changes) if self.changes else 0,
            "event_time_hours": round(((self.last_ms or 0) - (self.first_ms or 0)) / HOUR_MS, 3),
            "seconds": round(self.seconds, 2),
            "by_kind": dict(self.by_kind),
            "by_type": dict(self.by_type),
            "failures": dict(self.failures),
            "records": self.records,
        }


def write_file(cluster: SyntheticCluster, out: Path, max_changes: int | None = None) -> GenerationSummary:
    """Write the history as watch-event JSON lines."""
    summary = GenerationSummary()
    started = time.monotonic()
    with open(out, "wb", buffering=1 << 20) as handle:
        for change in cluster.changes():
            line = watch_event_line(change)
            handle.write(line)
            summary.count(change, len(line))
            if max_changes is not None and summary.changes >= max_changes:
                break
    summary.seconds = time.monotonic() - started
    summary.failures = Counter(cluster.failures)
    return summary


class RecordLog:
    """Partition, offset and change count of every changes-topic record a producer delivered."""

    def __init__(self) -> None:
        self.records: dict[int, list[tuple[int, int]]] = {}

    def add(self, partition: int, offset: int, changes: int) -> None:
        self.records.setdefault(partition, []).append((offset, changes))

    def cumulative(self) -> dict[int, list[tuple[int, int]]]:
        """Return, per partition, (offset, changes in records up to and including it), by offset."""
        result: dict[int, list[tuple[int, int]]] = {}
        for partition, records in self.records.items():
            total = 0
            rows = []
            for offset, count in sorted(records):
                total += count
                rows.append((offset, total))
            result[partition] = rows
        return result

    @property
    def total_changes(self) -> int:
        return sum(count for records in self.records.values() for _, count in records)

    @property
    def total_records(self) -> int:
        return sum(len(records) for records in self.records.values())


def changes_in_batch(value: bytes) -> int:
    """Return the number of changes in an encoded ChangeBatch without decoding it.

    After the 10-byte single-object header, an Avro array starts with its first block's item count
    as a zigzag varint. fastavro writes a non-empty array as one block, so that count is the total.
    """
    shift = 0
    result = 0
    position = 10
    while True:
        byte = value[position]
        result |= (byte & 0x7F) << shift
        position += 1
        if not byte & 0x80:
            break
        shift += 7
    return (result >> 1) ^ -(result & 1)


class _RecordingProducer:
    """A confluent_kafka.Producer that notes the partition, offset and change count of each delivered record."""

    def __init__(self, producer: Producer, topic: str, record_log: RecordLog) -> None:
        self._producer = producer
        self._topic = topic
        self._log = record_log

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any = None, **kwargs: Any) -> None:
        if topic != self._topic:
            self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **kwargs)
            return
        changes = changes_in_batch(value)

        def delivered(error: Any, message: Any) -> None:
            if error is None:
                self._log.add(message.partition(), message.offset(), changes)
            if on_delivery is not None:
                on_delivery(error, message)

        self._producer.produce(topic, value=value, key=key, on_delivery=delivered, **kwargs)

    def poll(self, timeout: float) -> int:
        return self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        return self._producer.flush(timeout)

    def list_topics(self, *args: Any, **kwargs: Any) -> Any:
        return self._producer.list_topics(*args, **kwargs)


def to_resource_change(change: GeneratedChange, cluster_name: str) -> ResourceChange:
    return ResourceChange(
        cluster=cluster_name,
        api_version=change.api_version,
        kind=change.kind,
        namespace=change.namespace,
        name=change.name,
        uid=change.uid,
        resource_version=change.resource_version,
        change_type=change.change_type,  # type: ignore[arg-type]
        observed_time_ms=change.time_ms,
        object_json=orjson.dumps(change.obj),
    )


def retime(changes: Iterator[GeneratedChange], changes_per_second: int) -> Iterator[GeneratedChange]:
    """Give the changes observed times as if they arrived live at `changes_per_second`.

    The first change keeps its time and each next one comes 1/changes_per_second later. With ticks
    every second of the new event time, the publisher then fills its batches as a live watcher
    would at that rate. The objects keep the timestamps inside them, and durations are counted in
    the new time, so rules with durations of a minute or more rarely fire.
    """
    start_ms: int | None = None
    for index, change in enumerate(changes):
        if start_ms is None:
            start_ms = change.time_ms
        yield dataclasses.replace(change, time_ms=start_ms + index * 1000 // changes_per_second)


def publish_changes(
    changes: Iterator[GeneratedChange],
    settings: Any,
    max_changes: int | None = None,
    tick_interval_ms: int = 1000,
    record_log: RecordLog | None = None,
) -> GenerationSummary:
    """Produce ChangeBatch records straight to the changes topic with connectors.publisher.Publisher.

    Ticks go out as `kdiag replay --tick-interval` sends them: when the clock is about to move past
    a time at least tick_interval_ms after the last tick. A tick flushes the cluster's buffered
    changes, so no batch holds changes more than one interval older than the partition's clock.
    A final tick at the last clock follows the last change.
    """
    summary = GenerationSummary()
    started = time.monotonic()
    producer = Producer({**producer_config(settings, 120.0), "linger.ms": 20, "queue.buffering.max.kbytes": 512 * 1024})
    wrapped: Any = producer
    if record_log is not None:
        wrapped = _RecordingProducer(producer, settings.changes_topic, record_log)
    publisher = Publisher(settings, source="loadgen", producer=wrapped, delivery_timeout_seconds=120.0)
    publisher.partition_count()
    cluster_name = settings.cluster
    last_tick: int | None = None
    clock: int | None = None
    try:
        for change in changes:
            if clock is not None and change.time_ms > clock and (last_tick is None or clock - last_tick >= tick_interval_ms):
                publisher.publish_tick(cluster_name, clock)
                last_tick = clock
            if clock is None or change.time_ms > clock:
                clock = change.time_ms
            resource_change = to_resource_change(change, cluster_name)
            publisher.publish_change(resource_change, "loadgen")
            summary.count(change, len(resource_change.object_json))
            if max_changes is not None and summary.changes >= max_changes:
                break
        if clock is not None:
            publisher.publish_tick(cluster_name, clock)
    finally:
        result = publisher.close()
    if result.failures:
        raise RuntimeError(f"{len(result.failures)} records were not delivered, first: {result.failures[0]}")
    summary.records = result.records
    summary.seconds = time.monotonic() - started
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, required=True, help="pods in the cluster, e.g. 1000 to 150000")
    parser.add_argument("--hours", type=float, required=True, help="hours of simulated time after the initial list")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--start", default=DEFAULT_START, help=f"RFC 3339 time of the first change (default {DEFAULT_START})")
    parser.add_argument("--max-changes", type=int, help="stop after this many changes")
    parser.add_argument("--out", type=Path, help="write watch-event JSON lines to this file")
    parser.add_argument("--bootstrap-servers", help="produce straight to Kafka at host:port instead of --out")
    parser.add_argument("--changes-topic", help="changes topic for --bootstrap-servers (default KDIAG_CHANGES_TOPIC)")
    parser.add_argument("--cluster", help="cluster name of the produced changes (default KDIAG_CLUSTER)")
    parser.add_argument(
        "--tick-interval", type=float, default=1.0, help="with --bootstrap-servers: event seconds between ticks (default 1)"
    )
    parser.add_argument(
        "--live-rate",
        type=int,
        help="with --bootstrap-servers: retime the changes as a live stream of this many changes per second",
    )
    args = parser.parse_args(argv)
    if (args.out is None) == (args.bootstrap_servers is None):
        parser.error("give exactly one of --out FILE and --bootstrap-servers HOST:PORT")
    start_ms = parse_time_ms(args.start)
    if start_ms is None:
        parser.error(f"invalid --start {args.start!r}: expected RFC 3339, e.g. {DEFAULT_START}")
    cluster = SyntheticCluster(args.pods, args.hours, args.seed, start_ms)
    if args.out is not None:
        summary = write_file(cluster, args.out, args.max_changes)
        destination = str(args.out)
    else:
        settings = load_settings(
            bootstrap_servers=args.bootstrap_servers, changes_topic=args.changes_topic, cluster=args.cluster
        )
        changes = cluster.changes()
        if args.live_rate:
            changes = retime(changes, args.live_rate)
        summary = publish_changes(changes, settings, args.max_changes, tick_interval_ms=round(args.tick_interval * 1000))
        summary.failures = Counter(cluster.failures)
        destination = f"{settings.changes_topic} on {settings.bootstrap_servers}"
    for line in summary.lines():
        print(line)
    print(f"written to {destination}")
    print("BENCH_JSON " + orjson.dumps({"benchmark": "loadgen", **summary.figures()}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
