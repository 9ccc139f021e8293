"""Worker throughput: changes per second of one `kdiag worker` process, the bare loop and quix-streams.

    python -m bench.throughput [--changes 200000] [--pods 10000] [--partitions 6] [--no-quix] [--workers N] [--profile]

The changes topic is filled first with --changes changes of a synthetic cluster (bench/loadgen.py).
They are retimed as a live stream of --live-rate changes per second, with a tick every second of
that time, so that batches are as full as a watcher would make them at that rate. Then, one after
another and each with a fresh consumer group, these read the whole topic from the start:

- consume only: bench/bare_loop.py --consume-only, the rate at which records reach Python at all;
- bare loop: bench/bare_loop.py, the worker's per-change work without Faust and transactions;
- worker: `kdiag worker` with the starter pack, then with 100 rules (the pack plus generated variants);
- quix: bench/quix_peer/peer.py on quix-streams with the same rules, in bench/.venv-quix.
- with --workers N: N `kdiag worker` processes in one consumer group with 100 rules, together.

Rates exclude startup. The worker's rate comes from its Prometheus counter kdiag_worker_changes_total,
sampled every 0.25 s, from the first sample above zero to the first that reaches the total: the counter
moves after each batch's transaction commits. The bare loop and the peer report their own rate, from
their first consumed record to their last processed one, and the harness checks that their consumer
group then committed every record. CPU time per change is the process's user and system time over the
run, from /proc, which is less sensitive to other load on a shared machine than the rate. For the
worker, the same counters give the records per batch and per transaction and the share of the time
it spent inside batches rather than waiting for records.
With --profile, py-spy samples the worker and the bare loop during one more run each with 100 rules
(py-spy slows them down, so those runs' rates are not the figures above). It samples the thread that
holds the GIL, whichever it is, so the profile shows where the Python CPU time went.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench import (
    BENCH_DIR,
    PACK_RULES,
    REPO_ROOT,
    VENV_PYTHON,
    BenchError,
    BenchTopics,
    Broker,
    CommittedOffsets,
    ProcessTimes,
    RssSampler,
    WorkerProcess,
    cleanup,
    env_pair,
    end_offsets,
    make_topics,
    metric_sum,
    process_times,
    progress,
    report,
    stop_process,
)
from bench.loadgen import GenerationSummary, RecordLog, SyntheticCluster, publish_changes, retime

QUIX_VENV = BENCH_DIR / ".venv-quix"
QUIX_PYTHON = QUIX_VENV / "bin" / "python"
QUIX_REQUIREMENTS = BENCH_DIR / "quix_peer" / "requirements.txt"
QUIX_PEER = BENCH_DIR / "quix_peer" / "peer.py"
PY_SPY = REPO_ROOT / ".venv" / "bin" / "py-spy"
PROFILE_RATE_HZ = 100
# Each scrape costs the worker a few ms of its GIL, so the counter is not read more often.
METRICS_POLL_SECONDS = 0.25
# The worker metrics that show its progress, polled every METRICS_POLL_SECONDS.
PROGRESS_METRICS = ("kdiag_worker_changes_total", "kdiag_worker_records_total")
RULE_COUNT = 100


# Rules


def write_rule_variants(folder: Path, total: int = RULE_COUNT) -> tuple[Path, int]:
    """Write variants of the starter pack's rules so that pack plus variants make `total` rules.

    Even variants keep their rule's conditions with a longer duration, so they match the same
    objects and add entries. Odd variants get one more checkField, last, that requires a label no
    object has, so they are evaluated in full but never match. Returns the file and the number of
    variants in it.
    """
    pack: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(PACK_RULES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                pack.extend(document.items())
    variants: dict[str, Any] = {}
    for index in range(max(0, total - len(pack))):
        name, body = pack[index % len(pack)]
        variant = copy.deepcopy(body)
        if index % 2 == 0:
            variant["duration"] = variant.get("duration", 0) + 30 * (index + 1)
        else:
            variant["checkField"] = [
                *variant["checkField"],
                {"field": ["metadata", "labels", "kdiag-bench-variant"], "nilValue": False},
            ]
        variants[f"{name}Variant{index}"] = variant
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "variants.yaml"
    path.write_text(yaml.safe_dump(variants, sort_keys=True))
    return path, len(variants)


# The quix-streams environment


# kdiag's dependencies that the peer's environment leaves to quixstreams, or that clash with its pins
# (kubernetes 37) and the peer does not import.
QUIX_EXCLUDED_DEPENDENCIES = ("confluent-kafka", "faust-streaming", "kubernetes")


def quix_requirements() -> list[str]:
    """Return bench/quix_peer/requirements.txt plus kdiag's dependencies that the peer's imports need."""
    lines = [line.strip() for line in QUIX_REQUIREMENTS.read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith("#")]
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for dependency in project["dependencies"]:
        name = re.split(r"[<>=!~\[; ]", dependency, maxsplit=1)[0].lower()
        if name not in QUIX_EXCLUDED_DEPENDENCIES:
            requirements.append(dependency)
    return requirements


def ensure_quix_venv() -> Path:
    """Create or update bench/.venv-quix with quix_requirements(). Returns its python.

    A stamp file keeps the installed requirement list, so pip runs only when the list changed.
    """
    requirements = quix_requirements()
    stamp = QUIX_VENV / ".kdiag-requirements"
    if QUIX_PYTHON.exists() and stamp.exists() and stamp.read_text() == "\n".join(requirements):
        return QUIX_PYTHON
    if not QUIX_PYTHON.exists():
        progress(f"creating {QUIX_VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True, timeout=300)
        # Keep the environment out of git without touching the repository's .gitignore.
        (QUIX_VENV / ".gitignore").write_text("*\n")
    progress(f"installing {', '.join(requirements)} into {QUIX_VENV}")
    subprocess.run(
        [str(QUIX_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
        check=True,
        timeout=900,
    )
    stamp.write_text("\n".join(requirements))
    return QUIX_PYTHON


# Pre-filled topic


@dataclass
class Prefill:
    topics: BenchTopics
    generation: GenerationSummary
    record_log: RecordLog
    end_offsets: list[int]

    @property
    def records(self) -> int:
        return sum(self.end_offsets)

    @property
    def changes(self) -> int:
        return self.record_log.total_changes


def prefill(bootstrap_servers: str, partitions: int, changes: int, pods: int, seed: int, live_rate: int) -> Prefill:
    topics = make_topics(bootstrap_servers, "tput", partitions)
    record_log = RecordLog()
    progress(f"filling {topics.settings.changes_topic} with {changes} changes of a {pods}-pod cluster")
    # A 10k-pod history has about 8k changes per hour, so this covers the requested count.
    hours = max(24.0, changes / max(1.0, pods * 0.8))
    history = SyntheticCluster(pods, hours, seed).changes()
    generation = publish_changes(retime(history, live_rate), topics.settings, changes, 1000, record_log)
    ends = end_offsets(bootstrap_servers, topics.settings.changes_topic, partitions)
    if sum(ends) != record_log.total_records:
        raise BenchError(f"the topic has {sum(ends)} records but {record_log.total_records} were delivered")
    return Prefill(topics, generation, record_log, ends)


# Runs


@dataclass
class RunResult:
    name: str
    changes: int
    seconds: float
    changes_per_second: float
    cpu_seconds: float | None = None
    peak_rss_mib: float | None = None
    alerts: int | None = None
    # Of cpu_seconds, the part spent in the kernel, and the minor page faults in the same time.
    system_seconds: float | None = None
    minor_faults: int | None = None
    # Time in the cyclic garbage collector, and its collections of the oldest generation.
    gc_seconds: float | None = None
    gc_full_collections: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_us_per_change(self) -> float | None:
        if self.cpu_seconds is None or not self.changes:
            return None
        return self.cpu_seconds / self.changes * 1e6

    def line(self) -> str:
        if self.seconds > 0:
            text = f"{self.name}: {self.changes_per_second:,.0f} changes/s ({self.changes} changes in {self.seconds:.1f} s)"
        else:
            # The first poll returned every record of a small input, so there is no time to divide by.
            text = f"{self.name}: all {self.changes} changes in its first poll, too few to time"
        if self.cpu_us_per_change is not None:
            text += f", {self.cpu_us_per_change:.0f} µs CPU per change"
            if self.system_seconds is not None and self.cpu_seconds:
                text += f" ({100 * self.system_seconds / self.cpu_seconds:.0f} % system)"
        if self.minor_faults is not None and self.changes:
            text += f", {self.minor_faults / self.changes:.1f} minor page faults per change"
        if self.gc_seconds is not None:
            text += f", {self.gc_seconds:.2f} s in the garbage collector ({self.gc_full_collections} full collections)"
        if self.peak_rss_mib is not None:
            text += f", peak RSS {self.peak_rss_mib:.0f} MiB"
        if self.alerts is not None:
            text += f", {self.alerts} alert transitions"
        if "records_per_batch" in self.extra:
            text += (
                f", {self.extra['records_per_batch']} records per batch, {self.extra['records_per_transaction']} per "
                f"transaction, {100 * self.extra['share_inside_batches']:.0f} % of the time inside batches, "
                f"{self.extra['batch_cpu_us_per_change']:.0f} µs of batch-thread CPU per change"
            )
        return text

    def figures(self) -> dict[str, Any]:
        figures = {
            "changes_per_second": round(self.changes_per_second),
            "changes": self.changes,
            "seconds": round(self.seconds, 2),
            "cpu_us_per_change": round(self.cpu_us_per_change, 1) if self.cpu_us_per_change is not None else None,
            "peak_rss_mib": round(self.peak_rss_mib, 1) if self.peak_rss_mib is not None else None,
            "alerts": self.alerts,
            "system_cpu_seconds": round(self.system_seconds, 3) if self.system_seconds is not None else None,
            "minor_faults": self.minor_faults,
            "gc_seconds": round(self.gc_seconds, 3) if self.gc_seconds is not None else None,
            "gc_full_collections": self.gc_full_collections,
        }
        figures.update(self.extra)
        return figures


def _run_timeout(prefill_: Prefill) -> float:
    # Generous: 1000 changes per second would already be far below every contender's rate.
    return 120.0 + prefill_.changes / 1000


def _wait_all_committed(prefill_: Prefill, group: str, process: subprocess.Popen, timeout_seconds: float) -> float:
    """Wait until `group` committed every record of the topic. Returns the monotonic time it did."""
    settings = prefill_.topics.settings
    offsets = CommittedOffsets(settings.bootstrap_servers, group, settings.changes_topic, settings.partitions)
    deadline = time.monotonic() + timeout_seconds
    try:
        while time.monotonic() < deadline:
            committed = offsets.read()
            if committed is not None and committed == prefill_.end_offsets:
                return time.monotonic()
            if process.poll() is not None and process.returncode != 0:
                raise BenchError(f"{process.args[0]} exited with status {process.returncode} before committing every record")
            time.sleep(0.1)
    finally:
        offsets.close()
    raise BenchError(f"consumer group {group} did not commit every record within {timeout_seconds:.0f} s")


def run_bare(prefill_: Prefill, rules: list[Path], name: str, consume_only: bool = False, profile_output: Path | None = None) -> RunResult:
    settings = prefill_.topics.settings
    group = f"{settings.changes_topic}-bare-{time.monotonic_ns()}"
    state_dir = prefill_.topics.work_dir / f"bare-{time.monotonic_ns()}"
    command = [
        str(VENV_PYTHON), "-m", "bench.bare_loop",
        "--bootstrap-servers", settings.bootstrap_servers,
        "--topic", settings.changes_topic,
        "--partitions", str(settings.partitions),
        "--group", group,
        "--state-dir", str(state_dir),
        "--records", str(prefill_.records),
        "--timeout", str(_run_timeout(prefill_)),
    ]
    for path in rules:
        command += ["--rules", str(path)]
    if consume_only:
        command.append("--consume-only")
    progress(f"running {name}")
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = RssSampler(process.pid).start()
    profiler = _PySpy(process.pid, profile_output) if profile_output is not None else None
    try:
        stdout, stderr = process.communicate(timeout=_run_timeout(prefill_) + 60)
    except subprocess.TimeoutExpired:
        stop_process(process, kill=True)
        raise BenchError(f"{name} did not finish within {_run_timeout(prefill_) + 60:.0f} s") from None
    finally:
        sampler.stop()
        if profiler is not None:
            profiler.stop()
    if process.returncode != 0:
        raise BenchError(f"{name} exited with status {process.returncode}:\n{stderr[-3000:]}")
    result = orjson.loads(stdout.strip().splitlines()[-1])
    if result["timed_out"]:
        raise BenchError(f"{name} timed out after {result['records']} of {prefill_.records} records")
    _wait_all_committed(prefill_, group, process, 30)
    seconds = result["seconds"]
    changes = prefill_.changes
    return RunResult(
        name,
        changes,
        seconds,
        changes / seconds if seconds else 0.0,
        cpu_seconds=result["cpu_seconds"],
        peak_rss_mib=sampler.peak_kib / 1024,
        alerts=None if consume_only else result["alerts"],
        system_seconds=result["system_cpu_seconds"],
        minor_faults=result["minor_faults"],
        gc_seconds=result.get("gc_seconds"),
        gc_full_collections=result.get("gc_full_collections"),
    )


class _PySpy:
    """py-spy recording one process, stopped with SIGINT so that it writes its output."""

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        self.process = subprocess.Popen(
            [
                str(PY_SPY), "record", "--pid", str(pid), "--rate", str(PROFILE_RATE_HZ), "--format", "raw",
                "--output", str(output), "--nonblocking", "--threads", "--gil", "--duration", "3600",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            _, stderr = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            stop_process(self.process, kill=True)
            raise BenchError("py-spy did not stop within 60 s of SIGINT") from None
        if not self.output.exists():
            raise BenchError(f"py-spy wrote no profile (exit status {self.process.returncode}): {stderr[-2000:]}")


def run_worker(
    prefill_: Prefill,
    rules: list[Path],
    name: str,
    profile_output: Path | None = None,
    worker_env: dict[str, str] | None = None,
) -> RunResult:
    base = prefill_.topics.settings
    app_id = f"{base.changes_topic}-worker-{time.monotonic_ns()}"
    settings = base.replace(app_id=app_id, state_dir=prefill_.topics.work_dir / app_id)
    topics = BenchTopics(settings, prefill_.topics.work_dir)
    progress(f"running {name}")
    worker = WorkerProcess(topics, rules=rules, label=app_id, extra_env=worker_env)
    sampler = RssSampler(worker.pid).start()
    profiler: _PySpy | None = None
    samples: list[tuple[float, float]] = []
    first: tuple[float, float, ProcessTimes] | None = None
    first_metrics: dict[str, float] = {}
    try:
        startup = worker.wait_for_partitions()
        if profile_output is not None:
            profiler = _PySpy(worker.pid, profile_output)
        deadline = time.monotonic() + _run_timeout(prefill_)
        while True:
            worker.check_running()
            if time.monotonic() > deadline:
                raise BenchError(f"{name} did not finish within {_run_timeout(prefill_):.0f} s:\n{worker.log_tail()}")
            # Polling all of the worker's series at this rate cost it about 5 % of its time (py-spy), so
            # the loop reads the progress counters and the full set only at the first and last sample.
            metrics = worker.metrics(PROGRESS_METRICS)
            now = time.monotonic()
            if metrics is not None:
                changes = metrics.get("kdiag_worker_changes_total", 0.0)
                records = metric_sum(metrics, "kdiag_worker_records_total")
                samples.append((now, changes))
                if first is None and changes > 0:
                    first = (now, changes, process_times(worker.pid) or ProcessTimes(0.0, 0.0, 0))
                    first_metrics = worker.metrics() or metrics
                if records >= prefill_.records:
                    end_times = process_times(worker.pid) or ProcessTimes(0.0, 0.0, 0)
                    metrics = worker.metrics() or metrics
                    alerts = int(metric_sum(metrics, "kdiag_worker_alerts_total"))
                    batching = _batching(first_metrics, metrics, samples[-1][0] - first[0])
                    collector = _collector(first_metrics, metrics)
                    break
            time.sleep(METRICS_POLL_SECONDS)
        if profiler is not None:
            profiler.stop()
            profiler = None
    finally:
        if profiler is not None:
            profiler.stop()
        sampler.stop()
        worker.stop()
    assert first is not None
    end_time, end_changes = samples[-1]
    seconds = end_time - first[0]
    counted = end_changes - first[1]
    if end_changes != prefill_.changes:
        raise BenchError(f"{name} counted {end_changes:.0f} changes, expected {prefill_.changes}")
    return RunResult(
        name,
        int(counted),
        seconds,
        counted / seconds if seconds else 0.0,
        cpu_seconds=end_times.cpu_seconds - first[2].cpu_seconds,
        peak_rss_mib=sampler.peak_kib / 1024,
        alerts=alerts,
        system_seconds=end_times.system_seconds - first[2].system_seconds,
        minor_faults=end_times.minor_faults - first[2].minor_faults,
        gc_seconds=collector[0],
        gc_full_collections=collector[1],
        extra={"startup_seconds": round(startup, 2), "app_id": app_id, **batching},
    )


def run_workers(prefill_: Prefill, rules: list[Path], name: str, count: int, worker_env: dict[str, str] | None = None) -> RunResult:
    """Run `count` worker processes in one consumer group, each with a state folder of its own, and
    measure their changes per second together.

    They start together, but a group's first assignment can come before every worker has joined, and
    a worker starts processing a second or more after it owns its partitions. So the clock starts
    when each worker owns a partition, they own every partition between them, and each has processed
    a change since. As for one worker, the changes processed before that are left out of the rate.
    """
    base = prefill_.topics.settings
    app_id = f"{base.changes_topic}-workers-{time.monotonic_ns()}"
    progress(f"running {name}")
    workers: list[WorkerProcess] = []
    samplers: list[RssSampler] = []
    samples: list[tuple[float, float]] = []
    first: tuple[float, float, list[ProcessTimes]] | None = None
    # Each worker's change count when they first owned every partition between them.
    owned_at: list[float] | None = None
    try:
        for index in range(count):
            settings = base.replace(app_id=app_id, state_dir=prefill_.topics.work_dir / f"{app_id}-{index}")
            worker = WorkerProcess(BenchTopics(settings, prefill_.topics.work_dir), rules=rules, label=f"{app_id}-{index}", extra_env=worker_env)
            workers.append(worker)
            samplers.append(RssSampler(worker.pid).start())
        # The workers' rebalance comes on top of one worker's time.
        timeout_seconds = _run_timeout(prefill_) + 120
        deadline = time.monotonic() + timeout_seconds
        while True:
            for worker in workers:
                worker.check_running()
            if time.monotonic() > deadline:
                raise BenchError(f"{name} timed out after {timeout_seconds:.0f} s:\n{workers[0].log_tail()}")
            scraped = [worker.metrics((*PROGRESS_METRICS, "kdiag_worker_partitions")) for worker in workers]
            now = time.monotonic()
            if all(metrics is not None for metrics in scraped):
                changes = sum(metrics.get("kdiag_worker_changes_total", 0.0) for metrics in scraped)
                records = sum(metric_sum(metrics, "kdiag_worker_records_total") for metrics in scraped)
                owned = [metrics.get("kdiag_worker_partitions", 0.0) for metrics in scraped]
                counts = [metrics.get("kdiag_worker_changes_total", 0.0) for metrics in scraped]
                if owned_at is None and min(owned) > 0 and sum(owned) >= base.partitions:
                    owned_at = counts
                if first is None and owned_at is not None and all(count > start for count, start in zip(counts, owned_at)):
                    first = (now, changes, [process_times(worker.pid) or ProcessTimes(0.0, 0.0, 0) for worker in workers])
                if first is not None:
                    samples.append((now, changes))
                if changes >= prefill_.changes and records >= prefill_.records:
                    end_times = [process_times(worker.pid) or ProcessTimes(0.0, 0.0, 0) for worker in workers]
                    alerts = sum(int(metric_sum(worker.metrics() or {}, "kdiag_worker_alerts_total")) for worker in workers)
                    break
            time.sleep(METRICS_POLL_SECONDS)
    finally:
        for sampler in samplers:
            sampler.stop()
        for worker in workers:
            worker.stop()
    if first is None or len(samples) < 2:
        raise BenchError(f"{name}: the workers finished before each of them processed changes of its own partitions; use more --changes")
    end_time, end_changes = samples[-1]
    seconds = end_time - first[0]
    counted = end_changes - first[1]
    return RunResult(
        name,
        int(counted),
        seconds,
        counted / seconds if seconds else 0.0,
        cpu_seconds=sum(end.cpu_seconds - start.cpu_seconds for end, start in zip(end_times, first[2])),
        peak_rss_mib=max(sampler.peak_kib for sampler in samplers) / 1024,
        alerts=alerts,
        system_seconds=sum(end.system_seconds - start.system_seconds for end, start in zip(end_times, first[2])),
        minor_faults=sum(end.minor_faults - start.minor_faults for end, start in zip(end_times, first[2])),
        extra={"workers": count, "changes_before_clock": int(first[1]), "app_id": app_id},
    )


def _batching(start: dict[str, float], end: dict[str, float], seconds: float) -> dict[str, float]:
    """Return the worker's records per batch and per transaction, and its share of time inside batches.

    The figures are differences of its Prometheus counters between two samples `seconds` apart. A
    batch is one take_events batch of all partitions. Each partition with output commits one
    transaction per batch.
    """
    records = metric_sum(end, "kdiag_worker_records_total") - metric_sum(start, "kdiag_worker_records_total")
    transactions = metric_sum(end, "kdiag_worker_transactions_total") - metric_sum(start, "kdiag_worker_transactions_total")
    batches = end.get("kdiag_worker_batch_seconds_count", 0.0) - start.get("kdiag_worker_batch_seconds_count", 0.0)
    inside = end.get("kdiag_worker_batch_seconds_sum", 0.0) - start.get("kdiag_worker_batch_seconds_sum", 0.0)
    changes = end.get("kdiag_worker_changes_total", 0.0) - start.get("kdiag_worker_changes_total", 0.0)
    batch_cpu = end.get("kdiag_worker_batch_cpu_seconds_total", 0.0) - start.get("kdiag_worker_batch_cpu_seconds_total", 0.0)
    return {
        "records_per_batch": round(records / batches, 1) if batches else 0.0,
        "records_per_transaction": round(records / transactions, 1) if transactions else 0.0,
        "share_inside_batches": round(inside / seconds, 2) if seconds else 0.0,
        "batch_cpu_us_per_change": round(batch_cpu / changes * 1e6, 1) if changes else 0.0,
    }


def _collector(start: dict[str, float], end: dict[str, float]) -> tuple[float, int]:
    """Return the worker's seconds in the garbage collector and its full collections between two samples."""
    seconds = metric_sum(end, "kdiag_gc_pause_seconds_sum") - metric_sum(start, "kdiag_gc_pause_seconds_sum")
    full = 'kdiag_gc_pause_seconds_count{generation="2"}'
    return seconds, int(end.get(full, 0.0) - start.get(full, 0.0))


def run_quix(prefill_: Prefill, rules: list[Path], name: str) -> RunResult:
    python = ensure_quix_venv()
    settings = prefill_.topics.settings
    group = f"{settings.changes_topic}-quix-{time.monotonic_ns()}"
    command = [
        str(python), str(QUIX_PEER),
        "--bootstrap-servers", settings.bootstrap_servers,
        "--topic", settings.changes_topic,
        "--partitions", str(settings.partitions),
        "--alerts-topic", settings.alerts_topic,
        "--group", group,
        "--state-dir", str(prefill_.topics.work_dir / group),
    ]
    for path in rules:
        command += ["--rules", str(path)]
    progress(f"running {name}")
    log_path = prefill_.topics.work_dir / f"{group}.log"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, cwd=prefill_.topics.work_dir, env=env, stdout=subprocess.PIPE, stderr=log_file, text=True)
    sampler = RssSampler(process.pid).start()
    started = time.monotonic()
    try:
        committed_at = _wait_all_committed(prefill_, group, process, _run_timeout(prefill_))
    except BenchError as error:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise BenchError(f"{error}; last lines of the peer's log:\n{tail}") from None
    finally:
        sampler.stop()
        stop_process(process)
    stdout = process.stdout.read() if process.stdout else ""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise BenchError(f"the quix peer printed no result; see {log_path}")
    result = orjson.loads(lines[-1])
    seconds = result["processing_seconds"]
    return RunResult(
        name,
        result["changes"],
        seconds,
        result["changes"] / seconds if seconds else 0.0,
        cpu_seconds=result["cpu_seconds"],
        peak_rss_mib=sampler.peak_kib / 1024,
        alerts=result["alerts"],
        extra={"start_to_all_committed_seconds": round(committed_at - started, 2)},
    )


# Profile


@dataclass
class ProfileEntry:
    function: str
    self_percent: float
    total_percent: float
    self_us_per_change: float
    total_us_per_change: float

    def line(self) -> str:
        return (
            f"{self.self_percent:5.1f}% own {self.self_us_per_change:6.1f} µs/change, "
            f"{self.total_percent:5.1f}% total {self.total_us_per_change:6.1f} µs/change  {self.function}"
        )


_LINE_NUMBER = re.compile(r":\d+\)$")


def _frame_name(frame: str) -> str:
    """Shorten a py-spy frame, "name (/path/to/site-packages/pkg/mod.py:12)", to "name (pkg/mod.py)"."""
    frame = _LINE_NUMBER.sub(")", frame)
    name, _, location = frame.partition(" (")
    for marker in ("site-packages/", f"{REPO_ROOT}/", "lib/python3.11/"):
        if marker in location:
            location = location.split(marker, 1)[1]
    return f"{name} ({location}" if location else name


@dataclass
class Profile:
    """The stacks of a py-spy raw profile taken with --threads --gil, of every thread.

    py-spy samples only the thread that holds the GIL, so the shares are of the time the process ran
    Python code, in whichever thread: the worker processes its batches in asyncio.to_thread worker
    threads, and waits without the GIL. C code that releases the GIL (RocksDB writes, librdkafka) is
    missing. Frames are shortened by _frame_name, and the thread names are dropped.
    """

    stacks: list[tuple[list[str], int]]
    samples: int
    changes: int

    @classmethod
    def read(cls, raw_path: Path, changes: int) -> "Profile":
        stacks = []
        samples = 0
        for line in raw_path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            frames = stack.split(";")
            # With --threads the first frame is "thread (<id>): <name>". A line without a sample
            # count at its end, such as one cut short when py-spy stopped, is skipped.
            if not count_text.isdigit() or not frames[0].startswith("thread ("):
                continue
            count = int(count_text)
            stacks.append(([_frame_name(frame) for frame in frames[1:]] or ["(no Python frame)"], count))
            samples += count
        return cls(stacks, samples, changes)

    def _entry(self, function: str, own: int, total: int) -> ProfileEntry:
        seconds_per_sample = 1 / PROFILE_RATE_HZ
        samples = max(1, self.samples)
        return ProfileEntry(
            function,
            100 * own / samples,
            100 * total / samples,
            own * seconds_per_sample / self.changes * 1e6,
            total * seconds_per_sample / self.changes * 1e6,
        )

    def top(self, count: int = 15) -> list[ProfileEntry]:
        """Return the functions with the most samples of their own (at the top of the stack)."""
        own: Counter[str] = Counter()
        total: Counter[str] = Counter()
        for frames, samples in self.stacks:
            own[frames[-1]] += samples
            for frame in set(frames):
                total[frame] += samples
        return [self._entry(function, samples, total[function]) for function, samples in own.most_common(count)]

    def areas(self, areas: list[tuple[str, str]]) -> list[ProfileEntry]:
        """Return, per (label, frame prefix) found in the profile, the share of stacks that contain it."""
        result = []
        for label, prefix in areas:
            total = sum(samples for frames, samples in self.stacks if any(frame.startswith(prefix) for frame in frames))
            if total:
                result.append(self._entry(label, 0, total))
        return result


# Parts of the worker's and the bare loop's work, as (label, start of a shortened py-spy frame).
# orjson.loads and other C calls have no frame of their own: their time is the own time of the caller.
PROFILE_AREAS = [
    ("Faust's event loop", "BaseEventLoop._run_once (asyncio/base_events.py)"),
    ("Faust fetch (Consumer.getmany)", "Consumer.getmany (faust/transport/consumer.py)"),
    ("agent: WorkerRuntime.process", "WorkerRuntime.process (streams/runtime.py)"),
    ("bare loop: run (the whole loop)", "run (bench/bare_loop.py)"),
    ("PartitionProcessor.process", "PartitionProcessor.process (streams/processor.py)"),
    ("ChangeBatch decode", "Codec.decode (kdiag/codec.py)"),
    ("rule evaluation of changes (RuleTree.matches)", "RuleTree.matches (kdiag/rules/tree.py)"),
    ("rule evaluation of rechecks (Rule.evaluate)", "Rule.evaluate (kdiag/rules/engine.py)"),
    ("reference tracking (_remember_referrer)", "PartitionProcessor._remember_referrer (streams/processor.py)"),
    ("reference rechecks (_recheck_referrers)", "PartitionProcessor._recheck_referrers (streams/processor.py)"),
    ("DurationTracker.observe", "DurationTracker.observe (kdiag/durations.py)"),
    ("take_state_writes", "PartitionProcessor.take_state_writes (streams/processor.py)"),
    ("alert encoding", "BatchResult.encoded_alerts (streams/processor.py)"),
    ("Kafka transaction produce", "PartitionTransactions.produce_outputs (streams/transactions.py)"),
    ("Kafka transaction commit", "PartitionTransactions.finish (streams/transactions.py)"),
    ("root-cause stage", "RootCauseRuntime.process (streams/root_cause.py)"),
    ("alert center stage", "CenterRuntime.process (streams/center.py)"),
    ("RocksDB batch write (PartitionStore.apply)", "PartitionStore.apply (streams/state.py)"),
    ("RocksDB reads (PartitionStore.get)", "PartitionStore.get (streams/state.py)"),
    ("metrics and alert logs (WorkerRuntime._count)", "WorkerRuntime._count (streams/runtime.py)"),
]


# Main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    with Broker(args.bootstrap_servers) as broker:
        run(args, broker)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--changes", type=int, default=200_000, help="changes to pre-fill (default 200000)")
    parser.add_argument("--pods", type=int, default=10_000, help="pods of the synthetic cluster (default 10000)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the changes topic (default 6)")
    parser.add_argument("--live-rate", type=int, default=25_000, help="changes per second of the retimed stream (default 25000)")
    parser.add_argument("--seed", type=int, default=1, help="load generator seed (default 1)")
    parser.add_argument("--no-quix", action="store_true", help="skip the quix-streams peer")
    parser.add_argument(
        "--workers", type=int, default=1, help="also run this many worker processes in one group with 100 rules (default 1: no such run)"
    )
    parser.add_argument("--profile", action="store_true", help="also run the worker and the bare loop under py-spy and list their top functions")
    parser.add_argument(
        "--worker-env", type=env_pair, action="append", default=[], help="set NAME=VALUE in the worker's environment (repeatable)"
    )
    parser.add_argument("--profile-dir", type=Path, help="with --profile, keep py-spy's raw profiles (folded stacks) in this folder")
    parser.add_argument("--bootstrap-servers", help="use this broker instead of starting one")


def run(args: argparse.Namespace, broker: Broker) -> dict[str, Any]:
    filled = prefill(broker.bootstrap_servers, args.partitions, args.changes, args.pods, args.seed, args.live_rate)
    try:
        return _measure(args, filled)
    finally:
        cleanup(broker, filled.topics)


def _measure(args: argparse.Namespace, filled: Prefill) -> dict[str, Any]:
    generation = filled.generation
    rules_dir = Path(tempfile.mkdtemp(prefix="kdiag-bench-rules-", dir=filled.topics.work_dir))
    variants, variant_count = write_rule_variants(rules_dir)
    pack = [PACK_RULES]
    hundred = [PACK_RULES, variants]
    pack_count = RULE_COUNT - variant_count

    results: dict[str, RunResult] = {}
    results["consume_only"] = run_bare(filled, pack, "consume only", consume_only=True)
    results["bare_pack"] = run_bare(filled, pack, f"bare loop, {pack_count} rules")
    results["bare_100"] = run_bare(filled, hundred, f"bare loop, {RULE_COUNT} rules")
    worker_env = dict(args.worker_env)
    results["worker_pack"] = run_worker(filled, pack, f"worker, {pack_count} rules", worker_env=worker_env)
    results["worker_100"] = run_worker(filled, hundred, f"worker, {RULE_COUNT} rules", worker_env=worker_env)
    workers_error = None
    if args.workers > 1:
        # A failed run of several workers must not lose the figures of the single worker.
        try:
            results[f"workers_{args.workers}_100"] = run_workers(
                filled, hundred, f"{args.workers} workers in one group, {RULE_COUNT} rules", args.workers, worker_env=worker_env
            )
        except BenchError as error:
            workers_error = str(error)
    if not args.no_quix:
        results["quix_pack"] = run_quix(filled, pack, f"quix-streams peer, {pack_count} rules")
        results["quix_100"] = run_quix(filled, hundred, f"quix-streams peer, {RULE_COUNT} rules")

    profiles: dict[str, Profile] = {}
    profile_errors: list[str] = []
    if args.profile:
        for label, runner in (("worker", functools.partial(run_worker, worker_env=worker_env)), ("bare loop", run_bare)):
            raw = filled.topics.work_dir / f"{label.replace(' ', '-')}-profile.txt"
            # A failed profile must not lose the figures measured above.
            try:
                profiled = runner(filled, hundred, f"{label}, {RULE_COUNT} rules, under py-spy", profile_output=raw)
                results[f"{label.replace(' ', '_')}_100_profiled"] = profiled
                profiles[label] = Profile.read(raw, filled.changes)
                if args.profile_dir is not None:
                    args.profile_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(raw, args.profile_dir / raw.name)
            except (BenchError, OSError, ValueError) as error:
                profile_errors.append(f"{label}: {error}")

    mean_changes = filled.changes / max(1, filled.records - _tick_records(filled))
    lines = [
        f"input: {filled.changes} changes in {filled.records} records ({mean_changes:.1f} changes per ChangeBatch), "
        f"{generation.bytes / filled.changes / 1024:.1f} KiB mean object JSON, {args.partitions} partitions",
    ]
    lines += [result.line() for result in results.values()]
    ratios: dict[str, float] = {}
    for rule_label in ("pack", "100"):
        worker = results[f"worker_{rule_label}"].changes_per_second
        ratios[f"worker_over_bare_{rule_label}"] = worker / results[f"bare_{rule_label}"].changes_per_second
        if f"quix_{rule_label}" in results:
            ratios[f"worker_over_quix_{rule_label}"] = worker / results[f"quix_{rule_label}"].changes_per_second
    lines.append("ratios: " + ", ".join(f"{name} {value:.2f}" for name, value in ratios.items()))
    if workers_error is not None:
        lines.append(f"{args.workers} workers failed: {workers_error}")
    lines += [f"profile failed: {error}" for error in profile_errors]
    for label, profile in profiles.items():
        lines.append(
            f"{label} profile, {RULE_COUNT} rules, every thread: {profile.samples} samples at {PROFILE_RATE_HZ} Hz "
            f"of the thread holding the GIL; top functions by own time:"
        )
        lines += [f"  {entry.line()}" for entry in profile.top()]
        lines.append(f"{label} profile by area (share of the time holding the GIL, inclusive):")
        lines += [f"  {entry.total_percent:5.1f}% {entry.total_us_per_change:6.1f} µs/change  {entry.function}" for entry in profile.areas(PROFILE_AREAS)]
    figures = {
        "changes": filled.changes,
        "records": filled.records,
        "mean_changes_per_record": round(mean_changes, 1),
        "mean_object_bytes": round(generation.bytes / filled.changes),
        "partitions": args.partitions,
        "rules": {"pack": pack_count, "variants": variant_count},
        "results": {name: result.figures() for name, result in results.items()},
        "ratios": {name: round(value, 3) for name, value in ratios.items()},
        "workers_error": workers_error,
        "profile_errors": profile_errors,
        "profiles": {
            label: {
                "samples": profile.samples,
                "top": [entry.__dict__ for entry in profile.top()],
                "areas": [entry.__dict__ for entry in profile.areas(PROFILE_AREAS)],
            }
            for label, profile in profiles.items()
        },
    }
    report("throughput", lines, figures)
    return figures


def _tick_records(filled: Prefill) -> int:
    return sum(1 for records in filled.record_log.records.values() for _, count in records if count == 0)


if __name__ == "__main__":
    sys.exit(main())
