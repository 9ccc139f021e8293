"""Validation of reference declarations (the rule key references) and the built-in declarations."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from kdiag.rules.builtin_references import BUILTIN_REFERENCE_DOCUMENT
from kdiag.rules.kinds import CLUSTER_SCOPED_KINDS, KEY_FIELDS, KNOWN_KINDS
from kdiag.rules.references import (
    NAMESPACE_CLUSTER,
    NAMESPACE_SAME,
    ReferenceDeclaration,
    ReferenceSource,
    shared_prefix_problem,
)
from kdiag.rules.validation import FAILED, Invalid, RuleValidator, describe
from kdiag.rules.values import FAN_OUT

DECLARATION_KEYS = ("name", "builtin", "kind", "kindField", "sources", "field", "key", "namespace", "optional")
SOURCE_KEYS = ("field", "key", "namespace", "optional")
BUILTIN_KEYS = ("resource", "kind", "kindField", "sources")
REFERENCE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def parse_declarations(validator: RuleValidator, value: Any, resource: str | None) -> tuple[ReferenceDeclaration, ...]:
    """Validate the rule key references: a list of declarations with unique names."""
    if not isinstance(value, list):
        raise validator.fail("references", f"must be a list of reference declarations, got {describe(value)}")
    declarations: list[ReferenceDeclaration] = []
    names: set[str] = set()
    problems = len(validator.problems)
    for index, entry in enumerate(value):
        path = f"references[{index}]"
        declaration = validator.attempt(_parse_declaration, validator, entry, path, resource)
        if declaration is FAILED:
            continue
        if declaration.name in names:
            validator.report(f"{path}.name", f"duplicate reference name {declaration.name!r}. Give each reference its own name")
            continue
        names.add(declaration.name)
        declarations.append(declaration)
    if validator.problems_since(problems):
        raise Invalid()
    return tuple(declarations)


def _parse_declaration(validator: RuleValidator, entry: Any, path: str, resource: str | None) -> ReferenceDeclaration:
    if not isinstance(entry, Mapping):
        raise validator.fail(path, f"must be a mapping with name and kind, got {describe(entry)}")
    problems = len(validator.problems)
    validator.report_unknown_keys(entry, DECLARATION_KEYS, path)
    if "name" not in entry:
        raise validator.fail(path, "missing required key name (the name that reference conditions use)")
    name = validator.attempt(validator.parse_non_empty_string, entry["name"], f"{path}.name")
    if name is not FAILED and not REFERENCE_NAME.fullmatch(name):
        validator.report(f"{path}.name", f"invalid reference name {name!r}: use letters, digits, - and _, starting with a letter")

    if "builtin" in entry:
        others = [key for key in DECLARATION_KEYS if key in entry and key not in ("name", "builtin")]
        if others:
            validator.report(f"{path}.{others[0]}", "a builtin reference takes only name and builtin")
        builtin = validator.attempt(_lookup_builtin, validator, entry["builtin"], f"{path}.builtin", resource)
        if validator.problems_since(problems) or builtin is FAILED:
            raise Invalid()
        return ReferenceDeclaration(
            name=name,
            kind=builtin.kind,
            kind_field=builtin.kind_field,
            sources=builtin.sources,
            resource=builtin.resource,
            builtin=builtin.name,
        )

    declaration = parse_declaration_body(validator, entry, path, name)
    if validator.problems_since(problems):
        raise Invalid()
    return declaration


def parse_declaration_body(validator: RuleValidator, entry: Mapping[str, Any], path: str, name: str, resource: str | None = None) -> ReferenceDeclaration:
    """Validate kind or kindField and the sources, given either as sources or as one source's keys."""
    problems = len(validator.problems)
    kind = None
    kind_field = None
    if ("kind" in entry) == ("kindField" in entry):
        validator.report(path, "set exactly one of kind (the referenced kind, such as Secret) and kindField (a path to it)")
    elif "kind" in entry:
        kind = validator.attempt(_parse_kind, validator, entry["kind"], f"{path}.kind")
    else:
        kind_field = validator.attempt(validator.parse_path, entry["kindField"], f"{path}.kindField", False)

    sources: list[ReferenceSource] = []
    source_keys = [key for key in SOURCE_KEYS if key in entry]
    if "sources" in entry:
        if source_keys:
            validator.report(f"{path}.{source_keys[0]}", "set the paths either in sources or directly in the reference, not both")
        raw_sources = entry["sources"]
        if not isinstance(raw_sources, list) or not raw_sources:
            validator.report(f"{path}.sources", f"must be a non-empty list of sources, got {describe(raw_sources)}")
        else:
            for index, raw_source in enumerate(raw_sources):
                source_path = f"{path}.sources[{index}]"
                if not isinstance(raw_source, Mapping):
                    validator.report(source_path, f"must be a mapping with a field key, got {describe(raw_source)}")
                    continue
                validator.report_unknown_keys(raw_source, SOURCE_KEYS, source_path)
                source = validator.attempt(_parse_source, validator, raw_source, source_path, kind)
                if source is not FAILED:
                    sources.append(source)
    elif "field" in entry:
        source = validator.attempt(_parse_source, validator, entry, path, kind)
        if source is not FAILED:
            sources.append(source)
    else:
        validator.report(path, "missing required key field (the path to the referenced object's name) or sources")

    if validator.problems_since(problems):
        raise Invalid()
    return ReferenceDeclaration(name=name, kind=kind, kind_field=kind_field, sources=tuple(sources), resource=resource)


def _parse_kind(validator: RuleValidator, value: Any, path: str) -> str:
    kind = validator.parse_non_empty_string(value, path)
    if kind not in KNOWN_KINDS:
        problem = f"unknown kind {kind!r}. A reference names a built-in Kubernetes kind, such as Secret or ConfigMap"
        close = difflib.get_close_matches(kind, sorted(KNOWN_KINDS), n=1)
        if close:
            problem += f". Did you mean {close[0]}?"
        raise validator.fail(path, problem)
    return kind


def _parse_source(validator: RuleValidator, entry: Mapping[str, Any], path: str, kind: str | None) -> ReferenceSource:
    problems = len(validator.problems)
    if "field" not in entry:
        raise validator.fail(path, "missing required key field (the path to the referenced object's name)")
    leading = "the object is a mapping, not a list"
    field = validator.attempt(validator.parse_path, entry["field"], f"{path}.field", True, leading)

    key = None
    if "key" in entry:
        key = validator.attempt(validator.parse_path, entry["key"], f"{path}.key", True, leading)
        if kind is not None and kind not in KEY_FIELDS:
            validator.report(f"{path}.key", f"{kind} has no data keys. key is supported for {', '.join(sorted(KEY_FIELDS))}")

    optional = None
    if "optional" in entry:
        optional = validator.attempt(validator.parse_path, entry["optional"], f"{path}.optional", True, leading)

    namespace: str | tuple[str, ...] = NAMESPACE_CLUSTER if kind in CLUSTER_SCOPED_KINDS else NAMESPACE_SAME
    if "namespace" in entry:
        raw_namespace = entry["namespace"]
        if isinstance(raw_namespace, list):
            namespace = validator.attempt(validator.parse_path, raw_namespace, f"{path}.namespace", True, leading)
        elif raw_namespace in (NAMESPACE_SAME, NAMESPACE_CLUSTER):
            namespace = raw_namespace
            if kind in CLUSTER_SCOPED_KINDS and raw_namespace == NAMESPACE_SAME:
                validator.report(f"{path}.namespace", f"{kind} is cluster-scoped, so its namespace must be cluster")
            elif kind is not None and kind not in CLUSTER_SCOPED_KINDS and raw_namespace == NAMESPACE_CLUSTER:
                validator.report(f"{path}.namespace", f"{kind} is namespaced, so its namespace must be same or a path")
        else:
            validator.report(
                f"{path}.namespace",
                f"must be same (the object's namespace), cluster (cluster-scoped) or a path, got {describe(raw_namespace)}",
            )

    if field is not FAILED:
        for key_name, other, deeper in (("key", key, True), ("optional", optional, False), ("namespace", namespace, False)):
            if isinstance(other, tuple):
                problem = shared_prefix_problem(field, other, key_name, deeper)
                if problem:
                    validator.report(f"{path}.{key_name}", problem)

    if validator.problems_since(problems):
        raise Invalid()
    return ReferenceSource(field=field, key=key, namespace=namespace, optional=optional)


def _lookup_builtin(validator: RuleValidator, value: Any, path: str, resource: str | None) -> ReferenceDeclaration:
    name = validator.parse_non_empty_string(value, path)
    builtin = BUILTIN_REFERENCES.get(name)
    if builtin is None:
        problem = f"unknown builtin reference {name!r}. Builtins are {', '.join(BUILTIN_REFERENCES)}"
        close = difflib.get_close_matches(name, list(BUILTIN_REFERENCES), n=1)
        if close:
            problem += f". Did you mean {close[0]}?"
        raise validator.fail(path, problem)
    if resource is not None and builtin.resource != resource:
        raise validator.fail(path, f"{name} reads {builtin.resource} objects, but this rule's resource is {resource}")
    return builtin


def _parse_builtins() -> dict[str, ReferenceDeclaration]:
    builtins: dict[str, ReferenceDeclaration] = {}
    for name, body in BUILTIN_REFERENCE_DOCUMENT.items():
        validator = RuleValidator(f"builtin {name}", "kdiag/rules/builtin_references.py")
        validator.report_unknown_keys(body, BUILTIN_KEYS, "")
        declaration = validator.attempt(parse_declaration_body, validator, body, "", name, body.get("resource"))
        if validator.problems:
            raise validator.problems[0]
        assert declaration.kind_field is None or FAN_OUT not in declaration.kind_field
        builtins[name] = declaration
    return builtins


BUILTIN_REFERENCES: dict[str, ReferenceDeclaration] = _parse_builtins()
"""The built-in reference declarations by name, such as PodSecrets."""

__all__ = ["BUILTIN_REFERENCES", "parse_declarations"]
