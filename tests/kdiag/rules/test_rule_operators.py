"""Operators, path reading, list selection and the rule set, on explicit inputs."""

from __future__ import annotations

from typing import Any

import pytest

from kdiag.errors import RuleError
from kdiag.rules import Match, Rule, RuleSet, parse_rules
from kdiag.rules.values import ABSENT, format_path, string_form


def make_rule(check: dict[str, Any], filters: list[dict[str, Any]] | None = None, kind: str = "Pod") -> Rule:
    body: dict[str, Any] = {"resource": kind, "checkField": [check]}
    if filters is not None:
        body["filterField"] = filters
    (rule,) = parse_rules({"TestRule": body}, source="test")
    return rule


def pod(**fields: Any) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": "web-0"}, **fields}


# String form


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Running", "Running"),
        ("", ""),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (1, "1"),
        (-7, "-7"),
        (1.5, "1.5"),
        (1.0, "1.0"),
        (None, ""),
        (ABSENT, ""),
        ({"b": 1, "a": [1, "x"]}, '{"a":[1,"x"],"b":1}'),
        ([], "[]"),
        ({}, "{}"),
        ({"name": "café"}, '{"name":"café"}'),
    ],
)
def test_string_form(value: Any, expected: str) -> None:
    assert string_form(value) == expected


def test_string_form_unencodable_is_empty() -> None:
    nested: list[Any] = []
    nested.append(nested)
    assert string_form(nested) == ""
    assert string_form({1: "a", "b": 2}) == ""


def test_format_path_quotes_dotted_keys() -> None:
    assert format_path(("status", "phase")) == "status.phase"
    assert format_path(("metadata", "labels", "sae.component")) == "metadata.labels['sae.component']"
    assert format_path(("metadata", "labels", "app.kubernetes.io/name")) == "metadata.labels['app.kubernetes.io/name']"
    assert format_path(("a'b",)) == "['a\\'b']"


# equalValue


def test_equal_value_matches_string() -> None:
    rule = make_rule({"field": ["status", "phase"], "equalValue": ["Running", "Pending"]})
    assert rule.evaluate(pod(status={"phase": "Running"})) is not None
    assert rule.evaluate(pod(status={"phase": "Pending"})) is not None
    assert rule.evaluate(pod(status={"phase": "Failed"})) is None


def test_equal_value_is_case_sensitive() -> None:
    rule = make_rule({"field": ["status", "phase"], "equalValue": ["running"]})
    assert rule.evaluate(pod(status={"phase": "Running"})) is None


def test_equal_value_booleans_as_text() -> None:
    rule = make_rule({"field": ["spec", "hostNetwork"], "equalValue": ["true"]})
    assert rule.evaluate(pod(spec={"hostNetwork": True})) is not None
    assert rule.evaluate(pod(spec={"hostNetwork": False})) is None
    # The string "True" is not the boolean's string form.
    rule_capitalized = make_rule({"field": ["spec", "hostNetwork"], "equalValue": ["True"]})
    assert rule_capitalized.evaluate(pod(spec={"hostNetwork": True})) is None
    assert rule_capitalized.evaluate(pod(spec={"hostNetwork": "True"})) is not None


def test_equal_value_numbers_as_json_text() -> None:
    rule = make_rule({"field": ["status", "restartCount"], "equalValue": ["3"]})
    assert rule.evaluate(pod(status={"restartCount": 3})) is not None
    assert rule.evaluate(pod(status={"restartCount": "3"})) is not None
    assert rule.evaluate(pod(status={"restartCount": 4})) is None
    rule_float = make_rule({"field": ["status", "ratio"], "equalValue": ["1.5"]})
    assert rule_float.evaluate(pod(status={"ratio": 1.5})) is not None


def test_equal_value_empty_matches_absent_and_null() -> None:
    rule = make_rule({"field": ["metadata", "deletionTimestamp"], "equalValue": [""]})
    assert rule.evaluate(pod()) is not None
    assert rule.evaluate(pod(metadata={"deletionTimestamp": None})) is not None
    assert rule.evaluate(pod(metadata={"deletionTimestamp": ""})) is not None
    assert rule.evaluate(pod(metadata={"deletionTimestamp": "2021-10-07T10:29:31Z"})) is None


def test_equal_value_map_as_compact_json() -> None:
    rule = make_rule({"field": ["spec", "nodeSelector"], "equalValue": ['{"disk":"ssd","zone":"a"}']})
    assert rule.evaluate(pod(spec={"nodeSelector": {"zone": "a", "disk": "ssd"}})) is not None
    rule_list = make_rule({"field": ["spec", "args"], "equalValue": ['["--v",2]']})
    assert rule_list.evaluate(pod(spec={"args": ["--v", 2]})) is not None


# notEqualValue


def test_not_equal_value_empty_needs_present_value() -> None:
    rule = make_rule({"field": ["metadata", "deletionTimestamp"], "notEqualValue": [""]})
    assert rule.evaluate(pod(metadata={"deletionTimestamp": "2021-10-07T10:29:31Z"})) is not None
    assert rule.evaluate(pod()) is None
    assert rule.evaluate(pod(metadata={"deletionTimestamp": None})) is None
    assert rule.evaluate(pod(metadata={"deletionTimestamp": ""})) is None


def test_not_equal_value_several_values() -> None:
    rule = make_rule({"field": ["status", "phase"], "notEqualValue": ["Running", "Succeeded"]})
    assert rule.evaluate(pod(status={"phase": "Pending"})) is not None
    assert rule.evaluate(pod(status={"phase": "Running"})) is None
    assert rule.evaluate(pod(status={"phase": "Succeeded"})) is None
    # Absent is "", which is not in the list.
    assert rule.evaluate(pod()) is not None


def test_not_equal_value_boolean() -> None:
    rule = make_rule({"field": ["status", "ready"], "notEqualValue": ["true"]})
    assert rule.evaluate(pod(status={"ready": False})) is not None
    assert rule.evaluate(pod(status={"ready": True})) is None


# nilValue


@pytest.mark.parametrize(
    ("metadata", "is_nil"),
    [
        ({}, True),
        ({"deletionTimestamp": None}, True),
        ({"deletionTimestamp": ""}, False),
        ({"deletionTimestamp": "2021-10-07T10:29:31Z"}, False),
        ({"deletionTimestamp": False}, False),
        ({"deletionTimestamp": 0}, False),
        ({"deletionTimestamp": {}}, False),
    ],
)
def test_nil_value(metadata: dict[str, Any], is_nil: bool) -> None:
    rule_nil = make_rule({"field": ["metadata", "deletionTimestamp"], "nilValue": True})
    rule_not_nil = make_rule({"field": ["metadata", "deletionTimestamp"], "nilValue": False})
    obj = pod(metadata=metadata)
    assert (rule_nil.evaluate(obj) is not None) is is_nil
    assert (rule_not_nil.evaluate(obj) is not None) is not is_nil


def test_operators_combined_all_must_hold() -> None:
    rule = make_rule({"field": ["status", "reason"], "nilValue": False, "notEqualValue": ["Evicted"]})
    assert rule.evaluate(pod(status={"reason": "NodeLost"})) is not None
    assert rule.evaluate(pod(status={"reason": "Evicted"})) is None
    assert rule.evaluate(pod(status={})) is None
    rule_both_lists = make_rule({"field": ["status", "phase"], "equalValue": ["Running", "Pending"], "notEqualValue": ["Pending"]})
    assert rule_both_lists.evaluate(pod(status={"phase": "Running"})) is not None
    assert rule_both_lists.evaluate(pod(status={"phase": "Pending"})) is None


# Paths through wrong types


@pytest.mark.parametrize("status", ["Running", ["phase"], 5, True, None])
def test_path_through_non_mapping_is_absent(status: Any) -> None:
    absent_rule = make_rule({"field": ["status", "phase"], "nilValue": True})
    present_rule = make_rule({"field": ["status", "phase"], "notEqualValue": [""]})
    obj = pod(status=status)
    assert absent_rule.evaluate(obj) is not None
    assert present_rule.evaluate(obj) is None


def test_long_path_reads_nested_maps() -> None:
    rule = make_rule({"field": ["spec", "template", "spec", "securityContext", "runAsNonRoot"], "equalValue": ["true"]})
    obj = pod(spec={"template": {"spec": {"securityContext": {"runAsNonRoot": True}}}})
    assert rule.evaluate(obj) is not None
    assert rule.evaluate(pod(spec={"template": {"spec": []}})) is None


# Sub-identifier selection

CONTAINERS = [
    {"name": "app", "ready": True, "state": {"running": {}}},
    {"name": "sidecar", "ready": False, "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
    {"name": "logger", "ready": False, "state": {"waiting": {"reason": "ImagePullBackOff"}}},
]


def test_sub_identifier_selects_named_element() -> None:
    rule = make_rule(
        {
            "field": ["status", "containerStatuses"],
            "subIdentifierName": "name",
            "subIdentifierValue": ["app"],
            "subField": ["ready"],
            "equalValue": ["false"],
        }
    )
    # The app container is ready, so the unready sidecar and logger do not count.
    assert rule.evaluate(pod(status={"containerStatuses": CONTAINERS})) is None


def test_sub_identifier_any_selected_element() -> None:
    rule = make_rule(
        {
            "field": ["status", "containerStatuses"],
            "subIdentifierName": "name",
            "subIdentifierValue": ["app", "logger"],
            "subField": ["state", "waiting", "reason"],
            "equalValue": ["ImagePullBackOff"],
        }
    )
    match = rule.evaluate(pod(status={"containerStatuses": CONTAINERS}))
    assert match is not None
    assert match.context == {"status.containerStatuses[name=logger].state.waiting.reason": "ImagePullBackOff"}


def test_sub_identifier_no_selected_element_is_absent() -> None:
    check = {
        "field": ["status", "containerStatuses"],
        "subIdentifierName": "name",
        "subIdentifierValue": ["missing"],
        "subField": ["ready"],
    }
    nil_rule = make_rule({**check, "nilValue": True})
    equal_rule = make_rule({**check, "equalValue": ["false"]})
    obj = pod(status={"containerStatuses": CONTAINERS})
    match = nil_rule.evaluate(obj)
    assert match is not None
    assert match.context == {"status.containerStatuses[name=missing].ready": ""}
    assert equal_rule.evaluate(obj) is None


def test_sub_identifier_selected_elements_all_fail() -> None:
    # Elements are selected but none satisfies the check, which is not the same as absent.
    rule = make_rule(
        {
            "field": ["status", "containerStatuses"],
            "subIdentifierName": "name",
            "subIdentifierValue": ["app"],
            "subField": ["lastState"],
            "nilValue": False,
        }
    )
    assert rule.evaluate(pod(status={"containerStatuses": CONTAINERS})) is None


@pytest.mark.parametrize("containers", [None, "app", {"name": "app"}, 3, []])
def test_sub_identifier_field_not_a_list(containers: Any) -> None:
    check = {
        "field": ["status", "containerStatuses"],
        "subIdentifierName": "name",
        "subIdentifierValue": ["app"],
        "subField": ["ready"],
    }
    nil_rule = make_rule({**check, "nilValue": True})
    equal_rule = make_rule({**check, "equalValue": ["true"]})
    obj = pod(status={"containerStatuses": containers})
    assert nil_rule.evaluate(obj) is not None
    assert equal_rule.evaluate(obj) is None


def test_sub_identifier_skips_non_map_elements() -> None:
    rule = make_rule(
        {
            "field": ["status", "containerStatuses"],
            "subIdentifierName": "name",
            "subField": ["ready"],
            "equalValue": ["false"],
        }
    )
    containers = ["app", None, 7, ["x"], {"name": "db", "ready": False}]
    match = rule.evaluate(pod(status={"containerStatuses": containers}))
    assert match is not None
    assert match.context == {"status.containerStatuses[name=db].ready": "false"}


def test_sub_identifier_value_compares_string_form() -> None:
    rule = make_rule(
        {
            "field": ["spec", "ports"],
            "subIdentifierName": "port",
            "subIdentifierValue": ["8080"],
            "subField": ["protocol"],
            "equalValue": ["UDP"],
        },
        kind="Service",
    )
    service = {"kind": "Service", "spec": {"ports": [{"port": 80, "protocol": "TCP"}, {"port": 8080, "protocol": "UDP"}]}}
    match = rule.evaluate(service)
    assert match is not None
    assert match.context == {"spec.ports[port=8080].protocol": "UDP"}


def test_omitted_sub_identifier_value_selects_all() -> None:
    rule = make_rule(
        {
            "field": ["status", "containerStatuses"],
            "subIdentifierName": "name",
            "subField": ["state", "waiting", "reason"],
            "equalValue": ["CrashLoopBackOff"],
        }
    )
    match = rule.evaluate(pod(status={"containerStatuses": CONTAINERS}))
    assert match is not None
    assert match.context == {"status.containerStatuses[name=sidecar].state.waiting.reason": "CrashLoopBackOff"}
    assert rule.evaluate(pod(status={"containerStatuses": CONTAINERS[:1]})) is None


def test_omitted_sub_identifier_value_empty_list_is_absent() -> None:
    rule = make_rule(
        {
            "field": ["status", "containerStatuses"],
            "subIdentifierName": "name",
            "subField": ["ready"],
            "nilValue": True,
        }
    )
    match = rule.evaluate(pod(status={"containerStatuses": []}))
    assert match is not None
    assert match.context == {"status.containerStatuses[*].ready": ""}


def test_element_without_identifier_named_by_index() -> None:
    rule = make_rule(
        {
            "field": ["status", "containerStatuses"],
            "subIdentifierName": "name",
            "subField": ["ready"],
            "equalValue": ["false"],
        }
    )
    match = rule.evaluate(pod(status={"containerStatuses": [{"ready": True}, {"ready": False}]}))
    assert match is not None
    assert match.context == {"status.containerStatuses[1].ready": "false"}


def test_sub_field_path_with_dotted_key() -> None:
    rule = make_rule(
        {
            "field": ["spec", "containers"],
            "subIdentifierName": "name",
            "subField": ["resources", "limits", "nvidia.com/gpu"],
            "notEqualValue": [""],
        }
    )
    match = rule.evaluate(pod(spec={"containers": [{"name": "train", "resources": {"limits": {"nvidia.com/gpu": 2}}}]}))
    assert match is not None
    assert match.context == {"spec.containers[name=train].resources.limits['nvidia.com/gpu']": "2"}


def test_sub_identifier_in_filter() -> None:
    rule = make_rule(
        {"field": ["status", "phase"], "equalValue": ["Running"]},
        filters=[
            {
                "field": ["status", "conditions"],
                "subIdentifierName": "type",
                "subIdentifierValue": ["Ready"],
                "subField": ["status"],
                "equalValue": ["False"],
            }
        ],
    )
    unready = pod(status={"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]})
    ready = pod(status={"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]})
    assert rule.evaluate(unready) is not None
    assert rule.evaluate(ready) is None
    assert rule.evaluate(pod(status={"phase": "Running"})) is None


# evaluate


def test_evaluate_requires_matching_kind() -> None:
    rule = make_rule({"field": ["status", "phase"], "equalValue": ["Running"]})
    assert rule.evaluate({"kind": "Pod", "status": {"phase": "Running"}}) is not None
    assert rule.evaluate({"kind": "pod", "status": {"phase": "Running"}}) is None
    assert rule.evaluate({"status": {"phase": "Running"}}) is None


@pytest.mark.parametrize("obj", [None, "Pod", 5, [{"kind": "Pod"}], True])
def test_evaluate_non_mapping_object(obj: Any) -> None:
    rule = make_rule({"field": ["status"], "nilValue": True})
    assert rule.evaluate(obj) is None


def test_evaluate_filters_before_checks() -> None:
    rule = make_rule(
        {"field": ["status", "reason"], "equalValue": ["Evicted"]},
        filters=[{"field": ["metadata", "labels", "team"], "equalValue": ["payments"]}],
    )
    evicted = {"reason": "Evicted"}
    assert rule.evaluate(pod(metadata={"labels": {"team": "payments"}}, status=evicted)) is not None
    assert rule.evaluate(pod(metadata={"labels": {"team": "search"}}, status=evicted)) is None
    assert rule.evaluate(pod(status=evicted)) is None


def test_evaluate_all_checks_must_hold() -> None:
    (rule,) = parse_rules(
        {
            "TwoChecks": {
                "resource": "Pod",
                "checkField": [
                    {"field": ["status", "phase"], "equalValue": ["Failed"]},
                    {"field": ["status", "reason"], "equalValue": ["Evicted"]},
                ],
            }
        }
    )
    match = rule.evaluate(pod(status={"phase": "Failed", "reason": "Evicted"}))
    assert match is not None
    assert match.rule is rule
    assert match.context == {"status.phase": "Failed", "status.reason": "Evicted"}
    assert rule.evaluate(pod(status={"phase": "Failed", "reason": "DeadlineExceeded"})) is None


def test_match_context_of_non_string_value() -> None:
    rule = make_rule({"field": ["status", "containerStatuses"], "notEqualValue": [""]})
    match = rule.evaluate(pod(status={"containerStatuses": [{"name": "app", "ready": True}]}))
    assert match is not None
    assert match.context == {"status.containerStatuses": '[{"name":"app","ready":true}]'}


def test_match_equality() -> None:
    rule = make_rule({"field": ["status", "phase"], "equalValue": ["Running"]})
    obj = pod(status={"phase": "Running"})
    assert rule.evaluate(obj) == rule.evaluate(obj)
    assert rule.evaluate(obj) == Match(rule, {"status.phase": "Running"})


def test_rule_attributes() -> None:
    (rule,) = parse_rules({"PodEvicted": {"resource": "Pod", "duration": 30, "checkField": [{"field": ["status", "reason"], "equalValue": ["Evicted"]}]}}, source="rules/pods.yaml")
    assert rule.name == "PodEvicted"
    assert rule.kind == "Pod"
    assert rule.duration_seconds == 30.0
    assert isinstance(rule.duration_seconds, float)
    assert rule.source == "rules/pods.yaml"


def test_duration_defaults_to_zero() -> None:
    rule = make_rule({"field": ["status", "phase"], "equalValue": ["Running"]})
    assert rule.duration_seconds == 0.0


# RuleSet


def build_rule_set() -> RuleSet:
    document = {
        "PodA": {"resource": "Pod", "checkField": [{"field": ["a"], "nilValue": True}]},
        "NodeA": {"resource": "Node", "checkField": [{"field": ["a"], "nilValue": True}]},
        "PodB": {"resource": "Pod", "checkField": [{"field": ["b"], "nilValue": True}]},
    }
    return RuleSet(parse_rules(document, source="rules/test.yaml"))


def test_rule_set_indexes_by_kind() -> None:
    rule_set = build_rule_set()
    pod_rules = rule_set.rules_for_kind("Pod")
    assert isinstance(pod_rules, tuple)
    assert [rule.name for rule in pod_rules] == ["PodA", "PodB"]
    assert [rule.name for rule in rule_set.rules_for_kind("Node")] == ["NodeA"]
    assert rule_set.rules_for_kind("Service") == ()
    assert rule_set.rules_for_kind("pod") == ()


def test_rule_set_lookup_and_iteration() -> None:
    rule_set = build_rule_set()
    assert len(rule_set) == 3
    assert rule_set.names == ("PodA", "NodeA", "PodB")
    assert [rule.name for rule in rule_set] == ["PodA", "NodeA", "PodB"]
    assert rule_set.get("NodeA") is rule_set.rules_for_kind("Node")[0]
    assert rule_set.get("Missing") is None
    assert "PodB" in rule_set
    assert "Missing" not in rule_set
    assert rule_set.kinds == ("Pod", "Node")


def test_rule_set_empty() -> None:
    rule_set = RuleSet()
    assert len(rule_set) == 0
    assert rule_set.names == ()
    assert rule_set.rules_for_kind("Pod") == ()


def test_rule_set_rejects_duplicate_names() -> None:
    body = {"resource": "Pod", "checkField": [{"field": ["a"], "nilValue": True}]}
    first = parse_rules({"PodA": body}, source="rules/a.yaml")
    second = parse_rules({"PodA": body}, source="rules/b.yaml")
    with pytest.raises(RuleError) as caught:
        RuleSet(first + second)
    assert caught.value.rule == "PodA"
    assert "rules/a.yaml" in str(caught.value)
    assert "rules/b.yaml" in str(caught.value)
    assert "duplicate rule name" in caught.value.problem
