"""`kdiag sink alertmanager`: push graded alerts to Alertmanager's v2 API (POST /api/v2/alerts).

Alertmanager identifies an alert by its label set and resolves an alert whose endsAt passed, so the
sink works like Prometheus does:

- labels are stable for the life of an alert: alertname (the rule), severity and priority (from the
  level), fingerprint, cluster, namespace, application, tenant and workload;
- a firing alert is posted with endsAt = now + 4 resend intervals and posted again every resend
  interval while it fires, so Alertmanager resolves it by itself if the sink stops;
- a level change changes the severity label, so the sink ends the old label set (endsAt = now)
  and posts the new one;
- a resolved alert is posted once with endsAt = resolvedAt.

On start the sink reads the graded alerts topic from the beginning to rebuild the set of firing
alerts without posting, then posts that set once and follows new records.
"""

from __future__ import annotations

import argparse
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from kdiag.alertcenter.topics import graded_alerts_topic
from kdiag.codec import codec
from kdiag.errors import ConfigError, DecodeError
from kdiag.model import format_time_ms
from kdiag.settings import Settings
from kdiag.stats_command import read_to_end

log = logging.getLogger(__name__)

SEVERITIES = {"P1": "critical", "P2": "error", "P3": "warning", "P4": "info"}
ALERTS_PATH = "/api/v2/alerts"
RESENDS_BEFORE_EXPIRY = 4


def alert_labels(record: Mapping[str, Any], level: str) -> dict[str, str]:
    """Return the Alertmanager label set of a graded alert at `level`; empty values are left out."""
    if record["ownerKind"]:
        workload = f"{record['ownerKind']}/{record['ownerName']}"
    elif record["name"]:
        workload = f"{record['kind']}/{record['name']}"
    else:
        workload = ""
    labels = {
        "alertname": record["rule"],
        "severity": SEVERITIES[level],
        "priority": level,
        "fingerprint": record["fingerprint"],
        "cluster": record["cluster"],
        "namespace": record["namespace"],
        "application": record["application"],
        "tenant": record["tenant"],
        "workload": workload,
    }
    return {name: value for name, value in labels.items() if value}


def alert_annotations(record: Mapping[str, Any]) -> dict[str, str]:
    annotations = {
        "summary": record["message"] or f"{record['rule']} fired",
        "description": (
            f"{record['count']} events since {format_time_ms(record['firstSeen'])}"
            + (f"; reasons: {', '.join(record['reasons'])}" if record["reasons"] else "")
            + (f"; {record['levelReason']}" if record["levelReason"] else "")
        ),
        "alert_id": record["id"],
    }
    root_cause = record.get("rootCause")
    if root_cause:
        annotations["root_cause"] = root_cause["summary"]
        if root_cause.get("fix"):
            annotations["root_cause_fix"] = root_cause["fix"]
    if record["ackedBy"]:
        annotations["acknowledged_by"] = record["ackedBy"]
    return annotations


def postable_alert(record: Mapping[str, Any], level: str, ends_at_ms: int) -> dict[str, Any]:
    """Return one postable alert of the v2 API for the record at `level`, ending at `ends_at_ms`."""
    return {
        "labels": alert_labels(record, level),
        "annotations": alert_annotations(record),
        "startsAt": format_time_ms(record["firstSeen"]),
        "endsAt": format_time_ms(ends_at_ms),
        "generatorURL": "",
    }


class ActiveAlerts:
    """Firing alerts by fingerprint, and the postable alerts each graded record calls for."""

    def __init__(self, resend_interval_ms: int) -> None:
        self.resend_interval_ms = resend_interval_ms
        self.firing: dict[str, Mapping[str, Any]] = {}

    def firing_ends_at(self, now_ms: int) -> int:
        return now_ms + RESENDS_BEFORE_EXPIRY * self.resend_interval_ms

    def apply(self, record: Mapping[str, Any], now_ms: int) -> list[dict[str, Any]]:
        """Update the firing set with one graded record and return what to post for it."""
        posts = []
        if record["type"] == "LEVEL_CHANGED" and record["previousLevel"]:
            # The severity label changes, so the old label set ends now.
            posts.append(postable_alert(record, record["previousLevel"], now_ms))
        if record["status"] == "RESOLVED":
            self.firing.pop(record["fingerprint"], None)
            ends_at = record["resolvedAt"] if record["resolvedAt"] is not None else record["time"]
            posts.append(postable_alert(record, record["level"], ends_at))
        else:
            self.firing[record["fingerprint"]] = record
            posts.append(postable_alert(record, record["level"], self.firing_ends_at(now_ms)))
        return posts

    def all_firing(self, now_ms: int) -> list[dict[str, Any]]:
        ends_at = self.firing_ends_at(now_ms)
        return [postable_alert(record, record["level"], ends_at) for _, record in sorted(self.firing.items())]


@dataclass
class AlertmanagerClient:
    """Posts alerts to one Alertmanager with a timeout per request and retries with backoff.

    Connection errors, timeouts and 5xx responses are retried. Other responses are not, because
    posting the same body again would fail the same way.
    """

    url: str
    timeout_seconds: float = 10.0
    attempts: int = 3
    backoff_seconds: float = 1.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"invalid Alertmanager URL {self.url!r}: expected http://host:port or https://host:port")
        if self.attempts < 1:
            raise ConfigError(f"invalid attempts {self.attempts}: expected at least 1")

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + ALERTS_PATH

    def post(self, alerts: Sequence[Mapping[str, Any]]) -> bool:
        """Post the alerts in one request. Returns whether Alertmanager accepted them."""
        if not alerts:
            return True
        body = orjson.dumps(list(alerts))
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(
                self.endpoint, data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                    response.read()
                return True
            except urllib.error.HTTPError as error:
                retriable = error.code >= 500
                problem = f"HTTP {error.code}: {error.read()[:200].decode(errors='replace')}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                retriable = True
                problem = str(getattr(error, "reason", error))
            if not retriable:
                log.error("Alertmanager rejected the alerts", extra={"url": self.endpoint, "error": problem, "alerts": len(alerts)})
                return False
            if attempt == self.attempts:
                log.error(
                    "posting alerts to Alertmanager failed; giving up",
                    extra={"url": self.endpoint, "error": problem, "attempt": f"{attempt}/{self.attempts}", "alerts": len(alerts)},
                )
                return False
            log.warning(
                "posting alerts to Alertmanager failed; retrying",
                extra={"url": self.endpoint, "error": problem, "attempt": f"{attempt}/{self.attempts}"},
            )
            self.sleep(self.backoff_seconds * 2 ** (attempt - 1))
        return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=["alertmanager"], help="where to push; only alertmanager so far")
    parser.add_argument("--url", required=True, help="Alertmanager base URL, e.g. http://127.0.0.1:9093")
    parser.add_argument("--topic", help="graded alerts topic (default kdiag-graded-alerts)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="timeout of one POST (default 10)")
    parser.add_argument("--attempts", type=int, default=3, help="attempts per batch before giving up (default 3)")
    parser.add_argument("--batch", type=int, default=200, help="maximum alerts per POST (default 200)")
    parser.add_argument(
        "--resend-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how often firing alerts are posted again (default 60); they expire after 4 intervals without one",
    )
    parser.add_argument(
        "--until-idle",
        type=float,
        metavar="SECONDS",
        help="exit once no record arrived for SECONDS (default: run until interrupted)",
    )


def post_in_batches(client: AlertmanagerClient, alerts: Sequence[Mapping[str, Any]], batch: int) -> int:
    """Post the alerts in batches; return how many batches failed."""
    failed = 0
    for start in range(0, len(alerts), batch):
        if not client.post(alerts[start : start + batch]):
            failed += 1
    return failed


def run_sink(
    settings: Settings,
    topic: str,
    client: AlertmanagerClient,
    batch: int = 200,
    resend_interval_seconds: float = 60.0,
    until_idle_seconds: float | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> int:
    """Follow the topic and post to Alertmanager; return the number of failed batches."""
    graded = codec("GradedAlert", settings.schemas_dir)
    active = ActiveAlerts(int(resend_interval_seconds * 1000))

    def now_ms() -> int:
        return int(wall_clock() * 1000)

    positions: dict[int, int] = {}
    for _key, value, origin in read_to_end(settings.bootstrap_servers, topic):
        partition, offset = origin[len(topic) + 1 :].split("]@")
        positions[int(partition)] = int(offset) + 1
        try:
            active.apply(graded.decode(value), now_ms())
        except DecodeError as error:
            log.warning("graded alert record skipped", extra={"origin": origin, "reason": str(error)})
    failed = post_in_batches(client, active.all_firing(now_ms()), batch)
    log.info("sink caught up", extra={"topic": topic, "firing": len(active.firing), "url": client.endpoint})

    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"kdiag-alertmanager-sink-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        consumer.assign(
            [TopicPartition(topic, partition, positions.get(partition, OFFSET_BEGINNING)) for partition in metadata.partitions]
        )
        last_record = last_resend = time.monotonic()
        while True:
            messages = consumer.consume(num_messages=batch, timeout=0.5)
            posts: list[dict[str, Any]] = []
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(error)
                try:
                    posts.extend(active.apply(graded.decode(message.value()), now_ms()))
                except DecodeError as decode_error:
                    log.warning("graded alert record skipped", extra={"offset": message.offset(), "reason": str(decode_error)})
            if posts:
                failed += post_in_batches(client, posts, batch)
                last_record = time.monotonic()
            if time.monotonic() - last_resend >= resend_interval_seconds:
                failed += post_in_batches(client, active.all_firing(now_ms()), batch)
                last_resend = time.monotonic()
            if until_idle_seconds is not None and time.monotonic() - last_record >= until_idle_seconds:
                return failed
    finally:
        consumer.close()


def run(args: argparse.Namespace, settings: Settings) -> int:
    client = AlertmanagerClient(args.url, timeout_seconds=args.timeout, attempts=args.attempts)
    topic = args.topic or graded_alerts_topic(settings)
    failed = run_sink(settings, topic, client, args.batch, args.resend_interval, args.until_idle)
    return 1 if failed else 0
