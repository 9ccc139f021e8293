"""Field conditions (entries of filterField and checkField) and their compiled form.

A condition compiles once, when its rule is built, into a closure over precomputed tuples,
frozensets and compiled patterns. Evaluating it reads the object without parsing paths again.
Conditions without "[*]" and without match: all, the forms of the original rule format, compile
into loops without generators and allocate only when a check holds and its context entry is
returned.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kdiag.rules.operators import ValueTest, make_value_test
from kdiag.rules.paths import compile_display, compile_walker, has_fan_out
from kdiag.rules.values import ABSENT, format_path, make_path_reader, string_form

FilterTest = Callable[[Any], bool]
# A compiled check returns (display path, string form of the value found) when it holds, else None.
Check = Callable[[Any], "tuple[str, str] | None"]

MATCH_ANY = "any"
MATCH_ALL = "all"

# A match: all check shows at most this many values in its context entry.
MAX_CONTEXT_VALUES = 10

__all__ = ["Check", "FieldCondition", "FilterTest", "ValueTest", "compile_check", "compile_filter", "make_value_test"]


@dataclass(frozen=True, slots=True)
class FieldCondition:
    """One validated entry of filterField or checkField, in the rule document's terms.

    At least one operator is set. sub_field is set exactly when sub_identifier_name is set.
    sub_identifier_value None selects every map element. numeric_comparisons holds
    (greaterThan|greaterOrEqual|lessThan|lessOrEqual, threshold) pairs, and length holds
    (comparison name, bound) pairs.
    """

    field: tuple[str, ...]
    equal_value: tuple[str, ...] | None = None
    not_equal_value: tuple[str, ...] | None = None
    nil_value: bool | None = None
    sub_identifier_name: str | None = None
    sub_identifier_value: tuple[str, ...] | None = None
    sub_field: tuple[str, ...] | None = None
    exists: bool | None = None
    prefix: tuple[str, ...] | None = None
    substring: tuple[str, ...] | None = None
    regex: str | None = None
    numeric_comparisons: tuple[tuple[str, Decimal], ...] = ()
    length: tuple[tuple[str, int], ...] | None = None
    match: str = MATCH_ANY

    @property
    def fans_out(self) -> bool:
        """Whether field or subField contains "[*]"."""
        return has_fan_out(self.field) or has_fan_out(self.sub_field)

    @property
    def display_path(self) -> str:
        """Display path of the condition, e.g. status.phase.

        For a list condition the selector lists the identifier values
        (status.conditions[type=Ready].status), or is [*] when every element is selected.
        Match.context uses this path unless one list element satisfied the check, which it names.
        """
        list_path = format_path(self.field)
        if self.sub_identifier_name is None or self.sub_field is None:
            return list_path
        if self.sub_identifier_value is None:
            selector = "[*]"
        else:
            selector = f"[{self.sub_identifier_name}={'|'.join(self.sub_identifier_value)}]"
        return list_path + selector + _sub_path_suffix(self.sub_field)


def compile_filter(condition: FieldCondition) -> FilterTest:
    """Compile a condition into a function that returns whether an object satisfies it."""
    if condition.fans_out or condition.match == MATCH_ALL:
        check = compile_check(condition)

        def walked_filter(obj: Any) -> bool:
            return check(obj) is not None

        return walked_filter

    accepts = make_value_test(condition)
    if condition.sub_identifier_name is None:
        read = make_path_reader(condition.field)

        def plain_filter(obj: Any) -> bool:
            return accepts(read(obj))

        return plain_filter

    find = _compile_element_search(condition, accepts)
    accepts_absent = accepts(ABSENT)

    def element_filter(obj: Any) -> bool:
        found = find(obj)
        if found is None:
            return accepts_absent
        return found[0] >= 0

    return element_filter


def compile_check(condition: FieldCondition) -> Check:
    """Compile a condition into a function that returns its context entry when the object satisfies it."""
    accepts = make_value_test(condition)
    if condition.fans_out or condition.match == MATCH_ALL:
        return _compile_walked_check(condition, accepts)

    if condition.sub_identifier_name is None:
        read = make_path_reader(condition.field)
        display = condition.display_path

        def plain_check(obj: Any) -> tuple[str, str] | None:
            raw = read(obj)
            if accepts(raw):
                return display, raw if type(raw) is str else string_form(raw)
            return None

        return plain_check

    find = _compile_element_search(condition, accepts)
    accepts_absent = accepts(ABSENT)
    unselected_display = condition.display_path
    list_display = format_path(condition.field)
    sub_suffix = _sub_path_suffix(condition.sub_field or ())
    identifier_name = condition.sub_identifier_name

    def element_check(obj: Any) -> tuple[str, str] | None:
        found = find(obj)
        if found is None:
            return (unselected_display, "") if accepts_absent else None
        index, identifier, raw = found
        if index < 0:
            return None
        # Name the element by its identifier, or by its index when it has none.
        if identifier is ABSENT or identifier is None:
            selector = f"[{index}]"
        else:
            selector = f"[{identifier_name}={string_form(identifier)}]"
        text = raw if type(raw) is str else string_form(raw)
        return list_display + selector + sub_suffix, text

    return element_check


def _compile_walked_check(condition: FieldCondition, accepts: ValueTest) -> Check:
    """Compile a condition with "[*]" or match: all, which walks every value its path reaches.

    match any holds when one reached value passes, and names that value's place. match all holds
    when at least one value is reached and every one passes. Its context entry is the condition's
    display path with [*] selectors, and the string forms of the values as a JSON list.
    """
    walk = compile_walker(condition.field, condition.sub_identifier_name, condition.sub_identifier_value, condition.sub_field)
    display = compile_display(condition.field, condition.sub_identifier_name, condition.sub_field)

    if condition.match != MATCH_ALL:

        def any_check(obj: Any) -> tuple[str, str] | None:
            for trail, raw in walk(obj):
                if accepts(raw):
                    return display(trail), raw if type(raw) is str else string_form(raw)
            return None

        return any_check

    all_display = condition.display_path

    def all_check(obj: Any) -> tuple[str, str] | None:
        texts: list[str] = []
        for _, raw in walk(obj):
            if not accepts(raw):
                return None
            texts.append(raw if type(raw) is str else string_form(raw))
        if not texts:
            return None
        return all_display, _list_text(texts)

    return all_check


def _list_text(texts: list[str]) -> str:
    shown = json.dumps(texts[:MAX_CONTEXT_VALUES], ensure_ascii=False, separators=(",", ":"))
    hidden = len(texts) - MAX_CONTEXT_VALUES
    return shown if hidden <= 0 else f"{shown} and {hidden} more"


def _sub_path_suffix(sub_field: tuple[str, ...]) -> str:
    formatted = format_path(sub_field)
    return formatted if formatted.startswith("[") else "." + formatted


def _compile_element_search(
    condition: FieldCondition, accepts: ValueTest
) -> Callable[[Any], "tuple[int, Any, Any] | None"]:
    """Build the list walk of a sub-identifier condition without "[*]".

    The walk returns (index, identifier, value) for the first selected element whose subField value
    passes accepts. It returns (-1, ABSENT, ABSENT) when elements were selected but none passes.
    It returns None when no element was selected because the list is missing, is not a list, or
    has no matching element.
    """
    read_list = make_path_reader(condition.field)
    read_sub = make_path_reader(condition.sub_field or ())
    identifier_name = condition.sub_identifier_name
    selected_identifiers = None if condition.sub_identifier_value is None else frozenset(condition.sub_identifier_value)
    none_passed = (-1, ABSENT, ABSENT)

    def search(obj: Any) -> tuple[int, Any, Any] | None:
        items = read_list(obj)
        if not (type(items) is list or isinstance(items, tuple)):
            return None
        selected = False
        for index, element in enumerate(items):
            if not (type(element) is dict or isinstance(element, Mapping)):
                continue
            identifier = element.get(identifier_name, ABSENT)
            if selected_identifiers is not None:
                identifier_text = identifier if type(identifier) is str else string_form(identifier)
                if identifier_text not in selected_identifiers:
                    continue
            selected = True
            raw = read_sub(element)
            if accepts(raw):
                return index, identifier, raw
        return none_passed if selected else None

    return search
