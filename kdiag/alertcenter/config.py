"""Configuration of the alert center: levels, escalation, de-duplication, enrichment and filters.

`AlertCenterConfig.from_mapping` validates a parsed YAML or JSON document and raises ConfigError
naming the key and the problem. Every field has a default, so an empty document is valid.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from kdiag.errors import ConfigError

LEVELS = ("P1", "P2", "P3", "P4")
LEVEL_NAMES = {"P1": "critical", "P2": "high", "P3": "warning", "P4": "info"}

FILTER_DIMENSIONS = ("namespace", "application", "tenant", "rule", "reason", "level")

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": MINUTE_MS, "h": HOUR_MS, "d": 24 * HOUR_MS}


def level_index(level: str) -> int:
    """Return 1 for P1 up to 4 for P4: a smaller index is more severe."""
    return LEVELS.index(level) + 1


def more_severe(first: str | None, second: str | None) -> str | None:
    if first is None:
        return second
    if second is None:
        return first
    return first if level_index(first) <= level_index(second) else second


def parse_duration_ms(value: Any, key: str) -> int:
    """Parse a duration such as 4h, 15m, 1h30m, 250ms or a number of seconds into milliseconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return round(value * 1000)
    text = value.strip() if isinstance(value, str) else ""
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS_MS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise ConfigError(
            f"invalid duration {value!r} at {key}: expected seconds or a number with units d, h, m, s "
            f"or ms, for example 4h or 1h30m"
        )
    return round(total)


def format_duration_ms(duration_ms: int) -> str:
    """Format a duration for people, e.g. 1h30m, 45s or 0s."""
    seconds = duration_ms // 1000
    if seconds == 0:
        return f"{duration_ms}ms" if duration_ms else "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)


@dataclass(frozen=True)
class FilterConfig:
    """Allow and deny lists of glob patterns (fnmatch, case-sensitive) per dimension.

    An event passes a dimension when the allow list is empty or one of its patterns matches, and no
    deny pattern matches. A pattern without *, ? or [ matches only the exact value. An empty value
    (an event without application, say) matches only the pattern "".
    """

    allow: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    deny: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def rejection(self, values: Mapping[str, str]) -> str | None:
        """Return why the values are filtered out, or None when they pass."""
        for dimension in FILTER_DIMENSIONS:
            value = values.get(dimension, "")
            allowed = self.allow.get(dimension, ())
            if allowed and not any(fnmatchcase(value, pattern) for pattern in allowed):
                return f"{dimension} {value!r} matches no allow pattern"
            for pattern in self.deny.get(dimension, ()):
                if fnmatchcase(value, pattern):
                    return f"{dimension} {value!r} matches deny pattern {pattern!r}"
        return None


@dataclass(frozen=True)
class EscalationThreshold:
    """Conditions that all must hold, and the level they give.

    The level is `level` when set, else the base level raised by `raise_levels`. A condition of 0
    is not checked. Growth is the ratio of affected applications to those of the previous window.
    """

    min_applications: int = 0
    min_tenants: int = 0
    min_growth: float = 0.0
    raise_levels: int = 0
    level: str | None = None

    def describe(self) -> str:
        conditions = []
        if self.min_applications:
            conditions.append(f"applications >= {self.min_applications}")
        if self.min_tenants:
            conditions.append(f"tenants >= {self.min_tenants}")
        if self.min_growth:
            conditions.append(f"growth >= {self.min_growth:g}x")
        if self.level:
            effect = f"sets {self.level}"
        elif self.raise_levels > 1:
            effect = f"raises {self.raise_levels} levels"
        else:
            effect = f"raises {self.raise_levels} level"
        return " and ".join(conditions) + " " + effect


DEFAULT_ESCALATION = (
    EscalationThreshold(min_applications=3, raise_levels=1),
    EscalationThreshold(min_applications=10, level="P1"),
    EscalationThreshold(min_tenants=3, level="P1"),
    EscalationThreshold(min_growth=2.0, raise_levels=1),
)


@dataclass(frozen=True)
class EnrichmentConfig:
    """Where applications, tenants and zones come from.

    The application is the value of the first of `application_labels` that the object has, else the
    name of the top owner (e.g. the Deployment) when `application_from_owner` is true. The tenant is
    the value of `tenant_label` on the object, else on its namespace (through the namespace labels
    lookup the caller passes to AlertCenter), else the first `namespace_tenants` pattern that matches
    the namespace.
    """

    application_labels: tuple[str, ...] = ("app.kubernetes.io/name", "app")
    application_from_owner: bool = True
    tenant_label: str = "tenant"
    namespace_tenants: tuple[tuple[str, str], ...] = ()
    zone_labels: tuple[str, ...] = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")


@dataclass(frozen=True)
class AlertCenterConfig:
    default_level: str = "P3"
    rule_levels: Mapping[str, str] = field(default_factory=dict)
    # Level by an event's severity label (Alertmanager alerts), used when the rule has no level.
    severity_levels: Mapping[str, str] = field(
        default_factory=lambda: {"critical": "P1", "high": "P2", "error": "P2", "warning": "P3", "info": "P4"}
    )
    repeat_interval_ms: int = 4 * HOUR_MS
    # Kubernetes Warning events never resolve: an alert made of them resolves after this much event
    # time without a new one.
    stale_after_ms: int = 15 * MINUTE_MS
    escalation: tuple[EscalationThreshold, ...] = DEFAULT_ESCALATION
    # How long the applications of ended episodes are kept for the growth comparison.
    escalation_history_ms: int = 24 * HOUR_MS
    # Labels that identify an alert besides rule, cluster, namespace and object (see fingerprint.py).
    identity_labels: tuple[str, ...] = ("job", "service")
    filters: FilterConfig = field(default_factory=FilterConfig)
    enrichment: EnrichmentConfig = field(default_factory=EnrichmentConfig)

    def base_level(self, rule: str, labels: Mapping[str, str]) -> str:
        level = self.rule_levels.get(rule)
        if level is not None:
            return level
        severity = labels.get("severity", "").lower()
        return self.severity_levels.get(severity, self.default_level)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> "AlertCenterConfig":
        """Validate a parsed document; raise ConfigError naming the key on the first problem."""
        return _parse_config(raw or {})


# Parsing

_TOP_KEYS = {
    "defaultLevel",
    "ruleLevels",
    "severityLevels",
    "repeatInterval",
    "staleAfter",
    "escalation",
    "escalationHistory",
    "identityLabels",
    "filters",
    "enrichment",
}
_THRESHOLD_KEYS = {"minApplications", "minTenants", "minGrowth", "raise", "level"}
_ENRICHMENT_KEYS = {"applicationLabels", "applicationFromOwner", "tenantLabel", "namespaceTenants", "zoneLabels"}


def _parse_config(raw: Mapping[str, Any]) -> AlertCenterConfig:
    _check_keys(raw, _TOP_KEYS, "alert center config")
    defaults = AlertCenterConfig()
    values: dict[str, Any] = {}
    if "defaultLevel" in raw:
        values["default_level"] = _level(raw["defaultLevel"], "defaultLevel")
    if "ruleLevels" in raw:
        values["rule_levels"] = {
            str(rule): _level(level, f"ruleLevels.{rule}") for rule, level in _map(raw["ruleLevels"], "ruleLevels").items()
        }
    if "severityLevels" in raw:
        values["severity_levels"] = {
            str(severity).lower(): _level(level, f"severityLevels.{severity}")
            for severity, level in _map(raw["severityLevels"], "severityLevels").items()
        }
    if "repeatInterval" in raw:
        values["repeat_interval_ms"] = _positive_duration(raw["repeatInterval"], "repeatInterval")
    if "staleAfter" in raw:
        values["stale_after_ms"] = _positive_duration(raw["staleAfter"], "staleAfter")
    if "escalation" in raw:
        values["escalation"] = _escalation(raw["escalation"])
    if "escalationHistory" in raw:
        values["escalation_history_ms"] = parse_duration_ms(raw["escalationHistory"], "escalationHistory")
    if "identityLabels" in raw:
        values["identity_labels"] = _strings(raw["identityLabels"], "identityLabels")
    if "filters" in raw:
        values["filters"] = _filters(raw["filters"])
    if "enrichment" in raw:
        values["enrichment"] = _enrichment(raw["enrichment"], defaults.enrichment)
    return AlertCenterConfig(**values)


def _escalation(raw: Any) -> tuple[EscalationThreshold, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"invalid escalation: expected a list of thresholds, got {type(raw).__name__}")
    thresholds = []
    for index, item in enumerate(raw):
        key = f"escalation[{index}]"
        item = _map(item, key)
        _check_keys(item, _THRESHOLD_KEYS, key)
        threshold = EscalationThreshold(
            min_applications=_non_negative_int(item.get("minApplications", 0), f"{key}.minApplications"),
            min_tenants=_non_negative_int(item.get("minTenants", 0), f"{key}.minTenants"),
            min_growth=_growth(item.get("minGrowth", 0), f"{key}.minGrowth"),
            raise_levels=_non_negative_int(item.get("raise", 0), f"{key}.raise"),
            level=_level(item["level"], f"{key}.level") if "level" in item else None,
        )
        if not (threshold.min_applications or threshold.min_tenants or threshold.min_growth):
            raise ConfigError(f"invalid {key}: set at least one of minApplications, minTenants or minGrowth")
        if (threshold.level is None) == (threshold.raise_levels == 0):
            raise ConfigError(f"invalid {key}: set exactly one of raise (levels, at least 1) or level (P1 to P4)")
        thresholds.append(threshold)
    return tuple(thresholds)


def _filters(raw: Any) -> FilterConfig:
    raw = _map(raw, "filters")
    _check_keys(raw, {"allow", "deny"}, "filters")
    lists = {}
    for kind in ("allow", "deny"):
        section = _map(raw.get(kind) or {}, f"filters.{kind}")
        _check_keys(section, set(FILTER_DIMENSIONS), f"filters.{kind}")
        lists[kind] = {
            dimension: _strings(patterns, f"filters.{kind}.{dimension}") for dimension, patterns in section.items()
        }
        for pattern in lists[kind].get("level", ()):
            if not any(fnmatchcase(level, pattern) for level in LEVELS):
                raise ConfigError(f"invalid filters.{kind}.level pattern {pattern!r}: it matches none of {', '.join(LEVELS)}")
    return FilterConfig(allow=lists["allow"], deny=lists["deny"])


def _enrichment(raw: Any, defaults: EnrichmentConfig) -> EnrichmentConfig:
    raw = _map(raw, "enrichment")
    _check_keys(raw, _ENRICHMENT_KEYS, "enrichment")
    from_owner = raw.get("applicationFromOwner", defaults.application_from_owner)
    if not isinstance(from_owner, bool):
        raise ConfigError(f"invalid enrichment.applicationFromOwner {from_owner!r}: expected true or false")
    tenant_label = raw.get("tenantLabel", defaults.tenant_label)
    if not isinstance(tenant_label, str):
        raise ConfigError(f"invalid enrichment.tenantLabel {tenant_label!r}: expected a label name")
    tenants = _map(raw.get("namespaceTenants") or {}, "enrichment.namespaceTenants")
    return EnrichmentConfig(
        application_labels=_strings(raw.get("applicationLabels", list(defaults.application_labels)), "enrichment.applicationLabels"),
        application_from_owner=from_owner,
        tenant_label=tenant_label,
        namespace_tenants=tuple((str(pattern), _string(tenant, f"enrichment.namespaceTenants.{pattern}")) for pattern, tenant in tenants.items()),
        zone_labels=_strings(raw.get("zoneLabels", list(defaults.zone_labels)), "enrichment.zoneLabels"),
    )


def _check_keys(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}: expected one of {', '.join(sorted(known))}")


def _map(raw: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"invalid {key}: expected a mapping, got {type(raw).__name__}")
    return raw


def _level(raw: Any, key: str) -> str:
    if raw not in LEVELS:
        raise ConfigError(f"invalid level {raw!r} at {key}: expected one of {', '.join(LEVELS)}")
    return raw


def _string(raw: Any, key: str) -> str:
    if not isinstance(raw, str):
        raise ConfigError(f"invalid {key} {raw!r}: expected a string")
    return raw


def _strings(raw: Any, key: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ConfigError(f"invalid {key} {raw!r}: expected a list of strings")
    return tuple(raw)


def _non_negative_int(raw: Any, key: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise ConfigError(f"invalid {key} {raw!r}: expected a whole number of at least 0")
    return raw


def _growth(raw: Any, key: str) -> float:
    if not isinstance(raw, (int, float)) or isinstance(raw, bool) or (raw != 0 and raw <= 1):
        raise ConfigError(f"invalid {key} {raw!r}: expected a ratio above 1, e.g. 2 for a doubling, or 0 to skip")
    return float(raw)


def _positive_duration(raw: Any, key: str) -> int:
    duration_ms = parse_duration_ms(raw, key)
    if duration_ms <= 0:
        raise ConfigError(f"invalid {key} {raw!r}: expected a duration above 0")
    return duration_ms
