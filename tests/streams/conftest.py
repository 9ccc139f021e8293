"""Fixtures that run real `kdiag worker` processes against the test broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from kdiag.codec import codec
from kdiag.settings import Settings, load_settings
from kdiag.topics import consumer_lag, ensure_topics

REPO_ROOT = Path(__file__).resolve().parents[2]
KDIAG = [sys.executable, "-m", "kdiag.cli"]
WORKER_STOP_TIMEOUT_SECONDS = 30


def settings_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "KDIAG_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "KDIAG_CHANGES_TOPIC": settings.changes_topic,
            "KDIAG_ALERTS_TOPIC": settings.alerts_topic,
            "KDIAG_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
            "KDIAG_RULES_TOPIC": settings.rules_topic,
            "KDIAG_GRAPHS_TOPIC": settings.graphs_topic,
            "KDIAG_DIAGNOSES_TOPIC": settings.diagnoses_topic,
            "KDIAG_EVENTS_TOPIC": settings.events_topic,
            "KDIAG_GRADED_ALERTS_TOPIC": settings.graded_alerts_topic,
            "KDIAG_ACTIONS_TOPIC": settings.actions_topic,
            "KDIAG_CENTER_CONFIG_TOPIC": settings.center_config_topic,
            "KDIAG_APP_ID": settings.app_id,
            "KDIAG_STATE_DIR": str(settings.state_dir),
            "KDIAG_PARTITIONS": str(settings.partitions),
            "KDIAG_RULES_DIR": str(settings.rules_dir),
            "KDIAG_METRICS_PORT": str(settings.metrics_port),
            "KDIAG_BATCH_MAX_RECORDS": str(settings.batch_max_records),
        }
    )
    return env


@dataclass
class Pipeline:
    """Topics, state folder and worker processes of one isolated kdiag installation."""

    settings: Settings
    log_dir: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    def kdiag(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*KDIAG, *args],
            env=settings_env(self.settings),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=REPO_ROOT,
        )

    def replay(self, *args: str) -> subprocess.CompletedProcess:
        result = self.kdiag("replay", *args)
        assert result.returncode == 0, result.stderr
        return result

    def start_worker(self, state_dir: Path | None = None) -> subprocess.Popen:
        """Start a worker of this installation's consumer group. Workers that run at the same time need
        a state folder each, as on separate machines."""
        settings = self.settings if state_dir is None else self.settings.replace(state_dir=state_dir)
        log_file = open(self.log_dir / f"worker-{len(self.workers)}.log", "w")
        process = subprocess.Popen(
            [*KDIAG, "worker"],
            env=settings_env(settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        self.workers.append(process)
        return process

    def stop_worker(self, process: subprocess.Popen, kill: bool = False) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(WORKER_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(WORKER_STOP_TIMEOUT_SECONDS)

    def worker_log(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.log_dir.glob("worker-*.log")))

    def wait_for_log(self, text: str, timeout_seconds: float = 60) -> None:
        """Wait until a worker's log contains text, e.g. a message it logs when a change took effect."""
        deadline = time.monotonic() + timeout_seconds
        while text not in self.worker_log():
            assert time.monotonic() < deadline, f"{text!r} not logged:\n{self.worker_log()[-3000:]}"
            time.sleep(0.2)

    def read_topic(self, topic: str, schema: str) -> list[dict]:
        """Read every committed record of a topic, decoded with the named schema."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap_servers,
                "group.id": f"test-reader-{time.monotonic_ns()}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
        try:
            metadata = consumer.list_topics(topic, timeout=30).topics[topic]
            partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
            consumer.assign(partitions)
            decoder = codec(schema)
            records: list[dict] = []
            at_end: set[int] = set()
            deadline = time.monotonic() + 60
            while len(at_end) < len(partitions) and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None:
                    continue
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition())
                    continue
                at_end.discard(message.partition())
                records.append(decoder.decode(message.value()))
            return records
        finally:
            consumer.close()

    def alerts(self) -> list[dict]:
        return self.read_topic(self.settings.alerts_topic, "Alert")

    def graded_alerts(self) -> list[dict]:
        return self.read_topic(self.settings.graded_alerts_topic, "GradedAlert")

    def wait_for_alerts(self, timeout_seconds: float = 240.0) -> list[dict]:
        """Wait until the worker committed every changes-topic record, then return the alerts.

        The worker commits a batch's alerts before its consumer offset, so no alert can arrive after.
        """
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            for process in self.workers:
                assert process.poll() in (None, 0, -signal.SIGKILL, -signal.SIGTERM), self.worker_log()
            settings = self.settings
            if all(consumer_lag(settings, topic=topic) == 0 for topic in (settings.changes_topic, settings.diagnoses_topic, settings.events_topic)):
                return self.alerts()
            time.sleep(0.5)
        raise AssertionError(f"worker still behind after {timeout_seconds} s:\n{self.worker_log()[-5000:]}")


@pytest.fixture
def make_pipeline(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> Iterator:
    """Factory of isolated installations: each call gets its own topics, consumer group and state."""
    created: list[Pipeline] = []

    def make(label: str = "a") -> Pipeline:
        name = f"{unique_name}{label}"
        settings = load_settings(
            environ={},
            bootstrap_servers=kafka_bootstrap,
            changes_topic=f"{name}-changes",
            alerts_topic=f"{name}-alerts",
            dead_letter_topic=f"{name}-dead-letters",
            rules_topic=f"{name}-rules",
            graphs_topic=f"{name}-graphs",
            diagnoses_topic=f"{name}-diagnoses",
            events_topic=f"{name}-events",
            graded_alerts_topic=f"{name}-graded",
            actions_topic=f"{name}-actions",
            center_config_topic=f"{name}-center-config",
            app_id=f"{name}-worker",
            state_dir=tmp_path / name / "state",
            partitions=3,
            rules_dir=REPO_ROOT / "rules",
        )
        ensure_topics(settings)
        log_dir = tmp_path / name / "logs"
        log_dir.mkdir(parents=True)
        pipeline = Pipeline(settings, log_dir)
        created.append(pipeline)
        return pipeline

    yield make
    for pipeline in created:
        for process in pipeline.workers:
            pipeline.stop_worker(process)


@pytest.fixture
def pipeline(make_pipeline) -> Pipeline:
    return make_pipeline()
