"""`kdiag stats`: MTTD, MTTA and MTTR per rule and level, from the graded alerts topic.

It reads the topic from the beginning up to its end at start, with isolation.level=read_committed,
so it counts only records of committed alert center transactions. It never commits offsets.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from typing import IO, Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from kdiag.alertcenter.config import format_duration_ms
from kdiag.alertcenter.mttx import MEASURES, MttxSummary
from kdiag.alertcenter.topics import graded_alerts_topic
from kdiag.codec import codec
from kdiag.errors import DecodeError, KdiagError
from kdiag.settings import Settings

log = logging.getLogger(__name__)

TABLE_COLUMNS = (("RULE", 34), ("LEVEL", 5), ("MTTD", 10), ("MTTA", 10), ("MTTR", 10), ("DETECTED", 8), ("ACKED", 6), ("RESOLVED", 8))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", help="graded alerts topic (default kdiag-graded-alerts)")
    parser.add_argument("--format", choices=["table", "json"], default="table", help="output format (default table)")
    parser.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="maximum time to read the topic (default 60)"
    )


def read_to_end(
    bootstrap_servers: str, topic: str, timeout_seconds: float = 60.0
) -> Iterator[tuple[bytes | None, bytes | None, str]]:
    """Yield (key, value, origin) of every committed record from the beginning to the end at call time.

    Raises KdiagError when the topic is missing or the end is not reached within the timeout.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"kdiag-stats-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=min(timeout_seconds, 30)).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise KdiagError(f"topic {topic} not found at {bootstrap_servers}; start the alert center or create the topic")
        ends = {}
        for partition in metadata.partitions:
            # With read_committed, the high watermark is the last stable offset.
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
            ends[partition] = high
        pending = {partition for partition, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in sorted(pending)])
        deadline = time.monotonic() + timeout_seconds
        while pending:
            if time.monotonic() > deadline:
                raise KdiagError(
                    f"timed out after {timeout_seconds:g} s reading {topic}; partitions {sorted(pending)} not read to the end"
                )
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                    continue
                raise KafkaException(error)
            if message.offset() + 1 >= ends[message.partition()]:
                pending.discard(message.partition())
            if message.offset() < ends[message.partition()]:
                yield message.key(), message.value(), f"{topic}[{message.partition()}]@{message.offset()}"
    finally:
        consumer.close()


def collect(settings: Settings, topic: str, timeout_seconds: float) -> tuple[MttxSummary, int]:
    """Return the summary of every graded alert record, and how many records could not be decoded."""
    graded = codec("GradedAlert", settings.schemas_dir)
    summary = MttxSummary()
    skipped = 0
    for _key, value, origin in read_to_end(settings.bootstrap_servers, topic, timeout_seconds):
        try:
            summary.add(graded.decode(value))
        except DecodeError as error:
            skipped += 1
            if skipped <= 10:
                log.warning("graded alert record skipped", extra={"origin": origin, "reason": str(error)})
    return summary, skipped


def summary_to_json(summary: MttxSummary) -> list[dict[str, Any]]:
    rows = []
    for row in summary.rows():
        item: dict[str, Any] = {"rule": row.rule, "level": row.level}
        for measure in MEASURES:
            figures = row.measures[measure]
            item[measure] = {
                "count": figures.count,
                "meanSeconds": figures.mean_seconds,
                "maxSeconds": figures.max_seconds if figures.count else None,
            }
        rows.append(item)
    return rows


def _cell(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration_ms(round(seconds * 1000))


def format_table(summary: MttxSummary) -> str:
    lines = [_format_row([title for title, _ in TABLE_COLUMNS])]
    for row in summary.rows():
        measures = row.measures
        lines.append(
            _format_row(
                [
                    row.rule,
                    row.level,
                    _cell(measures["mttd"].mean_seconds),
                    _cell(measures["mtta"].mean_seconds),
                    _cell(measures["mttr"].mean_seconds),
                    str(measures["mttd"].count),
                    str(measures["mtta"].count),
                    str(measures["mttr"].count),
                ]
            )
        )
    return "\n".join(lines) + "\n"


def _format_row(values: list[str]) -> str:
    cells = []
    for value, (_, width) in zip(values, TABLE_COLUMNS):
        text = value if len(value) <= width else value[: width - 1] + "…"
        cells.append(text.ljust(width))
    return " ".join(cells).rstrip()


def print_stats(settings: Settings, topic: str, output_format: str, timeout_seconds: float, out: IO[str]) -> int:
    summary, skipped = collect(settings, topic, timeout_seconds)
    if output_format == "json":
        out.write(orjson.dumps(summary_to_json(summary), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(format_table(summary))
    return skipped


def run(args: argparse.Namespace, settings: Settings) -> int:
    topic = args.topic or graded_alerts_topic(settings)
    skipped = print_stats(settings, topic, args.format, args.timeout, sys.stdout)
    if skipped:
        print(f"{skipped} records of {topic} could not be decoded and were skipped", file=sys.stderr)
    return 0
