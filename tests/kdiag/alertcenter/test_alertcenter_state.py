"""Stored form of the alert center's entries."""

from dataclasses import asdict

import orjson
import pytest

from kdiag.alertcenter.state import STATE_VERSION, AlertCenterState, AlertEntry, Member, RuleEntry


def alert_entry() -> AlertEntry:
    return AlertEntry(
        fingerprint="f1",
        id="id-1",
        rule="PodCrashLooping",
        source="kdiag",
        base_level="P3",
        level="P2",
        level_reason="escalated",
        count=4,
        first_seen_ms=1_000,
        last_seen_ms=5_000,
        last_notified_ms=4_000,
        starts_at_ms=900,
        members={"b": Member(5_000, None), "a": Member(4_000, 9_000)},
        acked_at_ms=4_500,
        acked_by="sre",
        reason="CrashLoopBackOff",
        reasons=["CrashLoopBackOff", "Error"],
        labels={"team": "a", "app": "web"},
        annotations={"summary": "restarts"},
        cluster="c1",
        namespace="team-a",
        kind="Pod",
        name="web-1",
        root_cause={"responsibility": "application", "evidence": [{"kind": "Pod", "reasons": ("OOMKilled",)}]},
    )


def rule_entry() -> RuleEntry:
    return RuleEntry(
        rule="PodCrashLooping",
        episode_start_ms=1_000,
        firing=["f2", "f1"],
        applications={"team-a/web": 1_000},
        tenants={"team-a": 1_000},
        raise_levels=1,
        escalation_reason="3 applications",
        history={"team-b/api": [100, 200]},
    )


@pytest.mark.parametrize("make_entry", [alert_entry, rule_entry], ids=["alert", "rule"])
def test_bytes_match_asdict(make_entry):
    state = AlertCenterState()
    entry = make_entry()
    if isinstance(entry, AlertEntry):
        state.put_alert(entry)
    else:
        state.put_rule(entry)
    expected = orjson.dumps({"v": STATE_VERSION, **asdict(entry)}, option=orjson.OPT_SORT_KEYS)
    assert state.to_bytes(entry.key) == expected


def test_entries_restore_from_bytes():
    state = AlertCenterState()
    state.put_alert(alert_entry())
    state.put_rule(rule_entry())
    restored = AlertCenterState.restore([(key, state.to_bytes(key)) for key in state.keys()])
    assert restored.alerts["f1"].members == alert_entry().members
    assert restored.alerts["f1"].labels == alert_entry().labels
    assert restored.rules["PodCrashLooping"] == rule_entry()
