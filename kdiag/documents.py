"""Parsing of rule and graph files: JSON, or YAML with one or more documents, repeated keys rejected."""

from __future__ import annotations

import io
import json
from typing import Any

import yaml

from kdiag.errors import RuleError


def parse_documents(text: str, suffix: str, source: str, subject: str = "rule") -> list[Any]:
    """Parse a file's text: one document for ".json", else every YAML document that is not empty.

    Raises RuleError naming `source` for invalid JSON or YAML and for a key repeated in one mapping,
    which json and PyYAML would otherwise let overwrite the first. `subject` is what the file declares.
    """
    if suffix.lower() == ".json":
        try:
            return [json.loads(text, object_pairs_hook=_reject_duplicate_json_keys)]
        except ValueError as error:
            # json.JSONDecodeError and the duplicate-key error from the hook are both ValueErrors.
            raise RuleError("", "", f"invalid JSON: {error}", source, subject=subject) from None
    stream = io.StringIO(text)
    stream.name = source  # PyYAML names the file in its error marks.
    try:
        documents = list(yaml.load_all(stream, Loader=StrictYamlLoader))
    except yaml.YAMLError as error:
        raise RuleError("", "", f"invalid YAML: {error}", source, subject=subject) from None
    # An empty YAML document (a file of comments only, or a trailing ---) loads as None.
    return [document for document in documents if document is not None]


def _reject_duplicate_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r} in one JSON object")
        result[key] = value
    return result


class StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping, which PyYAML otherwise lets overwrite."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                # An unhashable key; SafeConstructor.construct_mapping reports it below.
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
