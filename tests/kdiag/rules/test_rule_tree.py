"""RuleTree: the rules of one kind evaluated over a prefix tree of their conditions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from kdiag.rules import ExtractedReferences, Match, Rule, RuleSet, SharedResults, parse_rules
from kdiag.rules.tree import RuleTree
from test_rule_sharing import CountingMapping

CORPUS_DIR = Path(__file__).resolve().parents[3] / "samples" / "corpus"

WARNING = {"field": ["type"], "equalValue": ["Warning"]}
NOT_NORMAL = {"field": ["type"], "notEqualValue": ["Normal"]}
FAILED = {"field": ["reason"], "equalValue": ["Failed"]}
BACK_OFF = {"field": ["reason"], "equalValue": ["BackOff"]}
ON_POD = {"field": ["involvedObject", "kind"], "equalValue": ["Pod"]}
PULL_MESSAGE = {"field": ["message"], "substring": ["pull"]}
EVENT_RULES = parse_rules(
    {
        "PullFailed": {"resource": "Event", "filterField": [WARNING, FAILED, ON_POD], "checkField": [PULL_MESSAGE]},
        "PullFailedLong": {"resource": "Event", "duration": 60, "filterField": [WARNING, FAILED, ON_POD], "checkField": [PULL_MESSAGE]},
        "BackOff": {"resource": "Event", "filterField": [WARNING, BACK_OFF], "checkField": [ON_POD, {"field": ["message"], "exists": True}]},
        "AnyFailed": {"resource": "Event", "filterField": [NOT_NORMAL, FAILED], "checkField": [ON_POD]},
    },
    source="test",
)
PULL_EVENT = {
    "kind": "Event",
    "type": "Warning",
    "reason": "Failed",
    "message": "Failed to pull image",
    "involvedObject": {"kind": "Pod", "name": "api-0"},
}


def evaluate_each(rules: list[Rule], obj: Any, resolve: Any = None) -> list[Match]:
    """Return the matches of rules evaluated one by one through one SharedResults."""
    shared = SharedResults(obj)
    extracted = ExtractedReferences(obj) if isinstance(obj, Mapping) else None
    matches = [rule.evaluate(obj, resolve, extracted, shared) for rule in rules]
    return [match for match in matches if match is not None]


def assert_same_matches(tree: RuleTree, obj: Any, resolve: Any = None) -> list[Match]:
    """Assert that the tree returns each rule's own match, with the context in the same order."""
    expected = evaluate_each(list(tree.rules), obj, resolve)
    found = tree.matches(obj, resolve)
    assert found == expected
    assert [list(match.context.items()) for match in found] == [list(match.context.items()) for match in expected]
    return found


def test_matches_in_rule_order() -> None:
    tree = RuleTree("Event", EVENT_RULES)
    found = assert_same_matches(tree, PULL_EVENT)
    assert [match.rule.name for match in found] == ["PullFailed", "PullFailedLong", "AnyFailed"]
    assert [match.context for match in found] == [
        {"message": "Failed to pull image"},
        {"message": "Failed to pull image"},
        {"involvedObject.kind": "Pod"},
    ]


def test_failed_condition_drops_subtree() -> None:
    obj = CountingMapping({**PULL_EVENT, "type": "Normal"})
    assert RuleTree("Event", EVENT_RULES).matches(obj) == []
    # The kind once, and the type once per distinct condition on it: nothing below them is read.
    assert obj.reads == {"kind": 1, "type": 2}


def test_repeated_conditions_evaluated_once() -> None:
    obj = CountingMapping(PULL_EVENT)
    RuleTree("Event", EVENT_RULES).matches(obj)
    # The filter on reason Failed is on two branches and involvedObject.kind on three, yet each is read
    # once. The reason is read a second time for BackOff.
    assert obj.reads == {"kind": 1, "type": 2, "reason": 2, "involvedObject": 1, "message": 1}


def test_other_objects_match_nothing() -> None:
    tree = RuleTree("Event", EVENT_RULES)
    assert tree.matches({**PULL_EVENT, "kind": "Pod"}) == []
    assert tree.matches({key: value for key, value in PULL_EVENT.items() if key != "kind"}) == []
    assert tree.matches(["Event"]) == []  # type: ignore[arg-type]


def test_rule_of_another_kind_rejected() -> None:
    (pod_rule,) = parse_rules({"PodPending": {"resource": "Pod", "checkField": [{"field": ["status", "phase"], "equalValue": ["Pending"]}]}}, source="test")
    with pytest.raises(ValueError, match="rule PodPending has kind Pod, expected Event"):
        RuleTree("Event", [*EVENT_RULES, pod_rule])


def test_extracted_references_of_another_object_rejected() -> None:
    tree = RuleTree("Event", EVENT_RULES)
    with pytest.raises(ValueError, match="extracted references belong to another object"):
        tree.matches(PULL_EVENT, None, ExtractedReferences(dict(PULL_EVENT)))


def test_reference_rules_need_the_resolver() -> None:
    references = [{"name": "secrets", "builtin": "PodSecrets"}]
    rules = parse_rules(
        {
            "SecretMissing": {"resource": "Pod", "references": references, "checkField": [{"referenceMissing": "secrets"}]},
            "Pending": {"resource": "Pod", "checkField": [{"field": ["status", "phase"], "equalValue": ["Pending"]}]},
        },
        source="test",
    )
    pod = {
        "kind": "Pod",
        "metadata": {"name": "api-0", "namespace": "shop"},
        "spec": {"imagePullSecrets": [{"name": "registry"}]},
        "status": {"phase": "Pending"},
    }
    tree = RuleTree("Pod", rules)
    assert [match.rule.name for match in assert_same_matches(tree, pod)] == ["Pending"]
    missing = assert_same_matches(tree, pod, lambda kind, namespace, name: None)
    assert [(match.rule.name, match.context) for match in missing] == [
        ("SecretMissing", {"references.secrets": "Secret shop/registry"}),
        ("Pending", {"status.phase": "Pending"}),
    ]


@pytest.mark.parametrize("resolves", [False, True], ids=["without resolver", "objects resolve to themselves"])
def test_starter_pack_on_corpus_and_history(
    starter_pack: RuleSet,
    corpus_case: Callable[[str], list[dict[str, Any]]],
    history: dict[str, list[dict[str, Any]]],
    resolves: bool,
) -> None:
    objects = [obj for path in sorted(CORPUS_DIR.glob("*.yaml")) for obj in corpus_case(path.name) if isinstance(obj, dict)]
    objects += [obj for states in history.values() for obj in states]
    trees = {kind: RuleTree(kind, starter_pack.rules_for_kind(kind)) for kind in starter_pack.kinds}
    matched = 0
    for obj in objects:
        tree = trees.get(obj.get("kind", ""))
        if tree is None:
            continue
        resolve: Callable[[str, str, str], Any] | None = (lambda kind, namespace, name, obj=obj: obj) if resolves else None
        matched += len(assert_same_matches(tree, obj, resolve))
    assert matched > 0
