"""`kdiag worker`: run the stream worker until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import sys
import time
from pathlib import Path
from typing import IO, Callable

import faust
from prometheus_client import start_http_server

from kdiag.alertcenter import AlertCenter
from kdiag.alertcenter.config_store import CenterConfigBook, publish_config, read_config_file
from kdiag.errors import KdiagError
from kdiag.graph_store import GraphBook, publish_graphs, read_graph_documents
from kdiag.rootcause import GraphSet
from kdiag.rule_store import RuleFeed, publish_rules, read_rule_documents
from kdiag.rules import RuleSet, load_rules
from kdiag.settings import Settings
from kdiag.topics import ensure_topics
from streams.app import create_app
from streams.cluster_objects import ClusterObjects
from streams.collector import configure_collector
from streams.runtime import ARENA_MAX, MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES, bound_free_arena_memory

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rules",
        type=Path,
        action="append",
        help="evaluate the rules in this file or folder and ignore the rules topic (repeatable); "
        "by default the worker follows the rules topic, which it fills from rules/ when the topic has never "
        "held a record",
    )
    parser.add_argument(
        "--graphs",
        type=Path,
        action="append",
        help="use the root-cause graphs in this file or folder and ignore the graphs topic (repeatable); "
        "by default the worker follows the graphs topic, which it fills from rootcause/ when the topic has never "
        "held a record",
    )
    parser.add_argument(
        "--center-config",
        type=Path,
        help="use the alert center configuration in this YAML or JSON file and ignore the config topic; "
        "by default the worker follows the config topic, and uses the defaults while it is empty",
    )
    parser.add_argument("--app-id", help="consumer group and state name (default KDIAG_APP_ID or kdiag-worker)")
    parser.add_argument("--state-dir", type=Path, help="folder of the RocksDB state (default var/state)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT (0: off)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.replace(
        **{
            key: value
            for key, value in {
                "app_id": args.app_id,
                "state_dir": args.state_dir,
                "metrics_port": args.metrics_port,
            }.items()
            if value is not None
        }
    )
    state_lock = lock_state_dir(settings)  # Held until the process exits at os._exit below.
    if not bound_free_arena_memory():
        log.info(
            "glibc allocator limits not set, so thread arenas keep their free memory",
            extra={"trim_threshold_bytes": TRIM_THRESHOLD_BYTES, "mmap_threshold_bytes": MMAP_THRESHOLD_BYTES, "arena_max": ARENA_MAX},
        )
    # Bind the metrics port first: a caller that picked a free port keeps it for the shortest time.
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="127.0.0.1")
    ensure_topics(settings)
    feed: RuleFeed | None = None
    if args.rules:
        static_rules = load_rules(args.rules)
        rules: Callable[[], RuleSet] = lambda: static_rules
    else:
        feed = RuleFeed(settings)
        feed.start()
        if feed.records_read == 0:
            documents = read_rule_documents([settings.rules_dir])
            names = publish_rules(settings, documents)
            log.info("rules topic filled from files", extra={"topic": settings.rules_topic, "rules": len(names), "path": str(settings.rules_dir)})
            feed.wait_for(names)
        rules = lambda: feed.rule_set
    graphs, graph_feed = _start_graphs(args, settings)
    center = AlertCenter()
    center_feed: RuleFeed | None = None
    if args.center_config:
        center.reconfigure(read_config_file(args.center_config))
    else:
        book = CenterConfigBook(center)
        center_feed = RuleFeed(settings, settings.center_config_topic, book)
        center_feed.start()
        if center_feed.records_read == 0 and settings.center_config_file.is_file():
            publish_config(settings, read_config_file(settings.center_config_file), str(settings.center_config_file))
            log.info("center config topic filled from a file", extra={"topic": settings.center_config_topic, "path": str(settings.center_config_file)})
            _wait_until(lambda: book.applied > 0, f"the alert center config did not arrive on {settings.center_config_topic}")
    log.info(
        "worker starting",
        extra={
            "app_id": settings.app_id,
            "topic": settings.changes_topic,
            "rules": len(rules()),
            "graphs": len(graphs.graphs),
            "bootstrap_servers": settings.bootstrap_servers,
            "metrics_port": settings.metrics_port,
        },
    )
    cluster_objects = ClusterObjects(settings)
    cluster_objects.start()
    app, runtime = create_app(settings, rules, cluster_objects, graphs, center)
    code = 0
    worker = faust.Worker(app, quiet=True, redirect_stdouts=False, override_logging=False, loglevel="WARNING")
    # Faust's startup spinner writes a terminal escape sequence even when stdout is a log file.
    worker.spinner = None
    configure_collector(settings.gc_freeze_startup, settings.gc_young_threshold_objects)
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 0
    finally:
        runtime.close()
        if feed is not None:
            feed.stop()
        if graph_feed is not None:
            graph_feed.stop()
        if center_feed is not None:
            center_feed.stop()
        graphs.close()
        cluster_objects.stop()
        log.info("worker stopped", extra={"app_id": settings.app_id, "exit_status": code})
    # Faust's consumer thread can outlive its event loop and keep the process alive. Everything the
    # worker produced is committed in Kafka transactions by now, so leaving at once loses nothing.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


def lock_state_dir(settings: Settings) -> IO[bytes]:
    """Take the app id's lock in the state folder, held until the process exits, and return its file.

    A worker opens each owned partition's RocksDB database in the state folder. Two workers of one
    app id with one state folder would open the same databases when partitions move between them, so
    the second one stops here with an error instead.
    """
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    path = settings.state_dir / f"{settings.app_id}.lock"
    lock_file = open(path, "wb")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise KdiagError(
            f"another worker of app id {settings.app_id} uses the state folder {settings.state_dir} "
            f"(it holds {path}); give each worker on one machine its own KDIAG_STATE_DIR or --state-dir"
        ) from None
    return lock_file


def _start_graphs(args: argparse.Namespace, settings: Settings) -> tuple[GraphSet, RuleFeed | None]:
    """Load the root-cause graphs from --graphs, or follow the graphs topic."""
    graphs = GraphSet(pool_size=settings.plugin_processes)
    if args.graphs:
        graphs.load(args.graphs)
        return graphs, None
    feed = RuleFeed(settings, settings.graphs_topic, GraphBook(graphs))
    feed.start()
    if feed.records_read == 0:
        documents = read_graph_documents([settings.graphs_dir])
        with GraphSet(pool_size=1) as check:
            names = publish_graphs(settings, documents, check)
        log.info("graphs topic filled from files", extra={"topic": settings.graphs_topic, "graphs": len(names), "path": str(settings.graphs_dir)})
        _wait_until(lambda: set(names) <= set(feed.book.names), "the graphs did not arrive on the graphs topic")
    return graphs, feed


def _wait_until(condition: Callable[[], bool], problem: str, timeout_seconds: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise KdiagError(f"{problem} within {timeout_seconds} s; check the broker")
        time.sleep(0.1)
