"""Validation of rule documents and their conversion into Rule objects.

Every problem is a RuleError with the rule name, the path inside the rule body in the document's
own key names (checkField[0].equalValue[1]) and the problem. check_rules returns all problems of a
document, and parse_rules raises the first one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from kdiag.errors import RuleError
from kdiag.rules.conditions import MATCH_ALL, MATCH_ANY, FieldCondition
from kdiag.rules.engine import DurationSource, Rule
from kdiag.rules.operators import COMPARISONS, NUMERIC_OPERATORS
from kdiag.rules.quantities import threshold_of
from kdiag.rules.reference_parser import parse_declarations
from kdiag.rules.references import ReferenceCondition, ReferenceDeclaration
from kdiag.rules.validation import FAILED, Invalid, RuleValidator, describe, safe_str
from kdiag.rules.values import FAN_OUT

RULE_KEYS = ("duration", "resource", "filterField", "checkField", "durationFrom", "every", "jitter", "references")
OPERATOR_KEYS = (
    "equalValue",
    "notEqualValue",
    "nilValue",
    "exists",
    "prefix",
    "substring",
    "regex",
    *NUMERIC_OPERATORS,
    "length",
)
CONDITION_KEYS = (
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
    *NUMERIC_OPERATORS,
    "length",
    "match",
)
REFERENCE_CONDITION_KEYS = ("referenceMissing", "referenceKeyMissing", "referenceField")
DURATION_FROM_KEYS = ("field", "subIdentifierName", "subIdentifierValue", "subField")
LENGTH_KEYS = tuple(COMPARISONS)

_FIELD_LEADING_FAN_OUT = "the object is a mapping, not a list"
_SUB_FIELD_LEADING_FAN_OUT = "subIdentifierName selects map elements, so subField starts with a key of the element"


def parse_rules(document: Any, source: str = "") -> list[Rule]:
    """Validate a mapping of rule name to rule body and build its rules, in document order.

    source names the file in error messages and becomes Rule.source. Raises the first RuleError
    that check_rules finds. Duplicate names across documents are checked by RuleSet, not here.
    """
    rules, problems = check_rules(document, source)
    if problems:
        raise problems[0]
    return rules


def check_rules(document: Any, source: str = "") -> tuple[list[Rule], list[RuleError]]:
    """Validate a document and return its valid rules and every problem found, in document order."""
    if not isinstance(document, Mapping):
        problem = f"the document must be a mapping of rule name to rule body, got {describe(document)}"
        return [], [RuleError("", "", problem, source)]
    rules: list[Rule] = []
    problems: list[RuleError] = []
    for name, body in document.items():
        if not isinstance(name, str) or not name.strip():
            problem = f"the rule name must be a non-blank string, got {describe(name)}"
            problems.append(RuleError(safe_str(name), "", problem, source))
            continue
        parser = _RuleParser(name, source)
        rule = parser.attempt(parser.parse_rule, body)
        problems.extend(parser.problems)
        if rule is not FAILED and not parser.problems:
            rules.append(rule)
    return rules, problems


class _RuleParser(RuleValidator):
    """Parser of one rule body. Each method raises Invalid when its section cannot be used."""

    def __init__(self, name: str, source: str) -> None:
        super().__init__(name, source)
        self.references: dict[str, ReferenceDeclaration] = {}
        # Names of declarations that had problems. Conditions that use them report nothing more.
        self.invalid_reference_names: set[str] = set()

    def parse_rule(self, body: Any) -> Rule:
        if not isinstance(body, Mapping):
            raise self.fail("", f"the rule body must be a mapping, got {describe(body)}")
        self.report_unknown_keys(body, RULE_KEYS, "")

        kind = FAILED
        if "resource" not in body:
            self.report("resource", "missing required key (the object kind, such as Pod)")
        else:
            kind = self.attempt(self.parse_non_empty_string, body["resource"], "resource")
        resource = None if kind is FAILED else kind

        duration_seconds = self.attempt(self._parse_duration, body.get("duration", 0))

        # References come before the conditions, which name them.
        declarations: tuple[ReferenceDeclaration, ...] = ()
        if "references" in body:
            parsed = self.attempt(parse_declarations, self, body["references"], resource)
            if parsed is not FAILED:
                declarations = parsed
                self.references = {declaration.name: declaration for declaration in declarations}
            elif isinstance(body["references"], list):
                self.invalid_reference_names = {
                    entry["name"] for entry in body["references"] if isinstance(entry, Mapping) and isinstance(entry.get("name"), str)
                }

        filters: Any = ()
        if "filterField" in body:
            filters = self.attempt(self.parse_conditions, body["filterField"], "filterField", False)
        checks: Any = FAILED
        if "checkField" not in body:
            self.report("checkField", "missing required key (the conditions that define the anomaly)")
        else:
            checks = self.attempt(self.parse_conditions, body["checkField"], "checkField", True)

        duration_from = None
        if "durationFrom" in body:
            duration_from = self.attempt(self._parse_duration_from, body["durationFrom"])

        every_seconds = None
        if "every" in body:
            every_seconds = self.attempt(self._parse_every, body["every"])
        jitter = 1.0
        if "jitter" in body:
            jitter = self.attempt(self._parse_jitter, body["jitter"])
            if "every" not in body:
                self.report("jitter", "jitter needs every, the period of the periodic check")

        if self.problems:
            raise Invalid()
        return Rule(
            name=self.name,
            kind=kind,
            duration_seconds=duration_seconds,
            source=self.source,
            filter_fields=filters,
            check_fields=checks,
            duration_from=duration_from,
            every_seconds=every_seconds,
            jitter=jitter,
            references=declarations,
        )

    # Top-level keys

    def _parse_duration(self, duration: Any) -> float:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)):
            raise self.fail("duration", f"must be a number of seconds, got {describe(duration)}")
        try:
            duration_seconds = float(duration)
        except OverflowError:
            raise self.fail("duration", "is too large to be a number of seconds") from None
        if not math.isfinite(duration_seconds) or duration_seconds < 0:
            raise self.fail("duration", f"must be a finite number of seconds >= 0, got {describe(duration)}")
        return duration_seconds

    def _parse_every(self, every: Any) -> float:
        if isinstance(every, bool) or not isinstance(every, (int, float)):
            raise self.fail("every", f"must be a number of seconds, got {describe(every)}")
        try:
            every_seconds = float(every)
        except OverflowError:
            raise self.fail("every", "is too large to be a number of seconds") from None
        if not math.isfinite(every_seconds) or every_seconds <= 0:
            raise self.fail("every", f"must be a finite number of seconds > 0, got {describe(every)}")
        return every_seconds

    def _parse_jitter(self, jitter: Any) -> float:
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)):
            raise self.fail("jitter", f"must be a fraction between 0 and 1, got {describe(jitter)}")
        if not 0 <= jitter <= 1:
            raise self.fail("jitter", f"must be a fraction between 0 and 1, got {describe(jitter)}")
        return float(jitter)

    def _parse_duration_from(self, value: Any) -> DurationSource:
        if isinstance(value, list):
            field = self.parse_path(value, "durationFrom", True, _FIELD_LEADING_FAN_OUT)
            return DurationSource(field=field)
        if not isinstance(value, Mapping):
            raise self.fail(
                "durationFrom",
                f"must be a path (a list of keys) or a mapping with field, got {describe(value)}",
            )
        problems = len(self.problems)
        self.report_unknown_keys(value, DURATION_FROM_KEYS, "durationFrom")
        if "field" not in value:
            raise self.fail("durationFrom", "missing required key field (the path to the timestamp or its list)")
        field, sub_name, sub_value, sub_field = self._parse_selection(value, "durationFrom")
        if self.problems_since(problems):
            raise Invalid()
        return DurationSource(field=field, sub_identifier_name=sub_name, sub_identifier_value=sub_value, sub_field=sub_field)

    # Conditions

    def parse_conditions(self, value: Any, key: str, required: bool) -> tuple[FieldCondition | ReferenceCondition, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of conditions, got {describe(value)}")
        if required and not value:
            raise self.fail(key, "must contain at least one condition")
        problems = len(self.problems)
        conditions = [self.attempt(self.parse_condition, entry, f"{key}[{index}]") for index, entry in enumerate(value)]
        if self.problems_since(problems):
            raise Invalid()
        return tuple(conditions)

    def parse_condition(self, entry: Any, path: str) -> FieldCondition | ReferenceCondition:
        if not isinstance(entry, Mapping):
            raise self.fail(path, f"must be a mapping with a field key, got {describe(entry)}")
        if any(key in entry for key in REFERENCE_CONDITION_KEYS):
            return self._parse_reference_condition(entry, path)
        return self.parse_field_condition(entry, path, CONDITION_KEYS)

    def parse_field_condition(self, entry: Mapping[Any, Any], path: str, allowed_keys: tuple[str, ...]) -> FieldCondition:
        problems = len(self.problems)
        self.report_unknown_keys(entry, allowed_keys, path)
        if "field" not in entry:
            raise self.fail(path, "missing required key field (the list of map keys to read)")
        field, sub_name, sub_value, sub_field = self._parse_selection(entry, path)

        operators: dict[str, Any] = {}
        for key in OPERATOR_KEYS:
            if key in entry:
                operators[key] = self.attempt(self._parse_operator, key, entry[key], f"{path}.{key}")
        if not operators:
            self.report(path, f"has no operator. Set one of {', '.join(OPERATOR_KEYS)}")

        match = MATCH_ANY
        if "match" in entry:
            match = entry["match"]
            if match not in (MATCH_ANY, MATCH_ALL):
                self.report(f"{path}.match", f"must be any or all, got {describe(match)}")
            elif sub_name is None and field is not FAILED and FAN_OUT not in field:
                self.report(
                    f"{path}.match",
                    "match needs several values: put \"[*]\" in field or subField, or select elements with subIdentifierName",
                )

        if self.problems_since(problems):
            raise Invalid()
        numeric = tuple((key, operators[key]) for key in NUMERIC_OPERATORS if key in operators)
        return FieldCondition(
            field=field,
            equal_value=operators.get("equalValue"),
            not_equal_value=operators.get("notEqualValue"),
            nil_value=operators.get("nilValue"),
            sub_identifier_name=sub_name,
            sub_identifier_value=sub_value,
            sub_field=sub_field,
            exists=operators.get("exists"),
            prefix=operators.get("prefix"),
            substring=operators.get("substring"),
            regex=operators.get("regex"),
            numeric_comparisons=numeric,
            length=operators.get("length"),
            match=match,
        )

    def _parse_selection(self, entry: Mapping[Any, Any], path: str) -> tuple[Any, Any, Any, Any]:
        """Validate field, subIdentifierName, subIdentifierValue and subField of a condition or durationFrom."""
        field = self.attempt(self.parse_path, entry["field"], f"{path}.field", True, _FIELD_LEADING_FAN_OUT)

        sub_name = None
        if "subIdentifierName" in entry:
            sub_name = self.attempt(self.parse_non_empty_string, entry["subIdentifierName"], f"{path}.subIdentifierName")
            if sub_name is not FAILED and sub_name == FAN_OUT:
                self.report(f"{path}.subIdentifierName", "must be a key of the list elements, such as name or type, not [*]")
        sub_value = None
        if "subIdentifierValue" in entry:
            # Empty strings are valid values: "" is the string form of null and of an absent field.
            sub_value = self.attempt(self.parse_string_list, entry["subIdentifierValue"], f"{path}.subIdentifierValue", True)
        sub_field = None
        if "subField" in entry:
            sub_field = self.attempt(self.parse_path, entry["subField"], f"{path}.subField", True, _SUB_FIELD_LEADING_FAN_OUT)

        if "subIdentifierName" not in entry:
            for dependent in ("subField", "subIdentifierValue"):
                if dependent in entry:
                    self.report(
                        f"{path}.{dependent}",
                        f"{dependent} needs subIdentifierName, the key that identifies list elements",
                    )
        elif "subField" not in entry:
            self.report(path, "subIdentifierName needs subField, the path to read inside each selected element")
        elif field is not FAILED and field[-1] == FAN_OUT:
            self.report(
                f"{path}.field",
                "with subIdentifierName, field must end at the list to select from, not at [*]",
            )
        return field, sub_name, sub_value, sub_field

    def _parse_operator(self, key: str, value: Any, path: str) -> Any:
        if key in ("equalValue", "notEqualValue"):
            # Empty strings are valid values: "" is the string form of null and of an absent field.
            return self.parse_string_list(value, path, allow_empty_items=True)
        if key in ("nilValue", "exists"):
            return self.parse_bool(value, path)
        if key in ("prefix", "substring"):
            return self.parse_string_list(value, path, allow_empty_items=False)
        if key == "regex":
            pattern = self.parse_non_empty_string(value, path)
            try:
                re.compile(pattern)
            except re.error as error:
                where = f" at position {error.pos}" if error.pos is not None else ""
                raise self.fail(path, f"invalid regular expression {pattern!r}: {error.msg}{where}") from None
            return pattern
        if key == "length":
            return self._parse_length(value, path)
        return self._parse_threshold(value, path)

    def _parse_threshold(self, value: Any, path: str) -> Decimal:
        threshold = threshold_of(value)
        if threshold is None:
            raise self.fail(
                path,
                f"must be a number or a Kubernetes quantity such as 500Mi, 100m, 2 or 1.5, got {describe(value)}",
            )
        return threshold

    def _parse_length(self, value: Any, path: str) -> tuple[tuple[str, int], ...]:
        if not isinstance(value, Mapping) or not value:
            raise self.fail(
                path,
                f"must be a mapping of comparison to length, such as {{greaterThan: 0}}, got {describe(value)}",
            )
        problems = len(self.problems)
        self.report_unknown_keys(value, LENGTH_KEYS, path)
        comparisons: list[tuple[str, int]] = []
        for key in LENGTH_KEYS:
            if key not in value:
                continue
            bound = value[key]
            if isinstance(bound, float) and bound.is_integer():
                # JSON Schema counts 1.0 as an integer, so the parser does too.
                bound = int(bound)
            if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
                self.report(f"{path}.{key}", f"must be a whole number >= 0, got {describe(bound)}")
                continue
            comparisons.append((key, bound))
        if self.problems_since(problems):
            raise Invalid()
        return tuple(comparisons)

    # Reference conditions

    def _parse_reference_condition(self, entry: Mapping[Any, Any], path: str) -> ReferenceCondition:
        present = [key for key in REFERENCE_CONDITION_KEYS if key in entry]
        others = [key for key in entry if key not in REFERENCE_CONDITION_KEYS]
        if len(present) > 1:
            raise self.fail(f"{path}.{present[1]}", f"a condition takes one of {', '.join(REFERENCE_CONDITION_KEYS)}, not several")
        (key,) = present
        if others:
            raise self.fail(
                f"{path}.{safe_str(others[0])}",
                f"{key} is a condition of its own. Put field conditions on the referenced object inside referenceField",
            )
        if key == "referenceField":
            return self._parse_reference_field(entry[key], f"{path}.{key}")
        name = self._parse_reference_name(entry[key], f"{path}.{key}")
        if key == "referenceKeyMissing":
            declaration = self.references[name]
            if not any(source.key is not None for source in declaration.sources):
                raise self.fail(
                    f"{path}.{key}",
                    f"reference {name!r} reads no key, so referenceKeyMissing would never hold. Add key to its source",
                )
            return ReferenceCondition(operator="keyMissing", reference=name)
        return ReferenceCondition(operator="missing", reference=name)

    def _parse_reference_field(self, value: Any, path: str) -> ReferenceCondition:
        if not isinstance(value, Mapping):
            raise self.fail(path, f"must be a mapping with name, field and operators, got {describe(value)}")
        if "name" not in value:
            raise self.fail(path, "missing required key name (the reference to test)")
        name = self._parse_reference_name(value["name"], f"{path}.name")
        condition_entry = {key: item for key, item in value.items() if key != "name"}
        condition = self.parse_field_condition(condition_entry, path, ("name", *CONDITION_KEYS))
        return ReferenceCondition(operator="field", reference=name, field_condition=condition)

    def _parse_reference_name(self, value: Any, path: str) -> str:
        name = self.parse_non_empty_string(value, path)
        if name in self.invalid_reference_names:
            raise Invalid()
        if name not in self.references:
            if self.references:
                declared = f"Declared references are {', '.join(self.references)}"
            else:
                declared = "The rule declares no references: add them under references"
            raise self.fail(path, f"no reference named {name!r}. {declared}")
        return name

