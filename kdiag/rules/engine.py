"""Compiled rules, their matches, and the rule set that the worker queries by kind."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kdiag.errors import RuleError
from kdiag.rules.conditions import FieldCondition, compile_check, compile_filter
from kdiag.rules.paths import Walker, compile_walker
from kdiag.rules.references import (
    ExtractedReferences,
    ReferenceCondition,
    ReferenceDeclaration,
    Resolver,
    compile_reference_condition,
)
from kdiag.rules.timestamps import parse_rfc3339_ms

Condition = FieldCondition | ReferenceCondition


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


@dataclass(frozen=True)
class DurationSource:
    """Location of the time an anomaly started in an object (the rule key durationFrom).

    The path has the form of a condition's: field with "[*]" steps, and optionally a sub-identifier
    selection. The earliest RFC 3339 timestamp among the values it reaches is the start.
    """

    field: tuple[str, ...]
    sub_identifier_name: str | None = None
    sub_identifier_value: tuple[str, ...] | None = None
    sub_field: tuple[str, ...] | None = None
    _walk: Walker = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        walk = compile_walker(self.field, self.sub_identifier_name, self.sub_identifier_value, self.sub_field)
        object.__setattr__(self, "_walk", walk)

    def read_ms(self, obj: Any) -> int | None:
        """Return the earliest timestamp the path reaches in obj, in epoch milliseconds, or None."""
        earliest: int | None = None
        for _, value in self._walk(obj):
            time_ms = parse_rfc3339_ms(value)
            if time_ms is not None and (earliest is None or time_ms < earliest):
                earliest = time_ms
        return earliest


class Rule:
    """One rule, with its conditions compiled into closures when the rule is built.

    every_seconds is the period of a periodic rule (the rule key every), or None. jitter is the
    fraction of the period over which the checks of different objects are spread (default 1.0).
    references holds the rule's reference declarations.
    """

    __slots__ = (
        "name",
        "kind",
        "duration_seconds",
        "source",
        "filter_fields",
        "check_fields",
        "duration_from",
        "every_seconds",
        "jitter",
        "references",
        "_filters",
        "_checks",
        "_uses_references",
        "_shared_steps",
    )

    def __init__(
        self,
        name: str,
        kind: str,
        duration_seconds: float,
        source: str,
        filter_fields: tuple[Condition, ...],
        check_fields: tuple[Condition, ...],
        duration_from: DurationSource | None = None,
        every_seconds: float | None = None,
        jitter: float = 1.0,
        references: tuple[ReferenceDeclaration, ...] = (),
    ) -> None:
        """Build a rule from validated conditions. parse_rules is the validating entry point."""
        self.name = name
        self.kind = kind
        self.duration_seconds = duration_seconds
        self.source = source
        self.filter_fields = filter_fields
        self.check_fields = check_fields
        self.duration_from = duration_from
        self.every_seconds = every_seconds
        self.jitter = jitter
        self.references = references
        declarations = {declaration.name: declaration for declaration in references}

        # Rules with reference conditions evaluate through _shared_steps only. The others also keep
        # filters that return a bool, which evaluate uses when no SharedResults is given.
        self._uses_references = any(isinstance(condition, ReferenceCondition) for condition in (*filter_fields, *check_fields))
        if self._uses_references:
            self._filters = ()
            self._checks = ()
        else:
            self._filters = tuple(compile_filter(condition) for condition in filter_fields)
            self._checks = tuple(compile_check(condition) for condition in check_fields)
        self._shared_steps = tuple(
            _shared_step(condition, declarations, in_context=False) for condition in filter_fields
        ) + tuple(_shared_step(condition, declarations, in_context=True) for condition in check_fields)

    @property
    def steps(self) -> tuple[tuple[Any, bool, bool], ...]:
        """The compiled conditions, filters first: (check, whether it reads references, whether its
        entry goes into the context). Equal conditions of different rules have the same check."""
        return self._shared_steps

    @property
    def uses_references(self) -> bool:
        """Whether a condition of the rule reads referenced objects, so that evaluate needs a resolver."""
        return self._uses_references

    def evaluate(
        self,
        obj: Mapping[str, Any],
        resolve: Resolver | None = None,
        extracted: ExtractedReferences | None = None,
        shared: "SharedResults | None" = None,
    ) -> Match | None:
        """Return a Match when obj has the rule's kind and every filter and check holds, else None.

        Never raises on JSON values: a path that meets a missing key or a non-mapping counts as
        absent, and an obj that is not a mapping has no kind and never matches. A rule with
        reference conditions matches only when resolve is given, because those conditions read the
        referenced objects that resolve(kind, namespace, name) returns. Rules evaluated on the same
        object can share one ExtractedReferences(obj) as extracted, so that each declaration is
        extracted once. Likewise they can share one SharedResults(obj) as shared, so that a condition
        that several of them have is evaluated once. Rules that share it must get the same resolve.
        Raises ValueError when extracted or shared belongs to another object.
        """
        if type(obj) is dict or isinstance(obj, Mapping):
            if obj.get("kind") != self.kind:
                return None
        else:
            return None

        if shared is not None:
            return self._evaluate_shared(obj, resolve, extracted, shared)
        if self._uses_references:
            return self._evaluate_shared(obj, resolve, extracted, SharedResults(obj))

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

    def _evaluate_shared(
        self, obj: Mapping[str, Any], resolve: Resolver | None, extracted: ExtractedReferences | None, shared: "SharedResults"
    ) -> Match | None:
        if shared.obj is not obj:
            raise ValueError(f"rule {self.name}: the shared condition results belong to another object than the one evaluated")
        if self._uses_references:
            if resolve is None:
                return None
            if extracted is None:
                extracted = ExtractedReferences(obj)
            elif extracted.obj is not obj:
                raise ValueError(f"rule {self.name}: the extracted references belong to another object than the one evaluated")
        results = shared.results
        context: dict[str, str] = {}
        for check, reads_references, in_context in self._shared_steps:
            entry = results.get(check, _NOT_EVALUATED)
            if entry is _NOT_EVALUATED:
                entry = check(obj, resolve, extracted) if reads_references else check(obj)
                results[check] = entry
            if entry is None:
                return None
            if in_context:
                context[entry[0]] = entry[1]
        return Match(self, context)

    def active_since_ms(self, obj: Mapping[str, Any]) -> int | None:
        """Return the start of the anomaly that durationFrom names in obj, in epoch milliseconds.

        Returns None when the rule has no durationFrom or the path reaches no RFC 3339 timestamp,
        and the caller then uses the time of the first matching change. Never raises on JSON values.
        """
        if self.duration_from is None:
            return None
        return self.duration_from.read_ms(obj)

    def __repr__(self) -> str:
        return f"Rule(name={self.name!r}, kind={self.kind!r}, source={self.source!r})"


class SharedResults:
    """The results of conditions on one object, shared by the rules evaluated on it.

    Equal conditions of different rules compile into one check (see _shared_step), so a rule can
    reuse the result that another rule's evaluation of the same condition left here. Conditions
    read only the object and, for reference conditions, the resolver, so the rules that share one
    SharedResults must get the same resolver.
    """

    __slots__ = ("obj", "results")

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        # A check's context entry, or None when its condition does not hold.
        self.results: dict[Any, tuple[str, str] | None] = {}


_NOT_EVALUATED = object()
# One compiled check per distinct condition in the process, whichever rules have it. For a reference
# condition the key also holds its declaration, because the check reads the references it declares.
# A check leaves the map with the last rule that has it, so reloading edited rules does not grow it.
_SHARED_CHECKS: weakref.WeakValueDictionary[Any, Any] = weakref.WeakValueDictionary()


def _shared_step(
    condition: Condition, declarations: Mapping[str, ReferenceDeclaration], in_context: bool
) -> tuple[Any, bool, bool]:
    """Return (check, whether it reads references, whether its entry goes into the context) for a condition.

    The check is the same object for every equal condition, so that SharedResults can key its
    results by it. A filter's check returns an entry too: a filter holds when its entry is not None.
    """
    if isinstance(condition, ReferenceCondition):
        key: Any = (condition, declarations[condition.reference])
        check = _SHARED_CHECKS.get(key)
        if check is None:
            check = _SHARED_CHECKS[key] = compile_reference_condition(condition, declarations[condition.reference])
        return check, True, in_context
    check = _SHARED_CHECKS.get(condition)
    if check is None:
        check = _SHARED_CHECKS[condition] = compile_check(condition)
    return check, False, in_context


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
