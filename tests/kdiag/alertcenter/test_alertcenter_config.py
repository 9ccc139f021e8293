"""Configuration validation, filters, enrichment and fingerprints."""

from __future__ import annotations

import pytest
from conftest import T0, diagnosis

from kdiag.alertcenter import AlertCenter, AlertCenterConfig, AlertCenterState
from kdiag.alertcenter.config import HOUR_MS, EscalationThreshold, parse_duration_ms
from kdiag.alertcenter.enrichment import NAMING, OWNER_REFERENCES, alert_fingerprint, enrich, owner_chain
from kdiag.alertcenter.events import OwnerRef
from kdiag.errors import ConfigError

# Config


def test_empty_config_has_defaults():
    config = AlertCenterConfig.from_mapping({})
    assert config == AlertCenterConfig()
    assert config.repeat_interval_ms == 4 * HOUR_MS
    assert config.default_level == "P3"


def test_config_parses_every_section():
    config = AlertCenterConfig.from_mapping(
        {
            "defaultLevel": "P4",
            "ruleLevels": {"NodeNotReady": "P1"},
            "repeatInterval": "1h30m",
            "staleAfter": 600,
            "escalation": [{"minApplications": 5, "raise": 2}, {"minTenants": 2, "minGrowth": 3, "level": "P2"}],
            "filters": {"allow": {"namespace": ["shop-*"]}, "deny": {"level": ["P4"]}},
            "enrichment": {"applicationLabels": ["team/app"], "namespaceTenants": {"shop-*": "retail"}},
        }
    )
    assert config.rule_levels == {"NodeNotReady": "P1"}
    assert config.repeat_interval_ms == 90 * 60_000
    assert config.stale_after_ms == 600_000
    assert config.escalation == (
        EscalationThreshold(min_applications=5, raise_levels=2),
        EscalationThreshold(min_tenants=2, min_growth=3.0, level="P2"),
    )
    assert config.filters.allow == {"namespace": ("shop-*",)}
    assert config.enrichment.application_labels == ("team/app",)
    assert config.enrichment.namespace_tenants == (("shop-*", "retail"),)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"defaultLevel": "P5"}, "invalid level 'P5' at defaultLevel"),
        ({"ruleLevels": {"X": "high"}}, "ruleLevels.X"),
        ({"repeatInterval": "4 hours"}, "invalid duration '4 hours' at repeatInterval"),
        ({"repeatInterval": 0}, "repeatInterval"),
        ({"escalation": [{"raise": 1}]}, r"escalation\[0\]: set at least one"),
        ({"escalation": [{"minApplications": 3}]}, r"escalation\[0\]: set exactly one of raise"),
        ({"escalation": [{"minApplications": 3, "raise": 1, "level": "P1"}]}, "exactly one"),
        ({"escalation": [{"minGrowth": 0.5, "raise": 1}]}, "minGrowth"),
        ({"filters": {"allow": {"pod": ["x"]}}}, "unknown key 'pod' in filters.allow"),
        ({"filters": {"deny": {"level": ["critical"]}}}, "matches none of P1"),
        ({"repeat": "4h"}, "unknown key 'repeat'"),
        ({"enrichment": {"applicationFromOwner": "yes"}}, "applicationFromOwner"),
    ],
)
def test_invalid_config_names_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        AlertCenterConfig.from_mapping(raw)


def test_duration_parsing():
    assert parse_duration_ms("4h", "x") == 4 * HOUR_MS
    assert parse_duration_ms("250ms", "x") == 250
    assert parse_duration_ms(1.5, "x") == 1500


def test_reconfigure_keeps_previous_on_invalid_input():
    center = AlertCenter(AlertCenterConfig.from_mapping({"defaultLevel": "P2"}))
    with pytest.raises(ConfigError):
        center.reconfigure({"defaultLevel": "P9"})
    assert center.config.default_level == "P2"
    center.reconfigure({"defaultLevel": "P4"})
    assert center.config.default_level == "P4"


# Filters


def fired(config: dict, **event_fields) -> bool:
    """Return whether one FIRING event passes the filters of `config` and raises an alert."""
    center = AlertCenter(AlertCenterConfig.from_mapping(config))
    return bool(center.process(diagnosis(**event_fields), AlertCenterState()))


@pytest.mark.parametrize(
    ("filters", "event_fields", "expected"),
    [
        ({}, {}, True),
        ({"allow": {"namespace": ["shop"]}}, {"namespace": "shop"}, True),
        ({"allow": {"namespace": ["shop"]}}, {"namespace": "shopping"}, False),
        ({"allow": {"namespace": ["shop*"]}}, {"namespace": "shopping"}, True),
        ({"allow": {"namespace": ["shop-?"]}}, {"namespace": "shop-1"}, True),
        ({"deny": {"namespace": ["kube-*"]}}, {"namespace": "kube-system"}, False),
        ({"allow": {"namespace": ["*"]}, "deny": {"namespace": ["kube-*"]}}, {"namespace": "kube-system"}, False),
        ({"allow": {"application": ["web", "api"]}}, {"application": "api", "pod": "api-7d4b9c6f5-x2k8q"}, True),
        ({"allow": {"application": ["web"]}}, {"application": "", "pod": "standalone"}, False),
        ({"deny": {"application": [""]}}, {"application": "", "pod": "standalone"}, False),
        ({"allow": {"tenant": ["retail"]}}, {"tenant_label": "retail"}, True),
        ({"allow": {"tenant": ["retail"]}}, {"tenant_label": "logistics"}, False),
        ({"deny": {"rule": ["*Test*"]}}, {"rule": "SmokeTestFailing"}, False),
        ({"deny": {"reason": ["Evicted"]}}, {"reason": "Evicted"}, False),
        ({"deny": {"reason": ["Evicted"]}}, {"reason": "ImagePullBackOff"}, True),
        ({"deny": {"level": ["P4"]}}, {}, True),
        ({"deny": {"level": ["P3", "P4"]}}, {}, False),
        ({"allow": {"level": ["P[12]"]}}, {}, False),
    ],
)
def test_filter_cases(filters, event_fields, expected):
    assert fired({"filters": filters}, **event_fields) is expected


def test_level_filter_uses_rule_level():
    config = {"ruleLevels": {"NodeDown": "P1"}, "filters": {"allow": {"level": ["P1"]}}}
    assert fired(config, rule="NodeDown")
    assert not fired(config, rule="PodImagePullFailing")


def test_filtered_rule_resolved_event_is_ignored():
    center = AlertCenter(AlertCenterConfig.from_mapping({"filters": {"deny": {"rule": ["PodImagePullFailing"]}}}))
    state = AlertCenterState()
    assert center.process(diagnosis(), state) == []
    assert center.process(diagnosis(status="RESOLVED"), state) == []
    assert state.take_changes() == {}


def test_filter_change_still_resolves_firing_alert():
    center = AlertCenter()
    state = AlertCenterState()
    assert [alert.type for alert in center.process(diagnosis(), state)] == ["FIRING"]
    center.reconfigure({"filters": {"deny": {"namespace": ["shop"]}}})
    assert [alert.type for alert in center.process(diagnosis(time_ms=T0 + 1, status="RESOLVED"), state)] == ["RESOLVED"]


# Enrichment


@pytest.mark.parametrize(
    ("kind", "name", "labels", "owners", "chain", "source"),
    [
        (
            "Pod", "web-7d4b9c6f5-x2k8q", {}, (),
            [("ReplicaSet", "web-7d4b9c6f5"), ("Deployment", "web")], NAMING,
        ),
        (
            "Pod", "shop-web-5d9f8c7b6-q2w4e", {"pod-template-hash": "5d9f8c7b6"}, (),
            [("ReplicaSet", "shop-web-5d9f8c7b6"), ("Deployment", "shop-web")], NAMING,
        ),
        (
            "Pod", "web-abc-x2k8q", {}, (),
            [], "",
        ),
        (
            "Pod", "node-exporter-x2k8q", {"pod-template-generation": "3"}, (),
            [("DaemonSet", "node-exporter")], NAMING,
        ),
        (
            "Pod", "db-2", {"statefulset.kubernetes.io/pod-name": "db-2"}, (),
            [("StatefulSet", "db")], NAMING,
        ),
        (
            "Pod", "backup-28512345-7xk2p", {"job-name": "backup-28512345"}, (),
            [("Job", "backup-28512345"), ("CronJob", "backup")], NAMING,
        ),
        (
            "ReplicaSet", "web-7d4b9c6f5", {}, (),
            [("Deployment", "web")], NAMING,
        ),
        (
            "Pod", "whatever", {}, (OwnerRef("ReplicaSet", "api-6c8d9f7b5"),),
            [("ReplicaSet", "api-6c8d9f7b5"), ("Deployment", "api")], OWNER_REFERENCES,
        ),
        (
            "Pod", "whatever", {}, (OwnerRef("Node", "node-a"),),
            [("Node", "node-a")], OWNER_REFERENCES,
        ),
        (
            "Node", "node-a", {}, (),
            [], "",
        ),
    ],
)
def test_owner_chain(kind, name, labels, owners, chain, source):
    found, found_source = owner_chain(kind, name, labels, owners)
    assert [(owner.kind, owner.name) for owner in found] == chain
    assert found_source == source


def test_application_from_labels_then_owner():
    config = AlertCenterConfig()
    assert enrich(diagnosis(application="shop-web"), config).application == "shop-web"
    assert enrich(diagnosis(application=""), config).application == "web"
    no_owner = AlertCenterConfig.from_mapping({"enrichment": {"applicationFromOwner": False}})
    assert enrich(diagnosis(application=""), no_owner).application == ""


def test_tenant_from_label_namespace_and_map():
    config = AlertCenterConfig.from_mapping(
        {"enrichment": {"namespaceTenants": {"shop-*": "retail", "*": "shared"}}}
    )
    assert enrich(diagnosis(tenant_label="finance", namespace="shop-eu"), config).tenant == "finance"
    assert enrich(diagnosis(namespace="shop-eu"), config).tenant == "retail"
    assert enrich(diagnosis(namespace="tools"), config).tenant == "shared"

    def namespace_labels(cluster, namespace):
        return {"tenant": "logistics"} if (cluster, namespace) == ("c1", "shop-eu") else None

    assert enrich(diagnosis(namespace="shop-eu"), config, namespace_labels).tenant == "logistics"
    assert enrich(diagnosis(namespace="shop-us"), config, namespace_labels).tenant == "retail"


def test_node_and_zone():
    event = diagnosis(node="node-a")
    assert enrich(event, AlertCenterConfig()).node == "node-a"
    zoned = diagnosis(zone="eu-1a")
    assert enrich(zoned, AlertCenterConfig()).zone == "eu-1a"


def test_fingerprint_ignores_reason_pod_and_annotations():
    config = AlertCenterConfig()

    def fingerprint(**fields):
        event = diagnosis(**fields)
        return alert_fingerprint(event, enrich(event, config), config)

    first = fingerprint(reason="ImagePullBackOff", annotations={"restartCount": "1"})
    assert fingerprint(reason="ErrImagePull", annotations={"restartCount": "9"}) == first
    assert fingerprint(pod="web-7d4b9c6f5-zz9mn") == first
    assert fingerprint(pod="web-5b6c7d8f9-q2w4x") == first
    assert fingerprint(namespace="other") != first
    assert fingerprint(cluster="c2") != first
    assert fingerprint(rule="PodCrashLooping") != first
    assert fingerprint(pod="api-7d4b9c6f5-x2k8q", application="api") != first
    # Without an owner, the Pod's own name identifies the alert.
    assert fingerprint(pod="standalone") != fingerprint(pod="standalone-2")
