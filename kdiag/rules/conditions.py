"""Field conditions (entries of filterField and checkField) and their compiled form.

A condition compiles once, when its rule is built, into a closure over precomputed tuples and
frozensets. Evaluating it reads the object without parsing paths again, and allocates only when a
check holds and its context entry is returned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kdiag.rules.values import ABSENT, format_path, make_path_reader, string_form

ValueTest = Callable[[Any], bool]
FilterTest = Callable[[Any], bool]
# A compiled check returns (display path, string form of the value found) when it holds, else None.
Check = Callable[[Any], "tuple[str, str] | None"]


@dataclass(frozen=True, slots=True)
class FieldCondition:
    """One validated entry of filterField or checkField, in the rule document's terms.

    At least one of equal_value, not_equal_value and nil_value is set. sub_field is set exactly
    when sub_identifier_name is set. sub_identifier_value None selects every map element.
    """

    field: tuple[str, ...]
    equal_value: tuple[str, ...] | None = None
    not_equal_value: tuple[str, ...] | None = None
    nil_value: bool | None = None
    sub_identifier_name: str | None = None
    sub_identifier_value: tuple[str, ...] | None = None
    sub_field: tuple[str, ...] | None = None

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


def make_value_test(condition: FieldCondition) -> ValueTest:
    """Build the test of the operators (equalValue, notEqualValue, nilValue) on one raw value."""
    equal = None if condition.equal_value is None else frozenset(condition.equal_value)
    not_equal = None if condition.not_equal_value is None else frozenset(condition.not_equal_value)
    nil = condition.nil_value

    # The three single-operator cases are the common ones and get their own closures.
    if equal is not None and not_equal is None and nil is None:

        def equal_test(raw: Any) -> bool:
            return (raw if type(raw) is str else string_form(raw)) in equal

        return equal_test

    if not_equal is not None and equal is None and nil is None:

        def not_equal_test(raw: Any) -> bool:
            return (raw if type(raw) is str else string_form(raw)) not in not_equal

        return not_equal_test

    if nil is not None and equal is None and not_equal is None:
        if nil:
            return _is_nil
        return _is_not_nil

    def combined_test(raw: Any) -> bool:
        if nil is not None and _is_nil(raw) is not nil:
            return False
        text = raw if type(raw) is str else string_form(raw)
        if equal is not None and text not in equal:
            return False
        if not_equal is not None and text in not_equal:
            return False
        return True

    return combined_test


def _is_nil(raw: Any) -> bool:
    return raw is ABSENT or raw is None


def _is_not_nil(raw: Any) -> bool:
    return raw is not ABSENT and raw is not None


def _sub_path_suffix(sub_field: tuple[str, ...]) -> str:
    formatted = format_path(sub_field)
    return formatted if formatted.startswith("[") else "." + formatted


def _compile_element_search(
    condition: FieldCondition, accepts: ValueTest
) -> Callable[[Any], "tuple[int, Any, Any] | None"]:
    """Build the list walk of a sub-identifier condition.

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
