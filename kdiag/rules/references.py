"""References from one object to others (a Pod to its Secrets), and conditions on the referenced objects.

A rule declares its references under the rule key references. Each declaration has a name, the kind
of the referenced objects, and one or more sources: paths in the object that hold the referenced
object's name, with optional paths for a key inside it, its namespace and the optional flag.
extract_references turns a declaration and an object into ReferenceKeys, and reference_state
classifies a referenced object (looked up by the caller) as present, missing, or present without
the key.

Rule.evaluate(obj) never matches a rule with a reference condition. The worker passes a resolver,
Rule.evaluate(obj, resolve), to evaluate such rules.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from kdiag.rules.conditions import Check, FieldCondition, compile_check
from kdiag.rules.kinds import CLUSTER_SCOPED_KINDS, KEY_FIELDS
from kdiag.rules.paths import Trail, Walker, compile_walker
from kdiag.rules.values import ABSENT, FAN_OUT, PathReader, make_path_reader

if TYPE_CHECKING:
    from kdiag.rules.engine import Rule

NAMESPACE_SAME = "same"
NAMESPACE_CLUSTER = "cluster"

# Namespace of an object without metadata.namespace, as kubectl assumes for partial dumps.
DEFAULT_NAMESPACE = "default"

# Looks up a referenced object by (kind, namespace, name) and returns it, or None when it does not exist.
Resolver = Callable[[str, str, str], "Mapping[str, Any] | None"]


class ReferenceKey(NamedTuple):
    """One referenced object, and the key inside it when the reference names one (a Secret's data key).

    namespace is "" for cluster-scoped kinds.
    """

    kind: str
    namespace: str
    name: str
    key: str | None = None

    def describe(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}" + (f" key {self.key}" if self.key is not None else "")


class ReferenceState(enum.Enum):
    """Result of looking up a ReferenceKey."""

    PRESENT = "present"
    MISSING = "missing"
    # The object exists but has no such key, for example a Secret without the data key an env var reads.
    KEY_MISSING = "key-missing"


def reference_state(reference: ReferenceKey, target: Mapping[str, Any] | None) -> ReferenceState:
    """Classify a referenced object: missing when target is None, key-missing when it lacks reference.key.

    Keys are looked up in the maps that KEY_FIELDS lists for the kind (data and stringData of a
    Secret, data and binaryData of a ConfigMap).
    """
    if target is None:
        return ReferenceState.MISSING
    if reference.key is None:
        return ReferenceState.PRESENT
    for map_name in KEY_FIELDS.get(reference.kind, ()):
        values = target.get(map_name)
        if isinstance(values, Mapping) and reference.key in values:
            return ReferenceState.PRESENT
    return ReferenceState.KEY_MISSING


@dataclass(frozen=True)
class ReferenceSource:
    """One place in an object that names referenced objects.

    field leads to the name. key, optional and a namespace path are read from the same list elements
    as the name: their values pair with a name when the "[*]" steps they share with field reached
    the same elements. namespace is "same", "cluster" or a path.
    """

    field: tuple[str, ...]
    key: tuple[str, ...] | None = None
    namespace: str | tuple[str, ...] = NAMESPACE_SAME
    optional: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ReferenceDeclaration:
    """A named reference of a rule: the referenced kind (or kind_field, a path to it) and its sources.

    resource is the kind of object the declaration reads, set for the built-in declarations.
    """

    name: str
    kind: str | None
    sources: tuple[ReferenceSource, ...]
    kind_field: tuple[str, ...] | None = None
    resource: str | None = None
    builtin: str | None = None
    # Shared by every declaration with the same kind, kind_field and sources, so that
    # ExtractedReferences extracts them once per object whatever the rules call them.
    extractor: "Extractor" = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extractor", _shared_extractor(self.kind, self.kind_field, self.sources))

    def extract(self, obj: Any) -> list[ReferenceKey]:
        """Return the distinct references of obj, in the order of the sources and the object's lists."""
        if not isinstance(obj, Mapping):
            return []
        return self.extractor.extract(obj)


class ExtractedReferences:
    """The references of one object, extracted at most once per kind, kind_field and sources.

    The worker makes one for each change and passes it to every rule of the object, and to the
    reference tracking, so that rules that use the same declaration share one extraction. The lists
    it returns are shared too, and callers must not change them. With a group, the first declaration
    of the group that is extracted extracts all of the group's declarations in one walk.
    """

    __slots__ = ("obj", "_by_extractor", "_group")

    def __init__(self, obj: Any, group: "ExtractorGroup | None" = None) -> None:
        self.obj = obj
        self._by_extractor: dict[Extractor, list[ReferenceKey]] = {}
        self._group = group

    def extract(self, declaration: ReferenceDeclaration) -> list[ReferenceKey]:
        """Return declaration.extract(self.obj), extracted at the first call for the declaration's sources."""
        extractor = declaration.extractor
        references = self._by_extractor.get(extractor)
        if references is None:
            group = self._group
            if group is not None and extractor in group.extractors:
                self._by_extractor.update(group.extract(self.obj))
                return self._by_extractor[extractor]
            references = declaration.extract(self.obj)
            self._by_extractor[extractor] = references
        return references


@dataclass(frozen=True)
class ReferenceCondition:
    """A condition on referenced objects: referenceMissing, referenceKeyMissing or referenceField.

    operator is "missing", "keyMissing" or "field". field_condition is set for "field" and is tested
    on each referenced object that exists. Every form holds when at least one reference satisfies it.
    """

    operator: str
    reference: str
    field_condition: FieldCondition | None = None

    @property
    def display_path(self) -> str:
        return f"references.{self.reference}"


def extract_references(rule_or_declaration: "Rule | ReferenceDeclaration", obj: Any) -> list[ReferenceKey]:
    """Return the objects that obj refers to through a rule's declarations or through one declaration.

    For a rule, the result joins the references of all its declarations without repeats. References
    whose optional flag is true are left out, because Kubernetes runs a pod without an optional
    Secret, ConfigMap or key. Never raises on JSON values.
    """
    if isinstance(rule_or_declaration, ReferenceDeclaration):
        return rule_or_declaration.extract(obj)
    seen: dict[ReferenceKey, None] = {}
    for declaration in rule_or_declaration.references:
        for reference in declaration.extract(obj):
            seen.setdefault(reference, None)
    return list(seen)


# A compiled reference condition: (object, resolver, the object's ExtractedReferences) to a context entry or None.
ReferenceCheck = Callable[[Any, Resolver, ExtractedReferences], "tuple[str, str] | None"]


def compile_reference_condition(condition: ReferenceCondition, declaration: ReferenceDeclaration) -> ReferenceCheck:
    """Compile a reference condition into a check that returns a context entry or None.

    The check reads the references from the ExtractedReferences of the object it is given.
    """
    display = condition.display_path
    if condition.operator == "missing":

        def missing_check(obj: Any, resolve: Resolver, extracted: ExtractedReferences) -> tuple[str, str] | None:
            for reference in extracted.extract(declaration):
                if resolve(reference.kind, reference.namespace, reference.name) is None:
                    return display, ReferenceKey(*reference[:3]).describe()
            return None

        return missing_check

    if condition.operator == "keyMissing":

        def key_missing_check(obj: Any, resolve: Resolver, extracted: ExtractedReferences) -> tuple[str, str] | None:
            for reference in extracted.extract(declaration):
                if reference.key is None:
                    continue
                target = resolve(reference.kind, reference.namespace, reference.name)
                if target is not None and reference_state(reference, target) is ReferenceState.KEY_MISSING:
                    return display, reference.describe()
            return None

        return key_missing_check

    assert condition.field_condition is not None
    check: Check = compile_check(condition.field_condition)

    def field_check(obj: Any, resolve: Resolver, extracted: ExtractedReferences) -> tuple[str, str] | None:
        for reference in extracted.extract(declaration):
            target = resolve(reference.kind, reference.namespace, reference.name)
            if target is None:
                continue
            entry = check(target)
            if entry is not None:
                target_name = ReferenceKey(*reference[:3]).describe()
                return f"{display}[{target_name}].{entry[0]}", entry[1]
        return None

    return field_check


def _fan_out_count(keys: tuple[str, ...] | None) -> int:
    return 0 if keys is None else sum(1 for key in keys if key == FAN_OUT)


def _compile_source(kind: str | None, kind_field: tuple[str, ...] | None, source: ReferenceSource) -> Callable[[Any], list[ReferenceKey]]:
    """Compile one source into a function from an object to its ReferenceKeys, by walking each path separately.

    Extractor uses it for sources whose paths it cannot pair by element, and the tests compare
    Extractor's results with it.
    """
    name_walker = compile_walker(source.field)
    name_fan_outs = _fan_out_count(source.field)

    def paired(path: tuple[str, ...] | None) -> tuple[Walker, int] | None:
        if path is None:
            return None
        return compile_walker(path), min(name_fan_outs, _fan_out_count(path))

    key_path = paired(source.key)
    optional_path = paired(source.optional)
    namespace_path = paired(source.namespace) if isinstance(source.namespace, tuple) else None
    kind_path = paired(kind_field)
    static_kind = kind
    cluster_scoped = source.namespace == NAMESPACE_CLUSTER

    def extract(obj: Any) -> list[ReferenceKey]:
        names = [(trail, value) for trail, value in name_walker(obj) if type(value) is str and value]
        if not names:
            return []
        keys = _group(obj, key_path)
        optionals = _group(obj, optional_path)
        namespaces = _group(obj, namespace_path)
        kinds = _group(obj, kind_path)
        own_namespace = _own_namespace(obj)

        references: list[ReferenceKey] = []
        for trail, name in names:
            if optionals is not None and any(value is True for value in _paired_values(optionals, optional_path, trail)):
                continue
            kind = static_kind
            if kinds is not None:
                kind = next((value for value in _paired_values(kinds, kind_path, trail) if type(value) is str and value), None)
            if not kind:
                continue
            if cluster_scoped or kind in CLUSTER_SCOPED_KINDS:
                namespace = ""
            else:
                namespace = own_namespace
                if namespaces is not None:
                    namespace = next(
                        (value for value in _paired_values(namespaces, namespace_path, trail) if type(value) is str and value),
                        own_namespace,
                    )
            key_values = [] if keys is None else [value for value in _paired_values(keys, key_path, trail) if type(value) is str and value]
            if key_values:
                references.extend(ReferenceKey(kind, namespace, name, key) for key in key_values)
            else:
                references.append(ReferenceKey(kind, namespace, name))
        return references

    return extract


def _group(obj: Any, path: tuple[Walker, int] | None) -> dict[Trail, list[Any]] | None:
    """Read a path's values, grouped by the part of their trail that they share with the name's trail."""
    if path is None:
        return None
    walker, shared = path
    groups: dict[Trail, list[Any]] = {}
    for trail, value in walker(obj):
        groups.setdefault(trail[:shared], []).append(value)
    return groups


def _paired_values(groups: dict[Trail, list[Any]], path: tuple[Walker, int] | None, trail: Trail) -> list[Any]:
    assert path is not None
    return groups.get(trail[: path[1]], [])


def _own_namespace(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping):
        namespace = metadata.get("namespace")
        if type(namespace) is str and namespace:
            return namespace
    return DEFAULT_NAMESPACE


# Compiled extraction


class Extractor:
    """The reference extraction of one kind, kind_field and sources, which equal declarations share.

    One generated function walks the name paths of all sources together, so that a list that
    several sources read (spec.volumes, spec.containers) is visited once. It collects each name with
    the list elements that the walk passed through. The key, optional, namespace and kindField
    values of a name are then read from those elements, which gives the same pairs as grouping by
    trail in _compile_source. Sources whose paths do not share their list elements with the name's
    path as that requires fall back to _compile_source.
    """

    __slots__ = ("name_paths", "_walk", "_sources", "_generic")

    def __init__(self, kind: str | None, kind_field: tuple[str, ...] | None, sources: tuple[ReferenceSource, ...]) -> None:
        plans = [_SourcePlan.build(kind, kind_field, source) for source in sources]
        # The name path of each source, in the order of the lists that the walk returns.
        self.name_paths = tuple(source.field for source in sources)
        walk = _generate_name_walk(list(self.name_paths)) if all(plans) else None
        if walk is None:
            self._walk = None
            self._sources: tuple[_SourcePlan, ...] = ()
            self._generic = tuple(_compile_source(kind, kind_field, source) for source in sources)
        else:
            self._walk = walk
            self._sources = tuple(plan for plan in plans if plan is not None)
            self._generic = ()

    @property
    def walks(self) -> bool:
        """Whether the extraction runs through a generated walk of the name paths."""
        return self._walk is not None

    def extract(self, obj: Mapping[str, Any]) -> list[ReferenceKey]:
        """Return the distinct references of obj, in the order of the sources and the object's lists."""
        if self._walk is None:
            seen: dict[ReferenceKey, None] = {}
            for extractor in self._generic:
                for reference in extractor(obj):
                    seen.setdefault(reference, None)
            return list(seen)
        return self.collect(obj, self._walk(obj))

    def collect(self, obj: Mapping[str, Any], found: Sequence[list[tuple[str, tuple[Any, ...]]]]) -> list[ReferenceKey]:
        """Return the references of the names that a walk of name_paths found in obj, as extract does."""
        seen: dict[ReferenceKey, None] = {}
        if not any(found):
            return []
        own_namespace = _own_namespace(obj)
        for plan, names in zip(self._sources, found):
            for name, elements in names:
                plan.add_references(obj, name, elements, own_namespace, seen)
        return list(seen)


class ExtractorGroup:
    """Extractors whose name paths one generated walk visits together.

    The worker groups the declarations of each kind's rules, so that a list that several of them
    read (spec.volumes, spec.containers) is visited once per object instead of once per declaration.
    Extractors without a generated walk extract on their own.
    """

    __slots__ = ("extractors", "_walk", "_slices", "_alone")

    def __init__(self, extractors: Iterable[Extractor]) -> None:
        self.extractors = tuple(dict.fromkeys(extractors))
        walked = [extractor for extractor in self.extractors if extractor.walks]
        paths: list[tuple[str, ...]] = []
        slices: list[tuple[Extractor, int, int]] = []
        for extractor in walked:
            slices.append((extractor, len(paths), len(paths) + len(extractor.name_paths)))
            paths.extend(extractor.name_paths)
        self._walk = _generate_name_walk(paths) if len(walked) > 1 else None
        self._slices = tuple(slices) if self._walk is not None else ()
        self._alone = tuple(extractor for extractor in self.extractors if self._walk is None or not extractor.walks)

    def extract(self, obj: Any) -> dict[Extractor, list[ReferenceKey]]:
        """Return the references of obj for each extractor of the group, as Extractor.extract returns them."""
        if not isinstance(obj, Mapping):
            return {extractor: [] for extractor in self.extractors}
        results: dict[Extractor, list[ReferenceKey]] = {}
        if self._walk is not None:
            found = self._walk(obj)
            for extractor, start, end in self._slices:
                results[extractor] = extractor.collect(obj, found[start:end])
        for extractor in self._alone:
            results[extractor] = extractor.extract(obj)
        return results


_EXTRACTORS: dict[tuple[Any, ...], Extractor] = {}


def _shared_extractor(kind: str | None, kind_field: tuple[str, ...] | None, sources: tuple[ReferenceSource, ...]) -> Extractor:
    """Return the Extractor of these sources, compiled once per process for equal declarations."""
    identity = (kind, kind_field, sources)
    extractor = _EXTRACTORS.get(identity)
    if extractor is None:
        extractor = _EXTRACTORS[identity] = Extractor(kind, kind_field, sources)
    return extractor


class _PairedPath:
    """A key, optional, namespace or kindField path, read from the list element it shares with the name's path.

    fan_outs is the number of "[*]" steps it shares with the name's path. The rest of the path is
    read from the element of the last shared step, or from the object when there is none: by reader
    when the rest has no "[*]", else by walker.
    """

    __slots__ = ("fan_outs", "reader", "walker")

    def __init__(self, fan_outs: int, rest: tuple[str, ...]) -> None:
        self.fan_outs = fan_outs
        self.reader: PathReader | None = None
        self.walker: Walker | None = None
        if FAN_OUT in rest:
            self.walker = compile_walker(rest)
        else:
            self.reader = make_path_reader(rest)

    @classmethod
    def build(cls, name_path: tuple[str, ...], path: tuple[str, ...]) -> "_PairedPath | None":
        """Return the paired path, or None when path does not reach the name's elements through the same keys."""
        fan_outs = min(_fan_out_count(name_path), _fan_out_count(path))
        if fan_outs == 0:
            return cls(0, path)
        end = [index for index, key in enumerate(path) if key == FAN_OUT][fan_outs - 1] + 1
        if path[:end] != name_path[:end]:
            return None
        return cls(fan_outs, path[end:])

    def values(self, obj: Any, elements: tuple[Any, ...]) -> list[Any]:
        start = elements[self.fan_outs - 1] if self.fan_outs else obj
        if self.reader is not None:
            return [self.reader(start)]
        assert self.walker is not None
        return [value for _, value in self.walker(start)]

    def any_true(self, obj: Any, elements: tuple[Any, ...]) -> bool:
        """Return whether one of the values is the JSON value true."""
        start = elements[self.fan_outs - 1] if self.fan_outs else obj
        if self.reader is not None:
            return self.reader(start) is True
        assert self.walker is not None
        return any(value is True for _, value in self.walker(start))

    def first_text(self, obj: Any, elements: tuple[Any, ...]) -> str | None:
        """Return the first value that is a non-empty string, or None."""
        start = elements[self.fan_outs - 1] if self.fan_outs else obj
        if self.reader is not None:
            value = self.reader(start)
            return value if type(value) is str and value else None
        assert self.walker is not None
        for _, value in self.walker(start):
            if type(value) is str and value:
                return value
        return None


class _SourcePlan:
    """The per-source part of an Extractor: the static kind, the scope and the paired paths of the name."""

    __slots__ = ("static_kind", "cluster_scoped", "key", "optional", "namespace", "kind")

    def __init__(self) -> None:
        self.static_kind: str | None = None
        self.cluster_scoped = False
        self.key: _PairedPath | None = None
        self.optional: _PairedPath | None = None
        self.namespace: _PairedPath | None = None
        self.kind: _PairedPath | None = None

    @classmethod
    def build(cls, kind: str | None, kind_field: tuple[str, ...] | None, source: ReferenceSource) -> "_SourcePlan | None":
        """Return the plan, or None when a paired path cannot be read from the name's elements."""
        plan = cls()
        plan.static_kind = kind
        plan.cluster_scoped = source.namespace == NAMESPACE_CLUSTER
        namespace_path = source.namespace if isinstance(source.namespace, tuple) else None
        for attribute, path in (("key", source.key), ("optional", source.optional), ("namespace", namespace_path), ("kind", kind_field)):
            if path is None:
                continue
            paired = _PairedPath.build(source.field, path)
            if paired is None:
                return None
            setattr(plan, attribute, paired)
        return plan

    def add_references(self, obj: Any, name: str, elements: tuple[Any, ...], own_namespace: str, seen: dict[ReferenceKey, None]) -> None:
        """Add the references of one name to seen, as _compile_source's extract does."""
        if self.optional is not None and self.optional.any_true(obj, elements):
            return
        kind = self.static_kind if self.kind is None else self.kind.first_text(obj, elements)
        if not kind:
            return
        if self.cluster_scoped or kind in CLUSTER_SCOPED_KINDS:
            namespace = ""
        else:
            namespace = (self.namespace.first_text(obj, elements) if self.namespace is not None else None) or own_namespace
        with_key = False
        if self.key is not None:
            for key in self.key.values(obj, elements):
                if type(key) is str and key:
                    seen.setdefault(ReferenceKey(kind, namespace, name, key), None)
                    with_key = True
        if not with_key:
            seen.setdefault(ReferenceKey(kind, namespace, name), None)


class _PathNode:
    """A node of the trie of the sources' name paths: the next map keys, a "[*]" step, and the sources that end here."""

    __slots__ = ("keys", "fan_out", "ends")

    def __init__(self) -> None:
        self.keys: dict[str, _PathNode] = {}
        self.fan_out: _PathNode | None = None
        self.ends: list[int] = []


def _generate_name_walk(paths: list[tuple[str, ...]]) -> Callable[[Any], list[list[tuple[str, tuple[Any, ...]]]]] | None:
    """Generate a function that walks all name paths at once and returns, per path, its names.

    Each name comes with the list elements that its "[*]" steps reached, outermost first. Only
    non-empty strings count as names. A missing key or a value that is not a mapping ends that
    branch, as make_path_reader's ABSENT does, and "[*]" visits lists and tuples only, as
    compile_walker does. Returns None when Python cannot compile the generated code, for example
    for paths nested more deeply than its block limit.
    """
    root = _PathNode()
    for index, path in enumerate(paths):
        node = root
        for key in path:
            if key == FAN_OUT:
                if node.fan_out is None:
                    node.fan_out = _PathNode()
                node = node.fan_out
            else:
                node = node.keys.setdefault(key, _PathNode())
        node.ends.append(index)

    lines = [f"def walk(v0):", f"    found = [{', '.join('[]' for _ in paths)}]"]
    counter = [0]

    def emit(node: _PathNode, variable: str, elements: list[str], depth: int) -> None:
        indent = "    " * depth
        for index in node.ends:
            lines.append(f"{indent}if type({variable}) is str and {variable}:")
            lines.append(f"{indent}    found[{index}].append(({variable}, ({''.join(element + ', ' for element in elements)})))")
        for key, child in node.keys.items():
            counter[0] += 1
            value = f"v{counter[0]}"
            lines.append(f"{indent}{value} = {variable}.get({key!r}, ABSENT) if type({variable}) is dict else read_key({variable}, {key!r})")
            lines.append(f"{indent}if {value} is not ABSENT:")
            emit(child, value, elements, depth + 1)
        if node.fan_out is not None:
            counter[0] += 1
            element = f"v{counter[0]}"
            lines.append(f"{indent}if type({variable}) is list or isinstance({variable}, tuple):")
            lines.append(f"{indent}    for {element} in {variable}:")
            emit(node.fan_out, element, [*elements, element], depth + 2)

    emit(root, "v0", [], 1)
    lines.append("    return found")
    namespace: dict[str, Any] = {"ABSENT": ABSENT, "read_key": _read_key}
    try:
        exec(compile("\n".join(lines), "<reference name walk>", "exec"), namespace)
    except SyntaxError:
        return None
    return namespace["walk"]


def _read_key(value: Any, key: str) -> Any:
    """Read one key of a value that is not a dict, as make_path_reader does: ABSENT unless it is a Mapping."""
    if value is not ABSENT and isinstance(value, Mapping):
        return value.get(key, ABSENT)
    return ABSENT


def shared_prefix_problem(field_path: tuple[str, ...], other: tuple[str, ...], other_name: str, may_fan_out_deeper: bool) -> str | None:
    """Check that a key, optional, namespace or kindField path reads the same list elements as field.

    Each "[*]" of other that field also has must follow the same keys as in field, so that its values
    pair with the name read from the same element. Returns the problem, or None.
    """
    other_fan_outs = [index for index, key in enumerate(other) if key == FAN_OUT]
    field_fan_outs = [index for index, key in enumerate(field_path) if key == FAN_OUT]
    for number, position in enumerate(other_fan_outs):
        if number >= len(field_fan_outs):
            if may_fan_out_deeper:
                return None
            return (
                f"{other_name} has more [*] steps than field, so one name would get several values. "
                f"Use at most the [*] steps of field"
            )
        if other[: position + 1] != field_path[: position + 1]:
            return (
                f"the path before [*] number {number + 1} must be the same as in field "
                f"({list(field_path[: field_fan_outs[number] + 1])}), so that {other_name} is read from the same "
                f"list element as the name"
            )
    return None
