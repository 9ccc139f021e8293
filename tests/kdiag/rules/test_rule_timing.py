"""durationFrom (Rule.active_since_ms), RFC 3339 parsing, periodic rules and next_check_ms."""

from __future__ import annotations

import statistics
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kdiag.rules import Rule, next_check_ms, parse_rfc3339_ms, parse_rules
from kdiag.rules.schedule import check_offset_fraction


def make_rule(**body: Any) -> Rule:
    full = {"resource": "Node", "checkField": [{"field": ["status", "phase"], "nilValue": True}], **body}
    (rule,) = parse_rules({"TimedRule": full}, source="test")
    return rule


READY_TIME = {
    "field": ["status", "conditions"],
    "subIdentifierName": "type",
    "subIdentifierValue": ["Ready"],
    "subField": ["lastTransitionTime"],
}

NODE = {
    "kind": "Node",
    "metadata": {"name": "node-1", "creationTimestamp": "2019-01-01T00:00:00Z"},
    "status": {
        "conditions": [
            {"type": "MemoryPressure", "status": "False", "lastTransitionTime": "2019-03-20T22:00:39Z"},
            {"type": "Ready", "status": "False", "lastTransitionTime": "2019-06-02T21:39:37Z"},
        ]
    },
}


# RFC 3339


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2019-06-02T21:39:37Z", 1559511577000),
        ("2019-06-02T21:39:37.5Z", 1559511577500),
        ("2019-06-02T21:39:37.123456Z", 1559511577123),
        ("2019-06-02T23:39:37+02:00", 1559511577000),
        ("2019-06-02T16:39:37-05:00", 1559511577000),
        ("2019-06-02t21:39:37z", 1559511577000),
        ("2020-02-29T00:00:00Z", 1582934400000),
        ("1969-12-31T23:59:59Z", -1000),
    ],
)
def test_parse_rfc3339(text: str, expected: int) -> None:
    assert parse_rfc3339_ms(text) == expected


@pytest.mark.parametrize(
    "value",
    ["", "2019-06-02", "2019-06-02T21:39:37", "2019-06-02T21:39Z", "2019-02-29T00:00:00Z", "2019-13-01T00:00:00Z", "2019-06-02T24:00:00Z", "0000-01-01T00:00:00Z", "yesterday", None, 1559511577, True, ["2019-06-02T21:39:37Z"]],
)
def test_parse_rfc3339_rejects(value: Any) -> None:
    assert parse_rfc3339_ms(value) is None


# durationFrom


def test_duration_from_condition_time() -> None:
    rule = make_rule(durationFrom=READY_TIME)
    assert rule.active_since_ms(NODE) == parse_rfc3339_ms("2019-06-02T21:39:37Z")


def test_duration_from_path_list() -> None:
    rule = make_rule(durationFrom=["metadata", "creationTimestamp"])
    assert rule.active_since_ms(NODE) == parse_rfc3339_ms("2019-01-01T00:00:00Z")


def test_duration_from_earliest_of_several() -> None:
    every_condition = {"field": ["status", "conditions"], "subIdentifierName": "type", "subField": ["lastTransitionTime"]}
    assert make_rule(durationFrom=every_condition).active_since_ms(NODE) == parse_rfc3339_ms("2019-03-20T22:00:39Z")
    fan_out = ["status", "conditions", "[*]", "lastTransitionTime"]
    assert make_rule(durationFrom=fan_out).active_since_ms(NODE) == parse_rfc3339_ms("2019-03-20T22:00:39Z")


def test_duration_from_skips_non_timestamps() -> None:
    rule = make_rule(durationFrom=["status", "conditions", "[*]", "lastTransitionTime"])
    node = {"kind": "Node", "status": {"conditions": [{"lastTransitionTime": "soon"}, {"lastTransitionTime": "2020-01-01T00:00:00Z"}]}}
    assert rule.active_since_ms(node) == parse_rfc3339_ms("2020-01-01T00:00:00Z")


@pytest.mark.parametrize(
    "obj",
    [
        {"kind": "Node"},
        {"kind": "Node", "status": {"conditions": [{"type": "Ready"}]}},
        {"kind": "Node", "status": {"conditions": [{"type": "Ready", "lastTransitionTime": None}]}},
        {"kind": "Node", "status": {"conditions": "Ready"}},
        {"kind": "Node", "status": {"conditions": [{"type": "Ready", "lastTransitionTime": "2019-06-02"}]}},
        [],
        None,
        "Node",
    ],
)
def test_duration_from_missing_is_none(obj: Any) -> None:
    assert make_rule(durationFrom=READY_TIME).active_since_ms(obj) is None


def test_no_duration_from_is_none() -> None:
    rule = make_rule()
    assert rule.duration_from is None
    assert rule.active_since_ms(NODE) is None


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30), lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(["status", "conditions", "type", "lastTransitionTime", "metadata"]), children, max_size=4), max_leaves=20))
def test_active_since_never_raises(obj: Any) -> None:
    for rule in (make_rule(durationFrom=READY_TIME), make_rule(durationFrom=["status", "conditions", "[*]", "lastTransitionTime"])):
        result = rule.active_since_ms(obj)
        assert result is None or isinstance(result, int)


# every and jitter


def test_every_and_jitter_on_rule() -> None:
    rule = make_rule(every=300, jitter=0.25)
    assert rule.every_seconds == 300.0
    assert rule.jitter == 0.25
    assert make_rule(every=60).jitter == 1.0


def test_not_periodic_by_default() -> None:
    assert make_rule().every_seconds is None


# next_check_ms


def test_next_check_after_given_time() -> None:
    for after in (0, 1, 299_999, 300_000, 1_700_000_000_123):
        check = next_check_ms("NodeNotReady", "uid-1", after, 300, 1.0)
        assert after < check <= after + 300_000


def test_next_check_deterministic() -> None:
    first = next_check_ms("NodeNotReady", "uid-1", 1_700_000_000_000, 300, 1.0)
    second = next_check_ms("NodeNotReady", "uid-1", 1_700_000_000_000, 300, 1.0)
    assert first == second
    # Pinned, because a change of the hash would move every scheduled check of a replay.
    assert first == 1_700_000_116_553
    assert 0 <= check_offset_fraction("NodeNotReady", "uid-1") < 1


def test_next_check_on_fixed_grid() -> None:
    # Successive checks of one object are exactly one period apart.
    times = [0]
    for _ in range(5):
        times.append(next_check_ms("PodRule", "uid-7", times[-1], 60, 1.0))
    gaps = {later - earlier for earlier, later in zip(times[1:], times[2:])}
    assert gaps == {60_000}


def test_next_check_same_grid_across_starts() -> None:
    # The schedule depends on event time, not on when the object was first seen.
    from_early = next_check_ms("PodRule", "uid-7", 1_000_000, 60, 1.0)
    later_start = next_check_ms("PodRule", "uid-7", from_early - 1, 60, 1.0)
    assert later_start == from_early


def test_next_check_jitter_zero_aligns() -> None:
    for uid in ("a", "b", "c"):
        assert next_check_ms("PodRule", uid, 1_000, 60, 0.0) == 60_000


def test_next_check_spread_over_period() -> None:
    offsets = [next_check_ms("PodRule", f"uid-{index}", 0, 100, 1.0) for index in range(2000)]
    assert min(offsets) >= 1
    assert max(offsets) <= 100_000
    # Evenly spread: the mean is near the middle, and each tenth of the period gets checks.
    assert 40_000 < statistics.mean(offsets) < 60_000
    deciles = {offset * 10 // 100_001 for offset in offsets}
    assert deciles == set(range(10))


def test_next_check_jitter_limits_spread() -> None:
    offsets = [next_check_ms("PodRule", f"uid-{index}", 0, 100, 0.1) % 100_000 for index in range(500)]
    assert max(offsets) < 10_000


def test_next_check_differs_by_rule_and_uid() -> None:
    by_uid = {next_check_ms("PodRule", f"uid-{index}", 0, 3600, 1.0) for index in range(50)}
    by_rule = {next_check_ms(f"Rule{index}", "uid-1", 0, 3600, 1.0) for index in range(50)}
    assert len(by_uid) > 45
    assert len(by_rule) > 45


def test_next_check_millisecond_period() -> None:
    assert next_check_ms("PodRule", "uid", 10, 0.0001, 1.0) == 11


@pytest.mark.parametrize(
    ("every", "jitter", "after"),
    [(0, 1.0, 0), (-5, 1.0, 0), (float("nan"), 1.0, 0), (float("inf"), 1.0, 0), (True, 1.0, 0), ("60", 1.0, 0), (60, -0.1, 0), (60, 1.5, 0), (60, None, 0), (60, 1.0, 1.5)],
)
def test_next_check_rejects_bad_arguments(every: Any, jitter: Any, after: Any) -> None:
    with pytest.raises(ValueError):
        next_check_ms("PodRule", "uid", after, every, jitter)


@given(st.text(max_size=20), st.text(max_size=40), st.integers(-(10**15), 10**15), st.floats(0.001, 10**6), st.floats(0, 1))
def test_next_check_properties(rule_name: str, uid: str, after: int, every: float, jitter: float) -> None:
    check = next_check_ms(rule_name, uid, after, every, jitter)
    period = max(1, round(every * 1000))
    assert after < check <= after + period
    assert next_check_ms(rule_name, uid, check, every, jitter) == check + period
