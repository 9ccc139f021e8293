"""Property tests: evaluate never raises, and invalid rule documents always raise RuleError."""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdiag.errors import KdiagError, RuleError
from kdiag.rules import (
    BUILTIN_REFERENCES,
    Match,
    ReferenceDeclaration,
    ReferenceKey,
    ReferenceSource,
    Rule,
    SharedResults,
    extract_references,
    load_rules,
    parse_rules,
)
from kdiag.rules.references import ExtractorGroup, _compile_source
from kdiag.rules.tree import RuleTree

REPO_ROOT = Path(__file__).resolve().parents[3]

# Every operator and selection form, so that evaluate runs each compiled code path.
OPERATOR_RULES: dict[str, Any] = {
    "Equal": {"resource": "Pod", "checkField": [{"field": ["status", "phase"], "equalValue": ["Running", ""]}]},
    "NotEqual": {"resource": "Pod", "checkField": [{"field": ["metadata", "deletionTimestamp"], "notEqualValue": [""]}]},
    "Nil": {"resource": "Pod", "checkField": [{"field": ["status"], "nilValue": True}]},
    "NotNil": {"resource": "Pod", "checkField": [{"field": ["status"], "nilValue": False}]},
    "Combined": {"resource": "Pod", "checkField": [{"field": ["a", "b", "c", "d"], "nilValue": False, "equalValue": ["x"], "notEqualValue": ["y"]}]},
    "Named": {
        "resource": "Pod",
        "filterField": [{"field": ["status", "conditions"], "subIdentifierName": "type", "subIdentifierValue": ["Ready"], "subField": ["status"], "nilValue": False}],
        "checkField": [{"field": ["status", "containerStatuses"], "subIdentifierName": "name", "subIdentifierValue": ["a", "1"], "subField": ["ready"], "equalValue": ["false"]}],
    },
    "AnyElement": {
        "resource": "Pod",
        "checkField": [{"field": ["status", "containerStatuses"], "subIdentifierName": "name", "subField": ["state", "waiting", "reason"], "notEqualValue": ["x"]}],
    },
    "AnyElementNil": {
        "resource": "Pod",
        "checkField": [{"field": ["status", "initContainerStatuses"], "subIdentifierName": "name", "subField": ["ready"], "nilValue": True}],
    },
    "Exists": {"resource": "Pod", "checkField": [{"field": ["status", "phase"], "exists": True}, {"field": ["metadata", "labels"], "exists": False}]},
    "Text": {
        "resource": "Pod",
        "checkField": [
            {"field": ["status", "reason"], "prefix": ["Ev", "E"]},
            {"field": ["status", "message"], "substring": ["a", "b"], "regex": "(a|b)+"},
        ],
    },
    "Numeric": {
        "resource": "Pod",
        "checkField": [
            {"field": ["status", "phase"], "greaterThan": "100m", "lessOrEqual": "1Gi"},
            {"field": ["status", "reason"], "greaterOrEqual": -5, "lessThan": 1e3},
        ],
    },
    "Length": {"resource": "Pod", "checkField": [{"field": ["status", "conditions"], "length": {"greaterThan": 0, "notEqual": 3}}]},
    "FanOutAny": {
        "resource": "Pod",
        "filterField": [{"field": ["status", "conditions", "[*]", "type"], "nilValue": False}],
        "checkField": [{"field": ["status", "containerStatuses", "[*]", "state", "waiting", "reason"], "regex": "Back", "exists": True}],
    },
    "FanOutAll": {
        "resource": "Pod",
        "checkField": [
            {"field": ["status", "containerStatuses", "[*]", "ready"], "equalValue": ["true"], "match": "all"},
            {"field": ["status", "conditions", "[*]", "[*]"], "length": {"lessThan": 10}, "match": "all"},
        ],
    },
    "SelectFanOut": {
        "resource": "Pod",
        "checkField": [
            {"field": ["status", "containerStatuses"], "subIdentifierName": "name", "subField": ["state", "[*]"], "substring": ["x"]},
            {"field": ["status", "conditions"], "subIdentifierName": "type", "subIdentifierValue": ["Ready"], "subField": ["status"], "equalValue": ["True"], "match": "all"},
        ],
    },
    "WithReferences": {
        "resource": "Pod",
        "durationFrom": ["status", "conditions", "[*]", "lastTransitionTime"],
        "every": 60,
        "references": [{"name": "secrets", "builtin": "PodSecrets"}, {"name": "node", "builtin": "PodNode"}],
        "checkField": [
            {"field": ["status", "phase"], "nilValue": False},
            {"referenceMissing": "secrets"},
            {"referenceKeyMissing": "secrets"},
            {"referenceField": {"name": "node", "field": ["status", "conditions", "[*]", "status"], "equalValue": ["False"]}},
        ],
    },
}

RULES: list[Rule] = list(load_rules(REPO_ROOT / "rules")) + parse_rules(OPERATOR_RULES, source="test")
KINDS = sorted({rule.kind for rule in RULES})
TREES = {kind: RuleTree(kind, [rule for rule in RULES if rule.kind == kind]) for kind in KINDS}
EXTRACTOR_GROUPS = [
    ExtractorGroup(declaration.extractor for rule in RULES if rule.kind == kind for declaration in rule.references) for kind in KINDS
]

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_KEYS = st.sampled_from(["kind", "status", "phase", "name", "type", "ready", "reason", "state", "waiting"]) | st.text(max_size=10)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(JSON_KEYS, children, max_size=5),
    max_leaves=30,
)

# Objects shaped like the ones the rules read, with any JSON value in any place. The values are
# small because an object contains many of them and Hypothesis rejects inputs that are too large.
SMALL_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(JSON_KEYS, children, max_size=3),
    max_leaves=5,
)
ELEMENTS = st.one_of(
    SMALL_VALUES,
    st.fixed_dictionaries(
        {},
        optional={
            "name": SMALL_VALUES | st.sampled_from(["a", "sidecar", "1"]),
            "type": SMALL_VALUES | st.sampled_from(["Ready", "Failed", "Progressing", "ScalingActive"]),
            "status": SMALL_VALUES | st.sampled_from(["True", "False", "Unknown"]),
            "reason": SMALL_VALUES,
            "ready": SMALL_VALUES,
            "state": st.fixed_dictionaries({}, optional={"waiting": st.fixed_dictionaries({}, optional={"reason": SMALL_VALUES})}) | SMALL_VALUES,
            "lastState": SMALL_VALUES,
        },
    ),
)
STATUS = st.one_of(
    SMALL_VALUES,
    st.fixed_dictionaries(
        {},
        optional={
            "phase": SMALL_VALUES | st.sampled_from(["Running", "Pending", "Failed"]),
            "reason": SMALL_VALUES,
            "conditions": st.lists(ELEMENTS, max_size=4) | SMALL_VALUES,
            "containerStatuses": st.lists(ELEMENTS, max_size=4) | SMALL_VALUES,
            "initContainerStatuses": st.lists(ELEMENTS, max_size=4) | SMALL_VALUES,
        },
    ),
)
PARTIAL_OBJECTS = st.fixed_dictionaries(
    {"kind": st.sampled_from(KINDS)},
    optional={
        "metadata": st.fixed_dictionaries({}, optional={"deletionTimestamp": SMALL_VALUES, "labels": SMALL_VALUES, "name": SMALL_VALUES}) | SMALL_VALUES,
        "status": STATUS,
        "type": SMALL_VALUES | st.just("Warning"),
        "reason": SMALL_VALUES,
        "message": SMALL_VALUES,
        "involvedObject": SMALL_VALUES,
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "nodeName": SMALL_VALUES,
                "containers": st.lists(
                    st.fixed_dictionaries({}, optional={"env": st.lists(st.fixed_dictionaries({}, optional={"valueFrom": SMALL_VALUES}), max_size=3) | SMALL_VALUES}),
                    max_size=3,
                )
                | SMALL_VALUES,
                "volumes": st.lists(ELEMENTS, max_size=3) | SMALL_VALUES,
            },
        )
        | SMALL_VALUES,
    },
)


def resolve_to_self(kind: str, namespace: str, name: str) -> Any:
    """A resolver whose every referenced object is the object under test, so reference conditions read JSON too."""
    return CURRENT_OBJECT[0] if isinstance(CURRENT_OBJECT[0], dict) else None


CURRENT_OBJECT: list[Any] = [None]


def assert_evaluates_cleanly(obj: Any) -> None:
    CURRENT_OBJECT[0] = obj
    # Every rule of the set reuses the results of equal conditions through one SharedResults,
    # as the worker evaluates them, and must match exactly as when it evaluates alone.
    shared = SharedResults(obj)
    shared_with_references = SharedResults(obj)
    for rule in RULES:
        assert rule.evaluate(obj, shared=shared) == rule.evaluate(obj)
        assert rule.evaluate(obj, resolve_to_self, shared=shared_with_references) == rule.evaluate(obj, resolve_to_self)
    # The worker evaluates a kind's rules through its RuleTree, which must give each rule's own match.
    for tree in TREES.values():
        for resolve in (None, resolve_to_self):
            expected = [match for match in (rule.evaluate(obj, resolve) for rule in tree.rules) if match is not None]
            found = tree.matches(obj, resolve)
            assert found == expected
            assert [list(match.context.items()) for match in found] == [list(match.context.items()) for match in expected]
    for rule in RULES:
        for result in (rule.evaluate(obj), rule.evaluate(obj, resolve_to_self)):
            if result is None:
                continue
            assert isinstance(result, Match)
            assert result.rule is rule
            for path, value in result.context.items():
                assert isinstance(path, str)
                assert isinstance(value, str)
        since = rule.active_since_ms(obj)
        assert since is None or isinstance(since, int)
        for declaration in rule.references:
            for reference in extract_references(declaration, obj):
                assert isinstance(reference, ReferenceKey)
    # The worker extracts the declarations of a kind's rules in one walk, with the same results.
    for group in EXTRACTOR_GROUPS:
        for extractor, references in group.extract(obj).items():
            assert references == (extractor.extract(obj) if isinstance(obj, Mapping) else [])


@given(JSON_VALUES)
def test_evaluate_any_json_value(obj: Any) -> None:
    assert_evaluates_cleanly(obj)


@given(st.sampled_from(KINDS), st.dictionaries(JSON_KEYS, JSON_VALUES, max_size=6))
def test_evaluate_any_object_of_known_kind(kind: str, fields: dict[str, Any]) -> None:
    assert_evaluates_cleanly({**fields, "kind": kind})


@given(PARTIAL_OBJECTS)
def test_evaluate_partial_objects(obj: dict[str, Any]) -> None:
    assert_evaluates_cleanly(obj)


def test_evaluate_huge_list() -> None:
    containers = [{"name": str(index), "ready": True, "state": {"running": {}}} for index in range(100_000)]
    containers.append({"name": "last", "ready": False, "state": {"waiting": {"reason": "CrashLoopBackOff"}}})
    obj = {"kind": "Pod", "status": {"phase": "Running", "containerStatuses": containers}}
    assert_evaluates_cleanly(obj)
    (crash_rule,) = [rule for rule in RULES if rule.name == "PodCrashLoopBackOff"]
    match = crash_rule.evaluate(obj)
    assert match is not None
    assert match.context == {"status.containerStatuses[name=last].state.waiting.reason": "CrashLoopBackOff"}


def test_evaluate_huge_list_fan_out() -> None:
    containers = [{"name": str(index), "ready": True, "restartCount": index, "state": {"running": {}}} for index in range(100_000)]
    obj = {"kind": "Pod", "status": {"phase": "Running", "containerStatuses": containers, "conditions": [["True"]] * 1000}}
    assert_evaluates_cleanly(obj)
    (all_ready,) = [rule for rule in RULES if rule.name == "FanOutAll"]
    match = all_ready.evaluate(obj)
    assert match is not None
    assert match.context["status.containerStatuses[*].ready"].endswith(" and 99990 more")


def test_evaluate_huge_reference_lists() -> None:
    volumes = [{"name": f"v{index}", "secret": {"secretName": f"s{index}", "items": [{"key": "a"}, {"key": "b"}]}} for index in range(20_000)]
    pod = {"kind": "Pod", "metadata": {"namespace": "x"}, "spec": {"volumes": volumes}}
    (declaration,) = [rule for rule in RULES if rule.name == "WithReferences"][0].references[:1]
    assert len(extract_references(declaration, pod)) == 40_000


def test_evaluate_deeply_nested_value() -> None:
    nested: Any = "leaf"
    for _ in range(5000):
        nested = [nested]
    obj = {"kind": "Pod", "status": nested, "metadata": {"deletionTimestamp": nested}}
    assert_evaluates_cleanly(obj)


# Invalid rule documents: a valid rule with exactly one change that makes it invalid.

NAMES = st.text(st.characters(categories=["Lu", "Ll", "Nd"]), min_size=1, max_size=12)
STRING_LISTS = st.lists(st.text(max_size=8), min_size=1, max_size=3)
# Map keys never contain brackets; "[*]" is the fan-out segment and may follow the first key.
KEYS = st.text(min_size=1, max_size=8).filter(lambda key: "[" not in key and "]" not in key)
PATHS = st.builds(lambda first, rest: [first, *rest], KEYS, st.lists(KEYS | st.just("[*]"), max_size=3))
PLAIN_PATHS = st.lists(KEYS, min_size=1, max_size=4)
NEW_OPERATORS = {
    "exists": st.booleans(),
    "prefix": st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=2),
    "substring": st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=2),
    "regex": st.sampled_from(["a", "^x$", "(?i)back-?off", "[0-9]+Mi"]),
    "greaterThan": st.integers(-100, 100) | st.sampled_from(["500Mi", "100m", "1e3", "1.5"]),
    "greaterOrEqual": st.integers(-100, 100),
    "lessThan": st.floats(-1e6, 1e6),
    "lessOrEqual": st.sampled_from(["2Gi", "0"]),
    "length": st.dictionaries(st.sampled_from(["equal", "notEqual", "greaterThan", "greaterOrEqual", "lessThan", "lessOrEqual"]), st.integers(0, 5), min_size=1),
}


@st.composite
def valid_conditions(draw: st.DrawFn) -> dict[str, Any]:
    condition: dict[str, Any] = {"field": draw(PATHS)}
    operators = draw(st.sets(st.sampled_from(["equalValue", "notEqualValue", "nilValue", *NEW_OPERATORS]), min_size=1, max_size=3))
    for operator in operators:
        if operator == "nilValue":
            condition[operator] = draw(st.booleans())
        elif operator in NEW_OPERATORS:
            condition[operator] = draw(NEW_OPERATORS[operator])
        else:
            condition[operator] = draw(STRING_LISTS)
    if draw(st.booleans()):
        condition["field"] = draw(PLAIN_PATHS)
        condition["subIdentifierName"] = draw(KEYS.filter(lambda key: key != "[*]"))
        condition["subField"] = draw(PATHS)
        if draw(st.booleans()):
            condition["subIdentifierValue"] = draw(STRING_LISTS)
    if "[*]" in condition["field"] or "subIdentifierName" in condition or "[*]" in condition.get("subField", []):
        if draw(st.booleans()):
            condition["match"] = draw(st.sampled_from(["any", "all"]))
    return condition


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resource": draw(NAMES),
        "checkField": draw(st.lists(valid_conditions(), min_size=1, max_size=2)),
    }
    if draw(st.booleans()):
        body["duration"] = draw(st.integers(0, 10**6) | st.floats(0, 1e6))
    if draw(st.booleans()):
        body["filterField"] = draw(st.lists(valid_conditions(), max_size=2))
    if draw(st.booleans()):
        body["durationFrom"] = draw(PATHS)
    if draw(st.booleans()):
        body["every"] = draw(st.integers(1, 10**6) | st.floats(0.001, 1e6))
        if draw(st.booleans()):
            body["jitter"] = draw(st.floats(0, 1))
    return body


VALID_DOCUMENTS = st.dictionaries(NAMES, valid_bodies(), min_size=1, max_size=2)

NOT_A_LIST = st.none() | st.booleans() | st.integers() | st.text() | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
NOT_A_STRING = st.none() | st.booleans() | st.integers() | st.floats() | st.lists(st.text(max_size=3), max_size=2)
NOT_A_BOOL = st.none() | st.integers() | st.text() | st.lists(st.booleans(), max_size=2)
NOT_A_DURATION = NOT_A_STRING.filter(lambda value: isinstance(value, bool) or not isinstance(value, (int, float))) | st.integers(max_value=-1) | st.floats(max_value=-1e-9) | st.just(float("nan")) | st.just(float("inf"))


def break_condition(draw: st.DrawFn, condition: dict[str, Any]) -> None:
    """Change one condition in place so that it becomes invalid."""
    mutation = draw(
        st.sampled_from(
            [
                "unknown key",
                "field missing",
                "field empty",
                "field not list",
                "field item",
                "values not list",
                "values item",
                "values empty",
                "nil not bool",
                "no operator",
                "sub field alone",
                "sub value alone",
                "sub name alone",
                "sub name not string",
                "regex invalid",
                "threshold invalid",
                "length invalid",
                "match invalid",
                "path bracket",
                "leading fan-out",
            ]
        )
    )
    if mutation == "unknown key":
        condition[draw(st.text(min_size=1, max_size=12).filter(lambda key: key not in CONDITION_KEYS))] = draw(SMALL_VALUES)
    elif mutation == "field missing":
        del condition["field"]
    elif mutation == "field empty":
        condition["field"] = []
    elif mutation == "field not list":
        condition["field"] = draw(NOT_A_LIST)
    elif mutation == "field item":
        condition["field"].insert(draw(st.integers(0, len(condition["field"]))), draw(NOT_A_STRING | st.just("")))
    elif mutation in ("values not list", "values item", "values empty"):
        key = draw(st.sampled_from(["equalValue", "notEqualValue", "subIdentifierValue"]))
        if key == "subIdentifierValue":
            condition.setdefault("subIdentifierName", "name")
            condition.setdefault("subField", ["ready"])
        if mutation == "values not list":
            condition[key] = draw(NOT_A_LIST)
        elif mutation == "values empty":
            condition[key] = []
        else:
            condition[key] = draw(STRING_LISTS) + [draw(NOT_A_STRING)]
    elif mutation == "nil not bool":
        condition["nilValue"] = draw(NOT_A_BOOL)
    elif mutation == "no operator":
        for key in ("equalValue", "notEqualValue", "nilValue", *NEW_OPERATORS):
            condition.pop(key, None)
    elif mutation == "sub field alone":
        condition.pop("subIdentifierName", None)
        condition.pop("subIdentifierValue", None)
        condition["subField"] = draw(PATHS)
    elif mutation == "sub value alone":
        condition.pop("subIdentifierName", None)
        condition.pop("subField", None)
        condition["subIdentifierValue"] = draw(STRING_LISTS)
    elif mutation == "sub name alone":
        condition.pop("subField", None)
        condition["subIdentifierName"] = draw(st.text(min_size=1, max_size=8))
    elif mutation == "sub name not string":
        condition["subIdentifierName"] = draw(NOT_A_STRING | st.just(""))
        condition.setdefault("subField", ["ready"])
    elif mutation == "regex invalid":
        condition["regex"] = draw(st.sampled_from(["(", "[a-", "*x", "a{2,1}", ""]) | NOT_A_STRING)
    elif mutation == "threshold invalid":
        condition[draw(st.sampled_from(["greaterThan", "greaterOrEqual", "lessThan", "lessOrEqual"]))] = draw(
            st.sampled_from(["lots", "1GB", "1 Gi", "", "Mi", float("nan"), True]) | st.none() | st.lists(st.integers(), max_size=2)
        )
    elif mutation == "length invalid":
        condition["length"] = draw(
            st.just({}) | st.integers() | st.dictionaries(st.sampled_from(["equal", "greaterThan"]), st.integers(max_value=-1) | st.booleans() | st.floats(0.5, 0.9), min_size=1)
            | st.dictionaries(st.text(min_size=1, max_size=6).filter(lambda key: key not in ("equal", "notEqual", "greaterThan", "greaterOrEqual", "lessThan", "lessOrEqual")), st.integers(0, 3), min_size=1)
        )
    elif mutation == "match invalid":
        condition["match"] = draw(st.text(max_size=5).filter(lambda text: text not in ("any", "all")) | NOT_A_STRING)
    elif mutation == "path bracket":
        key = draw(st.sampled_from(["field", "subField"])) if "subIdentifierName" in condition else "field"
        condition[key] = list(condition[key]) + [draw(st.sampled_from(["[0]", "a[*]", "]", "[", "[-1]", "items[*]"]))]
    else:
        condition["field"] = ["[*]", *condition["field"]]


CONDITION_KEYS = {
    "field",
    "equalValue",
    "notEqualValue",
    "nilValue",
    "subIdentifierName",
    "subIdentifierValue",
    "subField",
    "exists",
    "prefix",
    "substring",
    "regex",
    "greaterThan",
    "greaterOrEqual",
    "lessThan",
    "lessOrEqual",
    "length",
    "match",
    "referenceMissing",
    "referenceKeyMissing",
    "referenceField",
}
RULE_KEYS = {"duration", "resource", "filterField", "checkField", "durationFrom", "every", "jitter", "references"}


@st.composite
def invalid_documents(draw: st.DrawFn) -> Any:
    document = copy.deepcopy(draw(VALID_DOCUMENTS))
    name = draw(st.sampled_from(sorted(document)))
    body = document[name]
    mutation = draw(
        st.sampled_from(
            [
                "document not mapping",
                "name not string",
                "body not mapping",
                "unknown key",
                "resource",
                "duration",
                "check missing",
                "check empty",
                "conditions not list",
                "condition not mapping",
                "condition",
                "every",
                "jitter",
                "durationFrom",
                "reference",
                "reference condition",
            ]
        )
    )
    if mutation == "document not mapping":
        return draw(NOT_A_LIST.filter(lambda value: not isinstance(value, dict)) | st.just(list(document)))
    if mutation == "name not string":
        document[draw(st.integers() | st.none() | st.booleans() | st.just("") | st.just("  "))] = body
    elif mutation == "body not mapping":
        document[name] = draw(NOT_A_LIST.filter(lambda value: not isinstance(value, dict)) | st.lists(st.integers()))
    elif mutation == "unknown key":
        body[draw(st.text(min_size=1, max_size=12).filter(lambda key: key not in RULE_KEYS))] = draw(SMALL_VALUES)
    elif mutation == "resource":
        body["resource"] = draw(NOT_A_STRING | st.just(""))
    elif mutation == "duration":
        body["duration"] = draw(NOT_A_DURATION)
    elif mutation == "check missing":
        del body["checkField"]
    elif mutation == "check empty":
        body["checkField"] = []
    elif mutation == "conditions not list":
        body[draw(st.sampled_from(["checkField", "filterField"]))] = draw(NOT_A_LIST)
    elif mutation == "condition not mapping":
        conditions = body.setdefault(draw(st.sampled_from(["checkField", "filterField"])), [])
        conditions.insert(draw(st.integers(0, len(conditions))), draw(NOT_A_STRING | st.text()))
    elif mutation == "condition":
        conditions = body.setdefault(draw(st.sampled_from(["checkField", "filterField"])), [])
        if not conditions:
            conditions.append(draw(valid_conditions()))
        break_condition(draw, draw(st.sampled_from(conditions)))
    elif mutation == "every":
        body["every"] = draw(st.integers(max_value=0) | st.floats(max_value=0) | st.just(float("inf")) | NOT_A_STRING.filter(lambda value: isinstance(value, (bool, str, list)) or value is None))
    elif mutation == "jitter":
        body.setdefault("every", 60)
        body["jitter"] = draw(st.floats(1.0001, 10) | st.floats(max_value=-1e-9) | st.booleans() | st.text(max_size=3) | st.none())
    elif mutation == "durationFrom":
        body["durationFrom"] = draw(st.text(max_size=10) | st.just([]) | st.just(["[*]", "x"]) | st.just(["a", "[1]"]) | st.integers() | st.just({"subField": ["x"]}))
    elif mutation == "reference":
        body["resource"] = "Pod"
        body["references"] = [
            draw(
                st.sampled_from(
                    [
                        {"name": "a", "kind": "Secrets", "field": ["spec", "x"]},
                        {"name": "a", "builtin": "IngressServices"},
                        {"name": "a", "builtin": "NoSuchBuiltin"},
                        {"name": "1a", "builtin": "PodSecrets"},
                        {"kind": "Secret", "field": ["spec", "x"]},
                        {"name": "a", "kind": "Service", "field": ["spec", "x"], "key": ["spec", "k"]},
                        {"name": "a", "kind": "Secret", "field": ["spec", "c", "[*]", "n"], "key": ["spec", "d", "[*]", "k"]},
                        {"name": "a", "kind": "Node", "field": ["spec", "nodeName"], "namespace": "same"},
                        {"name": "a", "kind": "Secret"},
                    ]
                )
            )
        ]
    else:
        body["resource"] = "Pod"
        body["references"] = [{"name": "node", "builtin": "PodNode"}]
        body["checkField"].append(
            draw(
                st.sampled_from(
                    [
                        {"referenceMissing": "nodes"},
                        {"referenceKeyMissing": "node"},
                        {"referenceMissing": "node", "field": ["x"]},
                        {"referenceField": {"name": "node", "field": ["x"]}},
                        {"referenceField": {"field": ["x"], "nilValue": True}},
                        {"referenceField": "node"},
                    ]
                )
            )
        )
    return document


@given(VALID_DOCUMENTS)
def test_valid_documents_accepted(document: dict[str, Any]) -> None:
    # Guards the generator that invalid_documents starts from.
    rules = parse_rules(document, source="generated")
    assert [rule.name for rule in rules] == list(document)


@settings(max_examples=200)
@given(invalid_documents())
def test_invalid_documents_rejected(document: Any) -> None:
    try:
        rules = parse_rules(document, source="generated")
    except RuleError as error:
        assert error.problem
        assert isinstance(error.rule, str)
        assert isinstance(error.path, str)
    else:
        raise AssertionError(f"invalid document accepted as {rules!r}: {document!r}")


@given(JSON_VALUES | st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3))
def test_arbitrary_documents_accepted_or_rule_error(document: Any) -> None:
    try:
        parse_rules(document)
    except RuleError:
        pass


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200), st.sampled_from([".yaml", ".json"]))
def test_arbitrary_file_text(text: str, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"rules{suffix}"
        path.write_text(text, encoding="utf-8")
        try:
            load_rules(path)
        except KdiagError:
            pass


@given(VALID_DOCUMENTS)
def test_valid_documents_round_trip_through_files(document: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rules.json"
        path.write_text(json.dumps(document), encoding="utf-8")
        assert load_rules(path).names == tuple(document)


# Compiled reference extraction against the per-source walk

REFERENCE_SCALARS = st.sampled_from(["a", "b", "", "kube-system"]) | st.booleans() | st.none() | st.integers(0, 2)


def rarely_scalar(shaped: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Generate from shaped, or a scalar in about one case of eight, so that most values reach deep."""
    return st.integers(0, 7).flatmap(lambda draw: REFERENCE_SCALARS if draw == 0 else shaped)


def shaped_like(paths: list[tuple[str, ...]]) -> st.SearchStrategy[Any]:
    """Generate values along the given paths: each map key and list element is there or not, and any step may be a scalar."""
    if any(not path for path in paths):
        return REFERENCE_SCALARS | st.lists(REFERENCE_SCALARS, max_size=2)
    if all(path[0] == "[*]" for path in paths):
        element = shaped_like([path[1:] for path in paths])
        return rarely_scalar(st.lists(element, max_size=3) | st.lists(element, max_size=2).map(tuple))
    children: dict[str, list[tuple[str, ...]]] = {}
    for path in paths:
        children.setdefault(path[0], []).append(path[1:])
    optional = {key: shaped_like(rest) for key, rest in children.items()}
    return rarely_scalar(st.fixed_dictionaries({}, optional=optional))


# The paths of the Pod declarations below spec and metadata, so that random Pods contain references.
POD_REFERENCE_PATHS = [
    path[1:]
    for declaration in BUILTIN_REFERENCES.values()
    if declaration.resource == "Pod"
    for source in declaration.sources
    for path in (source.field, source.key, source.optional)
    if path is not None and path[0] == "spec"
]
POD_SPECS = shaped_like(POD_REFERENCE_PATHS)
POD_METADATA = st.fixed_dictionaries({}, optional={"namespace": REFERENCE_SCALARS}) | REFERENCE_SCALARS


def per_source_extract(declaration: ReferenceDeclaration, obj: Any) -> list[ReferenceKey]:
    """Extract with _compile_source, the walk per path that Extractor's one walk must agree with."""
    seen: dict[ReferenceKey, None] = {}
    for source in declaration.sources:
        for reference in _compile_source(declaration.kind, declaration.kind_field, source)(obj):
            seen.setdefault(reference, None)
    return list(seen)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(POD_SPECS, POD_METADATA)
def test_compiled_extraction_matches_per_source(spec: Any, metadata: Any) -> None:
    obj = {"kind": "Pod", "metadata": metadata, "spec": spec}
    for declaration in BUILTIN_REFERENCES.values():
        assert declaration.extract(obj) == per_source_extract(declaration, obj), declaration.name


def test_compiled_extraction_matches_on_corpus(corpus_case: Callable[[str], list[dict[str, Any]]], history: dict[str, list[dict[str, Any]]]) -> None:
    objects = [obj for path in sorted((REPO_ROOT / "samples" / "corpus").glob("*.yaml")) for obj in corpus_case(path.name)]
    objects += [obj for states in history.values() for obj in states]
    extracted = 0
    for obj in objects:
        for declaration in BUILTIN_REFERENCES.values():
            references = declaration.extract(obj)
            assert references == per_source_extract(declaration, obj), declaration.name
            extracted += len(references)
    assert extracted > 0


def test_unpaired_source_uses_per_source_walk() -> None:
    # key reads another list than field, so its values cannot be read from the name's elements.
    source = ReferenceSource(field=("spec", "left", "[*]", "name"), key=("spec", "right", "[*]", "key"))
    declaration = ReferenceDeclaration(name="odd", kind="Secret", sources=(source,))
    obj = {"kind": "Pod", "metadata": {"namespace": "x"}, "spec": {"left": [{"name": "s1"}, {"name": "s2"}], "right": [{"key": "k1"}]}}
    assert declaration.extractor._walk is None
    assert declaration.extract(obj) == [ReferenceKey("Secret", "x", "s1", "k1"), ReferenceKey("Secret", "x", "s2")]
    assert declaration.extract(obj) == per_source_extract(declaration, obj)


def test_deeply_nested_source_uses_per_source_walk() -> None:
    # More nested loops than Python compiles in one function.
    field = ("spec", *(["[*]"] * 30), "name")
    declaration = ReferenceDeclaration(name="deep", kind="Secret", sources=(ReferenceSource(field=field),))
    value: Any = {"name": "deep-secret"}
    for _ in range(30):
        value = [value]
    obj = {"kind": "Pod", "metadata": {"namespace": "x"}, "spec": value}
    assert declaration.extractor._walk is None
    assert declaration.extract(obj) == [ReferenceKey("Secret", "x", "deep-secret")]
    assert declaration.extract(obj) == per_source_extract(declaration, obj)
