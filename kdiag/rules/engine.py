"""Compiled rules, their matches, and the rule set that the worker queries by kind."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kdiag.errors import RuleError
from kdiag.rules.conditions import FieldCondition, compile_check, compile_filter


class Match:
    """Result of a rule whose filters and checks all hold for one object.

    context maps the display path of each checkField, such as
    "status.containerStatuses[name=sidecar].ready", to the string form of the value found there.
    """

    # A plain slotted class, because a frozen dataclass sets each field through
    # object.__setattr__, which is slower, and evaluate builds one Match per rule that fires.
    __slots__ = ("rule", "context")

    def __init__(self, rule: "Rule", context: dict[str, str]) -> None:
        self.rule = rule
        self.context = context

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Match):
            return NotImplemented
        return self.rule is other.rule and self.context == other.context

    __hash__ = None  # type: ignore[assignment]  # context is a mutable dict

    def __repr__(self) -> str:
        return f"Match(rule={self.rule.name!r}, context={self.context!r})"


class Rule:
    """One rule, with its conditions compiled into closures when the rule is built."""

    __slots__ = (
        "name",
        "kind",
        "duration_seconds",
        "source",
        "filter_fields",
        "check_fields",
        "_filters",
        "_checks",
    )

    def __init__(
        self,
        name: str,
        kind: str,
        duration_seconds: float,
        source: str,
        filter_fields: tuple[FieldCondition, ...],
        check_fields: tuple[FieldCondition, ...],
    ) -> None:
        """Build a rule from validated conditions. parse_rules is the validating entry point."""
        self.name = name
        self.kind = kind
        self.duration_seconds = duration_seconds
        self.source = source
        self.filter_fields = filter_fields
        self.check_fields = check_fields
        self._filters = tuple(compile_filter(condition) for condition in filter_fields)
        self._checks = tuple(compile_check(condition) for condition in check_fields)

    def evaluate(self, obj: Mapping[str, Any]) -> Match | None:
        """Return a Match when obj has the rule's kind and every filter and check holds, else None.

        Never raises on JSON values: a path that meets a missing key or a non-mapping counts as
        absent, and an obj that is not a mapping has no kind and never matches.
        """
        if type(obj) is dict or isinstance(obj, Mapping):
            if obj.get("kind") != self.kind:
                return None
        else:
            return None

        for accepts in self._filters:
            if not accepts(obj):
                return None

        context: dict[str, str] = {}
        for check in self._checks:
            entry = check(obj)
            if entry is None:
                return None
            context[entry[0]] = entry[1]
        return Match(self, context)

    def __repr__(self) -> str:
        return f"Rule(name={self.name!r}, kind={self.kind!r}, source={self.source!r})"


class RuleSet:
    """Rules indexed by name and by kind. Rule names are unique across the set."""

    __slots__ = ("_by_name", "_by_kind")

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        """Index rules in the given order. Raises RuleError on a duplicate name, naming both sources."""
        self._by_name: dict[str, Rule] = {}
        by_kind: dict[str, list[Rule]] = {}
        for rule in rules:
            earlier = self._by_name.get(rule.name)
            if earlier is not None:
                raise RuleError(
                    rule.name,
                    "",
                    f"duplicate rule name, already defined in {earlier.source or '<no source>'}. "
                    f"Rename one of the two rules",
                    rule.source,
                )
            self._by_name[rule.name] = rule
            by_kind.setdefault(rule.kind, []).append(rule)
        self._by_kind: dict[str, tuple[Rule, ...]] = {
            kind: tuple(kind_rules) for kind, kind_rules in by_kind.items()
        }

    def rules_for_kind(self, kind: str) -> tuple[Rule, ...]:
        """Return the rules whose resource is kind, in load order, or () for a kind without rules."""
        return self._by_kind.get(kind, ())

    def get(self, name: str) -> Rule | None:
        return self._by_name.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        """Rule names in load order."""
        return tuple(self._by_name)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Kinds that at least one rule applies to, in load order."""
        return tuple(self._by_kind)

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        return f"RuleSet({len(self)} rules for {len(self._by_kind)} kinds)"
