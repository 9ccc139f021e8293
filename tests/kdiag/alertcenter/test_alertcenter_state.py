"""Stored form of the alert center's entries."""

from dataclasses import asdict

import orjson
import pytest

from kdiag.alertcenter.state import RULE_STATE_VERSION, STATE_VERSION, AlertCenterState, AlertEntry, Member, RuleEntry
from kdiag.errors import DecodeError


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
        firing={"f2": 0, "f1": 1},
        applications={"team-a/web": 1_000},
        tenants={"team-a": 1_000},
        raise_levels=1,
        escalation_reason="3 applications",
        history={"team-b/api": [100, 200]},
        joins=2,
    )


def test_alert_bytes_match_asdict():
    state = AlertCenterState()
    entry = alert_entry()
    state.put_alert(entry)
    expected = orjson.dumps({"v": STATE_VERSION, **asdict(entry)}, option=orjson.OPT_SORT_KEYS)
    assert state.to_bytes(entry.key) == expected


def test_rule_members_have_keys_of_their_own():
    state = AlertCenterState()
    state.put_rule(rule_entry())

    assert orjson.loads(state.to_bytes("rule/PodCrashLooping")) == {
        "v": RULE_STATE_VERSION,
        "rule": "PodCrashLooping",
        "episode_start_ms": 1_000,
        "raise_levels": 1,
        "fixed_level": None,
        "escalation_reason": "3 applications",
        "joins": 2,
    }
    assert sorted(state.keys()) == [
        "rule-item/PodCrashLooping\x1fapplications\x1fteam-a/web",
        "rule-item/PodCrashLooping\x1ffiring\x1ff1",
        "rule-item/PodCrashLooping\x1ffiring\x1ff2",
        "rule-item/PodCrashLooping\x1fhistory\x1fteam-b/api",
        "rule-item/PodCrashLooping\x1ftenants\x1fteam-a",
        "rule/PodCrashLooping",
    ]
    assert state.to_bytes("rule-item/PodCrashLooping\x1fhistory\x1fteam-b/api") == b"[100,200]"
    assert state.to_bytes("rule-item/PodCrashLooping\x1ffiring\x1ff9") is None


def test_new_firing_alert_writes_its_own_keys():
    state = AlertCenterState()
    entry = RuleEntry("KubernetesWarning", episode_start_ms=1_000)
    for number in range(1_000):
        entry.join(f"f{number}")
        entry.add_application(f"team/app-{number}", 1_000 + number)
    state.put_rule(entry)
    state.take_changes()

    entry.join("f-new")
    entry.add_application("team/app-new", 5_000)
    state.put_rule(entry)

    assert sorted(state.take_changes()) == [
        "rule-item/KubernetesWarning\x1fapplications\x1fteam/app-new",
        "rule-item/KubernetesWarning\x1ffiring\x1ff-new",
        "rule/KubernetesWarning",
    ]


def test_ended_episode_deletes_its_members():
    state = AlertCenterState()
    entry = rule_entry()
    state.put_rule(entry)
    state.take_changes()

    entry.leave("f1")
    entry.leave("f2")
    entry.end_episode(2_000)
    state.put_rule(entry)
    changes = state.take_changes()

    assert changes["rule-item/PodCrashLooping\x1ffiring\x1ff1"] is None
    assert changes["rule-item/PodCrashLooping\x1fapplications\x1fteam-a/web"] is None
    assert changes["rule-item/PodCrashLooping\x1ftenants\x1fteam-a"] is None
    assert changes["rule-item/PodCrashLooping\x1fhistory\x1fteam-a/web"] == b"[1000,2000]"
    assert orjson.loads(changes["rule/PodCrashLooping"])["episode_start_ms"] is None


def test_restore_keeps_join_order():
    state = AlertCenterState()
    entry = RuleEntry("PodCrashLooping", episode_start_ms=1_000)
    for fingerprint in ("zz", "aa", "mm"):
        entry.join(fingerprint)
    state.put_rule(entry)

    # Restored in key order, as a scan of the local store returns them.
    restored = AlertCenterState.restore(sorted(state.take_changes().items()))

    assert list(restored.rules["PodCrashLooping"].firing) == ["zz", "aa", "mm"]
    assert restored.rules["PodCrashLooping"].joins == 3


def test_version_1_rule_is_rewritten_as_keys():
    old = rule_entry()
    stored = {
        "v": 1, "rule": old.rule, "episode_start_ms": old.episode_start_ms, "firing": list(old.firing),
        "applications": old.applications, "tenants": old.tenants, "raise_levels": old.raise_levels,
        "fixed_level": old.fixed_level, "escalation_reason": old.escalation_reason, "history": old.history,
    }
    state = AlertCenterState.restore([("rule/PodCrashLooping", orjson.dumps(stored))])
    assert state.rules["PodCrashLooping"] == rule_entry()

    changes = state.take_changes()
    assert orjson.loads(changes["rule/PodCrashLooping"])["v"] == RULE_STATE_VERSION
    assert AlertCenterState.restore(changes.items()).rules["PodCrashLooping"] == rule_entry()


def test_invalid_keys_and_versions_rejected():
    state = AlertCenterState()
    with pytest.raises(KeyError, match="rule-item/<rule>"):
        state.from_bytes("rule-item/PodCrashLooping\x1fowners\x1fx", b"1")
    with pytest.raises(DecodeError, match="has version 7, expected 2 or 1"):
        state.from_bytes("rule/PodCrashLooping", b'{"v": 7}')


def test_entries_restore_from_bytes():
    state = AlertCenterState()
    state.put_alert(alert_entry())
    state.put_rule(rule_entry())
    restored = AlertCenterState.restore([(key, state.to_bytes(key)) for key in state.keys()])
    assert restored.alerts["f1"].members == alert_entry().members
    assert restored.alerts["f1"].labels == alert_entry().labels
    assert restored.rules["PodCrashLooping"] == rule_entry()


@pytest.mark.parametrize("rule", ["a\x1fb", "X\x1ffiring", "load 100%1F"], ids=["separator", "separator-field", "percent"])
def test_rule_name_with_separator_round_trips(rule: str):
    state = AlertCenterState()
    entry = RuleEntry(rule, episode_start_ms=1_000)
    entry.join("f1")
    entry.add_application("ns/a", 1_000)
    state.put_rule(entry)

    restored = AlertCenterState.restore(sorted(state.take_changes().items()))

    assert list(restored.rules) == [rule]
    assert restored.rules[rule] == entry


def test_deleted_members_alone_restore_nothing():
    # A compacted changelog can keep the deletes of an ended episode's members but not its rule key.
    state = AlertCenterState.restore(
        [("rule-item/PodCrashLooping\x1ffiring\x1ff1", None), ("rule-item/PodCrashLooping\x1fapplications\x1fns/a", None)]
    )
    assert state.rules == {}
    assert state.snapshot() == {}
