"""The alert center's output records (schemas/graded_alert.avsc) and alert ids."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from kdiag.alertcenter.state import AlertEntry
from kdiag.errors import DecodeError

FIRING = "FIRING"
REPEAT = "REPEAT"
LEVEL_CHANGED = "LEVEL_CHANGED"
ACKNOWLEDGED = "ACKNOWLEDGED"
RESOLVED = "RESOLVED"

_ALERT_ID = re.compile(r"^(?P<rule>.+)/(?P<fingerprint>[0-9a-f]{16})-[0-9a-f]{8}$")


def alert_id(rule: str, fingerprint: str, first_seen_ms: int) -> str:
    """Return the id of one firing: <rule>/<fingerprint>-<8 hex digits of a hash of both and firstSeen>.

    The rule comes first so that an acknowledgement, which carries only the id, can be keyed by rule
    like the events it must meet on one partition.
    """
    digest = hashlib.sha256(f"{fingerprint}\x1f{first_seen_ms}".encode()).hexdigest()[:8]
    return f"{rule}/{fingerprint}-{digest}"


def parse_alert_id(text: str) -> tuple[str, str]:
    """Return (rule, fingerprint) of an alert id; raise DecodeError on any other text."""
    match = _ALERT_ID.match(text)
    if match is None:
        raise DecodeError(
            f"invalid alert id {text!r}: expected <rule>/<16 hex digits>-<8 hex digits>, "
            f"as the id field of a graded alert shows it"
        )
    return match.group("rule"), match.group("fingerprint")


@dataclass(frozen=True, slots=True)
class GradedAlert:
    """One transition of one alert; `entry` is a copy of the alert's state after the transition."""

    type: str
    status: str
    time_ms: int
    entry: AlertEntry
    affected_applications: int
    affected_tenants: int
    previous_level: str | None = None
    resolved_at_ms: int | None = None
    resolve_reason: str = ""

    @property
    def fingerprint(self) -> str:
        return self.entry.fingerprint

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def level(self) -> str:
        return self.entry.level

    def to_avro(self) -> dict[str, Any]:
        entry = self.entry
        return {
            "id": entry.id,
            "fingerprint": entry.fingerprint,
            "type": self.type,
            "status": self.status,
            "time": self.time_ms,
            "rule": entry.rule,
            "source": entry.source,
            "level": entry.level,
            "previousLevel": self.previous_level,
            "baseLevel": entry.base_level,
            "levelReason": entry.level_reason,
            "count": entry.count,
            "firstSeen": entry.first_seen_ms,
            "lastSeen": entry.last_seen_ms,
            "startsAt": entry.starts_at_ms,
            "ackedAt": entry.acked_at_ms,
            "ackedBy": entry.acked_by,
            "resolvedAt": self.resolved_at_ms,
            "resolveReason": self.resolve_reason,
            "affectedApplications": self.affected_applications,
            "affectedTenants": self.affected_tenants,
            "reason": entry.reason,
            "reasons": list(entry.reasons),
            "message": entry.message,
            "labels": dict(entry.labels),
            "annotations": dict(entry.annotations),
            "cluster": entry.cluster,
            "namespace": entry.namespace,
            "kind": entry.kind,
            "name": entry.name,
            "ownerKind": entry.owner_kind,
            "ownerName": entry.owner_name,
            "ownerSource": entry.owner_source,
            "application": entry.application,
            "tenant": entry.tenant,
            "node": entry.node,
            "zone": entry.zone,
            "rootCause": entry.root_cause,
        }
