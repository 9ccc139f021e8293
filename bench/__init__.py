"""Harness of the benchmark suite: a private broker, bench topics, worker processes and samplers.

Every benchmark runs against a broker that it starts itself (scripts/kafka.sh, on a free port in
40000-45000 of 127.0.0.1, with its data under /tmp) unless --bootstrap-servers names one, and stops
it by PID at the end. Each benchmark prints its figures as text, then one line
``BENCH_JSON {...}`` for machines.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from kdiag.settings import Settings, load_settings
from kdiag.topics import ensure_topics

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
KDIAG_BIN = REPO_ROOT / ".venv" / "bin" / "kdiag"
KAFKA_SCRIPT = REPO_ROOT / "scripts" / "kafka.sh"
PACK_RULES = REPO_ROOT / "rules"

PORT_RANGE = (40000, 45000)
KAFKA_UP_TIMEOUT_SECONDS = 600
KAFKA_DOWN_TIMEOUT_SECONDS = 120
PROCESS_STOP_TIMEOUT_SECONDS = 30


class BenchError(RuntimeError):
    """A benchmark could not run or finish. The message names the step that failed."""


# Output


def report(name: str, lines: list[str], figures: dict[str, Any]) -> None:
    """Print a benchmark's figures as text lines, then as one BENCH_JSON line."""
    print(f"== {name}", flush=True)
    for line in lines:
        print(f"   {line}", flush=True)
    print("BENCH_JSON " + orjson.dumps({"benchmark": name, **figures}).decode(), flush=True)


def progress(message: str) -> None:
    print(f"-- {message}", file=sys.stderr, flush=True)


# Ports and brokers


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(consecutive: int = 1) -> int:
    """Return a port P of 127.0.0.1 in 40000-45000 such that P .. P+consecutive-1 are all free."""
    low, high = PORT_RANGE
    for _ in range(500):
        port = random.randrange(low, high - consecutive)
        if all(_port_is_free(port + offset) for offset in range(consecutive)):
            return port
    raise BenchError(f"no {consecutive} consecutive free TCP ports found on 127.0.0.1 in {low}-{high}")


class Broker:
    """A single-node Kafka broker started with scripts/kafka.sh on 127.0.0.1, or an existing one.

    stop() runs `scripts/kafka.sh down`, which stops the broker by the PID in its data dir, and
    removes the data dir.
    """

    def __init__(self, bootstrap_servers: str | None = None, heap: str = "1g") -> None:
        self.external = bootstrap_servers is not None
        self.bootstrap_servers = bootstrap_servers or ""
        self.heap = heap
        self.data_dir: Path | None = None
        self._env: dict[str, str] = {}

    def start(self) -> "Broker":
        if self.external:
            return self
        port = free_port(consecutive=2)
        self.data_dir = Path(tempfile.mkdtemp(prefix="kdiag-bench-kafka-"))
        self._env = dict(os.environ, KAFKA_PORT=str(port), KAFKA_DATA_DIR=str(self.data_dir), KAFKA_HEAP=self.heap)
        progress(f"starting a broker on 127.0.0.1:{port}, data in {self.data_dir}")
        try:
            self._run("up", KAFKA_UP_TIMEOUT_SECONDS)
        except BaseException:
            self.stop()
            raise
        self.bootstrap_servers = f"127.0.0.1:{port}"
        return self

    def _run(self, command: str, timeout: float) -> None:
        result = subprocess.run(
            [str(KAFKA_SCRIPT), command], env=self._env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise BenchError(f"scripts/kafka.sh {command} failed with exit code {result.returncode}:\n{result.stderr}")

    @property
    def pid(self) -> int | None:
        if self.data_dir is None:
            return None
        try:
            return int((self.data_dir / "broker.pid").read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.external or self.data_dir is None:
            return
        try:
            self._run("down", KAFKA_DOWN_TIMEOUT_SECONDS)
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# Topics


def topic_fields() -> list[str]:
    """Return the names of the Settings fields that name a topic, such as changes_topic."""
    return [item.name for item in dataclasses.fields(Settings) if item.name.endswith("_topic")]


@dataclass
class BenchTopics:
    """Settings of one isolated kdiag installation on the bench broker, and its temp folder."""

    settings: Settings
    work_dir: Path
    extra_topics: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        settings = self.settings
        return [*(getattr(settings, name) for name in topic_fields()), settings.changelog_topic, *self.extra_topics]


def make_topics(bootstrap_servers: str, label: str, partitions: int, **overrides: Any) -> BenchTopics:
    """Create the topics of a fresh installation named bench-<label>-<random>.

    Every topic that Settings names gets this installation's prefix, so that installations with
    different partition counts never share a topic.
    """
    name = f"bench-{label}-{uuid.uuid4().hex[:6]}"
    work_dir = Path(tempfile.mkdtemp(prefix=f"kdiag-{name}-"))
    topics = {field_name: f"{name}-{field_name.removesuffix('_topic').replace('_', '-')}" for field_name in topic_fields()}
    settings = load_settings(
        environ={},
        bootstrap_servers=bootstrap_servers,
        app_id=f"{name}-worker",
        state_dir=work_dir / "state",
        partitions=partitions,
        cluster=f"{label}-cluster",
        **{**topics, **overrides},
    )
    try:
        ensure_topics(settings)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return BenchTopics(settings, work_dir)


def delete_topics(bootstrap_servers: str, names: list[str], timeout_seconds: float = 30.0) -> None:
    """Delete topics, ignoring ones that do not exist. Used on a broker the suite did not start."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    existing = admin.list_topics(timeout=timeout_seconds).topics
    doomed = [name for name in names if name in existing]
    if not doomed:
        return
    for name, future in admin.delete_topics(doomed, operation_timeout=timeout_seconds).items():
        try:
            future.result()
        except KafkaException as error:
            progress(f"failed to delete topic {name}: {error}")


def cleanup(broker: Broker, topics: BenchTopics) -> None:
    """Remove an installation's temp folder and, on an external broker, its topics."""
    if broker.external:
        delete_topics(broker.bootstrap_servers, topics.names)
    shutil.rmtree(topics.work_dir, ignore_errors=True)


def end_offsets(bootstrap_servers: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"bench-watermarks-{uuid.uuid4().hex[:6]}"})
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30, cached=False)[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()


class CommittedOffsets:
    """Reads a consumer group's committed offsets of one topic."""

    def __init__(self, bootstrap_servers: str, group: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group})
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]

    def read(self) -> list[int] | None:
        """Return the committed offset of each partition (0 when none), or None if the broker did not respond."""
        try:
            committed = self._consumer.committed(self._partitions, timeout=10)
        except KafkaException:
            return None
        return [max(tp.offset, 0) for tp in committed]

    def close(self) -> None:
        self._consumer.close()


# Processes


def settings_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment that points kdiag commands at one installation."""
    env = dict(os.environ)
    env.update({f"KDIAG_{name.upper()}": getattr(settings, name) for name in topic_fields()})
    env.update(
        {
            "KDIAG_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "KDIAG_APP_ID": settings.app_id,
            "KDIAG_STATE_DIR": str(settings.state_dir),
            "KDIAG_PARTITIONS": str(settings.partitions),
            "KDIAG_CLUSTER": settings.cluster,
        }
    )
    env.update(extra or {})
    return env


def stop_process(process: subprocess.Popen, kill: bool = False) -> int | None:
    """Stop a process this suite started, by its PID: SIGTERM (or SIGKILL), then SIGKILL after 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(PROCESS_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(PROCESS_STOP_TIMEOUT_SECONDS)
    return process.returncode


def rss_kib(pid: int) -> int | None:
    """Return VmRSS of a process in KiB from /proc/<pid>/status, or None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class ProcessTimes:
    """CPU time and minor page faults of a process so far, from /proc/<pid>/stat."""

    user_seconds: float
    system_seconds: float
    minor_faults: int

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds


def process_times(pid: int) -> ProcessTimes | None:
    """Return the CPU times and minor page faults of a process, or None once it has exited."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # Fields 10 (minflt), 14 (utime) and 15 (stime) of stat are the 8th, 12th and 13th after the
    # command name.
    return ProcessTimes(int(fields[11]) / ticks, int(fields[12]) / ticks, int(fields[7]))


def cpu_seconds(pid: int) -> float | None:
    """Return the user plus system CPU time of a process in seconds, from /proc/<pid>/stat."""
    times = process_times(pid)
    return times.cpu_seconds if times is not None else None


def env_pair(text: str) -> tuple[str, str]:
    """Parse a --worker-env argument, NAME=VALUE."""
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"invalid --worker-env {text!r}: expected NAME=VALUE")
    return name, value


def scrape_metrics(port: int, timeout_seconds: float = 5.0, names: Sequence[str] = ()) -> dict[str, float]:
    """Return the samples of a Prometheus endpoint on 127.0.0.1 as {"name{labels}": value}.

    With `names`, the endpoint collects and formats only those metrics, which costs the scraped
    process far less than all of its series.
    """
    query = "?" + urllib.parse.urlencode([("name[]", name) for name in names]) if names else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics{query}", timeout=timeout_seconds) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples


def metric_sum(samples: dict[str, float], name: str) -> float:
    """Sum a metric over all its label sets."""
    return sum(value for key, value in samples.items() if key == name or key.startswith(name + "{"))


class WorkerProcess:
    """One `kdiag worker` process of an installation, with its Prometheus endpoint."""

    def __init__(
        self,
        topics: BenchTopics,
        rules: list[Path] | None = None,
        label: str = "worker",
        extra_env: dict[str, str] | None = None,
        launcher: Sequence[str] | None = None,
    ) -> None:
        """`launcher` is the command that runs kdiag's arguments, `kdiag` itself by default."""
        self.topics = topics
        self.metrics_port = free_port()
        self.log_path = topics.work_dir / f"{label}.log"
        command = [*(launcher or [str(KDIAG_BIN)]), "worker", "--metrics-port", str(self.metrics_port)]
        for path in rules or [PACK_RULES]:
            command += ["--rules", str(path)]
        # Faust writes <app id>-data into the working folder, so the worker runs in the temp folder.
        with open(self.log_path, "w") as log_file:
            self.process = subprocess.Popen(
                command,
                env=settings_env(topics.settings, extra_env),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=topics.work_dir,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_running(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"the worker exited with status {code}; last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def metrics(self, names: Sequence[str] = ()) -> dict[str, float] | None:
        """Return the worker's metrics (see scrape_metrics), or None while its endpoint is unreachable."""
        try:
            return scrape_metrics(self.metrics_port, names=names)
        except OSError:
            return None

    def wait_for_partitions(self, timeout_seconds: float = 120.0) -> float:
        """Wait until the worker owns every partition. Returns the seconds it took."""
        started = time.monotonic()
        wanted = self.topics.settings.partitions
        while time.monotonic() - started < timeout_seconds:
            self.check_running()
            samples = self.metrics()
            if samples is not None and samples.get("kdiag_worker_partitions", 0) >= wanted:
                return time.monotonic() - started
            time.sleep(0.2)
        raise BenchError(f"the worker did not own all {wanted} partitions after {timeout_seconds} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        return stop_process(self.process)


class RssSampler:
    """Samples VmRSS of one process every `interval_seconds` in a background thread."""

    def __init__(self, pid: int, interval_seconds: float = 0.5) -> None:
        self.pid = pid
        self.interval_seconds = interval_seconds
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_kib(self.pid)
            if value is None:
                return
            self.samples.append((time.monotonic(), value))
            self._stop.wait(self.interval_seconds)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak_kib(self) -> int:
        return max((value for _, value in self.samples), default=0)


@contextlib.contextmanager
def running_worker(topics: BenchTopics, **kwargs: Any) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(topics, **kwargs)
    try:
        yield worker
    finally:
        worker.stop()


def machine_description() -> dict[str, Any]:
    """Return nproc, the CPU model name and the RAM of this machine."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
    }
