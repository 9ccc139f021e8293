"""Partition state for reference rules: referring and referenced objects, per changes-topic partition.

Rules can refer from one object to another (a Pod to its Secrets, an Ingress to its Services). The
worker keeps three things in RocksDB and the changelog, each written only when it changes:

- for each kind that some rule references, a projection of every object of that kind: its
  identity, labels, Secret or ConfigMap key names (never values), `type`, and the top-level sections
  that reference conditions read, such as `subsets` of Endpoints;
- for each object of a kind that has reference rules (the referrer), the object itself, without
  managedFields, so that its rules can run again when a referenced object changes. The processor
  stores only a key and the resourceVersion for kinds whose whole object the related-object table
  (streams/related_objects.py) keeps already;
- what each referrer refers to, and an index from each referenced object to its referrers, read by
  prefix scan.

Namespaced objects are co-partitioned with the objects that refer to them, because the topic key
is cluster/namespace.

Cluster-scoped objects (Node, StorageClass, PersistentVolume) all land on the partition of key
"<cluster>/". Other partitions look them up in the cluster-objects topic (streams/cluster_objects.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from kdiag import json_bytes
from kdiag.rules import RuleSet
from kdiag.rules.kinds import CLUSTER_SCOPED_KINDS, KEY_FIELDS
from kdiag.rules.references import ReferenceCondition

OBJECT_PREFIX = b"r\x1f"
REFERRER_PREFIX = b"a\x1f"
REFERENCES_PREFIX = b"k\x1f"
INDEX_PREFIX = b"x\x1f"

# Kinds that a kindField declaration (such as an HPA's scaleTargetRef.kind) may name.
DYNAMIC_TARGET_KINDS = frozenset({"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"})
METADATA_KEPT = ("name", "namespace", "uid", "labels", "deletionTimestamp")
# Maximum parsed projections that a partition's ReferenceStore caches for rule evaluation. A full
# cache is cleared and filled again.
PARSED_CACHE_ENTRIES = 10_000

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


def referrer_state_key(cluster: str, uid: str) -> bytes:
    return REFERRER_PREFIX + f"{cluster}\x1f{uid}".encode()


def references_state_key(cluster: str, uid: str) -> bytes:
    return REFERENCES_PREFIX + f"{cluster}\x1f{uid}".encode()


def index_prefix(key: ObjectKey) -> bytes:
    return INDEX_PREFIX + "\x1f".join(key).encode() + b"\x1f"


def strip_for_storage(obj: dict[str, Any]) -> dict[str, Any]:
    """Return the object without managedFields and the last-applied-configuration annotation."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return obj
    trimmed = dict(metadata)
    trimmed.pop("managedFields", None)
    annotations = trimmed.get("annotations")
    if isinstance(annotations, dict) and "kubectl.kubernetes.io/last-applied-configuration" in annotations:
        trimmed["annotations"] = {
            key: value for key, value in annotations.items() if key != "kubectl.kubernetes.io/last-applied-configuration"
        }
    stripped = dict(obj)
    stripped["metadata"] = trimmed
    return stripped


class ReferenceStore:
    """Projections of referenced objects of one partition, with writes staged until the commit.

    `lookup` reads committed state (RocksDB). Staged writes are visible to `get` at once.
    """

    def __init__(
        self,
        lookup: Callable[[bytes], bytes | None],
        scan: Callable[[bytes], Iterable[bytes]] = lambda prefix: (),
    ) -> None:
        """`lookup` reads one committed key and `scan` returns the committed keys with a prefix."""
        self._lookup = lookup
        self._scan = scan
        self._staged: dict[bytes, bytes | None] = {}
        # Staged index keys grouped by index_prefix, so that referrers_of reads only the ones it needs.
        self._staged_links: dict[bytes, set[bytes]] = {}
        # Parsed projections that `get` read, at most PARSED_CACHE_ENTRIES. Writes update an entry but
        # never add one, so that kinds no rule resolves keep no parsed copy in the Python heap.
        self._parsed: dict[bytes, Any] = {}

    def _current(self, state_key: bytes) -> bytes | None:
        return self._staged[state_key] if state_key in self._staged else self._lookup(state_key)

    # Referrers and the index

    def referrer(self, cluster: str, uid: str) -> dict[str, Any] | None:
        raw = self._current(referrer_state_key(cluster, uid))
        return orjson.loads(raw) if raw is not None else None

    def put_referrer(self, cluster: str, uid: str, obj: dict[str, Any]) -> None:
        state_key = referrer_state_key(cluster, uid)
        raw = json_bytes.dumps(obj, option=orjson.OPT_SORT_KEYS)
        if self._current(state_key) != raw:
            self._staged[state_key] = raw

    def delete_referrer(self, cluster: str, uid: str) -> None:
        for state_key in (referrer_state_key(cluster, uid), references_state_key(cluster, uid)):
            if self._current(state_key) is not None:
                self._staged[state_key] = None

    def references_of(self, cluster: str, uid: str) -> set[ObjectKey]:
        """Return the objects a referrer referred to at its last change."""
        raw = self._current(references_state_key(cluster, uid))
        return {tuple(key) for key in orjson.loads(raw)} if raw is not None else set()

    def set_references(self, cluster: str, uid: str, keys: set[ObjectKey]) -> None:
        """Record what a referrer refers to now, and update the index for what changed."""
        state_key = references_state_key(cluster, uid)
        raw = json_bytes.dumps(sorted(keys))
        current = self._current(state_key)
        # The stored list is sorted, so equal bytes mean equal references, without parsing them.
        if current == raw or (current is None and not keys):
            return
        old = {tuple(key) for key in orjson.loads(current)} if current is not None else set()
        for key in old - keys:
            self.link(key, cluster, uid, present=False)
        for key in keys - old:
            self.link(key, cluster, uid, present=True)
        self._staged[state_key] = raw

    def link(self, referenced: ObjectKey, cluster: str, uid: str, present: bool) -> None:
        """Add (present) or remove the index entry from a referenced object to a referrer."""
        prefix = index_prefix(referenced)
        state_key = prefix + f"{cluster}\x1f{uid}".encode()
        if present:
            if self._current(state_key) is None:
                self._staged[state_key] = b""
                self._staged_links.setdefault(prefix, set()).add(state_key)
        elif self._current(state_key) is not None:
            self._staged[state_key] = None
            self._staged_links.setdefault(prefix, set()).add(state_key)

    def stored_objects(self) -> Iterable[tuple[str, str, dict[str, Any]]]:
        """Yield (cluster, uid, object) of every committed referrer or periodically checked object."""
        for state_key in self._scan(REFERRER_PREFIX):
            raw = self._lookup(state_key)
            if raw is not None:
                cluster, uid = state_key[len(REFERRER_PREFIX):].decode().split("\x1f", 1)
                yield cluster, uid, orjson.loads(raw)

    def referrers_of(self, referenced: ObjectKey) -> list[tuple[str, str]]:
        """Return (cluster, uid) of every object that refers to `referenced`, committed or staged."""
        prefix = index_prefix(referenced)
        keys = set(self._scan(prefix))
        for key in self._staged_links.get(prefix, ()):
            if self._staged[key] is None:
                keys.discard(key)
            else:
                keys.add(key)
        referrers = []
        for key in sorted(keys):
            cluster, uid = key[len(prefix):].decode().split("\x1f", 1)
            referrers.append((cluster, uid))
        return referrers

    def get(self, key: ObjectKey) -> dict[str, Any] | None:
        state_key = object_state_key(key)
        if state_key in self._parsed:
            return self._parsed[state_key]
        raw = self._staged[state_key] if state_key in self._staged else self._lookup(state_key)
        value = orjson.loads(raw) if raw is not None else None
        if len(self._parsed) >= PARSED_CACHE_ENTRIES:
            self._parsed.clear()
        self._parsed[state_key] = value
        return value

    def put(self, key: ObjectKey, projection: dict[str, Any]) -> bool:
        """Stage a projection. Returns False when it equals the stored one, and stages nothing then."""
        state_key = object_state_key(key)
        raw = json_bytes.dumps(projection, option=orjson.OPT_SORT_KEYS)
        current = self._staged[state_key] if state_key in self._staged else self._lookup(state_key)
        if current == raw:
            return False
        self._staged[state_key] = raw
        if state_key in self._parsed:
            self._parsed[state_key] = projection
        return True

    def delete(self, key: ObjectKey) -> bool:
        """Stage the removal of an object. Returns False when there was nothing to remove."""
        state_key = object_state_key(key)
        current = self._staged[state_key] if state_key in self._staged else self._lookup(state_key)
        if current is None:
            return False
        self._staged[state_key] = None
        if state_key in self._parsed:
            self._parsed[state_key] = None
        return True

    def resolver(self, cluster: str) -> Callable[[str, str, str], dict[str, Any] | None]:
        """Return the resolve(kind, namespace, name) function that rule evaluation calls."""

        def resolve(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
            if kind in CLUSTER_SCOPED_KINDS:
                namespace = ""
            return self.get((cluster, kind, namespace, name))

        return resolve

    @property
    def cached_projections(self) -> int:
        """Number of parsed projections kept for `get`."""
        return len(self._parsed)

    def has_writes(self) -> bool:
        return bool(self._staged)

    def take_writes(self) -> list[tuple[bytes, bytes | None]]:
        writes = sorted(self._staged.items())
        self._staged.clear()
        self._staged_links.clear()
        return writes
