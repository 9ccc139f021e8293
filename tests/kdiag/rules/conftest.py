"""Fixtures for the rule engine tests: the starter pack, the corpus cases and the recorded history."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdiag.rules import RuleSet, load_rules

REPO_ROOT = Path(__file__).resolve().parents[3]
RULES_DIR = REPO_ROOT / "rules"
CORPUS_DIR = REPO_ROOT / "samples" / "corpus"
HISTORY_FILE = REPO_ROOT / "samples" / "histories" / "01-pulumi-cloud-ready-checks-workflows.jsonl"


class JsonLikeLoader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings, as the API server's JSON has them."""


JsonLikeLoader.yaml_implicit_resolvers = {
    first_char: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first_char, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_corpus_case(file_name: str) -> list[dict[str, Any]]:
    """Load one corpus case, a YAML list of Kubernetes objects."""
    with (CORPUS_DIR / file_name).open(encoding="utf-8") as stream:
        objects = yaml.load(stream, Loader=JsonLikeLoader)
    assert isinstance(objects, list), f"{file_name} must hold a YAML list of objects"
    return objects


def load_history() -> dict[str, list[dict[str, Any]]]:
    """Load the recorded workflows: workflow name -> object states in seq order."""
    states: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    with HISTORY_FILE.open(encoding="utf-8") as stream:
        for line in stream:
            record = json.loads(line)
            states.setdefault(record["workflow"], []).append((record["seq"], record["object"]))
    return {workflow: [obj for _, obj in sorted(steps, key=lambda step: step[0])] for workflow, steps in states.items()}


@pytest.fixture(scope="session")
def starter_pack() -> RuleSet:
    return load_rules(RULES_DIR)


@pytest.fixture(scope="session")
def corpus_case() -> Callable[[str], list[dict[str, Any]]]:
    return load_corpus_case


@pytest.fixture(scope="session")
def history() -> dict[str, list[dict[str, Any]]]:
    return load_history()
