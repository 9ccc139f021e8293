"""Static checks of docker-compose.yml, because the CI machines cannot run Docker."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def _services() -> dict:
    with COMPOSE_FILE.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)["services"]


def test_compose_defines_services() -> None:
    services = _services()
    assert {"kafka", "worker", "replay"} <= set(services)


def test_compose_kafka_image_version() -> None:
    image = _services()["kafka"]["image"]
    assert image.startswith("apache/kafka:3.9."), image


def test_compose_ports_bind_loopback() -> None:
    published = [
        (name, port) for name, service in _services().items() for port in service.get("ports", [])
    ]
    assert published, "expected at least one published port"
    for name, port in published:
        # Short syntax is HOST_IP:HOST_PORT:CONTAINER_PORT, and the long
        # syntax has a host_ip key. Without a host IP Docker binds 0.0.0.0.
        if isinstance(port, dict):
            assert port.get("host_ip") == "127.0.0.1", (name, port)
        else:
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_compose_worker_uses_compose_kafka() -> None:
    services = _services()
    for name in ("worker", "replay"):
        environment = services[name]["environment"]
        assert environment["KDIAG_BOOTSTRAP_SERVERS"] == "kafka:9092", name
