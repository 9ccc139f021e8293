"""What reference rules need about referenced objects, per changes-topic partition.

Rules can refer from one object to another (a Pod to its Secrets, an Ingress to its Services). For
each kind that some rule references, the worker keeps a projection of every object of that kind:
its identity, labels, Secret or ConfigMap key names (never values), `type`, and the top-level
sections that reference conditions read, such as `subsets` of Endpoints. The projection is written
to RocksDB and the changelog only when it changes, so status-only updates of a kind that no rule
reads cost nothing.

Namespaced objects are co-partitioned with the objects that refer to them, because the topic key
is cluster/namespace.

NOTE: cluster-scoped objects (Node, StorageClass, PersistentVolume) all land on the partition of
key "<cluster>/", so a reference to them resolves only for objects on that partition; elsewhere such
references count as unknown and the reference conditions on them never hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from kdiag.rules import RuleSet
from kdiag.rules.kinds import CLUSTER_SCOPED_KINDS, KEY_FIELDS
from kdiag.rules.references import ReferenceCondition

OBJECT_PREFIX = b"r\x1f"

# Kinds that a kindField declaration (such as an HPA's scaleTargetRef.kind) may name.
DYNAMIC_TARGET_KINDS = frozenset({"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"})
METADATA_KEPT = ("name", "namespace", "uid", "labels", "deletionTimestamp")

ObjectKey = tuple[str, str, str, str]  # cluster, kind, namespace, name


@dataclass(frozen=True)
class ReferencePlan:
    """The kinds some rule references, each with the top-level fields that reference conditions read."""

    sections: Mapping[str, frozenset[str]]

    @classmethod
    def from_rule_set(cls, rule_set: RuleSet) -> "ReferencePlan":
        sections: dict[str, set[str]] = {}
        for rule in rule_set:
            declarations = {declaration.name: declaration for declaration in rule.references}
            for declaration in rule.references:
                for kind in _target_kinds(declaration):
                    sections.setdefault(kind, set())
            for condition in (*rule.filter_fields, *rule.check_fields):
                if not isinstance(condition, ReferenceCondition) or condition.field_condition is None:
                    continue
                declaration = declarations.get(condition.reference)
                if declaration is None:
                    continue
                top = condition.field_condition.field[0]
                for kind in _target_kinds(declaration):
                    sections.setdefault(kind, set()).add(top)
        return cls({kind: frozenset(names) for kind, names in sections.items()})

    def references(self, kind: str) -> bool:
        return kind in self.sections

    def project(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Return the part of a referenced object that reference rules read."""
        kind = obj.get("kind")
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
        projection: dict[str, Any] = {
            "apiVersion": obj.get("apiVersion"),
            "kind": kind,
            "metadata": {name: metadata[name] for name in METADATA_KEPT if name in metadata},
        }
        if "type" in obj:
            projection["type"] = obj["type"]
        for map_name in KEY_FIELDS.get(kind, ()):
            values = obj.get(map_name)
            if isinstance(values, Mapping):
                # Key names decide "Secret exists without the key"; the values are never kept.
                projection[map_name] = {key: "" for key in values}
        for section in self.sections.get(kind, ()):
            if section in obj and section not in projection:
                projection[section] = obj[section]
        return projection


def _target_kinds(declaration: Any) -> frozenset[str]:
    if declaration.kind:
        return frozenset({declaration.kind})
    return DYNAMIC_TARGET_KINDS


def object_state_key(key: ObjectKey) -> bytes:
    return OBJECT_PREFIX + "\x1f".join(key).encode()


class ReferenceStore:
    """Projections of referenced objects of one partition, with writes staged until the commit.

    `lookup` reads committed state (RocksDB). Staged writes are visible to `get` at once.
    """

    def __init__(self, lookup: Callable[[bytes], bytes | None]) -> None:
        self._lookup = lookup
        self._staged: dict[bytes, bytes | None] = {}
        self._parsed: dict[bytes, Any] = {}

    def get(self, key: ObjectKey) -> dict[str, Any] | None:
        state_key = object_state_key(key)
        if state_key in self._parsed:
            return self._parsed[state_key]
        raw = self._staged[state_key] if state_key in self._staged else self._lookup(state_key)
        value = orjson.loads(raw) if raw is not None else None
        if len(self._parsed) > 10_000:
            self._parsed.clear()
        self._parsed[state_key] = value
        return value

    def put(self, key: ObjectKey, projection: dict[str, Any]) -> bool:
        """Stage a projection. Returns False when it equals the stored one, and stages nothing then."""
        state_key = object_state_key(key)
        raw = orjson.dumps(projection, option=orjson.OPT_SORT_KEYS)
        current = self._staged[state_key] if state_key in self._staged else self._lookup(state_key)
        if current == raw:
            return False
        self._staged[state_key] = raw
        self._parsed[state_key] = projection
        return True

    def delete(self, key: ObjectKey) -> bool:
        """Stage the removal of an object. Returns False when there was nothing to remove."""
        state_key = object_state_key(key)
        current = self._staged[state_key] if state_key in self._staged else self._lookup(state_key)
        if current is None:
            return False
        self._staged[state_key] = None
        self._parsed[state_key] = None
        return True

    def resolver(self, cluster: str) -> Callable[[str, str, str], dict[str, Any] | None]:
        """Return the resolve(kind, namespace, name) function that rule evaluation calls."""

        def resolve(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
            if kind in CLUSTER_SCOPED_KINDS:
                namespace = ""
            return self.get((cluster, kind, namespace, name))

        return resolve

    def has_writes(self) -> bool:
        return bool(self._staged)

    def take_writes(self) -> list[tuple[bytes, bytes | None]]:
        writes = sorted(self._staged.items())
        self._staged.clear()
        return writes
