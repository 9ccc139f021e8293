"""The rules of one kind evaluated together over a prefix tree of their conditions.

Each change of an object is evaluated against every rule of its kind, and most of those rules do
not match. Rules often begin with the same conditions: the Event rules filter on the type and then
on the reason, and a rule's variants repeat its conditions. RuleTree merges the condition sequences
of the rules into a prefix tree. A condition that does not hold drops every rule below it at once,
and a shared prefix is evaluated once, without a loop over the rules. A condition that appears on
more than one branch is evaluated once per object too.

The matches are those that Rule.evaluate gives for each rule with one SharedResults and one
ExtractedReferences, because the conditions read only the object and the resolver.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kdiag.rules.engine import Match, Rule
from kdiag.rules.references import ExtractedReferences, Resolver

_NOT_EVALUATED = object()


class _Node:
    """One condition of the tree: its compiled check, the rules whose last condition it is, and what follows."""

    __slots__ = ("check", "reads_references", "in_context", "memoized", "ends", "children")

    def __init__(self, check: Any, reads_references: bool, in_context: bool) -> None:
        self.check = check
        self.reads_references = reads_references
        self.in_context = in_context
        # Whether the check appears on other nodes too, so that its result is kept for them.
        self.memoized = False
        self.ends: list[Rule] = []
        self.children: dict[tuple[Any, bool, bool], _Node] | tuple[_Node, ...] = {}


class RuleTree:
    """The rules of one kind, as a prefix tree of their conditions.

    rules must all have the tree's kind. A rule with reference conditions matches only when the
    resolver is given, as in Rule.evaluate.
    """

    __slots__ = ("kind", "rules", "_positions", "_roots", "_root_ends", "_memoizes")

    def __init__(self, kind: str, rules: Sequence[Rule]) -> None:
        """Build the tree of rules. Raises ValueError when a rule has another kind than `kind`."""
        self.kind = kind
        self.rules = tuple(rules)
        self._positions = {rule: position for position, rule in enumerate(self.rules)}
        root = _Node(None, False, False)
        nodes_per_check: dict[Any, int] = {}
        for rule in self.rules:
            if rule.kind != kind:
                raise ValueError(f"rule {rule.name} has kind {rule.kind}, expected {kind}: build one tree per kind")
            node = root
            for step in rule.steps:
                children = node.children
                assert isinstance(children, dict)
                child = children.get(step)
                if child is None:
                    child = children[step] = _Node(*step)
                    nodes_per_check[step[0]] = nodes_per_check.get(step[0], 0) + 1
                node = child
            node.ends.append(rule)
        self._memoizes = any(count > 1 for count in nodes_per_check.values())
        self._roots = _freeze(root, nodes_per_check)
        # A rule without conditions matches every object of the kind.
        self._root_ends = tuple(root.ends)

    def matches(
        self, obj: Mapping[str, Any], resolve: Resolver | None = None, extracted: ExtractedReferences | None = None
    ) -> list[Match]:
        """Return the Match of each rule that matches obj, in the order of the tree's rules.

        extracted, when given, must be the ExtractedReferences of obj. The conditions read values of
        another type than expected as absent, so no JSON value makes this raise.
        """
        if not (type(obj) is dict or isinstance(obj, Mapping)) or obj.get("kind") != self.kind:
            return []
        if extracted is None:
            extracted = ExtractedReferences(obj)
        elif extracted.obj is not obj:
            raise ValueError(
                f"rule tree of {self.kind}: the extracted references belong to another object than the one evaluated; "
                f"pass ExtractedReferences of the evaluated object"
            )
        found: list[Match] = [Match(rule, {}) for rule in self._root_ends]
        memo: dict[Any, Any] | None = {} if self._memoizes else None
        self._visit(self._roots, obj, resolve, extracted, (), memo, found)
        if len(found) > 1:
            positions = self._positions
            found.sort(key=lambda match: positions[match.rule])
        return found

    def _visit(
        self,
        nodes: tuple[_Node, ...],
        obj: Mapping[str, Any],
        resolve: Resolver | None,
        extracted: ExtractedReferences,
        context: tuple[tuple[str, str], ...],
        memo: dict[Any, Any] | None,
        found: list[Match],
    ) -> None:
        for node in nodes:
            if node.memoized:
                assert memo is not None
                entry = memo.get(node.check, _NOT_EVALUATED)
                if entry is _NOT_EVALUATED:
                    entry = memo[node.check] = _run(node, obj, resolve, extracted)
            elif node.reads_references:
                entry = None if resolve is None else node.check(obj, resolve, extracted)
            else:
                entry = node.check(obj)
            if entry is None:
                continue
            node_context = (*context, entry) if node.in_context else context
            for rule in node.ends:
                found.append(Match(rule, dict(node_context)))
            if node.children:
                self._visit(node.children, obj, resolve, extracted, node_context, memo, found)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"RuleTree(kind={self.kind!r}, rules={len(self.rules)})"


def _run(node: _Node, obj: Mapping[str, Any], resolve: Resolver | None, extracted: ExtractedReferences) -> Any:
    """Return the context entry of the node's check, or None when its condition does not hold."""
    if not node.reads_references:
        return node.check(obj)
    if resolve is None:
        return None
    return node.check(obj, resolve, extracted)


def _freeze(node: _Node, nodes_per_check: dict[Any, int]) -> tuple[_Node, ...]:
    """Turn the children maps below node into tuples and mark the checks that appear on several nodes."""
    children = node.children
    assert isinstance(children, dict)
    frozen = tuple(children.values())
    for child in frozen:
        child.memoized = nodes_per_check[child.check] > 1
        child.children = _freeze(child, nodes_per_check)
    return frozen
