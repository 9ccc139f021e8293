"""Invalid rule documents: each kind of mistake raises RuleError naming the rule, the path and the problem."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kdiag.errors import RuleError
from kdiag.rules import parse_rules

VALID_BODY: dict[str, Any] = {
    "duration": 60,
    "resource": "Pod",
    "filterField": [{"field": ["status", "phase"], "equalValue": ["Running"]}],
    "checkField": [
        {
            "field": ["status", "containerStatuses"],
            "subIdentifierName": "name",
            "subIdentifierValue": ["app"],
            "subField": ["ready"],
            "equalValue": ["false"],
        }
    ],
}


def body_with(**changes: Any) -> dict[str, Any]:
    """Return a copy of VALID_BODY with top-level keys replaced, or removed when the value is DELETE."""
    body = copy.deepcopy(VALID_BODY)
    for key, value in changes.items():
        if value is DELETE:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def check_with(**changes: Any) -> dict[str, Any]:
    """Return a copy of VALID_BODY whose first checkField entry has keys replaced or removed."""
    body = copy.deepcopy(VALID_BODY)
    check = body["checkField"][0]
    for key, value in changes.items():
        if value is DELETE:
            check.pop(key, None)
        else:
            check[key] = value
    return body


DELETE = object()

# (case id, rule body, expected path, words the problem must contain)
INVALID_BODIES: list[tuple[str, Any, str, tuple[str, ...]]] = [
    ("body not mapping", ["resource", "Pod"], "", ("rule body must be a mapping", "a list")),
    ("body null", None, "", ("rule body must be a mapping", "null")),
    ("unknown body key", body_with(durations=60), "durations", ("unknown key", "Did you mean duration?")),
    ("unknown body key no hint", body_with(severity="high"), "severity", ("unknown key", "Valid keys are")),
    ("resource missing", body_with(resource=DELETE), "resource", ("missing required key",)),
    ("resource number", body_with(resource=5), "resource", ("must be a string", "number 5")),
    ("resource empty", body_with(resource=""), "resource", ("must not be an empty string",)),
    ("duration negative", body_with(duration=-1), "duration", (">= 0", "number -1")),
    ("duration string", body_with(duration="300"), "duration", ("must be a number of seconds", "string '300'")),
    ("duration boolean", body_with(duration=True), "duration", ("must be a number of seconds", "boolean true")),
    ("duration nan", body_with(duration=float("nan")), "duration", ("finite",)),
    ("duration infinite", body_with(duration=float("inf")), "duration", ("finite",)),
    ("duration too large", body_with(duration=10**400), "duration", ("too large",)),
    ("filterField not list", body_with(filterField={"field": ["a"]}), "filterField", ("must be a list of conditions", "a mapping")),
    ("filterField null", body_with(filterField=None), "filterField", ("must be a list of conditions", "null")),
    ("filterField entry not mapping", body_with(filterField=[{"field": ["a"], "nilValue": True}, "status.phase"]), "filterField[1]", ("must be a mapping",)),
    ("checkField missing", body_with(checkField=DELETE), "checkField", ("missing required key",)),
    ("checkField empty", body_with(checkField=[]), "checkField", ("at least one condition",)),
    ("checkField not list", body_with(checkField="status.phase"), "checkField", ("must be a list of conditions",)),
    ("unknown condition key", check_with(equalValues=["false"]), "checkField[0].equalValues", ("unknown key", "Did you mean equalValue?")),
    ("field missing", check_with(field=DELETE), "checkField[0]", ("missing required key field",)),
    ("field empty", check_with(field=[]), "checkField[0].field", ("must not be an empty list",)),
    ("field string", check_with(field="status.phase"), "checkField[0].field", ("must be a list of strings", "string 'status.phase'")),
    ("field item number", check_with(field=["status", 1]), "checkField[0].field[1]", ("must be a string", "number 1")),
    ("field item empty", check_with(field=["status", ""]), "checkField[0].field[1]", ("must not be an empty string",)),
    ("equalValue string", check_with(equalValue="false"), "checkField[0].equalValue", ("must be a list of strings",)),
    ("equalValue empty", check_with(equalValue=[]), "checkField[0].equalValue", ("must not be an empty list",)),
    ("equalValue boolean item", check_with(equalValue=[False]), "checkField[0].equalValue[0]", ("must be a string", "boolean false", "Quote the value")),
    ("equalValue null item", check_with(equalValue=["a", None]), "checkField[0].equalValue[1]", ("must be a string", "null")),
    ("notEqualValue mapping", check_with(equalValue=DELETE, notEqualValue={"a": 1}), "checkField[0].notEqualValue", ("must be a list of strings", "a mapping")),
    ("notEqualValue number item", check_with(equalValue=DELETE, notEqualValue=[1]), "checkField[0].notEqualValue[0]", ("must be a string", "number 1")),
    ("nilValue string", check_with(equalValue=DELETE, nilValue="true"), "checkField[0].nilValue", ("must be true or false", "string 'true'")),
    ("nilValue number", check_with(equalValue=DELETE, nilValue=1), "checkField[0].nilValue", ("must be true or false", "number 1")),
    ("no operator", check_with(equalValue=DELETE), "checkField[0]", ("has no operator",)),
    ("subField without name", check_with(subIdentifierName=DELETE, subIdentifierValue=DELETE), "checkField[0].subField", ("needs subIdentifierName",)),
    ("subIdentifierValue without name", check_with(subIdentifierName=DELETE, subField=DELETE), "checkField[0].subIdentifierValue", ("needs subIdentifierName",)),
    ("name without subField", check_with(subField=DELETE), "checkField[0]", ("needs subField",)),
    ("subIdentifierName list", check_with(subIdentifierName=["name"]), "checkField[0].subIdentifierName", ("must be a string", "a list")),
    ("subIdentifierName empty", check_with(subIdentifierName=""), "checkField[0].subIdentifierName", ("must not be an empty string",)),
    ("subIdentifierValue empty", check_with(subIdentifierValue=[]), "checkField[0].subIdentifierValue", ("must not be an empty list",)),
    ("subIdentifierValue string", check_with(subIdentifierValue="app"), "checkField[0].subIdentifierValue", ("must be a list of strings",)),
    ("subField empty", check_with(subField=[]), "checkField[0].subField", ("must not be an empty list",)),
    ("subField item number", check_with(subField=["ready", 0]), "checkField[0].subField[1]", ("must be a string",)),
    ("filter condition invalid", body_with(filterField=[{"field": ["status", "phase"]}]), "filterField[0]", ("has no operator",)),
]


@pytest.mark.parametrize(
    ("body", "path", "problem_words"),
    [case[1:] for case in INVALID_BODIES],
    ids=[case[0] for case in INVALID_BODIES],
)
def test_invalid_rule_body(body: Any, path: str, problem_words: tuple[str, ...]) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules({"PodBroken": body}, source="rules/pods.yaml")
    error = caught.value
    message = str(error)

    assert error.rule == "PodBroken"
    assert error.path == path
    assert error.source == "rules/pods.yaml"
    for word in problem_words:
        assert word in error.problem
    assert "'PodBroken'" in message
    assert f"at {path or '<root>'}:" in message
    assert error.problem in message
    assert message.startswith("rules/pods.yaml: ")


def test_valid_body_parses() -> None:
    # The base of the invalid cases is valid, so each case tests only its own change.
    (rule,) = parse_rules({"PodBroken": VALID_BODY})
    assert rule.name == "PodBroken"


@pytest.mark.parametrize("document", [[], ["PodA"], "PodA: {}", 5, None, True])
def test_document_not_mapping(document: Any) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules(document, source="rules/pods.yaml")
    assert caught.value.rule == ""
    assert caught.value.path == ""
    assert "document must be a mapping of rule name to rule body" in caught.value.problem
    assert "rules/pods.yaml" in str(caught.value)


@pytest.mark.parametrize(("name", "shown"), [(5, "number 5"), ("", "string ''"), ("   ", "string '   '"), (None, "null"), (True, "boolean true")])
def test_rule_name_not_string(name: Any, shown: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules({name: VALID_BODY})
    assert caught.value.rule == str(name)
    assert caught.value.path == ""
    assert "rule name must be a non-blank string" in caught.value.problem
    assert shown in caught.value.problem


def test_first_invalid_rule_is_named() -> None:
    document = {"PodFine": VALID_BODY, "PodBad": body_with(duration=-5), "PodAlsoBad": body_with(resource=1)}
    with pytest.raises(RuleError) as caught:
        parse_rules(document)
    assert caught.value.rule == "PodBad"
    assert caught.value.path == "duration"


def test_second_condition_path_index() -> None:
    body = copy.deepcopy(VALID_BODY)
    body["checkField"].append({"field": ["status", "phase"], "equalValue": [1]})
    with pytest.raises(RuleError) as caught:
        parse_rules({"PodBroken": body})
    assert caught.value.path == "checkField[1].equalValue[0]"


def test_error_without_source() -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules({"PodBroken": body_with(duration=-1)})
    assert str(caught.value).startswith("rule 'PodBroken' at duration: ")


def test_empty_strings_allowed_as_values() -> None:
    (rule,) = parse_rules({"ServiceDeleting": {"resource": "Service", "checkField": [{"field": ["metadata", "deletionTimestamp"], "notEqualValue": [""]}]}})
    assert rule.check_fields[0].not_equal_value == ("",)


def test_empty_filter_field_allowed() -> None:
    (rule,) = parse_rules({"PodFine": body_with(filterField=[])})
    assert rule.filter_fields == ()
    (rule,) = parse_rules({"PodFine": body_with(filterField=DELETE)})
    assert rule.filter_fields == ()


def test_integer_and_zero_durations_allowed() -> None:
    (rule,) = parse_rules({"PodFine": body_with(duration=0)})
    assert rule.duration_seconds == 0.0
    (rule,) = parse_rules({"PodFine": body_with(duration=2.5)})
    assert rule.duration_seconds == 2.5
