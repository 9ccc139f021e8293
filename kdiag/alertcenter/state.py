"""State of the alert center: one entry per active alert and one per rule, as a plain mapping.

Keys are "alert/<fingerprint>" and "rule/<rule>". Values serialise to JSON bytes with a version
field, one key at a time, so a stream agent can write exactly the keys that changed to its local
store and changelog, and restore them in any order. `dirty` collects the keys changed since the
caller last took them; a key whose entry is gone is to be deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

import orjson

from kdiag import json_bytes
from kdiag.errors import DecodeError

STATE_VERSION = 1
ALERT_PREFIX = "alert/"
RULE_PREFIX = "rule/"
MAX_REASONS = 10


@dataclass(slots=True)
class Member:
    """One source identity (Event.sourceFingerprint) that currently keeps an alert firing."""

    last_seen_ms: int
    # Event time after which the member ends without a RESOLVED event; None waits for one.
    expires_at_ms: int | None = None


@dataclass(slots=True)
class AlertEntry:
    """One firing alert, from its first FIRING event until it resolves."""

    fingerprint: str
    id: str
    rule: str
    source: str
    base_level: str
    level: str
    level_reason: str
    count: int
    first_seen_ms: int
    last_seen_ms: int
    last_notified_ms: int
    starts_at_ms: int
    members: dict[str, Member] = field(default_factory=dict)
    acked_at_ms: int | None = None
    acked_by: str = ""
    reason: str = ""
    reasons: list[str] = field(default_factory=list)
    message: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    cluster: str = ""
    namespace: str = ""
    kind: str = ""
    name: str = ""
    owner_kind: str = ""
    owner_name: str = ""
    owner_source: str = ""
    application: str = ""
    tenant: str = ""
    node: str = ""
    zone: str = ""
    root_cause: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return ALERT_PREFIX + self.fingerprint

    def snapshot(self) -> "AlertEntry":
        """Return a copy that later changes of this entry leave alone.

        The containers that the center changes in place (members, reasons) are copied, and so are
        labels and annotations. Members and root_cause are shared, because the center replaces them
        and never changes them in place.
        """
        return replace(
            self,
            members=dict(self.members),
            reasons=list(self.reasons),
            labels=dict(self.labels),
            annotations=dict(self.annotations),
        )

    def add_reason(self, reason: str) -> None:
        self.reason = reason
        if reason and reason not in self.reasons and len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)

    def expiry_ms(self) -> int | None:
        """Return when the alert expires unless a FIRING event arrives: when its last member expires."""
        expiries = [member.expires_at_ms for member in self.members.values()]
        if not expiries or any(expiry is None for expiry in expiries):
            return None
        return max(expiries)  # type: ignore[type-var]


@dataclass(slots=True)
class RuleEntry:
    """Escalation state of one rule: its current episode and the applications of recent ones.

    An episode runs from the rule's first firing alert until none of its alerts fires any more.
    Applications and tenants are keyed as in center.application_key.
    """

    rule: str
    episode_start_ms: int | None = None
    firing: list[str] = field(default_factory=list)
    applications: dict[str, int] = field(default_factory=dict)
    tenants: dict[str, int] = field(default_factory=dict)
    raise_levels: int = 0
    fixed_level: str | None = None
    escalation_reason: str = ""
    # Applications of ended episodes: application key -> [first affected, last affected] in ms.
    history: dict[str, list[int]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return RULE_PREFIX + self.rule

    @property
    def escalated(self) -> bool:
        return self.raise_levels > 0 or self.fixed_level is not None

    def is_empty(self) -> bool:
        return self.episode_start_ms is None and not self.history


_ALERT_FIELDS = tuple(entry_field.name for entry_field in fields(AlertEntry))
_RULE_FIELDS = tuple(entry_field.name for entry_field in fields(RuleEntry))


def _state_values(entry: AlertEntry | RuleEntry) -> dict[str, Any]:
    """Return the stored form of an entry: its fields and the state version.

    It equals {"v": STATE_VERSION, **dataclasses.asdict(entry)} once serialised, without asdict's
    deep copy of every value. Members are the only dataclasses inside an entry.
    """
    if isinstance(entry, AlertEntry):
        values: dict[str, Any] = {name: getattr(entry, name) for name in _ALERT_FIELDS}
        values["members"] = {
            name: {"last_seen_ms": member.last_seen_ms, "expires_at_ms": member.expires_at_ms}
            for name, member in entry.members.items()
        }
    else:
        values = {name: getattr(entry, name) for name in _RULE_FIELDS}
    values["v"] = STATE_VERSION
    return values


class AlertCenterState:
    """Active alerts by fingerprint and rule entries by rule name."""

    def __init__(self) -> None:
        self.alerts: dict[str, AlertEntry] = {}
        self.rules: dict[str, RuleEntry] = {}
        self.dirty: set[str] = set()
        # Per cluster, the time before which no member of its alerts expires (math.inf: none expires).
        # A cluster without a value is not known, so AlertCenter.advance checks its alerts and sets it.
        self.next_expiry_ms: dict[str, float] = {}

    # Changes

    def put_alert(self, entry: AlertEntry) -> None:
        self.alerts[entry.fingerprint] = entry
        self.dirty.add(entry.key)
        next_expiry_ms = self.next_expiry_ms.get(entry.cluster)
        if next_expiry_ms is not None:
            for member in entry.members.values():
                if member.expires_at_ms is not None and member.expires_at_ms < next_expiry_ms:
                    next_expiry_ms = self.next_expiry_ms[entry.cluster] = member.expires_at_ms

    def delete_alert(self, fingerprint: str) -> None:
        self.alerts.pop(fingerprint, None)
        self.dirty.add(ALERT_PREFIX + fingerprint)

    def put_rule(self, entry: RuleEntry) -> None:
        if entry.is_empty():
            self.rules.pop(entry.rule, None)
        else:
            self.rules[entry.rule] = entry
        self.dirty.add(entry.key)

    def take_changes(self) -> dict[str, bytes | None]:
        """Return the changed keys with their new bytes (None: delete the key), and clear `dirty`."""
        changes = {key: self.to_bytes(key) for key in sorted(self.dirty)}
        self.dirty.clear()
        return changes

    # Serialisation

    def keys(self) -> Iterator[str]:
        for fingerprint in self.alerts:
            yield ALERT_PREFIX + fingerprint
        for rule in self.rules:
            yield RULE_PREFIX + rule

    def to_bytes(self, key: str) -> bytes | None:
        """Return the value of one key as bytes, or None when the key has no entry."""
        if key.startswith(ALERT_PREFIX):
            entry: Any = self.alerts.get(key[len(ALERT_PREFIX):])
        elif key.startswith(RULE_PREFIX):
            entry = self.rules.get(key[len(RULE_PREFIX):])
        else:
            raise KeyError(f"invalid alert center state key {key!r}: expected alert/<fingerprint> or rule/<rule>")
        if entry is None:
            return None
        return json_bytes.dumps(_state_values(entry), option=orjson.OPT_SORT_KEYS)

    def from_bytes(self, key: str, data: bytes | None) -> None:
        """Restore one key from bytes written by to_bytes; None deletes the key. Leaves `dirty` alone."""
        if key.startswith(ALERT_PREFIX):
            fingerprint = key[len(ALERT_PREFIX):]
            if data is None:
                self.alerts.pop(fingerprint, None)
                return
            values = _load(key, data)
            values["members"] = {name: Member(**member) for name, member in values["members"].items()}
            entry = self.alerts[fingerprint] = AlertEntry(**values)
            self.next_expiry_ms.pop(entry.cluster, None)
        elif key.startswith(RULE_PREFIX):
            rule = key[len(RULE_PREFIX):]
            if data is None:
                self.rules.pop(rule, None)
                return
            self.rules[rule] = RuleEntry(**_load(key, data))
        else:
            raise KeyError(f"invalid alert center state key {key!r}: expected alert/<fingerprint> or rule/<rule>")

    def snapshot(self) -> dict[str, bytes]:
        return {key: data for key in self.keys() if (data := self.to_bytes(key)) is not None}

    @classmethod
    def restore(cls, items: Iterable[tuple[str, bytes | None]]) -> "AlertCenterState":
        """Build a state from (key, bytes) pairs in changelog order; a later pair replaces an earlier one."""
        state = cls()
        for key, data in items:
            state.from_bytes(key, data)
        return state


def _load(key: str, data: bytes) -> dict[str, Any]:
    try:
        values = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise DecodeError(f"invalid alert center state at {key}: {error}") from None
    version = values.pop("v", None)
    if version != STATE_VERSION:
        raise DecodeError(f"alert center state at {key} has version {version!r}, expected {STATE_VERSION}")
    return values
