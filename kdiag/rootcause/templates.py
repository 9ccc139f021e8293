"""Summary and fix templates of verdicts.

A template is text with placeholders ``{node.value}``, replaced by the value that node's finding
returned, or ``{node.value|fallback text}``, which gives the text to use when the finding is not OK
or lacks the value (without a fallback, ``unknown`` is used). ``{diagnosis.rule}``,
``{diagnosis.kind}``, ``{diagnosis.namespace}``, ``{diagnosis.name}`` and ``{diagnosis.cluster}``
name the alert. ``{{`` and ``}}`` write literal braces.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kdiag.rootcause.context import Diagnosis
from kdiag.rootcause.findings import OK, Finding

DIAGNOSIS = "diagnosis"
DIAGNOSIS_FIELDS = ("rule", "kind", "namespace", "name", "cluster")
MISSING = "unknown"

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_PLACEHOLDER = re.compile(r"(?P<node>[A-Za-z][A-Za-z0-9_-]*)\.(?P<value>[A-Za-z0-9_.-]+)(?:\|(?P<fallback>[^{}]*))?")


@dataclass(frozen=True)
class Placeholder:
    node: str
    value: str
    fallback: str | None


@dataclass(frozen=True)
class Template:
    text: str
    parts: tuple[str | Placeholder, ...]

    def render(self, findings: Mapping[str, Finding], diagnosis: Diagnosis) -> str:
        pieces: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                pieces.append(part)
                continue
            value = _lookup(part, findings, diagnosis)
            if not value:
                value = part.fallback if part.fallback is not None else MISSING
            pieces.append(value)
        return "".join(pieces)

    def nodes(self) -> set[str]:
        return {part.node for part in self.parts if isinstance(part, Placeholder) and part.node != DIAGNOSIS}


def parse_template(text: str, path: str, known_nodes: set[str], report: Callable[[str, str], None]) -> Template:
    """Compile a template, reporting unknown nodes and malformed placeholders through report."""
    parts: list[str | Placeholder] = []
    position = 0
    for token in _TOKEN.finditer(text):
        parts.append(text[position : token.start()])
        position = token.end()
        raw = token.group(0)
        if raw in ("{{", "}}"):
            parts.append(raw[0])
            continue
        if raw in ("{", "}"):
            report(path, f"unmatched {raw!r} at character {token.start()}. Write {raw * 2} for a literal brace")
            continue
        placeholder = _PLACEHOLDER.fullmatch(token.group(1))
        if placeholder is None:
            report(path, f"invalid placeholder {raw}: expected {{node.value}} or {{node.value|fallback}}")
            continue
        node = placeholder["node"]
        if node == DIAGNOSIS:
            if placeholder["value"] not in DIAGNOSIS_FIELDS:
                report(path, f"unknown field in {raw}: diagnosis has {', '.join(DIAGNOSIS_FIELDS)}")
        elif node not in known_nodes:
            report(path, f"placeholder {raw} names unknown node {node!r}. Nodes of this graph: {', '.join(sorted(known_nodes))}")
        parts.append(Placeholder(node, placeholder["value"], placeholder["fallback"]))
    parts.append(text[position:])
    return Template(text, tuple(part for part in parts if part != ""))


def _lookup(part: Placeholder, findings: Mapping[str, Finding], diagnosis: Diagnosis) -> str:
    if part.node == DIAGNOSIS:
        return str(getattr(diagnosis, part.value, ""))
    finding = findings.get(part.node)
    if finding is None or finding.status != OK:
        return ""
    return finding.values.get(part.value, "")
