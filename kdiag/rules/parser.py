"""Validation of rule documents and their conversion into Rule objects.

Every rejection raises RuleError with the rule name, the path inside the rule body in the document's
own key names (checkField[0].equalValue[1]) and the problem.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from kdiag.errors import RuleError
from kdiag.rules.conditions import FieldCondition
from kdiag.rules.engine import Rule

RULE_KEYS = ("duration", "resource", "filterField", "checkField")
CONDITION_KEYS = (
    "field",
    "equalValue",
    "notEqualValue",
    "nilValue",
    "subIdentifierName",
    "subIdentifierValue",
    "subField",
)


def parse_rules(document: Any, source: str = "") -> list[Rule]:
    """Validate a mapping of rule name to rule body and build its rules, in document order.

    source names the file in error messages and becomes Rule.source. Raises RuleError on the first
    problem found. Duplicate names across documents are checked by RuleSet, not here.
    """
    if not isinstance(document, Mapping):
        raise RuleError(
            "",
            "",
            f"the document must be a mapping of rule name to rule body, got {_describe(document)}",
            source,
        )
    rules: list[Rule] = []
    for name, body in document.items():
        if not isinstance(name, str) or not name.strip():
            raise RuleError(
                _safe_str(name),
                "",
                f"the rule name must be a non-blank string, got {_describe(name)}",
                source,
            )
        rules.append(_parse_rule(name, body, source))
    return rules


class _RuleParser:
    """Validation state of one rule: its name and source, for the errors it raises."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source

    def fail(self, path: str, problem: str) -> RuleError:
        return RuleError(self.name, path, problem, self.source)

    def reject_unknown_keys(self, body: Mapping[Any, Any], allowed: tuple[str, ...], prefix: str) -> None:
        for key in body:
            if key in allowed:
                continue
            problem = f"unknown key. Valid keys are {', '.join(allowed)}"
            if isinstance(key, str):
                close = difflib.get_close_matches(key, allowed, n=1)
                if close:
                    problem += f". Did you mean {close[0]}?"
            raise self.fail(_join(prefix, _safe_str(key)), problem)

    def parse_string(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, got {_describe(value)}{_quote_hint(value)}")
        return value

    def parse_string_list(self, value: Any, path: str, allow_empty_items: bool) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list of strings, got {_describe(value)}")
        if not value:
            raise self.fail(path, "must not be an empty list")
        items: list[str] = []
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            items.append(self.parse_string(item, item_path))
            if not allow_empty_items and not item:
                raise self.fail(item_path, "must not be an empty string")
        return tuple(items)

    def parse_condition(self, entry: Any, path: str) -> FieldCondition:
        if not isinstance(entry, Mapping):
            raise self.fail(path, f"must be a mapping with a field key, got {_describe(entry)}")
        self.reject_unknown_keys(entry, CONDITION_KEYS, path)

        if "field" not in entry:
            raise self.fail(path, "missing required key field (the list of map keys to read)")
        field = self.parse_string_list(entry["field"], f"{path}.field", allow_empty_items=False)

        equal_value = self._optional_values(entry, "equalValue", path)
        not_equal_value = self._optional_values(entry, "notEqualValue", path)
        nil_value = None
        if "nilValue" in entry:
            nil_value = entry["nilValue"]
            if not isinstance(nil_value, bool):
                raise self.fail(f"{path}.nilValue", f"must be true or false, got {_describe(nil_value)}")
        if equal_value is None and not_equal_value is None and nil_value is None:
            raise self.fail(path, "has no operator. Set equalValue, notEqualValue or nilValue")

        sub_identifier_name = None
        if "subIdentifierName" in entry:
            sub_identifier_name = self.parse_string(entry["subIdentifierName"], f"{path}.subIdentifierName")
            if not sub_identifier_name:
                raise self.fail(f"{path}.subIdentifierName", "must not be an empty string")
        sub_identifier_value = self._optional_values(entry, "subIdentifierValue", path)
        sub_field = None
        if "subField" in entry:
            sub_field = self.parse_string_list(entry["subField"], f"{path}.subField", allow_empty_items=False)

        if sub_identifier_name is None:
            for dependent in ("subField", "subIdentifierValue"):
                if dependent in entry:
                    raise self.fail(
                        f"{path}.{dependent}",
                        f"{dependent} needs subIdentifierName, the key that identifies list elements",
                    )
        elif sub_field is None:
            raise self.fail(
                path,
                "subIdentifierName needs subField, the path to read inside each selected element",
            )

        return FieldCondition(
            field=field,
            equal_value=equal_value,
            not_equal_value=not_equal_value,
            nil_value=nil_value,
            sub_identifier_name=sub_identifier_name,
            sub_identifier_value=sub_identifier_value,
            sub_field=sub_field,
        )

    def parse_conditions(self, value: Any, key: str, required: bool) -> tuple[FieldCondition, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of conditions, got {_describe(value)}")
        if required and not value:
            raise self.fail(key, "must contain at least one condition")
        return tuple(self.parse_condition(entry, f"{key}[{index}]") for index, entry in enumerate(value))

    def _optional_values(self, entry: Mapping[Any, Any], key: str, path: str) -> tuple[str, ...] | None:
        if key not in entry:
            return None
        # Empty strings are valid values: "" is the string form of null and of an absent field.
        return self.parse_string_list(entry[key], f"{path}.{key}", allow_empty_items=True)


def _parse_rule(name: str, body: Any, source: str) -> Rule:
    parser = _RuleParser(name, source)
    if not isinstance(body, Mapping):
        raise parser.fail("", f"the rule body must be a mapping, got {_describe(body)}")
    parser.reject_unknown_keys(body, RULE_KEYS, "")

    if "resource" not in body:
        raise parser.fail("resource", "missing required key (the object kind, such as Pod)")
    kind = parser.parse_string(body["resource"], "resource")
    if not kind:
        raise parser.fail("resource", "must not be an empty string")

    duration = body.get("duration", 0)
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise parser.fail("duration", f"must be a number of seconds, got {_describe(duration)}")
    try:
        duration_seconds = float(duration)
    except OverflowError:
        raise parser.fail("duration", "is too large to be a number of seconds") from None
    if not math.isfinite(duration_seconds) or duration_seconds < 0:
        raise parser.fail("duration", f"must be a finite number of seconds >= 0, got {_describe(duration)}")

    filters: tuple[FieldCondition, ...] = ()
    if "filterField" in body:
        filters = parser.parse_conditions(body["filterField"], "filterField", required=False)
    if "checkField" not in body:
        raise parser.fail("checkField", "missing required key (the conditions that define the anomaly)")
    checks = parser.parse_conditions(body["checkField"], "checkField", required=True)

    return Rule(
        name=name,
        kind=kind,
        duration_seconds=duration_seconds,
        source=source,
        filter_fields=filters,
        check_fields=checks,
    )


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _describe(value: Any) -> str:
    """Name a value's JSON type, with the value itself for scalars: boolean true, number 5, a list."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {_safe_str(value)}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _quote_hint(value: Any) -> str:
    """Suggest quoting when YAML turned an unquoted scalar such as True, 1 or 2020-01-01 into another type."""
    if value is None or isinstance(value, (Mapping, list, tuple)):
        return ""
    return ". Quote the value in YAML so that it stays a string"


def _safe_str(value: Any) -> str:
    """Convert any value to text for a message, even an int too long for str()."""
    try:
        return str(value)
    except ValueError:
        return f"<{type(value).__name__} too long to print>"
