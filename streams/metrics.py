"""Prometheus metrics of the stream worker."""

from prometheus_client import Counter, Gauge, Histogram

from kdiag.alertcenter.mttx import MttxMetrics

RECORDS = Counter("kdiag_worker_records_total", "Changes-topic records processed", ["partition"])
CHANGES = Counter("kdiag_worker_changes_total", "Resource changes evaluated")
TICKS = Counter("kdiag_worker_ticks_total", "Ticks applied")
SKIPPED = Counter("kdiag_worker_records_skipped_total", "Records skipped because an earlier run committed them")
STALE_WARNINGS = Counter(
    "kdiag_worker_stale_warning_events_total", "Warning Events not forwarded because they were older than the maximum age"
)
ALERTS = Counter("kdiag_worker_alerts_total", "Alert transitions emitted", ["status"])
OFFSETS_MISSING = Counter(
    "kdiag_worker_offsets_missing_total", "Changes-topic offsets skipped between two delivered records of a partition"
)
DEAD_LETTERS = Counter("kdiag_worker_dead_letters_total", "Records sent to the dead-letter topic")
TRANSACTIONS = Counter("kdiag_worker_transactions_total", "Kafka transactions", ["outcome"])
RESTORED = Counter("kdiag_worker_changelog_records_restored_total", "Changelog records applied on partition start")
ENTRIES = Gauge("kdiag_worker_entries", "Active rule entries", ["state"])
PARTITIONS = Gauge("kdiag_worker_partitions", "Changes-topic partitions this worker owns")
BATCH_SECONDS = Histogram(
    "kdiag_worker_batch_seconds",
    "Time to process and commit one batch of the rule stage",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_CPU_SECONDS = Counter(
    "kdiag_worker_batch_cpu_seconds_total",
    "CPU time of the threads that processed the rule stage's batches, commits in other threads excluded",
)
STAGE_BATCH_SECONDS = Histogram(
    "kdiag_worker_stage_batch_seconds",
    "Time to process and commit one batch of the root-cause or alert-center stage",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CENTER_WATERMARK = Gauge(
    "kdiag_center_watermark_seconds",
    "Event time up to which the alert center has every Warning event of a cluster, as Unix time",
    ["cluster"],
)
DIAGNOSES = Counter("kdiag_worker_diagnoses_total", "Diagnoses-topic records the root-cause stage processed")
ROOT_CAUSES = Counter("kdiag_worker_root_causes_total", "Root causes found, by responsibility", ["responsibility"])
# MTTD, MTTA and MTTR of the graded alerts this worker committed, by rule and level.
MTTX = MttxMetrics()
