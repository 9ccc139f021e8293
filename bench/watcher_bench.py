"""Benchmark of `kdiag watch`: memory and throughput while it lists and watches 150,000 pods.

Run: .venv/bin/python -m bench.watcher_bench [--pods N] [--updates N] [--bootstrap-servers HOST:PORT]

The API server double (tests/connectors/apiserver.py) runs in this process and serves N pods of about
6 KB each. The watcher runs as its own process, `python -m connectors.watch_command`, so that its
resident set size (RSS, from /proc/<pid>/status) is its own. The benchmark measures:

1. list: from the watcher's start until Kafka acknowledged an ADDED change for every pod;
2. watch: from the first of M updates to distinct pods until Kafka acknowledged all of them;

and samples the watcher's RSS every 0.2 s. Progress is read from the watcher's Prometheus metrics.
Without --bootstrap-servers it starts a private broker with scripts/kafka.sh on a free port and stops
it at the end. Figures are printed and appended to docs/benchmarks.md unless --no-record is given.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kdiag.settings import Settings
from kdiag.topics import ensure_topics
from tests.connectors.apiserver import FakeApiServer

REPO = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO / "scripts" / "kafka.sh"
BENCHMARKS_DOC = REPO / "docs" / "benchmarks.md"
RSS_TARGET_MB = 100
NAMESPACES = 50
PUBLISHED_METRIC = re.compile(r'^kdiag_watch_changes_published_total\{resource="core/pods",type="(\w+)"\} ([0-9.e+]+)$', re.M)


def pod_object(index: int) -> dict[str, Any]:
    """Build a running pod as a Deployment's ReplicaSet creates it, about 6 KB as JSON."""
    namespace = f"team-{index % NAMESPACES:02d}"
    app = f"service-{index % 300:03d}"
    name = f"{app}-7d9f8c6b5-{index:06x}"
    container = {
        "name": app,
        "image": f"registry.example.com/{app}:1.{index % 40}.3",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}, {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
        "env": [{"name": f"SETTING_{n}", "value": f"value-{n}-{index % 7}"} for n in range(36)]
        + [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
        "resources": {"limits": {"cpu": "500m", "memory": "512Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app"},
            {"name": "kube-api-access-x7k2p", "readOnly": True, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
        ],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }
    started = "2024-05-01T10:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": f"{app}-7d9f8c6b5-",
            "namespace": namespace,
            "uid": str(uuid.UUID(int=index + 1)),
            "creationTimestamp": started,
            "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": "shop", "pod-template-hash": "7d9f8c6b5"},
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "kubectl.kubernetes.io/restartedAt": started,
                "checksum/config": f"{index:064x}",
                "sidecar.example.com/inject": "false",
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{app}-7d9f8c6b5", "uid": str(uuid.UUID(int=10**9 + index % 300)), "controller": True, "blockOwnerDeletion": True}],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": started, "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app.kubernetes.io/name": {}}}, "f:spec": {"f:containers": {f'k:{{"name":"{app}"}}': {".": {}, "f:env": {}, "f:image": {}}}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": started, "fieldsType": "FieldsV1", "subresource": "status", "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {}, "f:podIP": {}, "f:startTime": {}}}},
            ],
        },
        "spec": {
            "volumes": [
                {"name": "config", "configMap": {"name": f"{app}-config", "defaultMode": 420}},
                {"name": "kube-api-access-x7k2p", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}, {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}], "defaultMode": 420}},
            ],
            "containers": [container],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": app,
            "nodeName": f"node-{index % 200:03d}",
            "securityContext": {"runAsNonRoot": True, "fsGroup": 2000},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": started}
                for kind in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "hostIP": f"10.0.{index % 200}.{index % 250}",
            "podIP": f"10.244.{index % 250}.{index % 251}",
            "podIPs": [{"ip": f"10.244.{index % 250}.{index % 251}"}],
            "startTime": started,
            "containerStatuses": [
                {
                    "name": app,
                    "state": {"running": {"startedAt": started}},
                    "lastState": {},
                    "ready": True,
                    "restartCount": index % 3,
                    "image": container["image"],
                    "imageID": f"registry.example.com/{app}@sha256:{index:064x}",
                    "containerID": f"containerd://{index:064x}",
                    "started": True,
                }
            ],
            "qosClass": "Burstable",
        },
    }


# Broker


def free_port_pair() -> int:
    for port in range(24000 + os.getpid() % 5000, 32000, 11):
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
                return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free TCP ports on 127.0.0.1")


@contextmanager
def private_broker() -> Iterator[str]:
    port = free_port_pair()
    env = dict(os.environ, KAFKA_PORT=str(port), KAFKA_DATA_DIR=tempfile.mkdtemp(prefix="kdiag-watch-bench-kafka-"))
    subprocess.run([str(KAFKA_SCRIPT), "up"], env=env, check=True, timeout=600)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(KAFKA_SCRIPT), "down"], env=env, check=False, timeout=120)


# Watcher process


class RssSampler:
    """Samples the VmRSS of a process every 0.2 s in a thread and keeps the maximum."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max_kb = 0
        self.last_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            if match:
                self.last_kb = int(match.group(1))
                self.max_kb = max(self.max_kb, self.last_kb)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def published(metrics_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {change_type: float(value) for change_type, value in PUBLISHED_METRIC.findall(text)}


def wait_for(condition, timeout_seconds: float, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the watcher exited with status {process.returncode} while waiting for {what}")
        try:
            if condition():
                return
        except OSError:
            pass  # the metrics server is not up yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_seconds:.0f} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Figures:
    pods: int
    updates: int
    pod_json_bytes: int
    list_seconds: float
    watch_seconds: float
    max_rss_mb: float
    rss_after_list_mb: float


def run_benchmark(pods: int, updates: int, bootstrap: str, work_dir: Path) -> Figures:
    prefix = f"watchbench{uuid.uuid4().hex[:6]}"
    settings = Settings(
        bootstrap_servers=bootstrap,
        changes_topic=f"{prefix}-changes",
        alerts_topic=f"{prefix}-alerts",
        dead_letter_topic=f"{prefix}-dead",
        app_id=f"{prefix}-worker",
    )
    ensure_topics(settings)
    import orjson

    sample_bytes = len(orjson.dumps(pod_object(0)))
    server = FakeApiServer(bookmark_interval_seconds=1.0).start()
    try:
        print(f"creating {pods} pods of about {sample_bytes} bytes in the API server double", file=sys.stderr)
        server.create_many(pod_object(index) for index in range(pods))
        server.compact()
        kubeconfig = server.write_kubeconfig(work_dir / "kubeconfig")
        metrics_port = free_port_pair()
        env = dict(
            os.environ,
            KDIAG_BOOTSTRAP_SERVERS=bootstrap,
            KDIAG_CHANGES_TOPIC=settings.changes_topic,
            KDIAG_ALERTS_TOPIC=settings.alerts_topic,
            KDIAG_DEAD_LETTER_TOPIC=settings.dead_letter_topic,
            KDIAG_APP_ID=settings.app_id,
        )
        command = [
            sys.executable, "-m", "connectors.watch_command", "--log-level", "WARNING",
            "--kubeconfig", str(kubeconfig), "--cluster", "bench", "--state-dir", str(work_dir / "state"),
            "--metrics-port", str(metrics_port), "--no-create-topics",
        ]
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL)
        sampler = RssSampler(process.pid)
        try:
            wait_for(lambda: published(metrics_port).get("ADDED", 0) >= pods, 1800, f"{pods} ADDED changes", process)
            list_seconds = time.monotonic() - started
            rss_after_list_kb = sampler.last_kb
            print(f"list: {pods} pods in {list_seconds:.1f} s", file=sys.stderr)

            namespaces = [(f"team-{index % NAMESPACES:02d}", pod_object(index)["metadata"]["name"]) for index in range(updates)]
            watch_started = time.monotonic()
            for step, (namespace, name) in enumerate(namespaces):
                server.update("v1", "Pod", namespace, name, _restart(step))
            wait_for(lambda: published(metrics_port).get("MODIFIED", 0) >= updates, 1800, f"{updates} MODIFIED changes", process)
            watch_seconds = time.monotonic() - watch_started
            print(f"watch: {updates} updates in {watch_seconds:.1f} s", file=sys.stderr)
        finally:
            sampler.stop()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
    finally:
        server.stop()
    return Figures(pods, updates, sample_bytes, list_seconds, watch_seconds, sampler.max_kb / 1024, rss_after_list_kb / 1024)


def _restart(step: int):
    def change(obj: dict[str, Any]) -> None:
        status = obj["status"]["containerStatuses"][0]
        status["restartCount"] += 1
        status["lastState"] = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2024-05-01T11:00:00Z"}}

    return change


def describe(figures: Figures) -> list[str]:
    return [
        f"pods listed and watched: {figures.pods:,} (about {figures.pod_json_bytes:,} bytes of JSON each)",
        f"list: {figures.list_seconds:.1f} s, {figures.pods / figures.list_seconds:,.0f} changes/s acknowledged by Kafka",
        f"watch: {figures.updates:,} updates to distinct pods in {figures.watch_seconds:.1f} s, "
        f"{figures.updates / figures.watch_seconds:,.0f} changes/s acknowledged by Kafka",
        f"watcher RSS: max {figures.max_rss_mb:.0f} MB, {figures.rss_after_list_mb:.0f} MB after the list "
        f"(target <= {RSS_TARGET_MB} MB)",
    ]


def record(figures: Figures, argv: list[str]) -> None:
    lines = describe(figures)
    command = " ".join([".venv/bin/python -m bench.watcher_bench", *argv])
    section = [
        "",
        "## Watcher",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}. The API server double, the watcher process and",
        "a single Kafka broker share the machine, so the figures are lower bounds for the watcher alone.",
        "",
        *[f"- {line}" for line in lines],
        "",
    ]
    if not BENCHMARKS_DOC.exists():
        BENCHMARKS_DOC.write_text("# Benchmarks\n\nMeasured figures of kdiag's components, newest section last.\n")
    with BENCHMARKS_DOC.open("a") as doc:
        doc.write("\n".join(section))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.watcher_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=150_000, help="pods the API server double serves (default 150000)")
    parser.add_argument("--updates", type=int, default=30_000, help="updates to distinct pods in the watch phase (default 30000)")
    parser.add_argument("--bootstrap-servers", help="use this broker instead of starting a private one")
    parser.add_argument("--no-record", action="store_true", help="print the figures without appending them to docs/benchmarks.md")
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    if args.updates > args.pods:
        parser.error(f"--updates {args.updates} exceeds --pods {args.pods}: each update goes to a distinct pod")
    with tempfile.TemporaryDirectory(prefix="kdiag-watch-bench-") as work:
        if args.bootstrap_servers:
            figures = run_benchmark(args.pods, args.updates, args.bootstrap_servers, Path(work))
        else:
            with private_broker() as bootstrap:
                figures = run_benchmark(args.pods, args.updates, bootstrap, Path(work))
    for line in describe(figures):
        print(line)
    if not args.no_record:
        record(figures, [item for item in raw if item != "--no-record"])
    return 0 if figures.max_rss_mb <= RSS_TARGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
