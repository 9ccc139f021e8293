"""The two reference rules, parsed exactly as written in JSON, on matching and non-matching objects."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from kdiag.rules import Rule, parse_rules

POD_SIDECAR_NOT_READY = """
{"PodSidecarNotReady": {"duration": 300, "resource": "Pod",
  "filterField": [
    {"field": ["status", "phase"], "equalValue": ["Running"]},
    {"field": ["metadata", "labels", "sae.component"], "equalValue": ["app"]},
    {"field": ["metadata", "deletionTimestamp"], "nilValue": true}],
  "checkField": [{"field": ["status", "containerStatuses"], "equalValue": ["false"],
    "subIdentifierName": "name", "subIdentifierValue": ["sidecar"], "subField": ["ready"]}]}}
"""

SERVICE_DELETING = """
{"ServiceDeleting": {"duration": 300, "resource": "Service",
  "filterField": [{"field": ["metadata", "labels", "sae-domain"], "equalValue": ["sae-domain"]}],
  "checkField": [{"field": ["metadata", "deletionTimestamp"], "notEqualValue": [""]}]}}
"""

SIDECAR_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "orders-7d9f8", "namespace": "shop", "labels": {"sae.component": "app"}},
    "status": {
        "phase": "Running",
        "containerStatuses": [
            {"name": "orders", "ready": True, "restartCount": 0},
            {"name": "sidecar", "ready": False, "restartCount": 2},
        ],
    },
}

DELETING_SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {
        "name": "orders",
        "namespace": "shop",
        "labels": {"sae-domain": "sae-domain"},
        "deletionTimestamp": "2021-10-07T10:29:31Z",
        "finalizers": ["service.kubernetes.io/load-balancer-cleanup"],
    },
    "spec": {"type": "LoadBalancer"},
}


@pytest.fixture(scope="module")
def sidecar_rule() -> Rule:
    (rule,) = parse_rules(json.loads(POD_SIDECAR_NOT_READY), source="examples/pods.json")
    return rule


@pytest.fixture(scope="module")
def service_rule() -> Rule:
    (rule,) = parse_rules(json.loads(SERVICE_DELETING), source="examples/services.json")
    return rule


def changed(obj: dict[str, Any], *path: str, value: Any = None, delete: bool = False) -> dict[str, Any]:
    """Return a deep copy of obj with the value at path replaced, or the key removed."""
    result = copy.deepcopy(obj)
    parent = result
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return result


def test_sidecar_rule_attributes(sidecar_rule: Rule) -> None:
    assert sidecar_rule.name == "PodSidecarNotReady"
    assert sidecar_rule.kind == "Pod"
    assert sidecar_rule.duration_seconds == 300
    assert sidecar_rule.source == "examples/pods.json"


def test_sidecar_rule_matches_unready_sidecar(sidecar_rule: Rule) -> None:
    match = sidecar_rule.evaluate(SIDECAR_POD)
    assert match is not None
    assert match.context == {"status.containerStatuses[name=sidecar].ready": "false"}


def test_sidecar_rule_quiet_when_sidecar_ready(sidecar_rule: Rule) -> None:
    pod = changed(SIDECAR_POD, "status", "containerStatuses", value=[{"name": "orders", "ready": False}, {"name": "sidecar", "ready": True}])
    assert sidecar_rule.evaluate(pod) is None


def test_sidecar_rule_quiet_without_sidecar(sidecar_rule: Rule) -> None:
    pod = changed(SIDECAR_POD, "status", "containerStatuses", value=[{"name": "orders", "ready": False}])
    assert sidecar_rule.evaluate(pod) is None


def test_sidecar_rule_quiet_when_not_running(sidecar_rule: Rule) -> None:
    assert sidecar_rule.evaluate(changed(SIDECAR_POD, "status", "phase", value="Pending")) is None


def test_sidecar_rule_quiet_without_label(sidecar_rule: Rule) -> None:
    assert sidecar_rule.evaluate(changed(SIDECAR_POD, "metadata", "labels", delete=True)) is None
    assert sidecar_rule.evaluate(changed(SIDECAR_POD, "metadata", "labels", value={"sae.component": "job"})) is None
    # The label key contains a dot and is one key, not the path sae -> component.
    nested = changed(SIDECAR_POD, "metadata", "labels", value={"sae": {"component": "app"}})
    assert sidecar_rule.evaluate(nested) is None


def test_sidecar_rule_quiet_while_deleting(sidecar_rule: Rule) -> None:
    deleting = changed(SIDECAR_POD, "metadata", "deletionTimestamp", value="2024-01-01T00:00:00Z")
    assert sidecar_rule.evaluate(deleting) is None
    # A null deletionTimestamp counts as nil, so the rule still applies.
    assert sidecar_rule.evaluate(changed(SIDECAR_POD, "metadata", "deletionTimestamp", value=None)) is not None


def test_sidecar_rule_ignores_other_kinds(sidecar_rule: Rule) -> None:
    assert sidecar_rule.evaluate(changed(SIDECAR_POD, "kind", value="Deployment")) is None


def test_service_rule_attributes(service_rule: Rule) -> None:
    assert service_rule.name == "ServiceDeleting"
    assert service_rule.kind == "Service"
    assert service_rule.duration_seconds == 300


def test_service_rule_matches_deleting_service(service_rule: Rule) -> None:
    match = service_rule.evaluate(DELETING_SERVICE)
    assert match is not None
    assert match.context == {"metadata.deletionTimestamp": "2021-10-07T10:29:31Z"}


def test_service_rule_quiet_without_deletion(service_rule: Rule) -> None:
    assert service_rule.evaluate(changed(DELETING_SERVICE, "metadata", "deletionTimestamp", delete=True)) is None
    assert service_rule.evaluate(changed(DELETING_SERVICE, "metadata", "deletionTimestamp", value=None)) is None


def test_service_rule_quiet_for_other_domain(service_rule: Rule) -> None:
    other = changed(DELETING_SERVICE, "metadata", "labels", value={"sae-domain": "other"})
    assert service_rule.evaluate(other) is None
    assert service_rule.evaluate(changed(DELETING_SERVICE, "metadata", "labels", delete=True)) is None


def test_service_rule_ignores_pods(service_rule: Rule) -> None:
    assert service_rule.evaluate(changed(DELETING_SERVICE, "kind", value="Pod")) is None
