"""Invalid rule documents: each kind of mistake raises RuleError naming the rule, the path and the problem."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kdiag.errors import RuleError
from kdiag.rules import check_rules, parse_rules

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
    # Operators added to the original format
    ("exists string", check_with(equalValue=DELETE, exists="yes"), "checkField[0].exists", ("must be true or false", "string 'yes'")),
    ("prefix string", check_with(equalValue=DELETE, prefix="Error"), "checkField[0].prefix", ("must be a list of strings",)),
    ("prefix empty item", check_with(equalValue=DELETE, prefix=["Error", ""]), "checkField[0].prefix[1]", ("must not be an empty string",)),
    ("substring empty", check_with(equalValue=DELETE, substring=[]), "checkField[0].substring", ("must not be an empty list",)),
    ("substring number item", check_with(equalValue=DELETE, substring=[429]), "checkField[0].substring[0]", ("must be a string", "number 429")),
    ("regex invalid", check_with(equalValue=DELETE, regex="secrets? (not found"), "checkField[0].regex", ("invalid regular expression", "missing ), unterminated subpattern", "position 9")),
    ("regex list", check_with(equalValue=DELETE, regex=["a", "b"]), "checkField[0].regex", ("must be a string", "a list")),
    ("regex empty", check_with(equalValue=DELETE, regex=""), "checkField[0].regex", ("must not be an empty string",)),
    ("greaterThan word", check_with(equalValue=DELETE, greaterThan="lots"), "checkField[0].greaterThan", ("must be a number or a Kubernetes quantity", "string 'lots'")),
    ("lessThan bad suffix", check_with(equalValue=DELETE, lessThan="1GB"), "checkField[0].lessThan", ("Kubernetes quantity", "string '1GB'")),
    ("greaterOrEqual boolean", check_with(equalValue=DELETE, greaterOrEqual=True), "checkField[0].greaterOrEqual", ("must be a number", "boolean true")),
    ("lessOrEqual nan", check_with(equalValue=DELETE, lessOrEqual=float("nan")), "checkField[0].lessOrEqual", ("must be a number",)),
    ("length number", check_with(equalValue=DELETE, length=0), "checkField[0].length", ("mapping of comparison to length", "number 0")),
    ("length empty", check_with(equalValue=DELETE, length={}), "checkField[0].length", ("mapping of comparison to length",)),
    ("length unknown key", check_with(equalValue=DELETE, length={"moreThan": 0}), "checkField[0].length.moreThan", ("unknown key", "Did you mean")),
    ("length negative", check_with(equalValue=DELETE, length={"greaterThan": -1}), "checkField[0].length.greaterThan", ("whole number >= 0", "number -1")),
    ("length float", check_with(equalValue=DELETE, length={"equal": 1.5}), "checkField[0].length.equal", ("whole number >= 0",)),
    ("match other", check_with(match="some"), "checkField[0].match", ("must be any or all", "string 'some'")),
    ("match without list", body_with(checkField=[{"field": ["status", "phase"], "equalValue": ["Running"], "match": "all"}]), "checkField[0].match", ("match needs several values",)),
    # Path syntax
    ("path index", check_with(field=["status", "containerStatuses", "[0]"]), "checkField[0].field[2]", ("list indexes are not supported",)),
    ("path glued fan-out", check_with(field=["status", "containerStatuses[*]"]), "checkField[0].field[1]", ("as a segment of its own",)),
    ("path bracket key", check_with(field=["status", "a]b"]), "checkField[0].field[1]", ("cannot contain [ or ]",)),
    ("path leading fan-out", check_with(field=["[*]", "status"]), "checkField[0].field[0]", ("cannot start with [*]",)),
    ("subField leading fan-out", check_with(subField=["[*]", "ready"]), "checkField[0].subField[0]", ("cannot start with [*]",)),
    ("field ends in fan-out with selection", check_with(field=["status", "containerStatuses", "[*]"]), "checkField[0].field", ("must end at the list",)),
    ("subIdentifierName fan-out", check_with(subIdentifierName="[*]"), "checkField[0].subIdentifierName", ("not [*]",)),
    # Timing keys
    ("durationFrom string", body_with(durationFrom="status.startTime"), "durationFrom", ("must be a path", "string 'status.startTime'")),
    ("durationFrom empty", body_with(durationFrom=[]), "durationFrom", ("must not be an empty list",)),
    ("durationFrom index", body_with(durationFrom=["status", "conditions", "[1]", "lastTransitionTime"]), "durationFrom[2]", ("list indexes are not supported",)),
    ("durationFrom unknown key", body_with(durationFrom={"field": ["status", "conditions"], "subIdentifierName": "type", "subField": ["lastTransitionTime"], "equalValue": ["x"]}), "durationFrom.equalValue", ("unknown key",)),
    ("durationFrom without field", body_with(durationFrom={"subField": ["lastTransitionTime"]}), "durationFrom", ("missing required key field",)),
    ("durationFrom name without subField", body_with(durationFrom={"field": ["status", "conditions"], "subIdentifierName": "type"}), "durationFrom", ("needs subField",)),
    ("every zero", body_with(every=0), "every", ("> 0", "number 0")),
    ("every negative", body_with(every=-30), "every", ("> 0",)),
    ("every string", body_with(every="5m"), "every", ("must be a number of seconds", "string '5m'")),
    ("every infinite", body_with(every=float("inf")), "every", ("finite",)),
    ("jitter above one", body_with(every=60, jitter=1.5), "jitter", ("between 0 and 1", "number 1.5")),
    ("jitter negative", body_with(every=60, jitter=-0.1), "jitter", ("between 0 and 1",)),
    ("jitter boolean", body_with(every=60, jitter=True), "jitter", ("between 0 and 1", "boolean true")),
    ("jitter without every", body_with(jitter=0.5), "jitter", ("needs every",)),
    # References
    ("references mapping", body_with(references={"name": "a"}), "references", ("must be a list of reference declarations",)),
    ("reference not mapping", body_with(references=["PodSecrets"]), "references[0]", ("must be a mapping",)),
    ("reference without name", body_with(references=[{"builtin": "PodSecrets"}]), "references[0]", ("missing required key name",)),
    ("reference bad name", body_with(references=[{"name": "my secrets", "builtin": "PodSecrets"}]), "references[0].name", ("invalid reference name",)),
    ("reference duplicate name", body_with(references=[{"name": "a", "builtin": "PodSecrets"}, {"name": "a", "builtin": "PodNode"}]), "references[1].name", ("duplicate reference name",)),
    ("reference unknown kind", body_with(references=[{"name": "a", "kind": "Secrets", "field": ["spec", "x"]}]), "references[0].kind", ("unknown kind 'Secrets'", "Did you mean Secret?")),
    ("reference kind and kindField", body_with(references=[{"name": "a", "kind": "Secret", "kindField": ["spec", "kind"], "field": ["spec", "x"]}]), "references[0]", ("exactly one of kind",)),
    ("reference no kind", body_with(references=[{"name": "a", "field": ["spec", "x"]}]), "references[0]", ("exactly one of kind",)),
    ("reference no field", body_with(references=[{"name": "a", "kind": "Secret"}]), "references[0]", ("missing required key field",)),
    ("reference unknown key", body_with(references=[{"name": "a", "kind": "Secret", "field": ["spec", "x"], "keys": ["spec", "k"]}]), "references[0].keys", ("unknown key", "Did you mean key?")),
    ("reference field leading fan-out", body_with(references=[{"name": "a", "kind": "Secret", "field": ["[*]", "name"]}]), "references[0].field[0]", ("cannot start with [*]",)),
    ("reference key on service", body_with(references=[{"name": "a", "kind": "Service", "field": ["spec", "x"], "key": ["spec", "k"]}]), "references[0].key", ("Service has no data keys",)),
    ("reference key other list", body_with(references=[{"name": "a", "kind": "Secret", "field": ["spec", "containers", "[*]", "name"], "key": ["spec", "volumes", "[*]", "key"]}]), "references[0].key", ("must be the same as in field",)),
    ("reference namespace deeper", body_with(references=[{"name": "a", "kind": "Secret", "field": ["spec", "name"], "namespace": ["spec", "namespaces", "[*]"]}]), "references[0].namespace", ("more [*] steps than field",)),
    ("reference namespace word", body_with(references=[{"name": "a", "kind": "Secret", "field": ["spec", "x"], "namespace": "other"}]), "references[0].namespace", ("must be same", "string 'other'")),
    ("reference cluster kind same namespace", body_with(references=[{"name": "a", "kind": "Node", "field": ["spec", "nodeName"], "namespace": "same"}]), "references[0].namespace", ("cluster-scoped",)),
    ("reference namespaced kind cluster", body_with(references=[{"name": "a", "kind": "Secret", "field": ["spec", "x"], "namespace": "cluster"}]), "references[0].namespace", ("is namespaced",)),
    ("reference sources and field", body_with(references=[{"name": "a", "kind": "Secret", "field": ["spec", "x"], "sources": [{"field": ["spec", "y"]}]}]), "references[0].field", ("either in sources or directly",)),
    ("reference sources empty", body_with(references=[{"name": "a", "kind": "Secret", "sources": []}]), "references[0].sources", ("non-empty list of sources",)),
    ("reference source unknown key", body_with(references=[{"name": "a", "kind": "Secret", "sources": [{"field": ["spec", "x"], "kind": "Secret"}]}]), "references[0].sources[0].kind", ("unknown key",)),
    ("reference unknown builtin", body_with(references=[{"name": "a", "builtin": "PodSecret"}]), "references[0].builtin", ("unknown builtin reference", "Did you mean PodSecrets?")),
    ("reference builtin other resource", body_with(references=[{"name": "a", "builtin": "IngressServices"}]), "references[0].builtin", ("reads Ingress objects", "resource is Pod")),
    ("reference builtin with field", body_with(references=[{"name": "a", "builtin": "PodSecrets", "field": ["spec"]}]), "references[0].field", ("takes only name and builtin",)),
    ("referenceMissing undeclared", body_with(checkField=[{"referenceMissing": "secrets"}]), "checkField[0].referenceMissing", ("no reference named 'secrets'", "declares no references")),
    ("referenceMissing other name", body_with(references=[{"name": "tls", "builtin": "PodSecrets"}], checkField=[{"referenceMissing": "secret"}]), "checkField[0].referenceMissing", ("no reference named 'secret'", "Declared references are tls")),
    ("referenceMissing with field", body_with(references=[{"name": "s", "builtin": "PodSecrets"}], checkField=[{"referenceMissing": "s", "field": ["type"]}]), "checkField[0].field", ("condition of its own",)),
    ("two reference operators", body_with(references=[{"name": "s", "builtin": "PodSecrets"}], checkField=[{"referenceMissing": "s", "referenceKeyMissing": "s"}]), "checkField[0].referenceKeyMissing", ("not several",)),
    ("referenceKeyMissing without key", body_with(references=[{"name": "n", "builtin": "PodNode"}], checkField=[{"referenceKeyMissing": "n"}]), "checkField[0].referenceKeyMissing", ("reads no key",)),
    ("referenceField not mapping", body_with(references=[{"name": "s", "builtin": "PodSecrets"}], checkField=[{"referenceField": "s"}]), "checkField[0].referenceField", ("must be a mapping",)),
    ("referenceField without name", body_with(references=[{"name": "s", "builtin": "PodSecrets"}], checkField=[{"referenceField": {"field": ["type"], "equalValue": ["Opaque"]}}]), "checkField[0].referenceField", ("missing required key name",)),
    ("referenceField without operator", body_with(references=[{"name": "s", "builtin": "PodSecrets"}], checkField=[{"referenceField": {"name": "s", "field": ["type"]}}]), "checkField[0].referenceField", ("has no operator",)),
    ("referenceField bad regex", body_with(references=[{"name": "s", "builtin": "PodSecrets"}], checkField=[{"referenceField": {"name": "s", "field": ["type"], "regex": "("}}]), "checkField[0].referenceField.regex", ("invalid regular expression",)),
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


def test_every_problem_collected() -> None:
    body = copy.deepcopy(VALID_BODY)
    body.update(duration=-1, resource=5, severity="high")
    body["checkField"].append({"field": ["status", "phase"], "regex": "("})
    body["checkField"].append({"field": ["status", "containerStatuses[*]"], "equalValue": [1]})
    _, problems = check_rules({"PodFine": VALID_BODY, "PodBroken": body, "PodAlsoBroken": body_with(every=0)}, source="rules/pods.yaml")
    located = [(problem.rule, problem.path) for problem in problems]
    assert located == [
        ("PodBroken", "severity"),
        ("PodBroken", "resource"),
        ("PodBroken", "duration"),
        ("PodBroken", "checkField[1].regex"),
        ("PodBroken", "checkField[2].field[1]"),
        ("PodBroken", "checkField[2].equalValue[0]"),
        ("PodAlsoBroken", "every"),
    ]
    for problem in problems:
        assert problem.source == "rules/pods.yaml"


def test_check_rules_returns_valid_rules() -> None:
    rules, problems = check_rules({"PodFine": VALID_BODY, "PodBroken": body_with(duration=-1)})
    assert [rule.name for rule in rules] == ["PodFine"]
    assert len(problems) == 1


def test_invalid_reference_not_reported_twice() -> None:
    body = body_with(references=[{"name": "tls", "kind": "Secrets", "field": ["spec", "x"]}], checkField=[{"referenceMissing": "tls"}])
    _, problems = check_rules({"PodBroken": body})
    assert [problem.path for problem in problems] == ["references[0].kind"]


def test_new_keys_accepted_together() -> None:
    body = body_with(
        durationFrom={"field": ["status", "conditions"], "subIdentifierName": "type", "subIdentifierValue": ["Ready"], "subField": ["lastTransitionTime"]},
        every=300,
        jitter=0.5,
        references=[{"name": "secrets", "builtin": "PodSecrets"}, {"name": "claims", "kind": "PersistentVolumeClaim", "field": ["spec", "volumes", "[*]", "persistentVolumeClaim", "claimName"]}],
        filterField=[{"field": ["spec", "containers", "[*]", "image"], "regex": ":latest$", "match": "all"}],
        checkField=[
            {"field": ["status", "containerStatuses", "[*]", "restartCount"], "greaterThan": 5},
            {"field": ["spec", "containers"], "length": {"greaterOrEqual": 1}},
            {"referenceMissing": "secrets"},
            {"referenceField": {"name": "claims", "field": ["status", "phase"], "equalValue": ["Lost"]}},
        ],
    )
    (rule,) = parse_rules({"PodFine": body})
    assert rule.every_seconds == 300
    assert [declaration.name for declaration in rule.references] == ["secrets", "claims"]
