"""Replay speed: simulated time per wall-clock second, from a history file to a caught-up worker.

    python -m bench.replay_speed [--pods 10000] [--hours 24] [--tick-interval 10]

bench/loadgen.py writes --hours of a --pods cluster to a watch-event file. With a worker already
running (starter pack) and owning every partition, the clock starts, `kdiag replay FILE` publishes the
file, and the clock stops when the worker has processed every record the replay delivered
(its kdiag_worker_records_total counter, sampled every 0.5 s). Simulated time is the span of the
file's observed times. The file's generation is not timed.

`kdiag replay` sends a tick to every partition whenever a cluster's clock moved --tick-interval
seconds (default 10, the replay's own default). It flushes the cluster's buffered changes before
each tick, so the shorter the interval, the more and the smaller the records. The summary shows how many changes a ChangeBatch
carried on average. It also shows, before and after the worker processed half the records (counted
from the end of the replay), the worker's CPU time per record, the part of it in the garbage
collector, and the changes per record. A CPU time per record that grows while the changes per record
do not points at some state that grows with the stream's length.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from bench import (
    KDIAG_BIN,
    PACK_RULES,
    BenchError,
    Broker,
    RssSampler,
    WorkerProcess,
    cleanup,
    cpu_seconds,
    end_offsets,
    make_topics,
    metric_sum,
    progress,
    report,
    settings_env,
    stop_process,
)
from bench.loadgen import SyntheticCluster, write_file

POLL_SECONDS = 0.5


def run(args: argparse.Namespace, broker: Broker) -> dict[str, Any]:
    topics = make_topics(broker.bootstrap_servers, "replay", args.partitions)
    settings = topics.settings
    history = topics.work_dir / "history.jsonl"
    try:
        progress(f"writing {args.hours} h of a {args.pods}-pod cluster to {history}")
        generation = write_file(SyntheticCluster(args.pods, args.hours, args.seed), history)
        file_bytes = history.stat().st_size
        worker = WorkerProcess(topics, rules=[PACK_RULES])
        sampler = RssSampler(worker.pid).start()
        try:
            worker.wait_for_partitions()
            progress(f"replaying {file_bytes / 1e9:.2f} GB into the worker")
            figures = _replay_and_wait(args, topics, worker, history)
        finally:
            sampler.stop()
            worker.stop()
    finally:
        cleanup(broker, topics)

    simulated_seconds = generation.figures()["event_time_hours"] * 3600
    wall = figures["wall_seconds"]
    figures.update(
        {
            "pods": args.pods,
            "hours": args.hours,
            "changes": generation.changes,
            "file_bytes": file_bytes,
            "generation_seconds": round(generation.seconds, 1),
            "simulated_seconds": round(simulated_seconds),
            "simulated_seconds_per_wall_second": round(simulated_seconds / wall, 1),
            "worker_peak_rss_mib": round(sampler.peak_kib / 1024, 1),
        }
    )
    mean_changes = generation.changes / max(1, figures["change_records"])
    figures["mean_changes_per_record"] = round(mean_changes, 2)
    lines = [
        f"history: {generation.changes} changes over {simulated_seconds / 3600:.1f} h of a {args.pods}-pod cluster, "
        f"{file_bytes / 1e9:.2f} GB of watch events (generated in {generation.seconds:.0f} s, not timed)",
        f"records: {figures['records']} ({figures['change_records']} ChangeBatch records of changes, "
        f"{mean_changes:.2f} changes each on average, and {figures['records'] - figures['change_records']} records with a tick alone)",
        f"kdiag replay finished after {figures['replay_seconds']:.1f} s; the worker caught up "
        f"{wall - figures['replay_seconds']:.1f} s later",
        f"replay speed: {figures['simulated_seconds_per_wall_second']:,.0f} simulated seconds per wall second "
        f"({simulated_seconds / 3600:.1f} h in {wall:.1f} s), {generation.changes / wall:,.0f} changes/s end to end",
        f"worker: {figures['worker_cpu_seconds']:.0f} s CPU, peak RSS {figures['worker_peak_rss_mib']:.0f} MiB, "
        f"{figures['alerts']} alert transitions",
    ]
    halves = figures["worker_cpu_us_per_record_halves"]
    gc_halves = figures["worker_gc_us_per_record_halves"]
    change_halves = figures["changes_per_record_halves"]
    if len(halves) == len(gc_halves) == len(change_halves) == 2:
        lines.append(
            f"worker CPU per record after the replay ended: {halves[0]:,.0f} µs until half the records were "
            f"processed ({gc_halves[0]:,.0f} µs of it in the garbage collector, {change_halves[0]:.2f} changes "
            f"per record), {halves[1]:,.0f} µs after ({gc_halves[1]:,.0f} µs, {change_halves[1]:.2f} changes)"
        )
    report("replay_speed", lines, figures)
    return figures


def _replay_and_wait(args: argparse.Namespace, topics: Any, worker: WorkerProcess, history: Path) -> dict[str, Any]:
    settings = topics.settings
    command = [
        str(KDIAG_BIN), "replay", str(history),
        "--cluster", settings.cluster,
        "--tick-interval", str(args.tick_interval),
    ]
    cpu_before = cpu_seconds(worker.pid) or 0.0
    started = time.monotonic()
    replay = subprocess.Popen(
        command, env=settings_env(settings), cwd=topics.work_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = replay.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        stop_process(replay)
        raise BenchError(f"kdiag replay did not finish within {args.timeout} s") from None
    replay_seconds = time.monotonic() - started
    if replay.returncode != 0:
        raise BenchError(f"kdiag replay exited with status {replay.returncode}:\n{stderr[-3000:]}")
    match = re.search(r"(\d+) changes in (\d+) batches, (\d+) ticks", stdout)
    if match is None:
        raise BenchError(f"unexpected kdiag replay output:\n{stdout[-2000:]}")
    change_records = int(match.group(2))
    records = sum(end_offsets(settings.bootstrap_servers, settings.changes_topic, settings.partitions))
    deadline = started + args.timeout
    # Marks taken when the replay ended, at half the records, and at the end.
    marks: list[_Mark] = []
    names = ("kdiag_worker_records_total", "kdiag_gc_pause_seconds_sum", "kdiag_worker_changes_total")
    while True:
        worker.check_running()
        metrics = worker.metrics(names) or {}
        processed = metric_sum(metrics, "kdiag_worker_records_total")
        if not marks or (len(marks) == 1 and marks[0].records < records / 2 <= processed) or processed >= records:
            marks.append(
                _Mark(
                    records=processed,
                    cpu_seconds=cpu_seconds(worker.pid) or 0.0,
                    gc_seconds=metric_sum(metrics, "kdiag_gc_pause_seconds_sum"),
                    changes=metric_sum(metrics, "kdiag_worker_changes_total"),
                )
            )
        if processed >= records:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"the worker did not catch up within {args.timeout} s:\n{worker.log_tail()}")
        time.sleep(POLL_SECONDS)
    wall = time.monotonic() - started
    # The loop read only the records counter, so the alert count needs a full scrape.
    metrics = worker.metrics() or metrics
    return {
        "wall_seconds": round(wall, 2),
        "replay_seconds": round(replay_seconds, 2),
        "records": records,
        "change_records": change_records,
        "ticks": int(match.group(3)),
        "alerts": int(metric_sum(metrics, "kdiag_worker_alerts_total")),
        "worker_cpu_seconds": round((cpu_seconds(worker.pid) or 0.0) - cpu_before, 1),
        "tick_interval_seconds": args.tick_interval,
        "worker_cpu_us_per_record_halves": _per_record_halves([(mark.records, mark.cpu_seconds) for mark in marks]),
        "worker_gc_us_per_record_halves": _per_record_halves([(mark.records, mark.gc_seconds) for mark in marks]),
        "changes_per_record_halves": _per_record_halves([(mark.records, mark.changes) for mark in marks], scale=1.0, digits=2),
    }


class _Mark(NamedTuple):
    """The worker's counters at one moment of the catch-up."""

    records: float
    cpu_seconds: float
    gc_seconds: float
    changes: float


def _per_record_halves(marks: list[tuple[float, float]], scale: float = 1e6, digits: int = 1) -> list[float]:
    """Return how much of a counter each record took between consecutive (records, counter) marks,
    times `scale` (by default seconds to µs). A cost per record that grows in the second half points
    at state that grows with the stream, not with the cluster."""
    return [
        round((value_after - value_before) / (records_after - records_before) * scale, digits)
        for (records_before, value_before), (records_after, value_after) in zip(marks, marks[1:])
        if records_after > records_before
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pods", type=int, default=10_000, help="pods of the synthetic cluster (default 10000)")
    parser.add_argument("--hours", type=float, default=24.0, help="hours of history (default 24)")
    parser.add_argument("--seed", type=int, default=1, help="load generator seed (default 1)")
    parser.add_argument("--tick-interval", type=float, default=10.0, help="kdiag replay --tick-interval in seconds (default 10, as kdiag replay's)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the changes topic (default 6)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds (default 1800)")
    parser.add_argument("--bootstrap-servers", help="use this broker instead of starting one")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay_speed", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    with Broker(args.bootstrap_servers) as broker:
        run(args, broker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
