"""schemas/rule.schema.json agrees with the parser on the starter pack and on invalid rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings

from kdiag.rules import BUILTIN_REFERENCES
from kdiag.rules.kinds import KNOWN_KINDS

from test_rule_properties import VALID_DOCUMENTS
from test_rule_validation import INVALID_BODIES, VALID_BODY

jsonschema = pytest.importorskip("jsonschema")

REPO_ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((REPO_ROOT / "schemas" / "rule.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

# Cases that only the parser's semantic checks reject: the schema cannot compile a regular
# expression, follow reference names, compare paths, or see NaN and infinity, which JSON lacks.
SEMANTIC_ONLY = {
    "duration nan",
    "duration infinite",
    "duration too large",
    "regex invalid",
    "match without list",
    "field ends in fan-out with selection",
    "every infinite",
    "lessOrEqual nan",
    "reference duplicate name",
    "reference key on service",
    "reference key other list",
    "reference namespace deeper",
    "reference cluster kind same namespace",
    "reference namespaced kind cluster",
    "reference builtin other resource",
    "referenceMissing undeclared",
    "referenceMissing other name",
    "referenceKeyMissing without key",
    "referenceField bad regex",
}


def schema_errors(document: Any) -> list[str]:
    return [error.message for error in VALIDATOR.iter_errors(document)]


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_enums_match_code() -> None:
    assert set(SCHEMA["$defs"]["kind"]["enum"]) == KNOWN_KINDS
    builtin_form = SCHEMA["$defs"]["referenceDeclaration"]["oneOf"][0]
    assert builtin_form["properties"]["builtin"]["enum"] == list(BUILTIN_REFERENCES)


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "rules").glob("*.yaml")), ids=lambda path: path.name)
def test_starter_pack_valid(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        assert schema_errors(document) == []


def test_valid_body_valid() -> None:
    assert schema_errors({"PodBroken": VALID_BODY}) == []


@pytest.mark.parametrize(
    "body",
    [case[1] for case in INVALID_BODIES if case[0] not in SEMANTIC_ONLY],
    ids=[case[0] for case in INVALID_BODIES if case[0] not in SEMANTIC_ONLY],
)
def test_structural_problems_rejected(body: Any) -> None:
    assert schema_errors({"PodBroken": body}) != []


def test_semantic_cases_listed_exist() -> None:
    assert SEMANTIC_ONLY <= {case[0] for case in INVALID_BODIES}


@settings(max_examples=100)
@given(VALID_DOCUMENTS)
def test_generated_valid_documents_valid(document: dict[str, Any]) -> None:
    # The generator avoids NaN and infinity, which JSON cannot hold.
    assert schema_errors(json.loads(json.dumps(document))) == []
