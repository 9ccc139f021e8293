"""Settings of every kdiag component, in one frozen object.

Each field can be set from the environment as KDIAG_<FIELD NAME IN CAPITALS>, for example
KDIAG_BOOTSTRAP_SERVERS=127.0.0.1:19092. Command-line options override the environment.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path

from kdiag.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:19092"
    # Topics. The changes topic carries ChangeBatch records; see docs/design.md for its key.
    changes_topic: str = "kdiag-changes"
    alerts_topic: str = "kdiag-alerts"
    dead_letter_topic: str = "kdiag-dead-letters"
    rules_topic: str = "kdiag-rules"
    # Root cause: diagnoses of the rule stage in, graph declarations on a compacted topic.
    diagnoses_topic: str = "kdiag-diagnoses"
    graphs_topic: str = "kdiag-graphs"
    # Alert center: events from every source in, graded alerts out, acknowledgements as actions.
    events_topic: str = "kdiag-events"
    graded_alerts_topic: str = "kdiag-graded-alerts"
    actions_topic: str = "kdiag-actions"
    # Compacted topic with the alert center's configuration (levels, escalation, filters, enrichment).
    center_config_topic: str = "kdiag-center-config"
    partitions: int = 6
    replication_factor: int = 1
    # Worker.
    app_id: str = "kdiag-worker"
    state_dir: Path = PROJECT_ROOT / "var" / "state"
    rules_dir: Path = PROJECT_ROOT / "rules"
    graphs_dir: Path = PROJECT_ROOT / "rootcause"
    # Published to an empty center config topic by the first worker.
    center_config_file: Path = PROJECT_ROOT / "deploy" / "alertcenter.yaml"
    # Worker processes for root-cause plugins declared with isolation: process.
    plugin_processes: int = 2
    # Send Warning Events that no rule matches to the alert center (rule KubernetesWarning).
    forward_warning_events: bool = True
    # Warning Events whose last occurrence lies more than this long before the change that carries
    # them (the Events of a watcher's first list, for example) are not forwarded, because they have
    # gone quiet. Keep it equal to the alert center's staleAfter.
    forward_warning_max_age_seconds: float = 900.0
    # Event time between two watermarks that each changes partition sends to the alert center for a
    # cluster. The alert center expires quiet Warning alerts at the watermark, so on a quiet cluster a
    # Warning alert resolves up to this much, plus one tick interval, later than it expired. Each watermark is one record per
    # changes partition and cluster, and each costs the alert center part of a transaction.
    watermark_interval_seconds: float = 60.0
    schemas_dir: Path = PROJECT_ROOT / "schemas"
    # Records per worker batch. A batch's decoded changes and staged writes stay in memory until its
    # transaction commits, about 3 KB per change. With 1,000,000 tracked objects, bench.memory measured
    # 154 and 169 MiB of RSS with 50 against 184 MiB with 200, because smaller batches leave fewer
    # pymalloc arenas behind, and a peak of 251 and 253 MiB against 346 MiB. The catch-up used 7 to 21 %
    # more CPU per change with 50 (docs/benchmarks.md, runs M21 to M23, T34, T35).
    batch_max_records: int = 50
    # Maximum records Faust buffers for one agent before it stops fetching for it (Faust's
    # stream_buffer_maxsize, default 4,096). An agent then keeps at most batch_max_records plus this
    # many records in memory, besides the last fetch of each partition.
    stream_buffer_max_records: int = 400
    # Whether the worker freezes the objects that startup built, so that garbage collections skip them
    # (streams/collector.py).
    gc_freeze_startup: bool = True
    # Number of new container objects that triggers a collection of the youngest generation (Python's
    # default 700).
    gc_young_threshold_objects: int = 700
    # Maximum time the worker waits to fill a batch of batch_max_records. bench.latency measured
    # immediate alerts at 158 ms p99 with 0.02 s and 288 ms with 0.1 s. Catching up with 100 rules
    # ran at 1,429 instead of 1,922 changes/s, in smaller batches (docs/benchmarks.md, runs L3-L4, T4-T5).
    # NOTE: a slow trickle of records can make a partition commit up to 50 transactions per second
    # instead of 10. The broker load of that was not measured.
    commit_interval_seconds: float = 0.02
    transaction_timeout_seconds: float = 60.0
    session_timeout_seconds: float = 10.0
    heartbeat_interval_seconds: float = 2.0
    metrics_port: int = 0
    # Connectors.
    cluster: str = "replay"
    batch_max_changes: int = 100
    # How long the watcher queues a change so that a burst of updates to one object coalesces.
    linger_seconds: float = 0.05
    # linger.ms of the changes producer. Its records already carry up to batch_max_changes changes,
    # so a longer wait buys few fuller requests and adds its whole length to every alert's latency.
    producer_linger_seconds: float = 0.005
    max_record_bytes: int = 1_000_000

    @property
    def changelog_topic(self) -> str:
        """Compacted topic that backs the worker's RocksDB state."""
        return f"{self.app_id}-state-changelog"

    @property
    def center_changelog_topic(self) -> str:
        """Compacted topic that backs the alert center's RocksDB state."""
        return f"{self.app_id}-center-changelog"

    @property
    def root_cause_changelog_topic(self) -> str:
        """Compacted topic that backs the root-cause stage's offsets."""
        return f"{self.app_id}-rootcause-changelog"

    @property
    def cluster_objects_topic(self) -> str:
        """Compacted topic of the cluster-scoped objects that reference rules read, for every worker."""
        return f"{self.app_id}-cluster-objects"

    def replace(self, **changes: object) -> "Settings":
        return dataclasses.replace(self, **changes)


def _convert(name: str, annotation: str, raw: str) -> object:
    try:
        if annotation == "int":
            return int(raw)
        if annotation == "float":
            return float(raw)
        if annotation == "Path":
            return Path(raw)
        if annotation == "bool":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        return raw
    except ValueError:
        raise ConfigError(
            f"invalid value {raw!r} for KDIAG_{name.upper()}: expected {annotation}; "
            f"fix the environment variable or unset it"
        ) from None


def load_settings(environ: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Build Settings from defaults, then KDIAG_* variables, then explicit overrides."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, object] = {}
    for field in fields(Settings):
        raw = environ.get(f"KDIAG_{field.name.upper()}")
        if raw is not None:
            values[field.name] = _convert(field.name, str(field.type), raw)
    values.update({key: value for key, value in overrides.items() if value is not None})
    settings = Settings(**values)
    if settings.forward_warning_max_age_seconds <= 0:
        raise ConfigError(
            f"forward_warning_max_age_seconds must be positive, got {settings.forward_warning_max_age_seconds}; "
            f"set KDIAG_FORWARD_WARNING_MAX_AGE_SECONDS to a number of seconds above 0"
        )
    if settings.watermark_interval_seconds <= 0:
        raise ConfigError(
            f"watermark_interval_seconds must be positive, got {settings.watermark_interval_seconds}; "
            f"set KDIAG_WATERMARK_INTERVAL_SECONDS to a number of seconds above 0"
        )
    if settings.partitions < 1:
        raise ConfigError(f"partitions must be at least 1, got {settings.partitions}")
    if settings.gc_young_threshold_objects < 1:
        # gc.set_threshold(0) turns automatic collection off, and unreachable cycles would pile up.
        raise ConfigError(
            f"invalid KDIAG_GC_YOUNG_THRESHOLD_OBJECTS {settings.gc_young_threshold_objects}: expected at least 1. "
            f"Unset it for Python's default of 700"
        )
    return settings
