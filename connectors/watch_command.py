"""`kdiag watch`: publish the changes of a live Kubernetes cluster to the changes topic.

See docs/watcher.md for what the watcher guarantees, its finalizer mode and its metrics.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType as KafkaResourceType
from kubernetes import config as kube_config
from kubernetes.client import ApiClient, Configuration
from kubernetes.config.config_exception import ConfigException

from connectors.discovery import (
    DEFAULT_EXCLUDES,
    ApiError,
    KubernetesApi,
    ResourceFilter,
    discover,
    parse_patterns,
)
from connectors.finalizers import backoff_seconds, release_finalizers
from connectors.publisher import PRODUCER_MESSAGE_MARGIN_BYTES
from connectors.watcher import WatchOptions, Watcher, WatcherError
from kdiag.errors import ConfigError, KdiagError
from kdiag.logs import configure_logging
from kdiag.settings import Settings, load_settings
from kdiag.topics import ensure_topics

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# One pooled connection per concurrent request: a watch per resource type, plus lists and patches.
CONNECTION_POOL_SIZE = 128
STARTUP_ATTEMPTS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cluster = parser.add_argument_group("cluster access")
    cluster.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig file (default: in-cluster config, else KUBECONFIG or ~/.kube/config)")
    cluster.add_argument("--context", metavar="NAME", help="kubeconfig context (default: the current context)")
    cluster.add_argument(
        "--cluster",
        metavar="NAME",
        help="cluster name in the published changes (default: KDIAG_CLUSTER, else the kubeconfig context, "
        "else in-cluster)",
    )

    scope = parser.add_argument_group("what to watch")
    scope.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="watch only resource types matching KIND, GROUP/KIND or GROUP/VERSION/KIND, with * wildcards; "
        "repeat or separate with commas (default: every type that supports list and watch)",
    )
    scope.add_argument(
        "--exclude",
        action="append",
        default=None,
        metavar="PATTERN",
        help=f"do not watch resource types matching the pattern (default: {', '.join(DEFAULT_EXCLUDES)}, "
        "which duplicates the core Events); giving --exclude replaces the default",
    )
    scope.add_argument("--namespace", action="append", default=[], metavar="NS", help="publish only objects in these namespaces (repeatable)")
    scope.add_argument("--exclude-namespace", action="append", default=[], metavar="NS", help="do not publish objects in these namespaces (repeatable)")

    finalizers = parser.add_argument_group("finalizer mode (off by default; see docs/watcher.md)")
    finalizers.add_argument(
        "--finalizer-kinds",
        action="append",
        default=[],
        metavar="PATTERN",
        help="add the finalizer kdiag.io/watch to objects of these kinds, e.g. Pod,batch/Job, so that their "
        "deletes wait until Kafka has the DELETED change; needs patch permission on them",
    )
    finalizers.add_argument(
        "--release-finalizers",
        action="store_true",
        help="remove kdiag.io/watch from every object of every type that supports patch, then exit",
    )

    tuning = parser.add_argument_group("tuning")
    tuning.add_argument("--tick-interval", type=float, default=1.0, metavar="SECONDS", help="time between two ticks (default 1)")
    tuning.add_argument("--state-dir", type=Path, metavar="PATH", help="RocksDB directory of resourceVersions and the uid index (default: var/watcher/<cluster>)")
    tuning.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on 127.0.0.1:PORT (0 picks a free port; default: off)")
    tuning.add_argument("--queue-max-objects", type=int, default=10_000, metavar="N", help="objects with a pending change before the watches pause (default 10000)")
    tuning.add_argument("--queue-max-mib", type=float, default=4.0, metavar="MIB", help="MiB of pending changes before the watches pause (default 4)")
    tuning.add_argument("--list-page-size", type=int, default=100, metavar="N", help="objects per list request (default 100)")
    tuning.add_argument("--watch-timeout", type=int, default=300, metavar="SECONDS", help="minimum server-side duration of one watch request; each request draws from 1 to 2 times this (default 300)")
    tuning.add_argument("--discovery-interval", type=float, default=60.0, metavar="SECONDS", help="time between two API discoveries, which find new CRDs (default 60)")
    tuning.add_argument("--max-attempts", type=int, default=10, metavar="N", help="consecutive failures of a request or delivery before the watcher gives up (default 10)")
    tuning.add_argument("--delivery-timeout", type=float, default=120.0, metavar="SECONDS", help="time Kafka has to acknowledge a record before it is sent again (default 120)")
    tuning.add_argument("--drain-timeout", type=float, default=30.0, metavar="SECONDS", help="time a stop waits for Kafka to acknowledge queued changes (default 30)")
    tuning.add_argument("--no-create-topics", action="store_true", help="do not create missing topics; fail if the changes topic does not exist")


# Configuration


def in_cluster_available() -> bool:
    """Return whether this process runs in a pod with a mounted service account token."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SERVICE_ACCOUNT_DIR / "token").is_file() and (
        SERVICE_ACCOUNT_DIR / "ca.crt"
    ).is_file()


def load_client_configuration(kubeconfig: str | None, context: str | None) -> tuple[Configuration, str]:
    """Load the client configuration and return it with a name for the cluster.

    --kubeconfig or --context selects a kubeconfig. Without them the in-cluster configuration is used
    when the service account files exist, and the default kubeconfig otherwise.
    """
    configuration = Configuration()
    try:
        if kubeconfig is None and context is None and in_cluster_available():
            kube_config.load_incluster_config(client_configuration=configuration)
            name = "in-cluster"
        else:
            if kubeconfig is not None and not Path(kubeconfig).is_file():
                raise ConfigError(f"kubeconfig {kubeconfig} not found; pass an existing file with --kubeconfig")
            kube_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
            _, active = kube_config.list_kube_config_contexts(config_file=kubeconfig)
            name = context or (active or {}).get("name") or "default"
    except ConfigException as error:
        raise ConfigError(
            f"cannot load the Kubernetes client configuration: {error}; pass --kubeconfig and --context, "
            f"or run inside a pod with a service account"
        ) from None
    configuration.connection_pool_maxsize = CONNECTION_POOL_SIZE
    return configuration, name


def cluster_name(args: argparse.Namespace, settings: Settings, context_name: str) -> str:
    if args.cluster:
        name = args.cluster
    elif os.environ.get("KDIAG_CLUSTER"):
        name = settings.cluster
    else:
        name = context_name
    if not name or "/" in name:
        raise ConfigError(f"invalid cluster name {name!r}: expected a non-empty name without '/'; set --cluster")
    return name


def build_options(args: argparse.Namespace, settings: Settings, cluster: str) -> WatchOptions:
    """Validate the options. Raises ConfigError naming the option, the value and the fix."""
    for option, value, minimum in (
        ("--tick-interval", args.tick_interval, 0),
        ("--queue-max-objects", args.queue_max_objects, 1),
        ("--queue-max-mib", args.queue_max_mib, 0.01),
        ("--list-page-size", args.list_page_size, 1),
        ("--watch-timeout", args.watch_timeout, 1),
        ("--discovery-interval", args.discovery_interval, 1),
        ("--max-attempts", args.max_attempts, 1),
        ("--delivery-timeout", args.delivery_timeout, 1),
        ("--drain-timeout", args.drain_timeout, 0),
    ):
        if value < minimum:
            raise ConfigError(f"invalid {option} value {value}: expected at least {minimum}")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise ConfigError(f"invalid --metrics-port value {args.metrics_port}: expected 0 to 65535")
    include = parse_patterns(args.include) if args.include else ResourceFilter().include
    exclude = parse_patterns(args.exclude if args.exclude is not None else list(DEFAULT_EXCLUDES))
    resource_filter = ResourceFilter(
        include=include,
        exclude=exclude,
        namespaces=frozenset(_split(args.namespace)),
        excluded_namespaces=frozenset(_split(args.exclude_namespace)),
    )
    state_dir = args.state_dir or settings.state_dir.parent / "watcher" / cluster
    return WatchOptions(
        cluster=cluster,
        state_dir=state_dir,
        resource_filter=resource_filter,
        finalizer_kinds=parse_patterns(args.finalizer_kinds),
        tick_interval_seconds=args.tick_interval,
        queue_max_objects=args.queue_max_objects,
        queue_max_bytes=int(args.queue_max_mib * 1024 * 1024),
        list_page_size=args.list_page_size,
        watch_timeout_seconds=args.watch_timeout,
        discovery_interval_seconds=args.discovery_interval,
        max_attempts=args.max_attempts,
        delivery_timeout_seconds=args.delivery_timeout,
        drain_timeout_seconds=args.drain_timeout,
        metrics_port=args.metrics_port,
    )


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


# Kafka


def prepare_topics(settings: Settings, create: bool, max_attempts: int) -> Settings:
    """Create missing topics (unless `create` is False) and fit max_record_bytes to the changes topic.

    Retries while the broker is unreachable. Returns the settings with max_record_bytes lowered when the
    topic's max.message.bytes is smaller than the configured record size plus framing.
    """
    for attempt in range(1, max_attempts + 1):
        try:
            if create:
                ensure_topics(settings, only=[settings.changes_topic, settings.dead_letter_topic])
            limit = topic_message_limit(settings)
            break
        except (KdiagError, KafkaException) as error:
            if attempt == max_attempts:
                raise KdiagError(
                    f"preparing the Kafka topics on {settings.bootstrap_servers} failed: {error}; "
                    f"check that the broker is running and that {settings.changes_topic} exists"
                ) from None
            log.warning("preparing the Kafka topics failed; retrying", extra={"error": str(error), "attempt": f"{attempt}/{max_attempts}"})
            time.sleep(backoff_seconds(attempt))
    if limit is not None and limit - PRODUCER_MESSAGE_MARGIN_BYTES < settings.max_record_bytes:
        reduced = max(limit - PRODUCER_MESSAGE_MARGIN_BYTES, 16 * 1024)
        log.info(
            "record size limited by the topic",
            extra={"topic": settings.changes_topic, "max_message_bytes": limit, "max_record_bytes": reduced},
        )
        settings = settings.replace(max_record_bytes=reduced)
    return settings


def topic_message_limit(settings: Settings) -> int | None:
    """Return the changes topic's max.message.bytes, or None if the broker does not report it.

    Raises KafkaException when the topic's configuration cannot be read.
    """
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    resource = ConfigResource(KafkaResourceType.TOPIC, settings.changes_topic)
    futures = admin.describe_configs([resource], request_timeout=30)
    entries = futures[resource].result(timeout=30)
    entry = entries.get("max.message.bytes")
    return int(entry.value) if entry is not None and entry.value else None


# Commands


def release(api: KubernetesApi, max_attempts: int) -> int:
    found = discover(api)
    types = [resource for resource in found.types if "patch" in resource.verbs]
    log.info("releasing finalizers", extra={"resource_types": len(types)})
    released, failed = release_finalizers(api, types, max_attempts)
    print(f"released {released} finalizers from {len(types)} resource types; {failed} failures", flush=True)
    if found.failed_groups:
        print(f"kdiag watch: could not read API groups {', '.join(found.failed_groups)}; run again later", file=sys.stderr)
    return 0 if failed == 0 and not found.failed_groups else 1


def run(args: argparse.Namespace, settings: Settings) -> int:
    configuration, context_name = load_client_configuration(args.kubeconfig, args.context)
    api = KubernetesApi(ApiClient(configuration))
    try:
        if args.release_finalizers:
            try:
                return release(api, args.max_attempts)
            except ApiError as error:
                raise KdiagError(f"releasing finalizers failed: {error}") from None
        cluster = cluster_name(args, settings, context_name)
        options = build_options(args, settings, cluster)
        settings = prepare_topics(settings, not args.no_create_topics, options.max_attempts)
        return _watch(options, settings, api)
    finally:
        api.close()


def _watch(options: WatchOptions, settings: Settings, api: KubernetesApi) -> int:
    watcher = Watcher(options, settings, api)

    def request_stop(signal_number: int, frame: FrameType | None) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signal_number).name})
        watcher.request_stop()

    previous = {number: signal.signal(number, request_stop) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            watcher.start()
        except (KdiagError, ApiError):
            watcher.stop()
            raise
        if watcher.metrics_port is not None:
            log.info("metrics served", extra={"address": f"127.0.0.1:{watcher.metrics_port}"})
        watcher.wait()
        summary = watcher.stop()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    print(
        f"watched {summary.resource_types} resource types; {summary.published} changes acknowledged by Kafka"
        + ("" if summary.drained else "; some changes were not acknowledged and will be published again on restart"),
        flush=True,
    )
    if summary.error is not None:
        print(f"kdiag watch: {summary.error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `kdiag watch` on its own, with the top-level options of the kdiag command."""
    parser = argparse.ArgumentParser(prog="kdiag watch", description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: KDIAG_BOOTSTRAP_SERVERS or 127.0.0.1:19092)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = load_settings(bootstrap_servers=args.bootstrap_servers)
        return run(args, settings)
    except (KdiagError, WatcherError) as error:
        print(f"kdiag watch: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
