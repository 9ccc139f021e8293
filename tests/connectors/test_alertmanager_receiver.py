"""`kdiag receive alertmanager` against the test broker, and a consumer loop around the alert center."""

from __future__ import annotations

import copy
import time
import urllib.error
import urllib.request

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.alertmanager_receiver import WEBHOOK_PATH, EventProducer, ReceiverServer, build_app
from kdiag.alertcenter import AlertCenter, AlertCenterState, Event
from kdiag.codec import codec
from kdiag.model import parse_time_ms
from kdiag.settings import Settings

EVENT = codec("Event")
GRADED = codec("GradedAlert")
DEAD_LETTER = codec("DeadLetter")
RECEIVED = parse_time_ms("2024-03-01T10:10:00Z") / 1000

PAYLOAD = {
    "version": "4",
    "groupKey": '{}:{alertname="KubePodNotReady"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "kdiag",
    "groupLabels": {"alertname": "KubePodNotReady"},
    "commonLabels": {"alertname": "KubePodNotReady", "namespace": "shop", "severity": "warning"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager.example:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"pod": "web-7d4b9c6f5-x2k8q", "reason": "ImagePullBackOff"},
            "annotations": {"summary": "web is not ready"},
            "startsAt": "2024-03-01T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example/graph",
            "fingerprint": "1111111111111111",
        },
        {
            "status": "firing",
            "labels": {"pod": "web-7d4b9c6f5-m9z2b", "reason": "ErrImagePull"},
            "annotations": {"summary": "web is not ready"},
            "startsAt": "2024-03-01T10:01:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.example/graph",
            "fingerprint": "2222222222222222",
        },
    ],
}


def create_topics(bootstrap: str, *names: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1) for name in names], operation_timeout=30).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 30
    for name in names:
        while len(getattr(admin.list_topics(name, timeout=10).topics.get(name), "partitions", {}) or {}) < partitions:
            assert time.monotonic() < deadline, f"topic {name} not in metadata after 30 s"
            time.sleep(0.1)


def read_topic(bootstrap: str, topic: str, count: int, timeout_seconds: float = 30.0) -> list:
    """Return the first `count` records of the topic, waiting at most timeout_seconds."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in partitions])
    messages = []
    deadline = time.monotonic() + timeout_seconds
    try:
        while len(messages) < count:
            assert time.monotonic() < deadline, f"timed out reading {topic}: {len(messages)} of {count} records"
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
    finally:
        consumer.close()
    return messages


def post(port: int, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{WEBHOOK_PATH}", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


@pytest.fixture
def receiver(kafka_bootstrap, unique_name):
    settings = Settings(bootstrap_servers=kafka_bootstrap, dead_letter_topic=f"{unique_name}-dead")
    events_topic = f"{unique_name}-events"
    create_topics(kafka_bootstrap, events_topic, settings.dead_letter_topic)
    producer = EventProducer(settings, events_topic, wall_clock=lambda: RECEIVED)
    server = ReceiverServer(build_app(producer, default_cluster="lab", wall_clock=lambda: RECEIVED))
    port = server.start()
    yield settings, events_topic, port
    server.stop()
    producer.close()


def test_webhook_becomes_events(receiver):
    settings, events_topic, port = receiver
    status, answer = post(port, orjson.dumps(PAYLOAD))
    assert (status, answer) == (200, {"events": 2})

    messages = read_topic(settings.bootstrap_servers, events_topic, 2)
    events = sorted((Event.from_avro(EVENT.decode(message.value())) for message in messages), key=lambda event: event.name)
    assert {message.key() for message in messages} == {b"KubePodNotReady"}
    assert [(event.rule, event.name, event.reason, event.cluster) for event in events] == [
        ("KubePodNotReady", "web-7d4b9c6f5-m9z2b", "ErrImagePull", "lab"),
        ("KubePodNotReady", "web-7d4b9c6f5-x2k8q", "ImagePullBackOff", "lab"),
    ]
    assert {event.observed_time_ms for event in events} == {int(RECEIVED * 1000)}


def test_malformed_webhook_dead_lettered_with_400(receiver):
    settings, events_topic, port = receiver
    broken = copy.deepcopy(PAYLOAD)
    broken["alerts"][1]["startsAt"] = "ten o'clock"
    body = orjson.dumps(broken)
    status, answer = post(port, body)
    assert status == 400
    assert "alerts[1].startsAt" in answer["error"]

    status, answer = post(port, b"not json")
    assert status == 400
    assert "invalid JSON" in answer["error"]

    letters = [DEAD_LETTER.decode(message.value()) for message in read_topic(settings.bootstrap_servers, settings.dead_letter_topic, 2)]
    assert [letter["component"] for letter in letters] == ["receive-alertmanager"] * 2
    assert "alerts[1].startsAt" in letters[0]["reason"]
    assert letters[0]["payload"] == body
    assert letters[1]["payload"] == b"not json"
    assert letters[0]["origin"].endswith(f"POST {WEBHOOK_PATH}")


def test_flapping_alerts_through_broker_stay_one(receiver, unique_name):
    """Send webhooks with flapping reasons through the receiver and a consumer loop around the alert
    center that produces transactionally, as the stream agent will. The output has one alert."""
    settings, events_topic, port = receiver
    graded_topic = f"{unique_name}-graded"
    create_topics(settings.bootstrap_servers, graded_topic)
    for round_number in range(3):
        payload = copy.deepcopy(PAYLOAD)
        for alert in payload["alerts"]:
            alert["labels"]["reason"] = ["ImagePullBackOff", "ErrImagePull"][(round_number + len(alert["labels"]["pod"])) % 2]
        assert post(port, orjson.dumps(payload))[0] == 200
    resolved = copy.deepcopy(PAYLOAD)
    for alert in resolved["alerts"]:
        alert["status"] = "resolved"
        alert["endsAt"] = "2024-03-01T10:20:00Z"
    assert post(port, orjson.dumps(resolved))[0] == 200

    center = AlertCenter()
    state = AlertCenterState()
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "transactional.id": f"{unique_name}-center"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for message in read_topic(settings.bootstrap_servers, events_topic, 8):
        for graded in center.process(Event.from_avro(EVENT.decode(message.value())), state):
            producer.produce(graded_topic, key=graded.fingerprint.encode(), value=GRADED.encode(graded.to_avro()))
    producer.commit_transaction(30)

    records = [GRADED.decode(message.value()) for message in read_topic(settings.bootstrap_servers, graded_topic, 2)]
    assert [record["type"] for record in records] == ["FIRING", "RESOLVED"]
    assert records[1]["count"] == 6
    assert sorted(records[1]["reasons"]) == ["ErrImagePull", "ImagePullBackOff"]
    assert (records[1]["ownerKind"], records[1]["ownerName"]) == ("Deployment", "web")
    assert records[1]["resolvedAt"] == parse_time_ms("2024-03-01T10:20:00Z")
