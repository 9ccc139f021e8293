"""The operators added to the original format, quantities, and "[*]" fan-out with match any and all."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from kdiag.rules import Rule, parse_quantity, parse_rules
from kdiag.rules.quantities import number_of


def make_rule(check: dict[str, Any], filters: list[dict[str, Any]] | None = None, kind: str = "Pod") -> Rule:
    body: dict[str, Any] = {"resource": kind, "checkField": [check]}
    if filters is not None:
        body["filterField"] = filters
    (rule,) = parse_rules({"TestRule": body}, source="test")
    return rule


def pod(**fields: Any) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": "web-0"}, **fields}


def holds(rule: Rule, obj: dict[str, Any]) -> bool:
    return rule.evaluate(obj) is not None


# exists


def test_exists_true_needs_key() -> None:
    rule = make_rule({"field": ["spec", "nodeName"], "exists": True})
    assert holds(rule, pod(spec={"nodeName": "node-1"}))
    assert holds(rule, pod(spec={"nodeName": ""}))
    assert holds(rule, pod(spec={"nodeName": None}))
    assert not holds(rule, pod(spec={}))
    assert not holds(rule, pod(spec="not a mapping"))


def test_exists_false_differs_from_nil_on_null() -> None:
    missing = make_rule({"field": ["spec", "nodeName"], "exists": False})
    nil = make_rule({"field": ["spec", "nodeName"], "nilValue": True})
    null_value = pod(spec={"nodeName": None})
    assert not holds(missing, null_value)
    assert holds(nil, null_value)
    assert holds(missing, pod(spec={}))
    assert holds(nil, pod(spec={}))


# prefix, substring, regex


def test_prefix_any_of_list() -> None:
    rule = make_rule({"field": ["message"], "prefix": ["Readiness probe failed", "Readiness probe errored"]}, kind="Event")
    assert holds(rule, {"kind": "Event", "message": "Readiness probe failed: connection refused"})
    assert holds(rule, {"kind": "Event", "message": "Readiness probe errored: timeout"})
    assert not holds(rule, {"kind": "Event", "message": "Liveness probe failed: connection refused"})
    assert not holds(rule, {"kind": "Event", "message": " Readiness probe failed"})


def test_prefix_is_case_sensitive() -> None:
    rule = make_rule({"field": ["message"], "prefix": ["Back-off"]}, kind="Event")
    assert not holds(rule, {"kind": "Event", "message": "back-off restarting"})


def test_substring_any_of_list() -> None:
    rule = make_rule({"field": ["message"], "substring": ["toomanyrequests", "rate limit"]}, kind="Event")
    assert holds(rule, {"kind": "Event", "message": "Error: toomanyrequests: slow down"})
    assert holds(rule, {"kind": "Event", "message": "you hit the pull rate limit"})
    assert not holds(rule, {"kind": "Event", "message": "unauthorized"})


def test_substring_absent_and_null_are_empty() -> None:
    rule = make_rule({"field": ["message"], "substring": ["x"]}, kind="Event")
    assert not holds(rule, {"kind": "Event"})
    assert not holds(rule, {"kind": "Event", "message": None})


def test_substring_on_string_form_of_numbers() -> None:
    rule = make_rule({"field": ["status", "exitCode"], "substring": ["13"]})
    assert holds(rule, pod(status={"exitCode": 137}))
    assert not holds(rule, pod(status={"exitCode": 1}))


def test_regex_uses_search() -> None:
    rule = make_rule({"field": ["message"], "regex": r"secrets? \"[^\"]+\" not found"}, kind="Event")
    assert holds(rule, {"kind": "Event", "message": 'Error: secrets "my-password" not found'})
    assert holds(rule, {"kind": "Event", "message": 'secret "x" not found'})
    assert not holds(rule, {"kind": "Event", "message": "couldn't find key VALUE in Secret default/x"})


def test_regex_anchors_and_flags() -> None:
    anchored = make_rule({"field": ["status", "phase"], "regex": "^Run"})
    assert holds(anchored, pod(status={"phase": "Running"}))
    assert not holds(anchored, pod(status={"phase": "NotRunning"}))
    ignore_case = make_rule({"field": ["status", "phase"], "regex": "(?i)^running$"})
    assert holds(ignore_case, pod(status={"phase": "RUNNING"}))


def test_regex_context_is_whole_value() -> None:
    rule = make_rule({"field": ["message"], "regex": "not found"}, kind="Event")
    match = rule.evaluate({"kind": "Event", "message": "tag v1 not found in repository"})
    assert match is not None
    assert match.context == {"message": "tag v1 not found in repository"}


def test_regex_compiled_once() -> None:
    rule = make_rule({"field": ["message"], "regex": "x+y"}, kind="Event")
    assert rule.check_fields[0].regex == "x+y"
    for _ in range(3):
        assert holds(rule, {"kind": "Event", "message": "xxy"})


# Quantities and numeric comparisons


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", Decimal(0)),
        ("2", Decimal(2)),
        ("1.5", Decimal("1.5")),
        (".5", Decimal("0.5")),
        ("5.", Decimal(5)),
        ("-3", Decimal(-3)),
        ("+3", Decimal(3)),
        ("100m", Decimal("0.1")),
        ("250u", Decimal("0.00025")),
        ("12345n", Decimal("0.000012345")),
        ("1k", Decimal(1000)),
        ("1M", Decimal(10**6)),
        ("1G", Decimal(10**9)),
        ("1T", Decimal(10**12)),
        ("1P", Decimal(10**15)),
        ("1E", Decimal(10**18)),
        ("1Ki", Decimal(1024)),
        ("500Mi", Decimal(500 * 1024**2)),
        ("1.5Gi", Decimal(1536 * 1024**2)),
        ("1Ti", Decimal(1024**4)),
        ("1Pi", Decimal(1024**5)),
        ("1Ei", Decimal(1024**6)),
        ("1e3", Decimal(1000)),
        ("1E3", Decimal(1000)),
        ("2e-3", Decimal("0.002")),
    ],
)
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", " 1", "1 ", "1 Gi", "Mi", "1mi", "1KiB", "1e", "1.2.3", "abc", "1Gi5", "--1", "1" * 101, "١"])
def test_parse_quantity_rejects(text: str) -> None:
    assert parse_quantity(text) is None


def test_quantity_equal_across_suffixes() -> None:
    assert parse_quantity("1536Mi") == parse_quantity("1.5Gi")
    assert parse_quantity("1000m") == parse_quantity("1")
    assert parse_quantity("1k") == parse_quantity("1e3")


@pytest.mark.parametrize(("value", "number"), [(3, 3), (1.5, Decimal("1.5")), (0.1, Decimal("0.1")), ("100m", Decimal("0.1"))])
def test_number_of_json_values(value: Any, number: Any) -> None:
    assert number_of(value) == number


@pytest.mark.parametrize("value", [True, False, None, float("nan"), float("inf"), [], {}, "ten", ""])
def test_number_of_non_numbers(value: Any) -> None:
    assert number_of(value) is None


@pytest.mark.parametrize(
    ("operator", "threshold", "value", "expected"),
    [
        ("greaterThan", 5, 6, True),
        ("greaterThan", 5, 5, False),
        ("greaterOrEqual", 5, 5, True),
        ("greaterOrEqual", 5, 4, False),
        ("lessThan", 5, 4, True),
        ("lessThan", 5, 5, False),
        ("lessOrEqual", 5, 5, True),
        ("lessOrEqual", 5, 6, False),
        ("greaterThan", "256Mi", "90Mi", False),
        ("lessThan", "256Mi", "90Mi", True),
        ("greaterOrEqual", "1.5Gi", "1536Mi", True),
        ("greaterThan", "1.5Gi", "1536Mi", False),
        ("lessOrEqual", "100m", 0.1, True),
        ("greaterThan", 0.1, 0.1, False),
        ("greaterThan", "500m", "1", True),
        ("greaterThan", "1e3", 1001, True),
        ("lessThan", 1.5, "1500m", False),
        ("greaterThan", -1, 0, True),
    ],
)
def test_numeric_comparison(operator: str, threshold: Any, value: Any, expected: bool) -> None:
    rule = make_rule({"field": ["spec", "value"], operator: threshold})
    assert holds(rule, pod(spec={"value": value})) is expected


@pytest.mark.parametrize("value", ["abc", "", None, True, False, [1], {"a": 1}, float("nan"), "1 Gi"])
def test_non_number_never_compares(value: Any) -> None:
    for operator in ("greaterThan", "greaterOrEqual", "lessThan", "lessOrEqual"):
        rule = make_rule({"field": ["spec", "value"], operator: 0})
        assert not holds(rule, pod(spec={"value": value})), operator


def test_absent_never_compares() -> None:
    rule = make_rule({"field": ["spec", "value"], "lessThan": 10})
    assert not holds(rule, pod(spec={}))


def test_numeric_range() -> None:
    rule = make_rule({"field": ["status", "restartCount"], "greaterOrEqual": 3, "lessThan": 10})
    assert holds(rule, pod(status={"restartCount": 3}))
    assert holds(rule, pod(status={"restartCount": 9}))
    assert not holds(rule, pod(status={"restartCount": 2}))
    assert not holds(rule, pod(status={"restartCount": 10}))


def test_numeric_context_shows_original_text() -> None:
    rule = make_rule({"field": ["spec", "memory"], "lessThan": "256Mi"})
    match = rule.evaluate(pod(spec={"memory": "90Mi"}))
    assert match is not None
    assert match.context == {"spec.memory": "90Mi"}


# length


@pytest.mark.parametrize(
    ("value", "length"),
    [("", 0), ("abc", 3), ([], 0), ([1, 2], 2), ({}, 0), ({"a": 1}, 1), (None, 0)],
)
def test_length_of_values(value: Any, length: int) -> None:
    equal = make_rule({"field": ["spec", "items"], "length": {"equal": length}})
    assert holds(equal, pod(spec={"items": value}))
    not_equal = make_rule({"field": ["spec", "items"], "length": {"notEqual": length}})
    assert not holds(not_equal, pod(spec={"items": value}))


def test_length_absent_is_zero() -> None:
    rule = make_rule({"field": ["spec", "items"], "length": {"equal": 0}})
    assert holds(rule, pod(spec={}))
    assert holds(rule, pod())


@pytest.mark.parametrize("value", [0, 5, 1.5, True, False])
def test_length_of_scalars_never_holds(value: Any) -> None:
    for comparison in ("equal", "notEqual", "greaterThan", "greaterOrEqual", "lessThan", "lessOrEqual"):
        rule = make_rule({"field": ["spec", "items"], "length": {comparison: 0}})
        assert not holds(rule, pod(spec={"items": value})), comparison


def test_length_comparisons_combined() -> None:
    rule = make_rule({"field": ["spec", "containers"], "length": {"greaterThan": 1, "lessOrEqual": 3}})
    assert not holds(rule, pod(spec={"containers": [{}]}))
    assert holds(rule, pod(spec={"containers": [{}, {}]}))
    assert holds(rule, pod(spec={"containers": [{}, {}, {}]}))
    assert not holds(rule, pod(spec={"containers": [{}, {}, {}, {}]}))


# Several operators on one condition


def test_all_operators_must_hold() -> None:
    rule = make_rule({"field": ["message"], "prefix": ["Error"], "substring": ["secret"], "regex": "not found$", "notEqualValue": ["Error"]}, kind="Event")
    assert holds(rule, {"kind": "Event", "message": 'Error: secret "a" not found'})
    assert not holds(rule, {"kind": "Event", "message": 'Warning: secret "a" not found'})
    assert not holds(rule, {"kind": "Event", "message": 'Error: configmap "a" not found'})
    assert not holds(rule, {"kind": "Event", "message": 'Error: secret "a" not found!'})


def test_numeric_and_text_together() -> None:
    rule = make_rule({"field": ["spec", "cpu"], "greaterThan": "1", "regex": "m$"})
    assert holds(rule, pod(spec={"cpu": "1500m"}))
    assert not holds(rule, pod(spec={"cpu": "2"}))
    assert not holds(rule, pod(spec={"cpu": "500m"}))


# "[*]" fan-out


CONTAINERS = [
    {"name": "app", "image": "shop/app:1.2", "resources": {"limits": {"memory": "512Mi"}}},
    {"name": "sidecar", "image": "proxy:1.17", "resources": {}},
]


def test_fan_out_any_element() -> None:
    rule = make_rule({"field": ["spec", "containers", "[*]", "resources", "limits", "memory"], "exists": False})
    match = rule.evaluate(pod(spec={"containers": CONTAINERS}))
    assert match is not None
    assert match.context == {"spec.containers[1].resources.limits.memory": ""}


def test_fan_out_any_element_none_passes() -> None:
    rule = make_rule({"field": ["spec", "containers", "[*]", "image"], "prefix": ["docker.io/"]})
    assert not holds(rule, pod(spec={"containers": CONTAINERS}))


def test_fan_out_all_elements() -> None:
    rule = make_rule({"field": ["spec", "containers", "[*]", "image"], "regex": ":[0-9.]+$", "match": "all"})
    match = rule.evaluate(pod(spec={"containers": CONTAINERS}))
    assert match is not None
    assert match.context == {"spec.containers[*].image": '["shop/app:1.2","proxy:1.17"]'}
    latest = [*CONTAINERS, {"name": "debug", "image": "busybox:latest"}]
    assert not holds(rule, pod(spec={"containers": latest}))


@pytest.mark.parametrize("containers", [[], None, "x", {"name": "app"}])
def test_fan_out_empty_or_not_list(containers: Any) -> None:
    spec = {} if containers is None else {"containers": containers}
    any_rule = make_rule({"field": ["spec", "containers", "[*]", "name"], "exists": False})
    all_rule = make_rule({"field": ["spec", "containers", "[*]", "name"], "exists": False, "match": "all"})
    assert not holds(any_rule, pod(spec=spec))
    # An empty list never satisfies all, so match: all means "at least one, and every one".
    assert not holds(all_rule, pod(spec=spec))


def test_fan_out_element_not_mapping_is_absent() -> None:
    rule = make_rule({"field": ["spec", "containers", "[*]", "name"], "exists": False})
    match = rule.evaluate(pod(spec={"containers": [{"name": "a"}, "oops"]}))
    assert match is not None
    assert match.context == {"spec.containers[1].name": ""}


def test_fan_out_last_segment_reads_elements() -> None:
    rule = make_rule({"field": ["metadata", "finalizers", "[*]"], "equalValue": ["kubernetes.io/pvc-protection"]})
    obj = pod(metadata={"finalizers": ["example.com/a", "kubernetes.io/pvc-protection"]})
    match = rule.evaluate(obj)
    assert match is not None
    assert match.context == {"metadata.finalizers[1]": "kubernetes.io/pvc-protection"}


def test_fan_out_nested_lists() -> None:
    rule = make_rule({"field": ["spec", "containers", "[*]", "env", "[*]", "name"], "equalValue": ["DEBUG"]})
    obj = pod(spec={"containers": [{"env": [{"name": "A"}]}, {"env": [{"name": "B"}, {"name": "DEBUG"}]}]})
    match = rule.evaluate(obj)
    assert match is not None
    assert match.context == {"spec.containers[1].env[1].name": "DEBUG"}


def test_fan_out_all_over_nested_lists() -> None:
    rule = make_rule({"field": ["spec", "containers", "[*]", "ports", "[*]", "containerPort"], "lessThan": 1024, "match": "all"})
    low = pod(spec={"containers": [{"ports": [{"containerPort": 80}]}, {"ports": [{"containerPort": 443}]}]})
    mixed = pod(spec={"containers": [{"ports": [{"containerPort": 80}]}, {"ports": [{"containerPort": 8080}]}]})
    assert holds(rule, low)
    assert not holds(rule, mixed)


def test_fan_out_in_filter() -> None:
    rule = make_rule(
        {"field": ["status", "phase"], "equalValue": ["Running"]},
        filters=[{"field": ["spec", "containers", "[*]", "name"], "equalValue": ["istio-proxy"]}],
    )
    assert holds(rule, pod(spec={"containers": [{"name": "app"}, {"name": "istio-proxy"}]}, status={"phase": "Running"}))
    assert not holds(rule, pod(spec={"containers": [{"name": "app"}]}, status={"phase": "Running"}))


def test_all_context_truncated_after_ten_values() -> None:
    rule = make_rule({"field": ["spec", "containers", "[*]", "ready"], "equalValue": ["false"], "match": "all"})
    match = rule.evaluate(pod(spec={"containers": [{"ready": False}] * 12}))
    assert match is not None
    (value,) = match.context.values()
    assert value.endswith(" and 2 more")
    assert value.count('"false"') == 10


# Sub-identifier selection with "[*]" and match


def test_sub_field_fan_out() -> None:
    rule = make_rule(
        {
            "field": ["spec", "containers"],
            "subIdentifierName": "name",
            "subIdentifierValue": ["app"],
            "subField": ["env", "[*]", "name"],
            "equalValue": ["DEBUG"],
        }
    )
    obj = pod(spec={"containers": [{"name": "app", "env": [{"name": "A"}, {"name": "DEBUG"}]}, {"name": "other", "env": [{"name": "DEBUG"}]}]})
    match = rule.evaluate(obj)
    assert match is not None
    assert match.context == {"spec.containers[name=app].env[1].name": "DEBUG"}
    only_other = pod(spec={"containers": [{"name": "app", "env": []}, {"name": "other", "env": [{"name": "DEBUG"}]}]})
    assert not holds(rule, only_other)


def test_sub_identifier_match_all() -> None:
    rule = make_rule({"field": ["status", "containerStatuses"], "subIdentifierName": "name", "subField": ["ready"], "equalValue": ["false"], "match": "all"})
    assert holds(rule, pod(status={"containerStatuses": [{"name": "a", "ready": False}, {"name": "b", "ready": False}]}))
    assert not holds(rule, pod(status={"containerStatuses": [{"name": "a", "ready": False}, {"name": "b", "ready": True}]}))
    # No selected element: all does not hold, unlike the absent-value rule of any.
    assert not holds(rule, pod(status={"containerStatuses": []}))


def test_sub_identifier_without_fan_out_keeps_absent_rule() -> None:
    rule = make_rule({"field": ["status", "conditions"], "subIdentifierName": "type", "subIdentifierValue": ["Ready"], "subField": ["status"], "exists": False})
    match = rule.evaluate(pod(status={"conditions": [{"type": "PodScheduled", "status": "True"}]}))
    assert match is not None
    assert match.context == {"status.conditions[type=Ready].status": ""}


def test_sub_field_fan_out_no_absent_fallback() -> None:
    rule = make_rule({"field": ["spec", "containers"], "subIdentifierName": "name", "subIdentifierValue": ["app"], "subField": ["ports", "[*]", "name"], "exists": False})
    assert not holds(rule, pod(spec={"containers": [{"name": "other"}]}))
