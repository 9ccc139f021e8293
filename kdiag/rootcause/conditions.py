"""The condition language of graph `when` keys and verdicts: tests on the findings of earlier nodes.

A condition is one of:

- a test on one node's finding, a mapping with ``node`` and at least one of:

  - ``status``: a status or list of statuses (OK, FAILED, TIMED_OUT, SKIPPED) the finding must have;
  - ``field`` with one or more operators on that value: ``equals`` (a string), ``notEquals``
    (a string), ``in`` (a list of strings), ``notIn`` (a list of strings), ``exists`` (true or
    false).

  Operators apply only to a finding with status OK, so a field test on a failed, timed-out or
  skipped node is false, whatever the operator. A value the plugin did not return counts as absent:
  ``equals`` and ``in`` are false, ``notEquals`` and ``notIn`` true, ``exists: false`` true.
  With ``status`` as well, the status test replaces the OK requirement.
- a list of conditions, which holds when all of them hold (an empty list always holds);
- ``{all: [...]}`` (the same as a list), ``{any: [...]}`` (at least one holds) or ``{not: condition}``.

Example: ``{node: classify, field: category, in: [unauthorized, rate-limited]}``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kdiag.rootcause.findings import OK, SKIPPED, STATUSES, Finding

FIELD_OPERATORS = ("equals", "notEquals", "in", "notIn", "exists")
TEST_KEYS = ("node", "status", "field", *FIELD_OPERATORS)
COMBINATORS = ("all", "any", "not")

_NOT_RUN = Finding(node="", plugin="", status=SKIPPED)


class Condition:
    """A compiled condition. holds() only reads findings and their string values, so it does not raise."""

    def holds(self, findings: Mapping[str, Finding]) -> bool:
        raise NotImplementedError

    def nodes(self) -> set[str]:
        """Return the names of the nodes the condition reads."""
        raise NotImplementedError


@dataclass(frozen=True)
class FindingTest(Condition):
    node: str
    statuses: tuple[str, ...] | None = None
    field: str | None = None
    equals: str | None = None
    not_equals: str | None = None
    one_of: tuple[str, ...] | None = None
    none_of: tuple[str, ...] | None = None
    exists: bool | None = None

    def holds(self, findings: Mapping[str, Finding]) -> bool:
        finding = findings.get(self.node, _NOT_RUN)
        if self.statuses is not None:
            if finding.status not in self.statuses:
                return False
        elif self.field is not None and finding.status != OK:
            return False
        if self.field is None:
            return True
        value = finding.values.get(self.field)
        if self.exists is not None and (value is not None) != self.exists:
            return False
        if self.equals is not None and value != self.equals:
            return False
        if self.not_equals is not None and value == self.not_equals:
            return False
        if self.one_of is not None and value not in self.one_of:
            return False
        if self.none_of is not None and value in self.none_of:
            return False
        return True

    def nodes(self) -> set[str]:
        return {self.node}


@dataclass(frozen=True)
class AllOf(Condition):
    conditions: tuple[Condition, ...]

    def holds(self, findings: Mapping[str, Finding]) -> bool:
        return all(condition.holds(findings) for condition in self.conditions)

    def nodes(self) -> set[str]:
        return set().union(*(condition.nodes() for condition in self.conditions))


@dataclass(frozen=True)
class AnyOf(Condition):
    conditions: tuple[Condition, ...]

    def holds(self, findings: Mapping[str, Finding]) -> bool:
        return any(condition.holds(findings) for condition in self.conditions)

    def nodes(self) -> set[str]:
        return set().union(*(condition.nodes() for condition in self.conditions))


@dataclass(frozen=True)
class Not(Condition):
    condition: Condition

    def holds(self, findings: Mapping[str, Finding]) -> bool:
        return not self.condition.holds(findings)

    def nodes(self) -> set[str]:
        return self.condition.nodes()


class InvalidCondition(Exception):
    """Raised by parse_condition after it reported the problem."""


Report = Callable[[str, str], None]


def parse_condition(value: Any, path: str, known_nodes: set[str], report: Report) -> Condition:
    """Compile a condition. Problems go to report(path, problem), then InvalidCondition is raised.

    known_nodes are the node names a test may name. Every problem of the condition is reported
    before the exception.
    """
    problems_before = _Counter(report)
    condition = _parse(value, path, known_nodes, problems_before)
    if problems_before.count:
        raise InvalidCondition()
    return condition


class _Counter:
    def __init__(self, report: Report) -> None:
        self.report = report
        self.count = 0

    def __call__(self, path: str, problem: str) -> None:
        self.count += 1
        self.report(path, problem)


def _parse(value: Any, path: str, known_nodes: set[str], report: _Counter) -> Condition:
    if isinstance(value, list):
        return AllOf(tuple(_parse(item, f"{path}[{index}]", known_nodes, report) for index, item in enumerate(value)))
    if not isinstance(value, Mapping):
        report(path, f"a condition must be a mapping or a list of conditions, got {describe(value)}")
        return AllOf(())
    combinators = [key for key in COMBINATORS if key in value]
    if combinators:
        if len(value) != 1:
            report(path, f"{combinators[0]} must be the only key of its mapping, got {', '.join(map(str, value))}")
            return AllOf(())
        key = combinators[0]
        if key == "not":
            return Not(_parse(value["not"], f"{path}.not", known_nodes, report))
        items = value[key]
        if not isinstance(items, list):
            report(f"{path}.{key}", f"must be a list of conditions, got {describe(items)}")
            return AllOf(())
        parsed = tuple(_parse(item, f"{path}.{key}[{index}]", known_nodes, report) for index, item in enumerate(items))
        return AllOf(parsed) if key == "all" else AnyOf(parsed)
    return _parse_test(value, path, known_nodes, report)


def _parse_test(value: Mapping[str, Any], path: str, known_nodes: set[str], report: _Counter) -> Condition:
    unknown = [key for key in value if key not in TEST_KEYS]
    for key in unknown:
        problem = f"unknown key. Valid keys are {', '.join(TEST_KEYS)}, or one of {', '.join(COMBINATORS)}"
        close = difflib.get_close_matches(str(key), (*TEST_KEYS, *COMBINATORS), n=1)
        report(f"{path}.{key}", f"{problem}. Did you mean {close[0]}?" if close else problem)
    node = value.get("node")
    if node is None:
        report(path, "missing required key node (the name of the node whose finding is tested)")
    elif not isinstance(node, str):
        report(f"{path}.node", f"must be a node name, got {describe(node)}")
    elif node not in known_nodes:
        report(f"{path}.node", f"unknown node {node!r}. Known nodes here: {', '.join(sorted(known_nodes)) or 'none'}")

    statuses = None
    if "status" in value:
        raw = value["status"]
        listed = raw if isinstance(raw, list) else [raw]
        invalid = [item for item in listed if item not in STATUSES]
        if invalid or not listed:
            report(f"{path}.status", f"must be one or a list of {', '.join(STATUSES)}, got {describe(raw)}")
        statuses = tuple(item for item in listed if item in STATUSES)

    field = value.get("field")
    operators = [key for key in FIELD_OPERATORS if key in value]
    if field is not None and not (isinstance(field, str) and field):
        report(f"{path}.field", f"must be a non-empty value name, got {describe(field)}")
    if field is not None and not operators:
        report(path, f"field {field!r} needs an operator: one of {', '.join(FIELD_OPERATORS)}")
    if operators and field is None:
        report(path, f"{operators[0]} needs field, the name of the value to test")
    if field is None and statuses is None and not operators:
        report(path, "a test needs status or field with an operator")

    equals = _string_operand(value, "equals", path, report)
    not_equals = _string_operand(value, "notEquals", path, report)
    one_of = _list_operand(value, "in", path, report)
    none_of = _list_operand(value, "notIn", path, report)
    exists = value.get("exists")
    if exists is not None and not isinstance(exists, bool):
        report(f"{path}.exists", f"must be true or false, got {describe(exists)}")
        exists = None
    return FindingTest(
        node=node if isinstance(node, str) else "",
        statuses=statuses,
        field=field if isinstance(field, str) else None,
        equals=equals,
        not_equals=not_equals,
        one_of=one_of,
        none_of=none_of,
        exists=exists,
    )


def _string_operand(value: Mapping[str, Any], key: str, path: str, report: _Counter) -> str | None:
    if key not in value:
        return None
    operand = value[key]
    if isinstance(operand, bool) or not isinstance(operand, (str, int, float)):
        report(f"{path}.{key}", f"must be a string, got {describe(operand)}")
        return None
    if not isinstance(operand, str):
        report(f"{path}.{key}", f"must be a string, got the number {operand}. Quote it: \"{operand}\"")
        return None
    return operand


def _list_operand(value: Mapping[str, Any], key: str, path: str, report: _Counter) -> tuple[str, ...] | None:
    if key not in value:
        return None
    operand = value[key]
    if not isinstance(operand, list) or not operand or not all(isinstance(item, str) for item in operand):
        report(f"{path}.{key}", f"must be a non-empty list of strings, got {describe(operand)}")
        return None
    return tuple(operand)


def describe(value: Any) -> str:
    """Describe a YAML value for an error message: its type, and the value itself for scalars."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__
