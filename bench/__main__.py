"""Run every benchmark in sequence on one private broker and print their figures (`make bench`).

    python -m bench [--quick] [--only throughput,latency,replay_speed,memory] [--json-out FILE]

The default sizes take about 20 minutes on a 2-core machine, and --quick about 8 with smaller
sizes. A benchmark that fails is reported and the others still run; the exit status is then 1. Each benchmark module also runs alone with its own options, e.g.
`python -m bench.throughput --changes 200000`. The figures of one run go to --json-out as one JSON
document, with the machine and the git commit they were taken on.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import orjson

from bench import REPO_ROOT, Broker, machine_description, progress
from bench import latency, memory, replay_speed, throughput

# Options of each benchmark for the default run and for --quick.
DEFAULT_ARGUMENTS = {
    "throughput": ["--changes", "50000", "--workers", "2", "--profile"],
    "latency": [],
    "replay_speed": ["--pods", "10000", "--hours", "2"],
    "memory": ["--tracked", "0,100000,250000", "--partition-scan", "1,6,12", "--scan-tracked", "100000"],
}
QUICK_ARGUMENTS = {
    "throughput": ["--changes", "20000", "--pods", "2000", "--profile"],
    "latency": ["--alerts", "50", "--spread", "10", "--duration", "15"],
    "replay_speed": ["--pods", "1000", "--hours", "1"],
    "memory": ["--tracked", "0,20000,50000", "--partition-scan", "1,12", "--scan-tracked", "20000"],
}
BENCHMARKS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, Broker], Any]]] = {
    "throughput": (throughput.add_arguments, throughput.run),
    "latency": (latency.add_arguments, latency.run),
    "replay_speed": (replay_speed.add_arguments, replay_speed.run),
    "memory": (memory.add_arguments, memory.run),
}


def git_revision() -> dict[str, Any]:
    """Return the commit of the work tree and whether the worker's code differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False).stdout.strip()

    changed = git("status", "--porcelain", "--", "streams", "kdiag", "connectors", "rules", "schemas")
    return {"commit": git("rev-parse", "--short", "HEAD"), "worker_code_changed": bool(changed)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a few minutes instead of about 20")
    parser.add_argument("--only", help=f"comma-separated benchmarks to run, of {', '.join(BENCHMARKS)}")
    parser.add_argument("--json-out", type=Path, help="also write all figures to this JSON file")
    parser.add_argument("--bootstrap-servers", help="use this broker instead of starting one")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; expected some of {', '.join(BENCHMARKS)}")

    machine = machine_description()
    revision = git_revision()
    print(
        f"machine: {machine['nproc']} cores, {machine['cpu_model']}, {machine['memory_gib']} GiB RAM, "
        f"load average {machine['load_average_1m']}; commit {revision['commit']}"
        + (" with uncommitted changes to the worker's code" if revision["worker_code_changed"] else ""),
        flush=True,
    )
    results: dict[str, Any] = {"machine": machine, "revision": revision, "quick": args.quick, "benchmarks": {}}
    started = time.monotonic()
    failed: list[str] = []
    with Broker(args.bootstrap_servers) as broker:
        for name in names:
            add_arguments, run = BENCHMARKS[name]
            benchmark_parser = argparse.ArgumentParser(prog=f"bench.{name}")
            add_arguments(benchmark_parser)
            arguments = (QUICK_ARGUMENTS if args.quick else DEFAULT_ARGUMENTS)[name]
            progress(f"{name} {' '.join(arguments)}")
            benchmark_started = time.monotonic()
            entry: dict[str, Any] = {"arguments": arguments}
            try:
                entry["figures"] = run(benchmark_parser.parse_args(arguments), broker)
            except Exception as error:  # One failed benchmark must not stop the others.
                traceback.print_exc()
                print(f"bench: {name} failed: {error}", file=sys.stderr, flush=True)
                entry["error"] = str(error)
                failed.append(name)
            entry["seconds"] = round(time.monotonic() - benchmark_started, 1)
            results["benchmarks"][name] = entry
    results["seconds"] = round(time.monotonic() - started, 1)
    print(f"all benchmarks took {results['seconds'] / 60:.1f} minutes", flush=True)
    if args.json_out is not None:
        args.json_out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
