"""The operators of a field condition, compiled into one test of a raw JSON value.

Operators and the form of the value they read:

- equalValue, notEqualValue, prefix, substring, regex: the string form (values.string_form).
- nilValue, exists: the raw value. nilValue treats null like a missing key, exists does not.
- greaterThan, greaterOrEqual, lessThan, lessOrEqual: the number (quantities.number_of). A value
  that is not a number fails every comparison.
- length: the number of characters of a string, elements of a list or keys of a mapping, with 0
  for a missing key or null. Other values fail every length comparison.

A condition with several operators needs all of them to hold.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from kdiag.rules.quantities import number_of
from kdiag.rules.values import ABSENT, string_form

if TYPE_CHECKING:
    from kdiag.rules.conditions import FieldCondition

ValueTest = Callable[[Any], bool]

# Comparison names shared by the numeric operators and the keys of length.
COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "equal": operator.eq,
    "notEqual": operator.ne,
    "greaterThan": operator.gt,
    "greaterOrEqual": operator.ge,
    "lessThan": operator.lt,
    "lessOrEqual": operator.le,
}
NUMERIC_OPERATORS = ("greaterThan", "greaterOrEqual", "lessThan", "lessOrEqual")


def make_value_test(condition: FieldCondition) -> ValueTest:
    """Build the test of a condition's operators on one raw value (ABSENT for a missing key)."""
    raw_tests: list[ValueTest] = []
    if condition.nil_value is not None:
        raw_tests.append(is_nil if condition.nil_value else is_not_nil)
    if condition.exists is not None:
        raw_tests.append(_exists if condition.exists else _missing)

    text_tests: list[Callable[[str], bool]] = []
    if condition.equal_value is not None:
        equal = frozenset(condition.equal_value)
        text_tests.append(equal.__contains__)
    if condition.not_equal_value is not None:
        not_equal = frozenset(condition.not_equal_value)
        text_tests.append(lambda text: text not in not_equal)
    if condition.prefix is not None:
        prefixes = condition.prefix
        text_tests.append(lambda text: text.startswith(prefixes))
    if condition.substring is not None:
        text_tests.append(_make_substring_test(condition.substring))
    if condition.regex is not None:
        search = re.compile(condition.regex).search
        text_tests.append(lambda text: search(text) is not None)

    number_tests = [
        _bind(COMPARISONS[name], threshold)
        for name, threshold in condition.numeric_comparisons
    ]
    length_tests = [_bind(COMPARISONS[name], bound) for name, bound in condition.length or ()]

    # A single test on the string form, the common case, gets a closure without loops.
    if len(text_tests) == 1 and not raw_tests and not number_tests and not length_tests:
        (text_test,) = text_tests

        def text_only(raw: Any) -> bool:
            return text_test(raw if type(raw) is str else string_form(raw))

        return text_only
    if len(raw_tests) == 1 and not text_tests and not number_tests and not length_tests:
        return raw_tests[0]

    def combined(raw: Any) -> bool:
        for raw_test in raw_tests:
            if not raw_test(raw):
                return False
        if text_tests:
            text = raw if type(raw) is str else string_form(raw)
            for text_test in text_tests:
                if not text_test(text):
                    return False
        if number_tests:
            number = number_of(raw)
            if number is None:
                return False
            for number_test in number_tests:
                if not number_test(number):
                    return False
        if length_tests:
            length = length_of(raw)
            if length is None:
                return False
            for length_test in length_tests:
                if not length_test(length):
                    return False
        return True

    return combined


def length_of(raw: Any) -> int | None:
    """Return the length that the length operator compares, or None for numbers and booleans.

    A missing key and null have length 0, because Kubernetes omits empty lists and maps from JSON.
    """
    if raw is ABSENT or raw is None:
        return 0
    if isinstance(raw, (str, list, tuple, Mapping)):
        return len(raw)
    return None


def is_nil(raw: Any) -> bool:
    return raw is ABSENT or raw is None


def is_not_nil(raw: Any) -> bool:
    return raw is not ABSENT and raw is not None


def _exists(raw: Any) -> bool:
    return raw is not ABSENT


def _missing(raw: Any) -> bool:
    return raw is ABSENT


def _bind(compare: Callable[[Any, Any], bool], bound: Decimal | int) -> ValueTest:
    def compare_to_bound(value: Any) -> bool:
        return compare(value, bound)

    return compare_to_bound


def _make_substring_test(substrings: tuple[str, ...]) -> Callable[[str], bool]:
    if len(substrings) == 1:
        (substring,) = substrings
        return lambda text: substring in text

    def any_substring(text: str) -> bool:
        for substring in substrings:
            if substring in text:
                return True
        return False

    return any_substring
