"""`kdiag alerts`: print the alerts topic, or with --graded the graded alerts topic, as a table or as
JSON lines.

It reads with isolation.level=read_committed, so it shows only alerts whose worker transaction
committed, and it never commits consumer offsets.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from typing import IO, Any, Iterator

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from kdiag.codec import codec
from kdiag.errors import DecodeError, KdiagError
from kdiag.model import format_time_ms
from kdiag.settings import Settings
from kdiag.topics import consumer_lag

log = logging.getLogger(__name__)

ALERT = codec("Alert")
GRADED_ALERT = codec("GradedAlert")
TIME_FIELDS = ("activeSince", "firedAt", "resolvedAt")
GRADED_TIME_FIELDS = ("time", "firstSeen", "lastSeen", "startsAt", "ackedAt", "resolvedAt")
TABLE_COLUMNS = (("STATUS", 8), ("RULE", 34), ("CLUSTER", 26), ("OBJECT", 56), ("FIRED AT", 20), ("RESOLVED AT", 20))
GRADED_COLUMNS = (("TYPE", 13), ("LEVEL", 5), ("RULE", 32), ("CLUSTER", 24), ("OBJECT", 48), ("WHOSE", 8), ("ROOT CAUSE", 90))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest alert (default: new ones only)")
    parser.add_argument(
        "--until-idle",
        type=float,
        metavar="SECONDS",
        help="exit once no alert arrived for SECONDS after reaching the end (default: run until interrupted)",
    )
    parser.add_argument(
        "--until-caught-up",
        action="store_true",
        help="exit once the worker's consumer group has committed every changes-topic record "
        "and every alert it produced was printed",
    )
    parser.add_argument("--format", choices=["table", "json"], default="table", help="output format (default table)")
    parser.add_argument(
        "--graded",
        action="store_true",
        help="print the alert center's graded alerts, with level and root cause, instead of the rule stage's alerts",
    )


def read_alerts(
    settings: Settings,
    from_beginning: bool,
    until_idle_seconds: float | None,
    until_caught_up: bool = False,
    graded: bool = False,
) -> Iterator[tuple[dict[str, Any] | None, str]]:
    """Yield (alert, origin) pairs; alert is None when the record could not be decoded.

    With `graded`, read the graded alerts topic. Caught up then means that the worker committed
    every record of the changes, diagnoses and events topics.
    """
    topic = settings.graded_alerts_topic if graded else settings.alerts_topic
    decoder = GRADED_ALERT if graded else ALERT
    upstream = (settings.changes_topic, settings.diagnoses_topic, settings.events_topic) if graded else (settings.changes_topic,)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"kdiag-alerts-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise KdiagError(
                f"topic {topic} not found at {settings.bootstrap_servers}; "
                f"start a worker or run kdiag topics create"
            )
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        partitions = [TopicPartition(topic, p, start) for p in metadata.partitions]
        consumer.assign(partitions)
        at_end: dict[int, int] = {}  # partition -> end offset, for partitions read to the end
        last_activity = time.monotonic()
        targets: dict[int, int] | None = None
        while True:
            message = consumer.poll(0.2)
            if message is None:
                drained = len(at_end) == len(partitions)
                idle = time.monotonic() - last_activity
                if until_idle_seconds is not None and drained and idle >= until_idle_seconds:
                    return
                if until_caught_up and drained:
                    if targets is None and all(consumer_lag(settings, topic=name) == 0 for name in upstream):
                        # The worker commits alerts before offsets: every alert is below these ends.
                        targets = _end_offsets(consumer, partitions)
                    if targets is not None and all(at_end[p] >= end for p, end in targets.items()):
                        return
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end[message.partition()] = message.offset()
                    continue
                raise KafkaException(error)
            at_end.pop(message.partition(), None)
            last_activity = time.monotonic()
            origin = f"{message.topic()}[{message.partition()}]@{message.offset()}"
            try:
                yield decoder.decode(message.value()), origin
            except DecodeError as decode_error:
                log.warning("alert record skipped", extra={"origin": origin, "reason": str(decode_error)})
                yield None, origin
    finally:
        consumer.close()


def _end_offsets(consumer: Consumer, partitions: list[TopicPartition]) -> dict[int, int]:
    ends = {}
    for partition in partitions:
        _, high = consumer.get_watermark_offsets(partition, timeout=30, cached=False)
        ends[partition.partition] = high
    return ends


def alert_to_json(alert: dict[str, Any]) -> dict[str, Any]:
    """Return the alert with its times as RFC 3339 strings."""
    readable = dict(alert)
    for name in TIME_FIELDS:
        if readable.get(name) is not None:
            readable[name] = format_time_ms(readable[name])
    return readable


def graded_to_json(alert: dict[str, Any]) -> dict[str, Any]:
    """Return the graded alert with its times as RFC 3339 strings."""
    readable = dict(alert)
    for name in GRADED_TIME_FIELDS:
        if readable.get(name) is not None:
            readable[name] = format_time_ms(readable[name])
    return readable


def format_row(values: list[str], columns: tuple[tuple[str, int], ...] = TABLE_COLUMNS) -> str:
    cells = []
    for value, (_, width) in zip(values, columns):
        text = value if len(value) <= width else value[: width - 1] + "…"
        cells.append(text.ljust(width))
    return " ".join(cells).rstrip()


def table_row(alert: dict[str, Any]) -> str:
    obj = f"{alert['namespace'] or '-'}/{alert['kind']}/{alert['name']}"
    resolved = format_time_ms(alert["resolvedAt"]) if alert.get("resolvedAt") is not None else ""
    return format_row(
        [alert["status"], alert["rule"], alert["cluster"], obj, format_time_ms(alert["firedAt"]), resolved]
    )


def graded_row(alert: dict[str, Any]) -> str:
    obj = f"{alert['namespace'] or '-'}/{alert['kind']}/{alert['name']}"
    root_cause = alert.get("rootCause")
    whose = root_cause["responsibility"] if root_cause else ""
    summary = f"{root_cause['cause']}: {root_cause['summary']}" if root_cause else ""
    return format_row([alert["type"], alert["level"], alert["rule"], alert["cluster"], obj, whose, summary], GRADED_COLUMNS)


def print_alerts(
    settings: Settings,
    from_beginning: bool,
    until_idle_seconds: float | None,
    output_format: str,
    out: IO[str],
    until_caught_up: bool = False,
    graded: bool = False,
) -> int:
    count = 0
    columns = GRADED_COLUMNS if graded else TABLE_COLUMNS
    to_json, to_row = (graded_to_json, graded_row) if graded else (alert_to_json, table_row)
    if output_format == "table":
        out.write(format_row([title for title, _ in columns], columns) + "\n")
        out.flush()
    for alert, _origin in read_alerts(settings, from_beginning, until_idle_seconds, until_caught_up, graded):
        if alert is None:
            continue
        count += 1
        if output_format == "json":
            out.write(orjson.dumps(to_json(alert)).decode() + "\n")
        else:
            out.write(to_row(alert) + "\n")
        out.flush()
    return count


def run(args: argparse.Namespace, settings: Settings) -> int:
    count = print_alerts(
        settings, args.from_beginning, args.until_idle, args.format, sys.stdout, args.until_caught_up, args.graded
    )
    if args.format == "table":
        print(f"{count} {'graded alert' if args.graded else 'alert'} records", file=sys.stderr)
    return 0
