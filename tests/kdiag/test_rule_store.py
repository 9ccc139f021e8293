"""kdiag rules apply, list and delete against the test broker, and the RuleBook they feed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from kdiag.rule_store import RuleBook, read_rules

REPO_ROOT = Path(__file__).resolve().parents[2]


def book_record(document: dict) -> dict:
    return {"name": "R", "document": orjson.dumps(document).decode(), "source": "test", "appliedAt": 0}


VALID = {"resource": "Pod", "checkField": [{"field": ["status", "phase"], "equalValue": ["Pending"]}]}


def test_rulebook_add_change_reject_delete():
    book = RuleBook()
    assert book.apply("R", book_record(VALID)) == "added"
    first = book.rule_set
    assert book.apply("R", book_record(VALID)) == "unchanged"
    assert book.rule_set is first
    changed = dict(VALID, duration=60)
    assert book.apply("R", book_record(changed)) == "changed"
    assert book.rule_set.get("R").duration_seconds == 60
    assert book.apply("R", book_record({"resource": "Pod", "checkField": []})) == "rejected"
    assert book.rule_set.get("R").duration_seconds == 60
    assert book.apply("R", None) == "deleted"
    assert len(book.rule_set) == 0
    assert book.apply("R", None) == "unchanged"


def test_rulebook_rejects_non_json_document():
    book = RuleBook()
    record = {"name": "R", "document": "{not json", "source": "test", "appliedAt": 0}
    assert book.apply("R", record) == "rejected"


@pytest.fixture
def rules_cli(kafka_bootstrap, unique_name):
    env = dict(os.environ, KDIAG_BOOTSTRAP_SERVERS=kafka_bootstrap, KDIAG_RULES_TOPIC=f"{unique_name}-rules",
               KDIAG_CHANGES_TOPIC=f"{unique_name}-changes", KDIAG_ALERTS_TOPIC=f"{unique_name}-alerts",
               KDIAG_APP_ID=f"{unique_name}-worker", KDIAG_PARTITIONS="1",
               KDIAG_EVENTS_TOPIC=f"{unique_name}-events", KDIAG_GRADED_ALERTS_TOPIC=f"{unique_name}-graded",
               KDIAG_ACTIONS_TOPIC=f"{unique_name}-actions", KDIAG_DEAD_LETTER_TOPIC=f"{unique_name}-dead-letters")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kdiag.cli", "--log-level", "WARNING", "rules", *args],
                              env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)

    return run


@pytest.mark.integration
def test_apply_list_delete_round_trip(rules_cli, tmp_path):
    applied = rules_cli("apply", "rules/")
    assert applied.returncode == 0, applied.stderr
    listed = rules_cli("list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    names = {orjson.loads(line)["name"] for line in listed.stdout.splitlines()}
    assert {"PodOOMKilled", "NodeNotReady", "PodConfigMapMissing"} <= names

    deleted = rules_cli("delete", "PodOOMKilled")
    assert deleted.returncode == 0, deleted.stderr
    after = {orjson.loads(line)["name"] for line in rules_cli("list", "--format", "json").stdout.splitlines()}
    assert after == names - {"PodOOMKilled"}

    unknown = rules_cli("delete", "NoSuchRule")
    assert unknown.returncode == 2
    assert "no rule named NoSuchRule" in unknown.stderr


@pytest.mark.integration
def test_apply_invalid_file_publishes_nothing(rules_cli, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("GoodRule:\n  resource: Pod\n  checkField:\n  - field: [status, phase]\n    equalValue: [Pending]\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("BadRule:\n  resource: Pod\n  checkField:\n  - field: [status, phase]\n    regex: '('\n")
    result = rules_cli("apply", str(good), str(bad))
    assert result.returncode == 1
    assert "BadRule" in result.stdout
    assert "nothing was published" in result.stderr
    listed = rules_cli("list", "--format", "json")
    assert listed.stdout.strip() == ""
