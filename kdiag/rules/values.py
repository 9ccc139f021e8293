"""Path reading and the string form that rule conditions compare.

Both run once per condition per object change, so they avoid allocation on the common path:
a missing key returns the ABSENT sentinel and a string value is compared as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final


class _Absent:
    """Type of ABSENT, the value of a path that does not exist in the object."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()

PathReader = Callable[[Any], Any]

# The path segment that fans out over the elements of a list. Kubernetes map keys (label and
# annotation keys, ConfigMap and Secret data keys, field names) never contain brackets.
FAN_OUT: Final = "[*]"

_PLAIN_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def string_form(value: Any) -> str:
    """Convert a JSON value to the string that equalValue and notEqualValue compare.

    A string is returned as it is, a boolean as "true" or "false", a number as its JSON text, null and
    ABSENT as "", and a mapping or list as compact JSON with sorted keys. Never raises: a value that
    JSON cannot encode (only possible with non-JSON input) converts to "".
    """
    if type(value) is str:
        return value
    if value is None or value is ABSENT:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return str(value)
    try:
        if isinstance(value, (int, float)):
            # json.dumps gives the JSON text of numbers: 1, 1.5, 1e+20, and NaN or Infinity
            # for the non-finite floats that Python's json module accepts.
            return json.dumps(value)
        if isinstance(value, (Mapping, list, tuple)):
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
        return str(value)
    except (TypeError, ValueError, RecursionError):
        # Mixed key types, nesting deeper than the interpreter's recursion limit, or an int with
        # more digits than sys.get_int_max_str_digits(). None of these can come from parsed JSON.
        return ""


def make_path_reader(keys: tuple[str, ...]) -> PathReader:
    """Build a function that follows map keys into an object.

    The function returns ABSENT when a key is missing or when a value on the way is not a mapping.
    Paths of one to three keys, the common lengths, get unrolled code for plain dicts.
    """
    if len(keys) == 1:
        (key0,) = keys

        def read_one(value: Any) -> Any:
            if type(value) is dict:
                return value.get(key0, ABSENT)
            return _read_any(value, keys)

        return read_one

    if len(keys) == 2:
        key0, key1 = keys
        tail1 = keys[1:]

        def read_two(value: Any) -> Any:
            if type(value) is dict:
                value = value.get(key0, ABSENT)
                if type(value) is dict:
                    return value.get(key1, ABSENT)
                return _read_any(value, tail1)
            return _read_any(value, keys)

        return read_two

    if len(keys) == 3:
        key0, key1, key2 = keys
        tail1 = keys[1:]
        tail2 = keys[2:]

        def read_three(value: Any) -> Any:
            if type(value) is dict:
                value = value.get(key0, ABSENT)
                if type(value) is dict:
                    value = value.get(key1, ABSENT)
                    if type(value) is dict:
                        return value.get(key2, ABSENT)
                    return _read_any(value, tail2)
                return _read_any(value, tail1)
            return _read_any(value, keys)

        return read_three

    def read_many(value: Any) -> Any:
        return _read_any(value, keys)

    return read_many


def _read_any(value: Any, keys: tuple[str, ...]) -> Any:
    """Follow keys through dicts and other Mappings. ABSENT, like any non-mapping, ends the walk."""
    for key in keys:
        if type(value) is dict or isinstance(value, Mapping):
            value = value.get(key, ABSENT)
        else:
            return ABSENT
    return value


def format_path(keys: tuple[str, ...]) -> str:
    """Format path segments for display: status.phase, metadata.labels['app.kubernetes.io/name'], spec.containers[*]."""
    parts: list[str] = []
    for key in keys:
        if key == FAN_OUT:
            parts.append(FAN_OUT)
        elif _PLAIN_SEGMENT.fullmatch(key):
            parts.append("." + key if parts else key)
        else:
            escaped = key.replace("\\", "\\\\").replace("'", "\\'")
            parts.append(f"['{escaped}']")
    return "".join(parts)
