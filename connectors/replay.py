"""`kdiag replay FILE...`: publish recorded Kubernetes history to the changes topic.

Every change carries an observed (event) time. A tick carries a cluster's clock to every partition,
so that duration rules fire on partitions that no change of the cluster reaches. A tick at time T is
sent when the cluster's clock is about to move past T, after the cluster's buffered changes, so each
partition receives every change with time <= T before the tick T and only later changes after it.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.publisher import Publisher, PublishError, PublishSummary
from connectors.readers import ChangeBuilder, LocatedChange, Rejection, Skipped, expand_inputs, read_file
from kdiag.errors import ConfigError
from kdiag.model import parse_time_ms
from kdiag.settings import Settings
from kdiag.topics import ensure_topics

log = logging.getLogger(__name__)

DEFAULT_START = "2020-01-01T00:00:00Z"
PROGRESS_MIN_BYTES = 1024 * 1024
REJECTIONS_LOGGED_PER_FILE = 20

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="watch events (JSON), object dumps (YAML or JSON) or workflow wrapper lines; a folder means "
        "its .json, .jsonl, .ndjson, .yaml and .yml files, recursively, in sorted order",
    )
    parser.add_argument(
        "--cluster",
        metavar="NAME",
        help="cluster name of the replayed changes (default: KDIAG_CLUSTER or replay); "
        "workflow wrapper lines use NAME.WORKFLOW",
    )
    parser.add_argument(
        "--cluster-per-file",
        action="store_true",
        help="name each file's cluster after the file (its name without extension), for files that are "
        "separate recordings such as bug-report dumps; --cluster is then ignored",
    )
    parser.add_argument(
        "--start",
        default=DEFAULT_START,
        metavar="RFC3339",
        help=f"event time of the first change without a timestamp in each file (default {DEFAULT_START})",
    )
    parser.add_argument(
        "--step",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="event time between consecutive changes without a timestamp, in seconds (default 1)",
    )
    parser.add_argument(
        "--hold",
        default="0",
        metavar="DURATION",
        help="how long the last state of each cluster lasts after the input ends, e.g. 300s, 10m, 1h30m or 5d "
        "(default 0): a final tick at the cluster's last event time plus DURATION",
    )
    parser.add_argument(
        "--tick-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="minimum event time between two ticks of a cluster, in seconds (default 10); alerts keep "
        "their times whatever the interval, but on a partition without changes a deadline fires at the "
        "first tick past it",
    )
    parser.add_argument(
        "--no-create-topics",
        action="store_true",
        help="do not create missing topics; fail if the changes topic does not exist",
    )


def parse_duration_ms(text: str, option: str = "duration") -> int:
    """Parse a duration such as 300s, 10m, 1h30m, 5d, 250ms or a plain number of seconds.

    Raises ConfigError naming `option`, the value and an example.
    """
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None and seconds >= 0:
        return round(seconds * 1000)
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS_MS[match.group(2)]
        position = match.end()
    if not value or position != len(value):
        raise ConfigError(
            f"invalid {option} {text!r}: expected a number with units d, h, m, s or ms, for example 300s, 10m or 1h30m"
        )
    return round(total)


def parse_start_ms(text: str) -> int:
    """Parse an RFC 3339 timestamp such as 2020-01-01T00:00:00Z into epoch milliseconds."""
    time_ms = parse_time_ms(text) if _RFC3339.match(text.strip()) else None
    if time_ms is None:
        raise ConfigError(
            f"invalid --start value {text!r}: expected an RFC 3339 timestamp, for example 2020-01-01T00:00:00Z"
        )
    return time_ms


@dataclass(frozen=True)
class ReplayOptions:
    cluster: str
    cluster_per_file: bool
    start_ms: int
    step_ms: int
    hold_ms: int
    tick_interval_ms: int


def parse_options(args: argparse.Namespace, settings: Settings) -> ReplayOptions:
    """Validate the command-line options. Raises ConfigError naming the option, the value and the fix."""
    cluster = args.cluster if args.cluster is not None else settings.cluster
    if not cluster or "/" in cluster:
        raise ConfigError(
            f"invalid --cluster value {cluster!r}: expected a non-empty name without '/', for example prod-eu"
        )
    if args.step < 0:
        raise ConfigError(f"invalid --step value {args.step}: expected seconds >= 0, for example 1 or 0.5")
    if args.tick_interval < 0:
        raise ConfigError(
            f"invalid --tick-interval value {args.tick_interval}: expected seconds >= 0, for example 1 or 60"
        )
    hold_ms = parse_duration_ms(args.hold, option="--hold value")
    return ReplayOptions(
        cluster=cluster,
        cluster_per_file=args.cluster_per_file,
        start_ms=parse_start_ms(args.start),
        step_ms=round(args.step * 1000),
        hold_ms=hold_ms,
        tick_interval_ms=round(args.tick_interval * 1000),
    )


class TickSchedule:
    """Sends a cluster's tick when its clock moves past a time at least one interval after its last tick."""

    def __init__(self, publisher: Publisher, interval_ms: int) -> None:
        self.publisher = publisher
        self.interval_ms = interval_ms
        self._clocks: dict[str, int] = {}
        self._last_ticks: dict[str, int] = {}

    def before_change(self, cluster: str, time_ms: int) -> None:
        """Tick the cluster's current clock if the change at `time_ms` moves the clock past it."""
        clock = self._clocks.get(cluster)
        if clock is not None and time_ms > clock:
            last_tick = self._last_ticks.get(cluster)
            if last_tick is None or clock - last_tick >= self.interval_ms:
                self.publisher.publish_tick(cluster, clock)
                self._last_ticks[cluster] = clock
        if clock is None or time_ms > clock:
            self._clocks[cluster] = time_ms

    def finish(self, hold_ms: int) -> None:
        """Tick every cluster at its last event time plus `hold_ms`."""
        for cluster, clock in self._clocks.items():
            self.publisher.publish_tick(cluster, clock + hold_ms)


@dataclass
class FileSummary:
    path: Path
    changes: int = 0
    skipped: int = 0
    rejected: int = 0

    def describe(self) -> str:
        return (
            f"{self.path}: {_count(self.changes, 'change')}, {_count(self.skipped, 'bookmark')} skipped, "
            f"{self.rejected} rejected"
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def replay_file(
    path: Path, builder: ChangeBuilder, publisher: Publisher, ticks: TickSchedule, show_progress: bool
) -> FileSummary:
    """Publish one file's changes and dead-letter its invalid records."""
    summary = FileSummary(path)
    progress = _progress_bar(path) if show_progress else None
    try:
        for item in read_file(path, builder, progress.update if progress is not None else None):
            if isinstance(item, LocatedChange):
                ticks.before_change(item.change.cluster, item.change.observed_time_ms)
                publisher.publish_change(item.change, item.origin)
                summary.changes += 1
            elif isinstance(item, Rejection):
                summary.rejected += 1
                _log_rejection(item, summary.rejected)
                publisher.publish_dead_letter(item.origin, item.reason, item.payload)
            elif isinstance(item, Skipped):
                summary.skipped += 1
                log.debug("record skipped", extra={"origin": item.origin, "reason": item.reason})
    finally:
        if progress is not None:
            progress.close()
    return summary


def _log_rejection(rejection: Rejection, count: int) -> None:
    if count <= REJECTIONS_LOGGED_PER_FILE:
        log.warning("invalid input sent to the dead-letter topic", extra={"origin": rejection.origin, "reason": rejection.reason})
    elif count == REJECTIONS_LOGGED_PER_FILE + 1:
        log.warning("more invalid input in this file; further rejections are only counted", extra={"origin": rejection.origin})


def _progress_bar(path: Path) -> Any:
    """Return a tqdm bar over the file's bytes, or None for files of at most 1 MiB."""
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if size <= PROGRESS_MIN_BYTES:
        return None
    from tqdm import tqdm

    return tqdm(total=size, unit="B", unit_scale=True, desc=path.name, file=sys.stderr, leave=False)


def replay(
    paths: list[Path],
    options: ReplayOptions,
    publisher: Publisher,
    summaries: list[FileSummary],
    show_progress: bool = False,
) -> None:
    """Publish the files in order, then the final tick of every cluster.

    Prints a line per file and appends its summary to `summaries`, so a caller that catches an error
    still has the summaries of the files replayed before it.
    """
    builder = ChangeBuilder(options.cluster, options.start_ms, options.step_ms)
    ticks = TickSchedule(publisher, options.tick_interval_ms)
    for path in paths:
        if options.cluster_per_file:
            builder = ChangeBuilder(path.stem, options.start_ms, options.step_ms)
        summary = replay_file(path, builder, publisher, ticks, show_progress)
        print(summary.describe(), flush=True)
        log.info(
            "file replayed",
            extra={"file": str(path), "changes": summary.changes, "skipped": summary.skipped, "rejected": summary.rejected},
        )
        summaries.append(summary)
    ticks.finish(options.hold_ms)


def run(args: argparse.Namespace, settings: Settings) -> int:
    options = parse_options(args, settings)
    paths = expand_inputs(args.files)
    if not args.no_create_topics:
        ensure_topics(settings, only=[settings.changes_topic, settings.dead_letter_topic])

    publisher = Publisher(settings, source="replay")
    summaries: list[FileSummary] = []
    error: PublishError | None = None
    try:
        # Read the partition count before any record, so a missing topic fails fast.
        publisher.partition_count()
        replay(paths, options, publisher, summaries, show_progress=sys.stderr.isatty())
    except PublishError as raised:
        error = raised
    finally:
        total = publisher.close()

    _print_total(summaries, total)
    if error is not None:
        print(f"kdiag replay: {error}", file=sys.stderr)
        return 1
    if total.failures:
        for failure in total.failures[:10]:
            print(f"kdiag replay: delivery failed: {failure}", file=sys.stderr)
        print(
            f"kdiag replay: {len(total.failures)} records were not delivered; check the broker and replay again",
            file=sys.stderr,
        )
        return 1
    return 0


def _print_total(summaries: list[FileSummary], total: PublishSummary) -> None:
    rejected = sum(summary.rejected for summary in summaries)
    skipped = sum(summary.skipped for summary in summaries)
    print(
        f"total: {_count(len(summaries), 'file')}, {total.describe()}, {rejected} rejected, "
        f"{_count(skipped, 'bookmark')} skipped, {total.delivered} records delivered",
        flush=True,
    )
