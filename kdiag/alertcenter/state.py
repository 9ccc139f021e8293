"""State of the alert center: one entry per active alert and one per rule, as a plain mapping.

Keys are "alert/<fingerprint>" for an alert, "rule/<rule>" for a rule's episode and escalation, and
"rule-item/<rule>\x1f<field>\x1f<name>" for each member of a rule's firing alerts, applications,
tenants and history. A rule of many firing alerts, such as KubernetesWarning in a large cluster,
then writes only the members that changed, not all of them. Values serialise to JSON bytes, one key
at a time, so a stream agent can write exactly the keys that changed to its local store and
changelog, and restore them in any order. `take_changes` returns the keys changed since the caller
last took them; a key whose entry is gone is to be deleted.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

import orjson

from kdiag import json_bytes
from kdiag.errors import DecodeError

STATE_VERSION = 1
# Version 1 of a rule key also contained its firing alerts, applications, tenants and history.
RULE_STATE_VERSION = 2
ALERT_PREFIX = "alert/"
RULE_PREFIX = "rule/"
RULE_ITEM_PREFIX = "rule-item/"
ITEM_SEPARATOR = "\x1f"
# The members of a rule that are stored as keys of their own.
RULE_ITEM_FIELDS = ("firing", "applications", "tenants", "history")
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
    # Fingerprints of the episode's firing alerts, in the order they joined, with their join number.
    firing: dict[str, int] = field(default_factory=dict)
    applications: dict[str, int] = field(default_factory=dict)
    tenants: dict[str, int] = field(default_factory=dict)
    raise_levels: int = 0
    fixed_level: str | None = None
    escalation_reason: str = ""
    # Applications of ended episodes: application key -> [first affected, last affected] in ms.
    history: dict[str, list[int]] = field(default_factory=dict)
    # The join number of the episode's next firing alert.
    joins: int = 0
    # (field, name) of the members changed since AlertCenterState.put_rule last took them.
    changed: set[tuple[str, str]] = field(default_factory=set, compare=False, repr=False)

    @property
    def key(self) -> str:
        return RULE_PREFIX + self.rule

    @property
    def escalated(self) -> bool:
        return self.raise_levels > 0 or self.fixed_level is not None

    def is_empty(self) -> bool:
        return self.episode_start_ms is None and not self.history

    def join(self, fingerprint: str) -> None:
        self.firing[fingerprint] = self.joins
        self.joins += 1
        self.changed.add(("firing", fingerprint))

    def leave(self, fingerprint: str) -> None:
        if self.firing.pop(fingerprint, None) is not None:
            self.changed.add(("firing", fingerprint))

    def add_application(self, key: str, time_ms: int) -> None:
        self.applications[key] = time_ms
        self.changed.add(("applications", key))

    def add_tenant(self, tenant: str, time_ms: int) -> None:
        self.tenants[tenant] = time_ms
        self.changed.add(("tenants", tenant))

    def end_episode(self, time_ms: int) -> None:
        """Move the episode's applications to the history and clear the episode and its escalation."""
        for key, first_ms in self.applications.items():
            self.history[key] = [first_ms, time_ms]
            self.changed.add(("history", key))
            self.changed.add(("applications", key))
        self.changed.update(("tenants", tenant) for tenant in self.tenants)
        self.changed.update(("firing", fingerprint) for fingerprint in self.firing)
        self.episode_start_ms = None
        self.firing = {}
        self.applications = {}
        self.tenants = {}
        self.joins = 0
        self.raise_levels = 0
        self.fixed_level = None
        self.escalation_reason = ""

    def prune_history(self, horizon_ms: int) -> None:
        """Forget the applications of ended episodes last affected before `horizon_ms`."""
        for key in [key for key, span in self.history.items() if span[1] < horizon_ms]:
            del self.history[key]
            self.changed.add(("history", key))

    def item_value(self, field_name: str, name: str) -> Any:
        """Return the stored value of one member, or None when the rule no longer has it."""
        return getattr(self, field_name).get(name)

    def item_keys(self) -> Iterator[str]:
        for field_name in RULE_ITEM_FIELDS:
            for name in getattr(self, field_name):
                yield rule_item_key(self.rule, field_name, name)


def rule_item_key(rule: str, field_name: str, name: str) -> str:
    # The rule comes first, so a separator in its name is escaped. The name after the field may hold any character.
    escaped = rule.replace("%", "%25").replace(ITEM_SEPARATOR, "%1F")
    return f"{RULE_ITEM_PREFIX}{escaped}{ITEM_SEPARATOR}{field_name}{ITEM_SEPARATOR}{name}"


_ALERT_FIELDS = tuple(entry_field.name for entry_field in fields(AlertEntry))
# Fields of the rule key itself: all but the members stored as keys of their own.
_RULE_FIELDS = tuple(
    entry_field.name for entry_field in fields(RuleEntry) if entry_field.name not in (*RULE_ITEM_FIELDS, "changed")
)


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
        values["v"] = STATE_VERSION
    else:
        values = {name: getattr(entry, name) for name in _RULE_FIELDS}
        values["v"] = RULE_STATE_VERSION
    return values


class AlertCenterState:
    """Active alerts by fingerprint and rule entries by rule name."""

    def __init__(self) -> None:
        self.alerts: dict[str, AlertEntry] = {}
        self.rules: dict[str, RuleEntry] = {}
        self.dirty: set[str] = set()
        # Rule members changed since the last take_changes, as rule_item_key arguments.
        self._dirty_items: set[tuple[str, str, str]] = set()
        # Per cluster, a heap of (earliest expiry among an alert's sources, fingerprint), pushed whenever
        # an alert is put. Entries of alerts that changed or resolved since stay until due_alerts pops them.
        self._expiries: dict[str, list[tuple[int, str]]] = {}

    # Changes

    def put_alert(self, entry: AlertEntry) -> None:
        self.alerts[entry.fingerprint] = entry
        self.dirty.add(entry.key)
        self._push_expiry(entry)

    def _push_expiry(self, entry: AlertEntry) -> None:
        expiries = [member.expires_at_ms for member in entry.members.values() if member.expires_at_ms is not None]
        if not expiries:
            return
        heap = self._expiries.setdefault(entry.cluster, [])
        heapq.heappush(heap, (min(expiries), entry.fingerprint))
        if len(heap) > 2 * len(self.alerts) + 1024:
            # Out-of-date entries outnumber the alerts: keep one entry per alert of the cluster.
            self._expiries[entry.cluster] = []
            for alert in self.alerts.values():
                if alert.cluster == entry.cluster:
                    self._push_expiry(alert)

    def due_alerts(self, cluster: str, now_ms: int) -> list[str]:
        """Return, in fingerprint order, the cluster's alerts that may have a source that expired by
        `now_ms`, and forget them. A caller that keeps such an alert puts it again."""
        heap = self._expiries.get(cluster)
        due: set[str] = set()
        while heap and heap[0][0] <= now_ms:
            due.add(heapq.heappop(heap)[1])
        return sorted(due)

    def clusters(self) -> list[str]:
        """Return the clusters that have alerts with an expiry, in order."""
        return sorted(cluster for cluster, heap in self._expiries.items() if heap)

    def delete_alert(self, fingerprint: str) -> None:
        self.alerts.pop(fingerprint, None)
        self.dirty.add(ALERT_PREFIX + fingerprint)

    def put_rule(self, entry: RuleEntry) -> None:
        if entry.is_empty():
            self.rules.pop(entry.rule, None)
        else:
            self.rules[entry.rule] = entry
        self.dirty.add(entry.key)
        self._dirty_items.update((entry.rule, field_name, name) for field_name, name in entry.changed)
        entry.changed.clear()

    def take_changes(self) -> dict[str, bytes | None]:
        """Return the changed keys with their new bytes (None: delete the key), and clear `dirty`."""
        changed = self.dirty | {rule_item_key(*item) for item in self._dirty_items}
        changes = {key: self.to_bytes(key) for key in sorted(changed)}
        self.dirty.clear()
        self._dirty_items.clear()
        return changes

    # Serialisation

    def keys(self) -> Iterator[str]:
        for fingerprint in self.alerts:
            yield ALERT_PREFIX + fingerprint
        for rule, entry in self.rules.items():
            yield RULE_PREFIX + rule
            yield from entry.item_keys()

    def to_bytes(self, key: str) -> bytes | None:
        """Return the value of one key as bytes, or None when the key has no entry."""
        if key.startswith(ALERT_PREFIX):
            entry: Any = self.alerts.get(key[len(ALERT_PREFIX):])
        elif key.startswith(RULE_PREFIX):
            entry = self.rules.get(key[len(RULE_PREFIX):])
        elif key.startswith(RULE_ITEM_PREFIX):
            rule, field_name, name = _split_item_key(key)
            rule_entry = self.rules.get(rule)
            value = rule_entry.item_value(field_name, name) if rule_entry is not None else None
            return json_bytes.dumps(value) if value is not None else None
        else:
            raise KeyError(f"invalid alert center state key {key!r}: {_EXPECTED_KEYS}")
        if entry is None:
            return None
        return json_bytes.dumps(_state_values(entry), option=orjson.OPT_SORT_KEYS)

    def from_bytes(self, key: str, data: bytes | None) -> None:
        """Restore one key from bytes written by to_bytes; None deletes the key. Leaves `dirty` alone,
        except for a rule key of version 1, whose keys it marks changed (see _upgrade_rule).

        Use restore() for a whole state: it also puts each episode's firing alerts back in join order.
        """
        if key.startswith(ALERT_PREFIX):
            fingerprint = key[len(ALERT_PREFIX):]
            if data is None:
                self.alerts.pop(fingerprint, None)
                return
            values, _ = _load(key, data, (STATE_VERSION,))
            values["members"] = {name: Member(**member) for name, member in values["members"].items()}
            entry = self.alerts[fingerprint] = AlertEntry(**values)
            self._push_expiry(entry)
        elif key.startswith(RULE_PREFIX):
            rule = key[len(RULE_PREFIX):]
            if data is None:
                self.rules.pop(rule, None)
                return
            values, version = _load(key, data, (RULE_STATE_VERSION, 1))
            entry = self.rules.setdefault(rule, RuleEntry(rule))
            if version == 1:
                self._upgrade_rule(entry, values)
            for name, value in values.items():
                setattr(entry, name, value)
        elif key.startswith(RULE_ITEM_PREFIX):
            rule, field_name, name = _split_item_key(key)
            members = getattr(self.rules.setdefault(rule, RuleEntry(rule)), field_name)
            if data is None:
                members.pop(name, None)
            else:
                members[name] = _load_item(key, data)
        else:
            raise KeyError(f"invalid alert center state key {key!r}: {_EXPECTED_KEYS}")

    def _upgrade_rule(self, entry: RuleEntry, values: dict[str, Any]) -> None:
        """Take the members out of a version 1 rule value and mark the rule's keys changed, so that
        the next take_changes writes them as keys of their own."""
        firing = values.pop("firing")
        entry.firing = {fingerprint: number for number, fingerprint in enumerate(firing)}
        entry.joins = len(firing)
        for field_name in RULE_ITEM_FIELDS[1:]:
            setattr(entry, field_name, values.pop(field_name))
        self.dirty.add(entry.key)
        self._dirty_items.update((entry.rule, field_name, name) for field_name in RULE_ITEM_FIELDS for name in getattr(entry, field_name))

    def snapshot(self) -> dict[str, bytes]:
        return {key: data for key in self.keys() if (data := self.to_bytes(key)) is not None}

    @classmethod
    def restore(cls, items: Iterable[tuple[str, bytes | None]]) -> "AlertCenterState":
        """Build a state from (key, bytes) pairs in changelog order; a later pair replaces an earlier one."""
        state = cls()
        for key, data in items:
            state.from_bytes(key, data)
        for rule, entry in list(state.rules.items()):
            if entry.is_empty() and not entry.firing:
                # Only deleted members of an ended episode were restored, e.g. from a compacted changelog.
                del state.rules[rule]
                continue
            # Item keys come back in key order, and the episode's firing alerts keep their join order.
            entry.firing = dict(sorted(entry.firing.items(), key=lambda item: item[1]))
        return state


_EXPECTED_KEYS = "expected alert/<fingerprint>, rule/<rule> or rule-item/<rule>\\x1f<field>\\x1f<name>"


def _split_item_key(key: str) -> tuple[str, str, str]:
    parts = key[len(RULE_ITEM_PREFIX):].split(ITEM_SEPARATOR, 2)
    if len(parts) != 3 or parts[1] not in RULE_ITEM_FIELDS:
        raise KeyError(f"invalid alert center state key {key!r}: {_EXPECTED_KEYS}, with a field of {', '.join(RULE_ITEM_FIELDS)}")
    rule = parts[0].replace("%1F", ITEM_SEPARATOR).replace("%25", "%")
    return rule, parts[1], parts[2]


def _load(key: str, data: bytes, versions: tuple[int, ...]) -> tuple[dict[str, Any], int]:
    """Parse a stored entry of one of `versions`. Returns its fields and its version."""
    try:
        values = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise DecodeError(f"invalid alert center state at {key}: {error}") from None
    version = values.pop("v", None)
    if version not in versions:
        expected = " or ".join(str(number) for number in versions)
        raise DecodeError(
            f"alert center state at {key} has version {version!r}, expected {expected}; "
            f"run the kdiag version that wrote it, or clear the alert center's changelog and local state"
        )
    return values, version


def _load_item(key: str, data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise DecodeError(f"invalid alert center state at {key}: {error}") from None
