"""The Alertmanager sink: mapping, retries and timeouts against a fake Alertmanager on 127.0.0.1."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.alertmanager_sink import ActiveAlerts, AlertmanagerClient, postable_alert, run_sink
from kdiag.alertcenter import AlertCenter, AlertCenterConfig, AlertCenterState, Event
from kdiag.codec import codec
from kdiag.errors import ConfigError
from kdiag.model import parse_time_ms
from kdiag.settings import Settings

GRADED = codec("GradedAlert")
T0 = parse_time_ms("2024-03-01T10:00:00Z")


class FakeAlertmanager:
    """Records the bodies of POST /api/v2/alerts and responds with the queued statuses, then 200."""

    def __init__(self) -> None:
        self.bodies: list[list[dict]] = []
        self.statuses: list[int] = []
        self.delay_seconds = 0.0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(fake.delay_seconds)
                status = fake.statuses.pop(0) if fake.statuses else 200
                if self.path == "/api/v2/alerts" and status == 200:
                    fake.bodies.append(orjson.loads(body))
                try:
                    self.send_response(status)
                    self.end_headers()
                    self.wfile.write(b"{}")
                except BrokenPipeError:
                    pass  # The client timed out and closed the connection.

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def alerts(self) -> list[dict]:
        return [alert for body in self.bodies for alert in body]


@pytest.fixture
def alertmanager() -> Iterator[FakeAlertmanager]:
    fake = FakeAlertmanager()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    fake.thread.join(10)


def graded_records() -> list[dict]:
    """Return FIRING, LEVEL_CHANGED (P3 to P2) and RESOLVED records of the alert center."""
    center = AlertCenter(AlertCenterConfig.from_mapping({"escalation": [{"minApplications": 2, "raise": 1}]}))
    state = AlertCenterState()
    cause = {"cause": "image-tag-not-found", "summary": "The tag does not exist.", "responsibility": "USER", "fix": "Push it.", "findings": []}

    def event(application: str, time_ms: int, status: str = "FIRING") -> Event:
        return Event(
            id=f"{application}{time_ms}", source="DIAGNOSIS", source_fingerprint=application, status=status,
            rule="PodImagePullFailing", observed_time_ms=time_ms, starts_at_ms=T0, ends_at_ms=time_ms if status == "RESOLVED" else None,
            reason="ImagePullBackOff", cluster="c1", namespace="shop", kind="Pod", name=f"{application}-7d4b9c6f5-x2k8q",
            labels={"app": application}, message=f"{application} cannot pull its image", root_cause=cause,
        )

    outputs = center.process(event("web", T0), state)
    outputs += center.process(event("api", T0 + 60_000), state)
    outputs += center.process(event("web", T0 + 120_000, "RESOLVED"), state)
    return [output.to_avro() for output in outputs]


def test_postable_alert_mapping():
    firing = graded_records()[0]
    alert = postable_alert(firing, "P3", T0 + 300_000)
    assert alert["labels"] == {
        "alertname": "PodImagePullFailing",
        "severity": "warning",
        "priority": "P3",
        "fingerprint": firing["fingerprint"],
        "cluster": "c1",
        "namespace": "shop",
        "application": "web",
        "workload": "Deployment/web",
    }
    assert alert["annotations"]["summary"] == "web cannot pull its image"
    assert alert["annotations"]["root_cause"] == "The tag does not exist."
    assert alert["annotations"]["root_cause_fix"] == "Push it."
    assert alert["annotations"]["alert_id"] == firing["id"]
    assert "reasons: ImagePullBackOff" in alert["annotations"]["description"]
    assert alert["startsAt"] == "2024-03-01T10:00:00Z"
    assert alert["endsAt"] == "2024-03-01T10:05:00Z"


def test_level_change_ends_old_severity():
    records = graded_records()
    assert [record["type"] for record in records] == ["FIRING", "FIRING", "LEVEL_CHANGED", "RESOLVED"]
    active = ActiveAlerts(resend_interval_ms=60_000)
    now = T0 + 200_000
    posts = [active.apply(record, now) for record in records]
    changed = posts[2]
    assert [(alert["labels"]["severity"], alert["endsAt"]) for alert in changed] == [
        ("warning", "2024-03-01T10:03:20Z"),
        ("error", "2024-03-01T10:07:20Z"),
    ]
    (resolved,) = posts[3]
    assert resolved["labels"]["severity"] == "error"
    assert resolved["endsAt"] == "2024-03-01T10:02:00Z"
    assert [alert["labels"]["application"] for alert in active.all_firing(now)] == ["api"]


def test_client_posts_batch(alertmanager):
    client = AlertmanagerClient(alertmanager.url, timeout_seconds=5)
    alert = postable_alert(graded_records()[0], "P3", T0)
    assert client.post([alert, alert])
    assert alertmanager.bodies == [[alert, alert]]


def test_client_retries_5xx_and_logs_attempts(alertmanager, caplog):
    alertmanager.statuses = [503, 502]
    client = AlertmanagerClient(alertmanager.url, timeout_seconds=5, attempts=3, backoff_seconds=0.01)
    with caplog.at_level(logging.WARNING, logger="connectors.alertmanager_sink"):
        assert client.post([postable_alert(graded_records()[0], "P3", T0)])
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert [record.attempt for record in warnings] == ["1/3", "2/3"]
    assert "HTTP 503" in warnings[0].error
    assert len(alertmanager.bodies) == 1


def test_client_gives_up_after_attempts(alertmanager, caplog):
    alertmanager.statuses = [500, 500]
    client = AlertmanagerClient(alertmanager.url, timeout_seconds=5, attempts=2, backoff_seconds=0.01)
    with caplog.at_level(logging.WARNING, logger="connectors.alertmanager_sink"):
        assert not client.post([postable_alert(graded_records()[0], "P3", T0)])
    assert [record.levelname for record in caplog.records] == ["WARNING", "ERROR"]
    assert caplog.records[-1].attempt == "2/2"


def test_client_does_not_retry_4xx(alertmanager):
    alertmanager.statuses = [400]
    client = AlertmanagerClient(alertmanager.url, timeout_seconds=5, attempts=3, backoff_seconds=0.01)
    assert not client.post([postable_alert(graded_records()[0], "P3", T0)])
    assert alertmanager.statuses == []
    assert alertmanager.bodies == []


def test_client_times_out_and_retries(alertmanager, caplog):
    alertmanager.delay_seconds = 1.0
    client = AlertmanagerClient(alertmanager.url, timeout_seconds=0.2, attempts=2, backoff_seconds=0.01)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="connectors.alertmanager_sink"):
        assert not client.post([postable_alert(graded_records()[0], "P3", T0)])
    assert time.monotonic() - started < 5
    assert [record.attempt for record in caplog.records] == ["1/2", "2/2"]
    assert "timed out" in caplog.records[0].error


def test_client_rejects_invalid_url():
    with pytest.raises(ConfigError, match="invalid Alertmanager URL"):
        AlertmanagerClient("127.0.0.1:9093")


def test_sink_follows_topic(kafka_bootstrap, unique_name, alertmanager):
    topic = f"{unique_name}-graded"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, 3, 1)], operation_timeout=30).values():
        future.result(timeout=30)
    records = graded_records()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for record in records[:1]:
        producer.produce(topic, key=record["fingerprint"].encode(), value=GRADED.encode(record))
    assert producer.flush(30) == 0

    # The first record exists before the sink starts: it is part of the rebuilt firing set.
    client = AlertmanagerClient(alertmanager.url, timeout_seconds=5)
    thread = threading.Thread(
        target=run_sink,
        args=(Settings(bootstrap_servers=kafka_bootstrap), topic, client),
        kwargs={"until_idle_seconds": 3.0, "resend_interval_seconds": 60.0},
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not alertmanager.bodies:
        assert time.monotonic() < deadline, "the sink posted nothing within 30 s"
        time.sleep(0.1)
    for record in records[1:]:
        producer.produce(topic, key=record["fingerprint"].encode(), value=GRADED.encode(record))
    assert producer.flush(30) == 0
    thread.join(60)
    assert not thread.is_alive()

    posted = [(alert["labels"]["application"], alert["labels"]["severity"]) for alert in alertmanager.alerts()]
    assert posted[0] == ("web", "warning")
    assert sorted(posted[1:]) == sorted([("api", "error"), ("web", "warning"), ("web", "error"), ("web", "error")])
