"""De-duplication, escalation, resolution, acknowledgements, MTTx and state round trips."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from conftest import MINUTE_MS, T0, diagnosis
from prometheus_client import CollectorRegistry

from kdiag.alertcenter import (
    AlertCenter,
    AlertCenterConfig,
    AlertCenterState,
    MttxMetrics,
    MttxSummary,
    kubernetes_event_to_event,
    parse_alert_id,
)
from kdiag.alertcenter.config import HOUR_MS
from kdiag.codec import codec
from kdiag.errors import DecodeError
from kdiag.model import format_time_ms

GRADED = codec("GradedAlert")


def run(center: AlertCenter, state: AlertCenterState, events) -> list[dict]:
    """Process events (or ("ack", action) and ("advance", time) steps) and return Avro records."""
    records = []
    for item in events:
        if isinstance(item, tuple) and item[0] == "ack":
            outputs = center.acknowledge(item[1], state)
        elif isinstance(item, tuple) and item[0] == "advance":
            outputs = center.advance(state, item[1])
        else:
            outputs = center.process(item, state)
        for output in outputs:
            record = output.to_avro()
            assert GRADED.decode(GRADED.encode(record)) == record
            records.append(record)
    return records


def ack(alert_id: str, time_ms: int, user: str = "ana") -> tuple[str, dict]:
    return ("ack", {"action": "ACK", "alertId": alert_id, "user": user, "time": time_ms})


# De-duplication


def test_flapping_reasons_and_restarts_stay_one_alert():
    center = AlertCenter()
    state = AlertCenterState()
    events = []
    for minute in range(12):
        events.append(
            diagnosis(
                time_ms=T0 + minute * MINUTE_MS,
                reason="ImagePullBackOff" if minute % 2 == 0 else "ErrImagePull",
                annotations={"status.containerStatuses[0].restartCount": str(minute)},
                # The Deployment replaced its Pod halfway through.
                pod="web-7d4b9c6f5-x2k8q" if minute < 6 else "web-7d4b9c6f5-m9z2b",
            )
        )
    records = run(center, state, events)
    assert [record["type"] for record in records] == ["FIRING"]
    (entry,) = state.alerts.values()
    assert entry.count == 12
    assert entry.first_seen_ms == T0
    assert entry.last_seen_ms == T0 + 11 * MINUTE_MS
    assert entry.reasons == ["ImagePullBackOff", "ErrImagePull"]
    assert entry.annotations["status.containerStatuses[0].restartCount"] == "11"
    assert (entry.owner_kind, entry.owner_name, entry.owner_source) == ("Deployment", "web", "naming")


def test_repeat_after_interval_on_event_time():
    center = AlertCenter(AlertCenterConfig.from_mapping({"repeatInterval": "1h"}))
    state = AlertCenterState()
    times = [T0, T0 + 30 * MINUTE_MS, T0 + 59 * MINUTE_MS, T0 + HOUR_MS, T0 + HOUR_MS + MINUTE_MS, T0 + 2 * HOUR_MS]
    records = run(center, state, [diagnosis(time_ms=time_ms) for time_ms in times])
    assert [(record["type"], record["count"], record["time"] - T0) for record in records] == [
        ("FIRING", 1, 0),
        ("REPEAT", 4, HOUR_MS),
        ("REPEAT", 6, 2 * HOUR_MS),
    ]
    assert len({record["id"] for record in records}) == 1


def test_resolution_waits_for_every_source():
    center = AlertCenter()
    state = AlertCenterState()
    records = run(
        center,
        state,
        [
            diagnosis(pod="web-7d4b9c6f5-fffff", time_ms=T0),
            diagnosis(pod="web-7d4b9c6f5-bbbbb", time_ms=T0 + 1),
            diagnosis(pod="web-7d4b9c6f5-fffff", time_ms=T0 + 2, status="RESOLVED"),
            diagnosis(pod="web-7d4b9c6f5-ccccc", time_ms=T0 + 3, status="RESOLVED"),
            diagnosis(pod="web-7d4b9c6f5-bbbbb", time_ms=T0 + 4, status="RESOLVED"),
        ],
    )
    assert [record["type"] for record in records] == ["FIRING", "RESOLVED"]
    assert records[1]["resolvedAt"] == T0 + 4
    assert records[1]["resolveReason"] == "resolved"
    assert records[1]["count"] == 2
    assert state.alerts == {}
    assert state.rules == {"PodImagePullFailing": state.rules["PodImagePullFailing"]}


def test_refiring_after_resolution_gets_new_id():
    center = AlertCenter()
    state = AlertCenterState()
    records = run(
        center,
        state,
        [diagnosis(time_ms=T0), diagnosis(time_ms=T0 + 1, status="RESOLVED"), diagnosis(time_ms=T0 + 2)],
    )
    assert [record["type"] for record in records] == ["FIRING", "RESOLVED", "FIRING"]
    assert records[0]["fingerprint"] == records[2]["fingerprint"]
    assert records[0]["id"] != records[2]["id"]


def test_kubernetes_warnings_expire_after_quiet_period():
    center = AlertCenter(AlertCenterConfig.from_mapping({"staleAfter": "15m"}))
    state = AlertCenterState()

    def warning(reason: str, minute: int):
        return kubernetes_event_to_event(
            {
                "kind": "Event",
                "type": "Warning",
                "metadata": {"uid": f"ev-{minute}"},
                "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web-7d4b9c6f5-x2k8q", "uid": "p1"},
                "reason": reason,
                "lastTimestamp": format_time_ms(T0 + minute * MINUTE_MS),
            },
            cluster="c1",
        )

    records = run(
        center,
        state,
        [
            warning("Failed", 0),
            warning("BackOff", 5),
            ("advance", T0 + 19 * MINUTE_MS),
            ("advance", T0 + 20 * MINUTE_MS),
        ],
    )
    assert [record["type"] for record in records] == ["FIRING", "RESOLVED"]
    assert records[0]["application"] == "web"
    assert records[1]["resolveReason"] == "expired"
    assert records[1]["resolvedAt"] == T0 + 20 * MINUTE_MS
    assert records[1]["count"] == 2
    assert records[1]["reasons"] == ["Failed", "BackOff"]


def test_root_cause_attaches_to_alert():
    cause = {"cause": "image-tag-not-found", "summary": "No such tag.", "responsibility": "USER", "fix": "", "findings": []}
    records = run(
        AlertCenter(),
        AlertCenterState(),
        [diagnosis(time_ms=T0), diagnosis(time_ms=T0 + 5 * HOUR_MS, root_cause=cause)],
    )
    assert records[0]["rootCause"] is None
    assert records[1]["type"] == "REPEAT"
    assert records[1]["rootCause"] == cause


# Escalation

ESCALATION = {
    "defaultLevel": "P3",
    "escalation": [
        {"minApplications": 3, "raise": 1},
        {"minApplications": 10, "level": "P1"},
        {"minTenants": 3, "level": "P1"},
        {"minGrowth": 2, "raise": 1},
    ],
}


def spread(count: int, start: int, time_ms: int, tenants: int = 1, status: str = "FIRING"):
    """Return events of one rule for applications app-<start> .. app-<start+count-1>."""
    return [
        diagnosis(
            pod=f"app-{index}-7d4b9c6f5-x2k8q",
            application=f"app-{index}",
            tenant_label=f"tenant-{index % tenants}",
            time_ms=time_ms,
            status=status,
        )
        for index in range(start, start + count)
    ]


def test_escalation_by_applications_and_back():
    center = AlertCenter(AlertCenterConfig.from_mapping(ESCALATION))
    state = AlertCenterState()

    first = run(center, state, spread(1, 0, T0))
    assert [(record["type"], record["level"]) for record in first] == [("FIRING", "P3")]

    four = run(center, state, spread(3, 1, T0 + 10 * MINUTE_MS))
    assert [record["level"] for record in four if record["type"] == "FIRING"] == ["P3", "P2", "P2"]
    changed = [record for record in four if record["type"] == "LEVEL_CHANGED"]
    assert [(record["name"], record["previousLevel"], record["level"]) for record in changed] == [
        ("app-0-7d4b9c6f5-x2k8q", "P3", "P2"),
        ("app-1-7d4b9c6f5-x2k8q", "P3", "P2"),
    ]
    assert changed[0]["levelReason"] == (
        "affects 3 applications in 1 tenant, up from 0 in the previous 10m; applications >= 3 raises 1 level"
    )

    twelve = run(center, state, spread(8, 4, T0 + 20 * MINUTE_MS))
    changed = [record for record in twelve if record["type"] == "LEVEL_CHANGED"]
    assert {record["level"] for record in changed} == {"P1"}
    assert {record["previousLevel"] for record in changed} == {"P2"}
    assert len(changed) == 9  # Every alert that fired before the tenth application.
    assert changed[0]["levelReason"] == (
        "affects 10 applications in 1 tenant, up from 0 in the previous 20m; "
        "applications >= 3 raises 1 level, applications >= 10 sets P1"
    )
    assert [record["level"] for record in twelve if record["type"] == "FIRING"] == ["P2"] * 5 + ["P1"] * 3
    assert twelve[-1]["affectedApplications"] == 12
    assert twelve[-1]["affectedTenants"] == 1

    resolved = run(center, state, spread(1, 0, T0 + 30 * MINUTE_MS, status="RESOLVED"))
    assert [(record["type"], record["level"]) for record in resolved] == [("RESOLVED", "P1")]
    resolved = run(center, state, spread(11, 1, T0 + 40 * MINUTE_MS, status="RESOLVED"))
    assert [record["type"] for record in resolved] == ["RESOLVED"] * 11 + ["LEVEL_CHANGED"]
    lowered = resolved[-1]
    assert (lowered["previousLevel"], lowered["level"], lowered["status"]) == ("P1", "P3", "RESOLVED")
    assert lowered["levelReason"] == "no alert of rule PodImagePullFailing fires any more; back to P3"
    assert state.alerts == {}

    again = run(center, state, spread(1, 0, T0 + 50 * MINUTE_MS))
    assert [(record["type"], record["level"]) for record in again] == [("FIRING", "P3")]


def test_escalation_by_tenants():
    center = AlertCenter(AlertCenterConfig.from_mapping(ESCALATION))
    records = run(center, AlertCenterState(), spread(3, 0, T0, tenants=3))
    assert [(record["type"], record["level"]) for record in records] == [
        ("FIRING", "P3"),
        ("FIRING", "P3"),
        ("FIRING", "P1"),
        ("LEVEL_CHANGED", "P1"),
        ("LEVEL_CHANGED", "P1"),
    ]
    assert records[2]["levelReason"] == (
        "affects 3 applications in 3 tenants, up from 0 in the previous 0s; "
        "applications >= 3 raises 1 level, tenants >= 3 sets P1"
    )


def test_escalation_by_growth_against_previous_window():
    config = {"escalation": [{"minGrowth": 2, "raise": 1}]}
    center = AlertCenter(AlertCenterConfig.from_mapping(config))
    state = AlertCenterState()
    # An episode with 2 applications ends; 10 minutes later a new one reaches 5 within 20 minutes.
    run(center, state, spread(2, 0, T0))
    run(center, state, spread(2, 0, T0 + 5 * MINUTE_MS, status="RESOLVED"))
    records = run(center, state, spread(1, 10, T0 + 15 * MINUTE_MS))
    records += run(center, state, spread(3, 11, T0 + 35 * MINUTE_MS))
    assert [record["level"] for record in records if record["type"] == "FIRING"] == ["P3", "P3", "P3", "P2"]
    changed = [record for record in records if record["type"] == "LEVEL_CHANGED"]
    assert len(changed) == 3
    assert changed[0]["levelReason"] == (
        "affects 4 applications in 1 tenant, up from 2 in the previous 20m; growth >= 2x raises 1 level"
    )


def test_no_growth_from_an_empty_previous_window():
    center = AlertCenter(AlertCenterConfig.from_mapping({"escalation": [{"minGrowth": 2, "raise": 1}]}))
    records = run(center, AlertCenterState(), spread(5, 0, T0) + spread(5, 5, T0 + MINUTE_MS))
    assert {record["level"] for record in records} == {"P3"}


def test_rule_and_severity_levels():
    config = AlertCenterConfig.from_mapping({"ruleLevels": {"NodeDown": "P1"}, "defaultLevel": "P4"})
    center = AlertCenter(config)
    state = AlertCenterState()
    assert center.process(diagnosis(rule="NodeDown"), state)[0].level == "P1"
    assert center.process(diagnosis(rule="Other"), state)[0].level == "P4"
    assert config.base_level("Third", {"severity": "critical"}) == "P1"
    assert config.base_level("NodeDown", {"severity": "info"}) == "P1"


# Acknowledgements and MTTx


def test_ack_once_per_firing():
    center = AlertCenter()
    state = AlertCenterState()
    (fired,) = run(center, state, [diagnosis(time_ms=T0)])
    records = run(center, state, [ack(fired["id"], T0 + MINUTE_MS), ack(fired["id"], T0 + 2 * MINUTE_MS, "bo")])
    assert [(record["type"], record["ackedBy"], record["ackedAt"]) for record in records] == [
        ("ACKNOWLEDGED", "ana", T0 + MINUTE_MS)
    ]
    rule, fingerprint = parse_alert_id(fired["id"])
    assert (rule, fingerprint) == ("PodImagePullFailing", fired["fingerprint"])
    # An ack of an earlier firing does not acknowledge the next one.
    run(center, state, [diagnosis(time_ms=T0 + 3 * MINUTE_MS, status="RESOLVED")])
    run(center, state, [diagnosis(time_ms=T0 + 4 * MINUTE_MS)])
    assert run(center, state, [ack(fired["id"], T0 + 5 * MINUTE_MS)]) == []


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ({"action": "ACK", "alertId": "nope", "user": "a", "time": 1}, "invalid alert id 'nope'"),
        ({"action": "MUTE", "alertId": "r/0123456789abcdef-01234567", "user": "a", "time": 1}, "field action"),
        ({"action": "ACK", "alertId": "r/0123456789abcdef-01234567", "user": "a", "time": None}, "field time"),
    ],
)
def test_invalid_ack_rejected(action, message):
    with pytest.raises(DecodeError, match=message):
        AlertCenter().acknowledge(action, AlertCenterState())


def test_mttx_matches_hand_computed_values():
    """Two alerts of one rule and one of another, with every time chosen by hand.

    web: first evidence T0, raised T0+2m, acked T0+7m, resolved T0+32m -> MTTD 120 s, MTTA 300 s, MTTR 1800 s.
    api: first evidence T0+1m, raised T0+5m, acked T0+6m, resolved T0+65m -> MTTD 240 s, MTTA 60 s, MTTR 3600 s.
    db (rule NodeDown, P1): evidence T0, raised T0+30s, resolved T0+10m30s, no ack -> MTTD 30 s, MTTR 600 s.
    """
    center = AlertCenter(AlertCenterConfig.from_mapping({"ruleLevels": {"NodeDown": "P1"}, "escalation": []}))
    state = AlertCenterState()
    web = dict(pod="web-7d4b9c6f5-x2k8q", application="web")
    api = dict(pod="api-7d4b9c6f5-x2k8q", application="api")
    db = dict(rule="NodeDown", pod="db-0", application="db")
    records = run(center, state, [diagnosis(time_ms=T0 + 2 * MINUTE_MS, starts_at_ms=T0, **web)])
    records += run(center, state, [diagnosis(time_ms=T0 + 5 * MINUTE_MS, starts_at_ms=T0 + MINUTE_MS, **api)])
    records += run(center, state, [diagnosis(time_ms=T0 + 30_000, starts_at_ms=T0, **db)])
    web_id, api_id = records[0]["id"], records[1]["id"]
    records += run(
        center,
        state,
        [
            ack(api_id, T0 + 6 * MINUTE_MS),
            ack(web_id, T0 + 7 * MINUTE_MS),
            diagnosis(time_ms=T0 + 10 * MINUTE_MS + 30_000, status="RESOLVED", **db),
            diagnosis(time_ms=T0 + 32 * MINUTE_MS, status="RESOLVED", **web),
            diagnosis(time_ms=T0 + 65 * MINUTE_MS, status="RESOLVED", **api),
        ],
    )
    summary = MttxSummary().add_all(records)
    rows = {(row.rule, row.level): row.measures for row in summary.rows()}
    assert set(rows) == {("NodeDown", "P1"), ("PodImagePullFailing", "P3")}
    pods = rows[("PodImagePullFailing", "P3")]
    assert (pods["mttd"].count, pods["mttd"].mean_seconds) == (2, 180.0)
    assert (pods["mtta"].count, pods["mtta"].mean_seconds) == (2, 180.0)
    assert (pods["mttr"].count, pods["mttr"].mean_seconds) == (2, 2700.0)
    assert pods["mttr"].max_seconds == 3600.0
    nodes = rows[("NodeDown", "P1")]
    assert nodes["mttd"].mean_seconds == 30.0
    assert nodes["mtta"].count == 0
    assert nodes["mttr"].mean_seconds == 600.0

    registry = CollectorRegistry()
    metrics = MttxMetrics(registry)
    for record in records:
        metrics.observe(record)
    labels = {"rule": "PodImagePullFailing", "level": "P3"}
    assert registry.get_sample_value("kdiag_alertcenter_mttr_seconds_sum", labels) == 5400.0
    assert registry.get_sample_value("kdiag_alertcenter_mttr_seconds_count", labels) == 2.0
    assert registry.get_sample_value("kdiag_alertcenter_mtta_seconds_sum", labels) == 360.0
    assert registry.get_sample_value("kdiag_alertcenter_mttd_seconds_sum", {"rule": "NodeDown", "level": "P1"}) == 30.0


# State round trip


def scenario():
    """A stream that exercises every transition: escalation, repeats, acks, expiry and de-escalation."""
    steps = []
    steps += spread(1, 0, T0)
    steps += spread(3, 1, T0 + 10 * MINUTE_MS)
    steps += [diagnosis(pod="app-0-7d4b9c6f5-x2k8q", application="app-0", tenant_label="tenant-0", time_ms=T0 + 11 * MINUTE_MS, reason="ErrImagePull")]
    steps += spread(8, 4, T0 + 20 * MINUTE_MS, tenants=3)
    steps += [("ack", None)]  # Filled in by run_with_restart with the first alert's id.
    # Rule Other: a one-application episode, then one with two applications: growth 2x.
    steps += [
        other(0, T0 + HOUR_MS),
        other(0, T0 + HOUR_MS + 10 * MINUTE_MS, status="RESOLVED"),
        other(0, T0 + HOUR_MS + 15 * MINUTE_MS),
        other(1, T0 + HOUR_MS + 25 * MINUTE_MS),
    ]
    # app-0 fired at T0 and was last notified by a level change at T0+20m, so only the second is a REPEAT.
    for time_ms in (T0 + 4 * HOUR_MS + 10 * MINUTE_MS, T0 + 4 * HOUR_MS + 30 * MINUTE_MS):
        steps += [diagnosis(pod="app-0-7d4b9c6f5-x2k8q", application="app-0", tenant_label="tenant-0", time_ms=time_ms)]
    steps += spread(6, 0, T0 + 6 * HOUR_MS, tenants=3, status="RESOLVED")
    steps += [
        kubernetes_event_to_event(
            {
                "kind": "Event",
                "type": "Warning",
                "metadata": {"uid": "ev-1"},
                "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "db-0", "uid": "p9"},
                "reason": "FailedMount",
                "lastTimestamp": format_time_ms(T0 + 6 * HOUR_MS),
            },
            cluster="c1",
        ),
        ("advance", T0 + 7 * HOUR_MS),
    ]
    steps += spread(6, 6, T0 + 8 * HOUR_MS, tenants=3, status="RESOLVED")
    steps += spread(2, 0, T0 + 9 * HOUR_MS)
    return steps


def other(index: int, time_ms: int, status: str = "FIRING"):
    return diagnosis(rule="Other", pod=f"svc-{index}-7d4b9c6f5-x2k8q", application=f"svc-{index}", time_ms=time_ms, status=status)


def run_with_restart(split: int | None) -> list[dict]:
    config = AlertCenterConfig.from_mapping(ESCALATION)
    center = AlertCenter(config)
    state = AlertCenterState()
    changelog: list[tuple[str, bytes | None]] = []
    records: list[dict] = []
    first_id = None
    for index, step in enumerate(scenario()):
        if index == split:
            # The worker dies: a new one restores the state from the changelog and continues.
            center = AlertCenter(config)
            state = AlertCenterState.restore(changelog)
        if step == ("ack", None):
            step = ack(first_id, T0 + 25 * MINUTE_MS)
        new = run(center, state, [step])
        changelog.extend(state.take_changes().items())
        if first_id is None and new:
            first_id = new[0]["id"]
        records.extend(new)
    return records


def test_scenario_covers_every_transition():
    records = run_with_restart(None)
    types = {record["type"] for record in records}
    assert types == {"FIRING", "REPEAT", "LEVEL_CHANGED", "ACKNOWLEDGED", "RESOLVED"}
    repeats = [record["time"] - T0 for record in records if record["type"] == "REPEAT"]
    assert repeats == [4 * HOUR_MS + 30 * MINUTE_MS]
    grown = [record for record in records if record["rule"] == "Other" and record["type"] == "LEVEL_CHANGED"]
    assert [(record["name"], record["level"]) for record in grown] == [("svc-0-7d4b9c6f5-x2k8q", "P2")]
    assert "up from 1 in the previous 10m; growth >= 2x raises 1 level" in grown[0]["levelReason"]


def test_state_round_trip_at_every_split():
    expected = run_with_restart(None)
    for split in range(len(scenario())):
        assert run_with_restart(split) == expected, f"outputs differ after a restart before step {split}"


def test_snapshot_restores_equal_state():
    center = AlertCenter(AlertCenterConfig.from_mapping(ESCALATION))
    state = AlertCenterState()
    run(center, state, spread(4, 0, T0))
    restored = AlertCenterState.restore(state.snapshot().items())
    assert restored.snapshot() == state.snapshot()
    assert restored.alerts == state.alerts
    assert restored.rules == state.rules


def test_changed_keys_per_input():
    center = AlertCenter(AlertCenterConfig.from_mapping(ESCALATION))
    state = AlertCenterState()
    run(center, state, spread(2, 0, T0))
    state.take_changes()

    run(center, state, [diagnosis(pod="app-0-7d4b9c6f5-x2k8q", application="app-0", tenant_label="tenant-0", time_ms=T0 + 1)])
    fingerprint_0 = next(entry.fingerprint for entry in state.alerts.values() if entry.application == "app-0")
    assert set(state.take_changes()) == {f"alert/{fingerprint_0}"}

    run(center, state, spread(1, 2, T0 + 2))
    changes = state.take_changes()
    assert "rule/PodImagePullFailing" in changes
    assert len([key for key in changes if key.startswith("alert/")]) == 3  # The new alert and two level changes.

    run(center, state, spread(3, 0, T0 + 3, status="RESOLVED"))
    changes = state.take_changes()
    assert all(value is None for key, value in changes.items() if key.startswith("alert/"))
    assert changes["rule/PodImagePullFailing"] is not None  # The episode's applications stay as history.


def pod_warning(pod: str, minute: int, cluster: str = "c1"):
    return kubernetes_event_to_event(
        {
            "kind": "Event",
            "type": "Warning",
            "metadata": {"uid": f"ev-{pod}-{minute}"},
            "involvedObject": {"kind": "Pod", "namespace": "shop", "name": pod, "uid": f"uid-{pod}"},
            "reason": "BackOff",
            "lastTimestamp": format_time_ms(T0 + minute * MINUTE_MS),
        },
        cluster=cluster,
    )


def test_advance_resolves_due_alerts_in_fingerprint_order():
    center = AlertCenter(AlertCenterConfig.from_mapping({"staleAfter": "15m"}))
    state = AlertCenterState()
    # Pod i warns at minute i, and every third pod again 10 minutes later, so expiries interleave.
    steps: list = [pod_warning(f"pod-{i}", i) for i in range(30)]
    steps += [pod_warning(f"pod-{i}", i + 10) for i in range(0, 30, 3)]
    steps.sort(key=lambda event: event.observed_time_ms)
    firing = {record["name"]: record["fingerprint"] for record in run(center, state, steps) if record["type"] == "FIRING"}
    expiry = {name: T0 + (index + (10 if index % 3 == 0 else 0) + 15) * MINUTE_MS for index, name in enumerate(firing)}

    resolved_before: set[str] = set()
    for minute in (20, 25, 31, 44, 60):
        now = T0 + minute * MINUTE_MS
        records = run(center, state, [("advance", now)])
        due = {name for name, time_ms in expiry.items() if time_ms <= now} - resolved_before
        assert [record["fingerprint"] for record in records] == sorted(firing[name] for name in due)
        assert all(record["resolvedAt"] == expiry[record["name"]] for record in records)
        resolved_before |= due
    assert not state.alerts


def test_expiry_index_stays_bounded():
    center = AlertCenter(AlertCenterConfig.from_mapping({"staleAfter": "15m"}))
    state = AlertCenterState()
    for second in range(5_000):
        center.process(pod_warning("web-1", 0, cluster="c1") if second == 0 else repeat_warning("web-1", second), state)

    assert len(state.alerts) == 1
    # Every repeat pushes an expiry; out-of-date ones are dropped once they outnumber the alerts.
    assert len(state._expiries["c1"]) <= 2 * len(state.alerts) + 1024


def repeat_warning(pod: str, second: int):
    event = pod_warning(pod, 0)
    return dataclasses.replace(event, observed_time_ms=T0 + second * 1000)


def test_expiry_independent_of_advance_calls():
    # Each pod is quiet once for longer than staleAfter (web-1 from minute 5 to 21, api-1 from 3 to
    # 30), so each makes two alerts.
    events = [
        pod_warning("web-1", 0),
        pod_warning("api-1", 3),
        pod_warning("web-1", 5),
        pod_warning("web-1", 21),
        pod_warning("api-1", 30),
        pod_warning("web-1", 33),
    ]
    outcomes = set()
    for calls in itertools.product((False, True), repeat=len(events)):
        center = AlertCenter(AlertCenterConfig.from_mapping({"staleAfter": "15m"}))
        state = AlertCenterState()
        steps: list = []
        for event, call in zip(events, calls):
            steps.append(event)
            if call:
                # As a watermark would: every event up to this time was processed.
                steps.append(("advance", event.observed_time_ms))
        steps.append(("advance", T0 + 2 * HOUR_MS))
        by_alert: dict[str, list] = {}
        for record in run(center, state, steps):
            by_alert.setdefault(record["name"], []).append((record["type"], record["time"], record["resolvedAt"]))
        outcomes.add(tuple(sorted((name, tuple(records)) for name, records in by_alert.items())))

    assert len(outcomes) == 1
    (outcome,) = outcomes
    assert dict(outcome)["web-1"] == (
        ("FIRING", T0, None),
        ("RESOLVED", T0 + 20 * MINUTE_MS, T0 + 20 * MINUTE_MS),
        ("FIRING", T0 + 21 * MINUTE_MS, None),
        ("RESOLVED", T0 + 48 * MINUTE_MS, T0 + 48 * MINUTE_MS),
    )
    assert dict(outcome)["api-1"] == (
        ("FIRING", T0 + 3 * MINUTE_MS, None),
        ("RESOLVED", T0 + 18 * MINUTE_MS, T0 + 18 * MINUTE_MS),
        ("FIRING", T0 + 30 * MINUTE_MS, None),
        ("RESOLVED", T0 + 45 * MINUTE_MS, T0 + 45 * MINUTE_MS),
    )


def test_advance_of_one_cluster_leaves_the_others():
    center = AlertCenter(AlertCenterConfig.from_mapping({"staleAfter": "15m"}))
    state = AlertCenterState()
    run(center, state, [pod_warning("web-1", 0, cluster="east"), pod_warning("web-1", 0, cluster="west")])

    east = center.advance(state, T0 + HOUR_MS, cluster="east")
    assert [(graded.type, graded.entry.cluster) for graded in east] == [("RESOLVED", "east")]
    assert [entry.cluster for entry in state.alerts.values()] == ["west"]

    west = center.advance(state, T0 + HOUR_MS, cluster="west")
    assert [(graded.type, graded.entry.cluster) for graded in west] == [("RESOLVED", "west")]
    assert not state.alerts


def test_late_warning_expires_before_earlier_scan_bound():
    center = AlertCenter(AlertCenterConfig.from_mapping({"staleAfter": "15m"}))
    state = AlertCenterState()

    records = run(
        center,
        state,
        [
            pod_warning("web-1", 5),
            ("advance", T0 + 6 * MINUTE_MS),
            # Delivered late: seen at minute 1, so it expires at minute 16, before web-1 at minute 20.
            pod_warning("api-1", 1),
            ("advance", T0 + 16 * MINUTE_MS),
        ],
    )

    assert [record["type"] for record in records] == ["FIRING", "FIRING", "RESOLVED"]
    assert records[2]["resolvedAt"] == T0 + 16 * MINUTE_MS
    assert records[2]["fingerprint"] == records[1]["fingerprint"]


def test_restored_state_expires_warnings():
    center = AlertCenter(AlertCenterConfig.from_mapping({"staleAfter": "15m"}))
    state = AlertCenterState()
    run(center, state, [pod_warning("web-1", 0), ("advance", T0 + MINUTE_MS)])
    restored = AlertCenterState.restore([(key, state.to_bytes(key)) for key in state.keys()])

    records = run(center, restored, [("advance", T0 + 15 * MINUTE_MS)])

    assert [record["type"] for record in records] == ["RESOLVED"]
    assert records[0]["resolveReason"] == "expired"


def test_graded_alert_keeps_its_entry_after_repeat():
    center = AlertCenter()
    state = AlertCenterState()
    first = center.process(pod_warning("web-1", 0), state)

    center.process(pod_warning("web-1", 1), state)
    record = first[0].to_avro()

    assert record["count"] == 1
    assert record["reasons"] == ["BackOff"]
    assert state.alerts[record["fingerprint"]].count == 2
