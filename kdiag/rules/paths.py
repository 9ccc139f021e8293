"""Paths that fan out over list elements ("[*]" segments and sub-identifier selection).

A path compiles once into a walker: a function from an object to the (trail, value) pairs that the
path reaches. A trail holds one entry per fan-out step, in order: the element's index for "[*]",
and (index, identifier value) for a sub-identifier selection. Trails name the element that satisfied
a condition in Match.context and pair values of two paths that share list elements (a reference's
name and key).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kdiag.rules.values import ABSENT, FAN_OUT, format_path, make_path_reader, string_form

Trail = tuple[Any, ...]
Walker = Callable[[Any], Iterator[tuple[Trail, Any]]]
_Step = Callable[[Any, Trail], Iterator[tuple[Trail, Any]]]


def has_fan_out(keys: tuple[str, ...] | None) -> bool:
    return keys is not None and FAN_OUT in keys


def split_runs(keys: tuple[str, ...]) -> list[tuple[str, ...] | None]:
    """Split a path into runs of map keys, with None for each "[*]": [a, "[*]", b] -> [(a,), None, (b,)]."""
    runs: list[tuple[str, ...] | None] = []
    current: list[str] = []
    for key in keys:
        if key == FAN_OUT:
            if current:
                runs.append(tuple(current))
                current = []
            runs.append(None)
        else:
            current.append(key)
    if current:
        runs.append(tuple(current))
    return runs


def compile_walker(
    field: tuple[str, ...],
    sub_identifier_name: str | None = None,
    sub_identifier_value: tuple[str, ...] | None = None,
    sub_field: tuple[str, ...] | None = None,
) -> Walker:
    """Compile a path into a walker that yields every (trail, value) the path reaches.

    "[*]" over a value that is not a list yields nothing, and so does a selection over a list
    without selected map elements. A key missing on the way yields the value ABSENT.
    """
    runs: list[tuple[str, ...] | None | tuple[str, frozenset[str] | None]] = list(split_runs(field))
    if sub_identifier_name is not None:
        selected = None if sub_identifier_value is None else frozenset(sub_identifier_value)
        runs.append(_Select(sub_identifier_name, selected))
        runs.extend(split_runs(sub_field or ()))

    step: _Step = _terminal
    for run in reversed(runs):
        if run is None:
            step = _make_each(step)
        elif isinstance(run, _Select):
            step = _make_select(run, step)
        else:
            step = _make_read(make_path_reader(run), step)

    def walk(obj: Any) -> Iterator[tuple[Trail, Any]]:
        return step(obj, ())

    return walk


class _Select:
    __slots__ = ("name", "selected")

    def __init__(self, name: str, selected: frozenset[str] | None) -> None:
        self.name = name
        self.selected = selected


def _terminal(value: Any, trail: Trail) -> Iterator[tuple[Trail, Any]]:
    yield trail, value


def _make_read(read: Callable[[Any], Any], following: _Step) -> _Step:
    def read_step(value: Any, trail: Trail) -> Iterator[tuple[Trail, Any]]:
        return following(read(value), trail)

    return read_step


def _make_each(following: _Step) -> _Step:
    def each_step(value: Any, trail: Trail) -> Iterator[tuple[Trail, Any]]:
        if type(value) is list or isinstance(value, tuple):
            for index, element in enumerate(value):
                yield from following(element, trail + (index,))

    return each_step


def _make_select(select: _Select, following: _Step) -> _Step:
    name = select.name
    selected = select.selected

    def select_step(value: Any, trail: Trail) -> Iterator[tuple[Trail, Any]]:
        if not (type(value) is list or isinstance(value, tuple)):
            return
        for index, element in enumerate(value):
            if not (type(element) is dict or isinstance(element, Mapping)):
                continue
            identifier = element.get(name, ABSENT)
            if selected is not None:
                text = identifier if type(identifier) is str else string_form(identifier)
                if text not in selected:
                    continue
            yield from following(element, trail + ((index, identifier),))

    return select_step


def compile_display(
    field: tuple[str, ...],
    sub_identifier_name: str | None = None,
    sub_field: tuple[str, ...] | None = None,
) -> Callable[[Trail], str]:
    """Build the function that names the place a trail leads to, such as spec.containers[1].image.

    A "[*]" step shows the element's index. A selection shows [name=value] with the element's
    identifier, or the index when the element has none.
    """
    pieces: list[str | None] = []
    _append_runs(pieces, field)
    if sub_identifier_name is not None:
        pieces.append(None)
        _append_runs(pieces, sub_field or ())

    def display(trail: Trail) -> str:
        parts: list[str] = []
        position = 0
        for piece in pieces:
            if piece is not None:
                parts.append(piece if parts or not piece.startswith(".") else piece[1:])
                continue
            entry = trail[position] if position < len(trail) else None
            position += 1
            if type(entry) is tuple:
                index, identifier = entry
                if identifier is ABSENT or identifier is None:
                    parts.append(f"[{index}]")
                else:
                    parts.append(f"[{sub_identifier_name}={string_form(identifier)}]")
            else:
                parts.append(f"[{entry}]")
        return "".join(parts)

    return display


def _append_runs(pieces: list[str | None], keys: tuple[str, ...]) -> None:
    for run in split_runs(keys):
        if run is None:
            pieces.append(None)
        else:
            formatted = format_path(run)
            pieces.append(formatted if formatted.startswith("[") else "." + formatted)


def trails_compatible(first: Trail, second: Trail) -> bool:
    """Return whether two trails can come from the same list elements: one is a prefix of the other."""
    shorter = min(len(first), len(second))
    return first[:shorter] == second[:shorter]
