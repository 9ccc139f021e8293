"""Alert latency of a caught-up worker in live mode.

    python -m bench.latency [--alerts 200] [--spread 25] [--duration 30] [--partitions 6]

The benchmark acts as a live watcher: it sends a tick with the wall-clock time to every partition
once a second, and changes with the wall-clock time as their observed time, each flushed at once.
During the first --spread seconds it sends --alerts Pods that start a pending entry of a rule with a
--duration of 30 s, and --alerts Pods that match a rule with duration 0, both at random moments.
A read_committed consumer in this process notes when each alert arrives.

- After the deadline: from the produce of the first tick whose time passed the entry's deadline to
  the arrival of its FIRING alert. --spread must be shorter than --duration, so that no change,
  only a tick, can pass a deadline.
- Immediate: from the produce of the change to the arrival of its FIRING alert.

The worker runs the starter pack plus the two rules of this benchmark, from a temp folder, on
Pods of the load generator's shape (about 9 KiB of JSON). Both clocks are this machine's wall clock.
The producer lingers KDIAG's producer_linger_seconds (5 ms) unless --linger is given, as `kdiag watch` does,
and --commit-interval sets how long the worker waits to fill a batch.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench import PACK_RULES, BenchError, Broker, WorkerProcess, cleanup, make_topics, metric_sum, progress, report
from bench.loadgen import SyntheticCluster
from connectors.publisher import Publisher
from kdiag.codec import codec
from kdiag.model import ResourceChange
from kdiag.settings import Settings

ALERT = codec("Alert")
PENDING_RULE = "BenchLatencyAfterDeadline"
IMMEDIATE_RULE = "BenchLatencyImmediate"
LABEL = "kdiag-bench-latency"
NAMESPACES = 24
TICK_INTERVAL_SECONDS = 1.0
WAIT_AFTER_LAST_DEADLINE_SECONDS = 30.0


def write_rules(folder: Path, duration_seconds: int) -> Path:
    path = folder / "latency.json"
    rules = {
        PENDING_RULE: {
            "duration": duration_seconds,
            "resource": "Pod",
            "checkField": [{"field": ["metadata", "labels", LABEL], "equalValue": ["pending"]}],
        },
        IMMEDIATE_RULE: {
            "duration": 0,
            "resource": "Pod",
            "checkField": [{"field": ["metadata", "labels", LABEL], "equalValue": ["immediate"]}],
        },
    }
    path.write_text(orjson.dumps(rules).decode())
    return path


def template_pod() -> dict[str, Any]:
    """Return a running Pod of the load generator's shape."""
    for change in SyntheticCluster(pods=30, hours=0, seed=7).changes():
        if change.kind == "Pod":
            return change.obj
    raise BenchError("the load generator produced no Pod")


class AlertListener:
    """Background reader of the alerts topic that notes each FIRING alert's wall-clock arrival, by object name."""

    def __init__(self, bootstrap_servers: str, topic: str, partitions: int) -> None:
        self.arrivals: dict[str, float] = {}
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": f"bench-latency-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in range(partitions)])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.05)
            if message is None or message.error() is not None:
                continue
            arrived = time.time()
            alert = ALERT.decode(message.value())
            if alert["status"] == "FIRING" and alert["rule"] in (PENDING_RULE, IMMEDIATE_RULE):
                self.arrivals.setdefault(alert["name"], arrived)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


@dataclass
class LatencyRun:
    ticks: list[tuple[int, float]] = field(default_factory=list)
    pending_sent: dict[str, int] = field(default_factory=dict)
    immediate_sent: dict[str, float] = field(default_factory=dict)


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of values."""
    ordered = sorted(values)
    rank = max(1, int(-(-fraction * len(ordered) // 1)))
    return ordered[min(rank, len(ordered)) - 1]


def describe(latencies_ms: list[float]) -> dict[str, float]:
    if not latencies_ms:
        return {"count": 0}
    return {
        "count": len(latencies_ms),
        "p50_ms": round(percentile(latencies_ms, 0.50), 1),
        "p90_ms": round(percentile(latencies_ms, 0.90), 1),
        "p99_ms": round(percentile(latencies_ms, 0.99), 1),
        "max_ms": round(max(latencies_ms), 1),
    }


def run(args: argparse.Namespace, broker: Broker) -> dict[str, Any]:
    if args.spread >= args.duration:
        raise BenchError(f"--spread ({args.spread} s) must be shorter than --duration ({args.duration} s)")
    overrides: dict[str, Any] = {}
    if args.linger is not None:
        overrides["producer_linger_seconds"] = args.linger
    topics = make_topics(broker.bootstrap_servers, "latency", args.partitions, **overrides)
    settings = topics.settings
    rules_dir = Path(tempfile.mkdtemp(prefix="rules-", dir=topics.work_dir))
    rules = [PACK_RULES, write_rules(rules_dir, args.duration)]
    worker_env = {}
    if args.commit_interval is not None:
        worker_env["KDIAG_COMMIT_INTERVAL_SECONDS"] = str(args.commit_interval)
    worker = WorkerProcess(topics, rules=rules, extra_env=worker_env)
    listener: AlertListener | None = None
    publisher = Publisher(settings, source="bench-latency")
    try:
        worker.wait_for_partitions()
        listener = AlertListener(settings.bootstrap_servers, settings.alerts_topic, settings.partitions)
        _warm_up(worker, publisher, settings.cluster, settings.partitions)
        progress(f"sending {args.alerts} pending and {args.alerts} immediate Pods over {args.spread} s, ticks every second")
        sent = _send(args, publisher, settings.cluster)
        last_due = max(sent.pending_sent.values(), default=int(time.time() * 1000)) / 1000 + args.duration
        deadline = max(time.time(), last_due) + WAIT_AFTER_LAST_DEADLINE_SECONDS
        expected = set(sent.pending_sent) | set(sent.immediate_sent)
        while time.time() < deadline and not expected <= set(listener.arrivals):
            worker.check_running()
            _tick(publisher, settings.cluster, sent)
            time.sleep(TICK_INTERVAL_SECONDS)
        arrivals = dict(listener.arrivals)
        stage_batches = _stage_batches(worker.metrics() or {})
    finally:
        if listener is not None:
            listener.stop()
        publisher.close()
        worker.stop()
        log_tail = worker.log_tail(5)
        cleanup(broker, topics)

    after_deadline: list[float] = []
    for name, observed_ms in sent.pending_sent.items():
        if name not in arrivals:
            continue
        due_ms = observed_ms + args.duration * 1000
        tick = next((produced for time_ms, produced in sent.ticks if time_ms >= due_ms), None)
        if tick is not None:
            after_deadline.append((arrivals[name] - tick) * 1000)
    immediate = [(arrivals[name] - produced) * 1000 for name, produced in sent.immediate_sent.items() if name in arrivals]
    missing = len(expected - set(arrivals))
    figures = {
        "after_deadline": describe(after_deadline),
        "immediate": describe(immediate),
        "missing_alerts": missing,
        "tick_interval_seconds": TICK_INTERVAL_SECONDS,
        "partitions": args.partitions,
        "rule_duration_seconds": args.duration,
        "producer_linger_seconds": settings.producer_linger_seconds,
        "worker_commit_interval_seconds": args.commit_interval if args.commit_interval is not None else Settings().commit_interval_seconds,
        "stage_batches": stage_batches,
    }
    lines = [
        _line("after the deadline (tick produce to alert)", figures["after_deadline"]),
        _line("immediate rules (change produce to alert)", figures["immediate"]),
    ]
    for stage, batches in stage_batches.items():
        lines.append(
            f"{stage} batches: {batches['batches']:.0f}, mean {batches['mean_ms']:.1f} ms, "
            f"{batches['over_100ms']:.0f} over 100 ms, {batches['over_250ms']:.0f} over 250 ms"
        )
    if missing:
        lines.append(
            f"{missing} alerts did not arrive within {WAIT_AFTER_LAST_DEADLINE_SECONDS:.0f} s of the last deadline; "
            f"last worker log lines:\n{log_tail}"
        )
    report("latency", lines, figures)
    return figures


# The worker's batch histograms per stage: rule stage, root-cause stage, alert center.
STAGE_HISTOGRAMS = {
    "rule stage": ("kdiag_worker_batch_seconds", ""),
    "root-cause stage": ("kdiag_worker_stage_batch_seconds", 'stage="root-cause"'),
    "alert center": ("kdiag_worker_stage_batch_seconds", 'stage="alert-center"'),
}


def _stage_batches(samples: dict[str, float]) -> dict[str, dict[str, float]]:
    """Return each stage's batch count, mean duration and batches over 100 and 250 ms, from the
    worker's histograms over the whole run, warm-up included."""
    stages = {}
    for stage, (name, label) in STAGE_HISTOGRAMS.items():
        labels = "{" + label + "}" if label else ""
        count = samples.get(f"{name}_count{labels}", 0.0)
        if not count:
            continue
        total = samples.get(f"{name}_sum{labels}", 0.0)
        suffix = "," + label if label else ""
        within_100ms = samples.get(f'{name}_bucket{{le="0.1"{suffix}}}', count)
        within_250ms = samples.get(f'{name}_bucket{{le="0.25"{suffix}}}', count)
        stages[stage] = {
            "batches": count,
            "mean_ms": round(total / count * 1000, 2),
            "over_100ms": count - within_100ms,
            "over_250ms": count - within_250ms,
        }
    return stages


def _line(label: str, stats: dict[str, float]) -> str:
    if not stats.get("count"):
        return f"{label}: no alerts"
    return (
        f"{label}: p50 {stats['p50_ms']:.0f} ms, p90 {stats['p90_ms']:.0f} ms, p99 {stats['p99_ms']:.0f} ms, "
        f"max {stats['max_ms']:.0f} ms over {stats['count']} alerts"
    )


def _tick(publisher: Publisher, cluster: str, sent: LatencyRun) -> None:
    produced = time.time()
    time_ms = int(produced * 1000)
    publisher.publish_tick(cluster, time_ms)
    sent.ticks.append((time_ms, produced))


def _warm_up(worker: WorkerProcess, publisher: Publisher, cluster: str, partitions: int, timeout_seconds: float = 60) -> None:
    """Tick until the worker processed a record on every partition, so that every partition's producer exists."""
    deadline = time.monotonic() + timeout_seconds
    scratch = LatencyRun()
    while time.monotonic() < deadline:
        _tick(publisher, cluster, scratch)
        time.sleep(TICK_INTERVAL_SECONDS)
        metrics = worker.metrics(("kdiag_worker_records_total",)) or {}
        seen = [key for key in metrics if key.startswith("kdiag_worker_records_total{") and metrics[key] > 0]
        if len(seen) >= partitions and metric_sum(metrics, "kdiag_worker_records_total") >= len(scratch.ticks) * partitions:
            return
    raise BenchError(f"the worker did not process a record on every partition within {timeout_seconds} s")


def _send(args: argparse.Namespace, publisher: Publisher, cluster: str) -> LatencyRun:
    rng = random.Random(args.seed)
    template = template_pod()
    start = time.time() + 0.5
    plan = [(start + rng.uniform(0, args.spread), "pending", index) for index in range(args.alerts)]
    plan += [(start + rng.uniform(0, args.spread), "immediate", index) for index in range(args.alerts)]
    plan.sort()
    sent = LatencyRun()
    next_tick = time.time()
    for at, label, index in plan:
        while True:
            now = time.time()
            if now >= next_tick:
                _tick(publisher, cluster, sent)
                next_tick += TICK_INTERVAL_SECONDS
                continue
            if now >= at:
                break
            time.sleep(min(at, next_tick) - now)
        name = f"latency-{label}-{index}"
        change = _pod_change(template, cluster, name, label, index, rng)
        produced = time.time()
        publisher.publish_change(change, "bench-latency")
        publisher.flush_changes()
        if label == "pending":
            sent.pending_sent[name] = change.observed_time_ms
        else:
            sent.immediate_sent[name] = produced
    # Keep ticking past the last deadline; the caller goes on until every alert arrived.
    return sent


def _pod_change(template: dict[str, Any], cluster: str, name: str, label: str, index: int, rng: random.Random) -> ResourceChange:
    obj = copy.deepcopy(template)
    metadata = obj["metadata"]
    namespace = f"latency-{index % NAMESPACES}"
    uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    metadata.update(name=name, namespace=namespace, uid=uid, labels={**metadata["labels"], LABEL: label})
    return ResourceChange(
        cluster=cluster,
        api_version="v1",
        kind="Pod",
        namespace=namespace,
        name=name,
        uid=uid,
        resource_version=metadata["resourceVersion"],
        change_type="ADDED",
        observed_time_ms=int(time.time() * 1000),
        object_json=orjson.dumps(obj),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--alerts", type=int, default=200, help="alerts of each kind to measure (default 200)")
    parser.add_argument("--spread", type=float, default=25.0, help="seconds over which the Pods are sent (default 25)")
    parser.add_argument("--duration", type=int, default=30, help="duration of the pending rule in seconds (default 30)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the changes topic (default 6)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the send times (default 1)")
    parser.add_argument(
        "--linger", type=float, help="linger of this benchmark's producer in seconds (default: KDIAG's producer_linger_seconds, 0.005)"
    )
    parser.add_argument(
        "--commit-interval",
        type=float,
        help="the worker's KDIAG_COMMIT_INTERVAL_SECONDS, the most it waits to fill a batch (default: its own, 0.02)",
    )
    parser.add_argument("--bootstrap-servers", help="use this broker instead of starting one")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    with Broker(args.bootstrap_servers) as broker:
        run(args, broker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
