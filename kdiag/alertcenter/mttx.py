"""MTTD, MTTA and MTTR from graded alert records, as Prometheus histograms and as summaries.

- MTTD, time to detect: firstSeen minus startsAt, measured on FIRING. startsAt is the first evidence,
  e.g. a diagnosis's activeSince; firstSeen is when the alert center raised the alert.
- MTTA, time to acknowledge: ackedAt minus firstSeen, measured on ACKNOWLEDGED.
- MTTR, time to resolve: resolvedAt minus firstSeen, measured on RESOLVED.

Each measurement is labelled with the rule and the alert's level in that record. Since escalation
only rises while an alert fires, the level on RESOLVED is the highest the alert reached. A negative
difference (an ack time from a clock behind event time) counts as 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Histogram

MTTD = "mttd"
MTTA = "mtta"
MTTR = "mttr"
MEASURES = (MTTD, MTTA, MTTR)

BUCKETS_SECONDS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 259200)


@dataclass(frozen=True, slots=True)
class Measurement:
    measure: str
    rule: str
    level: str
    seconds: float


def measurements(record: Mapping[str, Any]) -> list[Measurement]:
    """Return the measurements one graded alert record (Avro field names) contributes."""
    kind = record["type"]
    first_seen = record["firstSeen"]
    if kind == "FIRING":
        value, measure = first_seen - record["startsAt"], MTTD
    elif kind == "ACKNOWLEDGED" and record.get("ackedAt") is not None:
        value, measure = record["ackedAt"] - first_seen, MTTA
    elif kind == "RESOLVED" and record.get("resolvedAt") is not None:
        value, measure = record["resolvedAt"] - first_seen, MTTR
    else:
        return []
    return [Measurement(measure, record["rule"], record["level"], max(0, value) / 1000)]


class MttxMetrics:
    """Histograms kdiag_alertcenter_{mttd,mtta,mttr}_seconds with labels rule and level."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._histograms = {
            MTTD: Histogram(
                "kdiag_alertcenter_mttd_seconds",
                "Time from the first evidence of a condition to its alert",
                ["rule", "level"],
                buckets=BUCKETS_SECONDS,
                registry=registry,
            ),
            MTTA: Histogram(
                "kdiag_alertcenter_mtta_seconds",
                "Time from an alert to its first acknowledgement",
                ["rule", "level"],
                buckets=BUCKETS_SECONDS,
                registry=registry,
            ),
            MTTR: Histogram(
                "kdiag_alertcenter_mttr_seconds",
                "Time from an alert to its resolution",
                ["rule", "level"],
                buckets=BUCKETS_SECONDS,
                registry=registry,
            ),
        }

    def observe(self, record: Mapping[str, Any]) -> None:
        for measurement in measurements(record):
            self._histograms[measurement.measure].labels(measurement.rule, measurement.level).observe(measurement.seconds)


@dataclass
class MeasureSummary:
    count: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0

    @property
    def mean_seconds(self) -> float | None:
        return self.total_seconds / self.count if self.count else None

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total_seconds += seconds
        self.max_seconds = max(self.max_seconds, seconds)


@dataclass
class RuleLevelSummary:
    rule: str
    level: str
    measures: dict[str, MeasureSummary] = field(default_factory=lambda: {measure: MeasureSummary() for measure in MEASURES})


class MttxSummary:
    """Mean and maximum MTTD, MTTA and MTTR per (rule, level), from graded alert records."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], RuleLevelSummary] = {}

    def add(self, record: Mapping[str, Any]) -> None:
        for measurement in measurements(record):
            key = (measurement.rule, measurement.level)
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = RuleLevelSummary(measurement.rule, measurement.level)
            group.measures[measurement.measure].add(measurement.seconds)

    def add_all(self, records: Iterable[Mapping[str, Any]]) -> "MttxSummary":
        for record in records:
            self.add(record)
        return self

    def rows(self) -> list[RuleLevelSummary]:
        return [self.groups[key] for key in sorted(self.groups)]
