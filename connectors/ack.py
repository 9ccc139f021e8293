"""`kdiag ack ALERT_ID`: acknowledge a graded alert by publishing an Action to the actions topic.

The record is keyed by the rule part of the alert id, like the events of that rule, so the alert
center's partition that owns the alert receives it. The alert center ignores an ack of an alert that
is not firing or that someone acknowledged already.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Producer

from kdiag.alertcenter.graded import parse_alert_id
from kdiag.alertcenter.topics import actions_topic
from kdiag.codec import codec
from kdiag.errors import KdiagError
from kdiag.settings import Settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("alert_id", metavar="ALERT_ID", help="id of the firing, <rule>/<fingerprint>-<hash>, as kdiag stats or the alert shows it")
    parser.add_argument("--user", help="who acknowledges (default: $KDIAG_USER, else the login name)")
    parser.add_argument("--topic", help="actions topic (default kdiag-actions)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="delivery timeout (default 30)")


def default_user() -> str:
    return os.environ.get("KDIAG_USER") or getpass.getuser()


def build_action(alert_id: str, user: str, time_ms: int) -> tuple[bytes, dict[str, Any]]:
    """Return the record key (the alert's rule) and the Action datum. Raises DecodeError on a bad id."""
    rule, _ = parse_alert_id(alert_id)
    return rule.encode(), {"action": "ACK", "alertId": alert_id, "user": user, "time": time_ms}


def publish_ack(
    settings: Settings,
    alert_id: str,
    user: str,
    topic: str,
    timeout_seconds: float = 30.0,
    wall_clock: Callable[[], float] = time.time,
) -> None:
    """Publish one acknowledgement and wait until Kafka acknowledged it."""
    key, action = build_action(alert_id, user, int(wall_clock() * 1000))
    value = codec("Action", settings.schemas_dir).encode(action)
    producer = Producer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "message.timeout.ms": int(timeout_seconds * 1000),
            "allow.auto.create.topics": False,
            "logger": log,
        }
    )
    errors: list[str] = []

    def on_delivery(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            errors.append(error.str())

    producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
    remaining = producer.flush(timeout_seconds + 5)
    if errors or remaining:
        reason = errors[0] if errors else f"not acknowledged within {timeout_seconds:g} s"
        raise KdiagError(
            f"failed to publish the acknowledgement of {alert_id} to {topic} at {settings.bootstrap_servers}: {reason}"
        )


def run(args: argparse.Namespace, settings: Settings) -> int:
    topic = args.topic or actions_topic(settings)
    user = args.user or default_user()
    publish_ack(settings, args.alert_id, user, topic, args.timeout)
    print(f"acknowledged {args.alert_id} as {user} (sent to {topic})", file=sys.stderr)
    return 0
