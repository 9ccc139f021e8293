"""Shared condition results: rules evaluated on one object through one SharedResults."""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from kdiag.rules import ExtractedReferences, SharedResults, engine, parse_rules


class CountingMapping(Mapping[str, Any]):
    """A read-only object that counts how often each of its top-level keys is read."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data
        self.reads: dict[str, int] = {}

    def __getitem__(self, key: str) -> Any:
        self.reads[key] = self.reads.get(key, 0) + 1
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


PENDING = {"field": ["status", "phase"], "equalValue": ["Pending"]}
UNSCHEDULED = {
    "field": ["status", "conditions"],
    "subIdentifierName": "type",
    "subIdentifierValue": ["PodScheduled"],
    "subField": ["status"],
    "equalValue": ["False"],
}
RULES = parse_rules(
    {
        "Unschedulable": {"resource": "Pod", "filterField": [PENDING], "checkField": [UNSCHEDULED]},
        "UnschedulableLong": {"resource": "Pod", "duration": 900, "filterField": [PENDING], "checkField": [UNSCHEDULED]},
        "PendingOnly": {"resource": "Pod", "checkField": [PENDING]},
    },
    source="test",
)
POD = {
    "kind": "Pod",
    "metadata": {"name": "api-0", "namespace": "shop"},
    "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]},
}


def test_equal_conditions_evaluated_once() -> None:
    obj = CountingMapping(POD)
    shared = SharedResults(obj)
    matches = [rule.evaluate(obj, shared=shared) for rule in RULES]
    # The kind is read by every rule; the status once for the phase and once for the conditions.
    assert obj.reads == {"kind": 3, "status": 2}
    assert [match.context if match else None for match in matches] == [
        {"status.conditions[type=PodScheduled].status": "False"},
        {"status.conditions[type=PodScheduled].status": "False"},
        {"status.phase": "Pending"},
    ]


def test_unshared_rules_read_again() -> None:
    obj = CountingMapping(POD)
    for rule in RULES:
        rule.evaluate(obj)
    assert obj.reads == {"kind": 3, "status": 5}


def test_failed_filter_shared() -> None:
    obj = CountingMapping({**POD, "status": {"phase": "Running"}})
    shared = SharedResults(obj)
    assert [rule.evaluate(obj, shared=shared) for rule in RULES] == [None, None, None]
    assert obj.reads == {"kind": 3, "status": 1}


def test_reference_condition_resolved_once() -> None:
    pod = {**POD, "spec": {"imagePullSecrets": [{"name": "registry"}, {"name": "mirror"}]}}
    references = [{"name": "secrets", "builtin": "PodSecrets"}]
    rules = parse_rules(
        {
            "SecretMissing": {"resource": "Pod", "references": references, "checkField": [{"referenceMissing": "secrets"}]},
            "SecretMissingLong": {
                "resource": "Pod",
                "duration": 600,
                "references": references,
                "checkField": [{"referenceMissing": "secrets"}],
            },
        },
        source="test",
    )
    lookups: list[tuple[str, str, str]] = []

    def resolve(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        lookups.append((kind, namespace, name))
        return {"kind": "Secret"} if name == "registry" else None

    shared = SharedResults(pod)
    extracted = ExtractedReferences(pod)
    matches = [rule.evaluate(pod, resolve, extracted, shared) for rule in rules]
    assert lookups == [("Secret", "shop", "registry"), ("Secret", "shop", "mirror")]
    assert [match.context for match in matches if match] == [{"references.secrets": "Secret shop/mirror"}] * 2


def test_results_of_another_object_rejected() -> None:
    shared = SharedResults(dict(POD))
    with pytest.raises(ValueError, match="shared condition results belong to another object"):
        RULES[0].evaluate(dict(POD), shared=shared)


def test_checks_of_dropped_rules_released() -> None:
    condition = {"field": ["metadata", "labels", "kdiag-test-released"], "equalValue": ["yes"]}
    (rule,) = parse_rules({"Released": {"resource": "Pod", "checkField": [condition]}}, source="test")
    (field_condition,) = rule.check_fields
    assert field_condition in engine._SHARED_CHECKS
    del rule
    gc.collect()
    assert field_condition not in engine._SHARED_CHECKS
