"""Shared validation machinery of the rule parsers: problem collection, scalar checks and path checks.

A parser reports every problem it finds as a RuleError with the rule name, the path inside the rule
body in the document's own key names (checkField[0].equalValue[1]) and the problem. A problem that
makes the rest of a section meaningless raises Invalid, which attempt() catches so that the parser
goes on with the next section and reports its problems too.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kdiag.errors import RuleError
from kdiag.rules.values import FAN_OUT

T = TypeVar("T")


class Invalid(Exception):
    """Raised inside a parser to abandon a section. The problem is already in the parser's list."""


FAILED: Any = object()
"""Sentinel that attempt() returns for a section that had a problem."""


class RuleValidator:
    """Validation state of one rule: its name and source, and the problems found so far."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.problems: list[RuleError] = []

    def report(self, path: str, problem: str) -> None:
        """Record a problem and go on."""
        self.problems.append(RuleError(self.name, path, problem, self.source))

    def fail(self, path: str, problem: str) -> Invalid:
        """Record a problem and return the Invalid exception that abandons the current section."""
        self.report(path, problem)
        return Invalid()

    def attempt(self, parse: Callable[..., T], *arguments: Any) -> T:
        """Run one section of the parse. Returns FAILED when it raised Invalid."""
        try:
            return parse(*arguments)
        except Invalid:
            return FAILED

    def problems_since(self, count: int) -> bool:
        return len(self.problems) > count

    def report_unknown_keys(self, body: Mapping[Any, Any], allowed: tuple[str, ...], prefix: str) -> None:
        for key in body:
            if key in allowed:
                continue
            problem = f"unknown key. Valid keys are {', '.join(allowed)}"
            if isinstance(key, str):
                close = difflib.get_close_matches(key, allowed, n=1)
                if close:
                    problem += f". Did you mean {close[0]}?"
            self.report(join_path(prefix, safe_str(key)), problem)

    def parse_string(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, got {describe(value)}{quote_hint(value)}")
        return value

    def parse_non_empty_string(self, value: Any, path: str) -> str:
        text = self.parse_string(value, path)
        if not text:
            raise self.fail(path, "must not be an empty string")
        return text

    def parse_bool(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {describe(value)}")
        return value

    def parse_string_list(self, value: Any, path: str, allow_empty_items: bool) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list of strings, got {describe(value)}")
        if not value:
            raise self.fail(path, "must not be an empty list")
        items: list[str] = []
        problems = len(self.problems)
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            text = self.attempt(self.parse_string, item, item_path)
            if text is FAILED:
                continue
            if not allow_empty_items and not text:
                self.report(item_path, "must not be an empty string")
            items.append(text)
        if self.problems_since(problems):
            raise Invalid()
        return tuple(items)

    def parse_path(self, value: Any, path: str, allow_fan_out: bool = True, leading_fan_out: str | None = None) -> tuple[str, ...]:
        """Validate a path: a non-empty list of map keys, with "[*]" segments where allowed.

        leading_fan_out, when set, is the reason a path cannot start with "[*]".
        """
        keys = self.parse_string_list(value, path, allow_empty_items=False)
        problems = len(self.problems)
        for index, key in enumerate(keys):
            item_path = f"{path}[{index}]"
            if key == FAN_OUT:
                if not allow_fan_out:
                    self.report(item_path, "[*] is not allowed here. Use a path of map keys only")
                elif index == 0 and leading_fan_out:
                    self.report(item_path, f"the path cannot start with [*]: {leading_fan_out}")
            elif "[" in key or "]" in key:
                self.report(item_path, _bracket_problem(key))
        if self.problems_since(problems):
            raise Invalid()
        return keys


def _bracket_problem(key: str) -> str:
    inner = key.strip()
    if inner.startswith("[") and inner.endswith("]") and inner[1:-1].strip().lstrip("-").isdigit():
        return (
            f"invalid path segment {key!r}: list indexes are not supported. Use \"[*]\" to match any "
            f"element, or subIdentifierName to select elements by a key"
        )
    if FAN_OUT in key:
        return (
            f"invalid path segment {key!r}: write \"[*]\" as a segment of its own, "
            f"for example [spec, containers, \"[*]\", image]"
        )
    return f"invalid path segment {key!r}: map keys cannot contain [ or ], and the only bracket segment is \"[*]\""


def join_path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def describe(value: Any) -> str:
    """Name a value's JSON type, with the value itself for scalars: boolean true, number 5, a list."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {safe_str(value)}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def quote_hint(value: Any) -> str:
    """Suggest quoting when YAML turned an unquoted scalar such as True, 1 or 2020-01-01 into another type."""
    if value is None or isinstance(value, (Mapping, list, tuple)):
        return ""
    return ". Quote the value in YAML so that it stays a string"


def safe_str(value: Any) -> str:
    """Convert any value to text for a message, even an int too long for str()."""
    try:
        return str(value)
    except ValueError:
        return f"<{type(value).__name__} too long to print>"
