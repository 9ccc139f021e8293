"""Shared fixtures: a private Kafka broker for the test session and unique names.

Tests that request ``kafka_bootstrap`` are marked ``integration``, so
``pytest -m "not integration"`` runs only the tests that need no broker.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

KAFKA_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kafka.sh"
# Covers a first run that fetches the broker jars with Maven before it starts.
KAFKA_UP_TIMEOUT_SECONDS = 600
KAFKA_DOWN_TIMEOUT_SECONDS = 120


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _find_free_port_pair() -> int:
    """Return a port P such that P and P+1 are both free on 127.0.0.1.

    Ports are drawn from 20000-32000, below Linux's default ephemeral range
    (32768-60999), so that outgoing connections are unlikely to take one
    between this check and the broker's start.
    """
    for _ in range(200):
        port = random.randrange(20000, 32000)
        if _port_is_free(port) and _port_is_free(port + 1):
            return port
    raise RuntimeError("no two consecutive free TCP ports found on 127.0.0.1 in 20000-32000")


def _run_kafka_script(command: str, env: dict[str, str], timeout: float) -> None:
    result = subprocess.run(
        [str(KAFKA_SCRIPT), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"scripts/kafka.sh {command} failed with exit code {result.returncode}:\n{result.stderr}"
        )


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a private broker for the test session and yield its bootstrap servers.

    With KDIAG_TEST_BOOTSTRAP set, yield that value instead and start no broker.
    """
    existing = os.environ.get("KDIAG_TEST_BOOTSTRAP")
    if existing:
        yield existing
        return

    port = _find_free_port_pair()
    env = dict(os.environ)
    env["KAFKA_PORT"] = str(port)
    env["KAFKA_DATA_DIR"] = str(tmp_path_factory.mktemp("kafka"))
    # down runs even when up fails, because up leaves a broker that timed out
    # during startup running.
    try:
        _run_kafka_script("up", env, KAFKA_UP_TIMEOUT_SECONDS)
        yield f"127.0.0.1:{port}"
    finally:
        _run_kafka_script("down", env, KAFKA_DOWN_TIMEOUT_SECONDS)


@pytest.fixture
def unique_name() -> str:
    """Return a short name for a topic, consumer group or transactional id that no other test uses."""
    return f"t{uuid.uuid4().hex[:8]}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
