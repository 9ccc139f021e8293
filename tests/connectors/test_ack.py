"""`kdiag ack`: the Action record, its key, and delivery to the test broker."""

from __future__ import annotations

import argparse
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connectors import ack
from kdiag.alertcenter import AlertCenter, AlertCenterState, alert_id
from kdiag.codec import codec
from kdiag.errors import DecodeError
from kdiag.settings import Settings

ACTION = codec("Action")
ALERT_ID = alert_id("PodImagePullFailing", "0123456789abcdef", 1_700_000_000_000)


def test_action_keyed_by_rule():
    key, action = ack.build_action(ALERT_ID, "ana", 42)
    assert key == b"PodImagePullFailing"
    assert action == {"action": "ACK", "alertId": ALERT_ID, "user": "ana", "time": 42}
    assert ACTION.decode(ACTION.encode(action)) == action


def test_rule_with_slash_keeps_its_name():
    key, _ = ack.build_action(alert_id("team/Rule", "0123456789abcdef", 1), "ana", 1)
    assert key == b"team/Rule"


@pytest.mark.parametrize("text", ["", "PodImagePullFailing", "Rule/0123456789abcdef", "Rule/0123456789ABCDEF-01234567"])
def test_invalid_alert_id_rejected(text):
    with pytest.raises(DecodeError, match="invalid alert id"):
        ack.build_action(text, "ana", 1)


def test_default_user_from_environment(monkeypatch):
    monkeypatch.setenv("KDIAG_USER", "oncall-bo")
    assert ack.default_user() == "oncall-bo"


def test_ack_published_and_applied(kafka_bootstrap, unique_name, capsys):
    topic = f"{unique_name}-actions"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, 3, 1)], operation_timeout=30).values():
        future.result(timeout=30)
    parser = argparse.ArgumentParser()
    ack.add_arguments(parser)
    args = parser.parse_args([ALERT_ID, "--user", "ana", "--topic", topic, "--timeout", "20"])
    assert ack.run(args, Settings(bootstrap_servers=kafka_bootstrap)) == 0
    assert f"acknowledged {ALERT_ID} as ana" in capsys.readouterr().err

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"{topic}-reader", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in range(3)])
    deadline = time.monotonic() + 30
    message = None
    while message is None:
        assert time.monotonic() < deadline, f"no record on {topic} within 30 s"
        polled = consumer.poll(0.5)
        if polled is not None and polled.error() is None:
            message = polled
    consumer.close()
    action = ACTION.decode(message.value())
    assert message.key() == b"PodImagePullFailing"
    assert (action["action"], action["alertId"], action["user"]) == ("ACK", ALERT_ID, "ana")
    assert abs(action["time"] - time.time() * 1000) < 60_000
    # The alert center takes the decoded record as it is.
    assert AlertCenter().acknowledge(action, AlertCenterState()) == []
