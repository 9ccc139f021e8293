"""Loading rule files and folders: formats, order, ignored files, duplicates and file-level errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdiag.errors import ConfigError, RuleError
from kdiag.rules import load_rule_file, load_rules


def rule_yaml(name: str, kind: str = "Pod") -> str:
    return f"{name}:\n  resource: {kind}\n  checkField:\n  - field: [status, phase]\n    equalValue: [Failed]\n"


def rule_json(name: str, kind: str = "Pod") -> str:
    return json.dumps({name: {"resource": kind, "checkField": [{"field": ["status", "phase"], "equalValue": ["Failed"]}]}})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_folder_read_recursively_in_sorted_order(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", rule_yaml("RuleB"))
    write(tmp_path / "a.json", rule_json("RuleA"))
    write(tmp_path / "sub" / "c.yml", rule_yaml("RuleC"))
    write(tmp_path / "a" / "z.yaml", rule_yaml("RuleAZ"))

    rule_set = load_rules([tmp_path])

    assert rule_set.names == ("RuleAZ", "RuleA", "RuleB", "RuleC")
    assert rule_set.get("RuleC").source == str(tmp_path / "sub" / "c.yml")


def test_folder_ignores_other_files(tmp_path: Path) -> None:
    write(tmp_path / "pods.yaml", rule_yaml("PodRule"))
    write(tmp_path / "README.md", "# not rules: {")
    write(tmp_path / "notes.txt", "PodRule: duplicate")
    write(tmp_path / "pods.yaml.bak", rule_yaml("PodRule"))
    write(tmp_path / ".pods.yaml", rule_yaml("PodRule"))
    write(tmp_path / ".git" / "config.yaml", rule_yaml("PodRule"))

    rule_set = load_rules([tmp_path])

    assert rule_set.names == ("PodRule",)


def test_suffix_match_ignores_case(tmp_path: Path) -> None:
    write(tmp_path / "PODS.YAML", rule_yaml("PodRule"))
    assert load_rules(tmp_path).names == ("PodRule",)


def test_yaml_file_with_several_documents(tmp_path: Path) -> None:
    text = rule_yaml("RuleOne") + "---\n" + rule_yaml("RuleTwo", kind="Node") + "---\n# only a comment\n"
    path = write(tmp_path / "rules.yaml", text)

    rules = load_rule_file(path)

    assert [rule.name for rule in rules] == ["RuleOne", "RuleTwo"]
    assert [rule.kind for rule in rules] == ["Pod", "Node"]
    assert {rule.source for rule in rules} == {str(path)}


def test_yaml_file_of_comments_only(tmp_path: Path) -> None:
    write(tmp_path / "empty.yaml", "# rules for this team will go here\n")
    assert len(load_rules(tmp_path)) == 0


def test_files_and_folders_mixed(tmp_path: Path) -> None:
    folder = tmp_path / "pack"
    write(folder / "pods.yaml", rule_yaml("PodRule"))
    extra = write(tmp_path / "extra.json", rule_json("ExtraRule"))

    rule_set = load_rules([folder, str(extra)])

    assert rule_set.names == ("PodRule", "ExtraRule")


def test_single_path_argument(tmp_path: Path) -> None:
    write(tmp_path / "pods.yaml", rule_yaml("PodRule"))
    assert load_rules(tmp_path).names == ("PodRule",)
    assert load_rules(str(tmp_path)).names == ("PodRule",)


def test_same_file_twice_read_once(tmp_path: Path) -> None:
    path = write(tmp_path / "pods.yaml", rule_yaml("PodRule"))
    assert load_rules([tmp_path, path]).names == ("PodRule",)


def test_duplicate_name_across_files(tmp_path: Path) -> None:
    first = write(tmp_path / "a.yaml", rule_yaml("PodRule"))
    second = write(tmp_path / "b.json", rule_json("PodRule"))

    with pytest.raises(RuleError) as caught:
        load_rules([tmp_path])

    assert caught.value.rule == "PodRule"
    assert "duplicate rule name" in caught.value.problem
    assert str(first) in str(caught.value)
    assert str(second) in str(caught.value)


def test_duplicate_name_across_documents(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", rule_yaml("PodRule") + "---\n" + rule_yaml("PodRule"))
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert caught.value.rule == "PodRule"
    assert "duplicate rule name" in caught.value.problem


def test_duplicate_key_in_yaml_mapping(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", rule_yaml("PodRule") + rule_yaml("PodRule"))
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert "invalid YAML" in caught.value.problem
    assert "duplicate key 'PodRule'" in caught.value.problem
    assert caught.value.source == str(path)


def test_duplicate_key_in_yaml_condition(tmp_path: Path) -> None:
    text = "PodRule:\n  resource: Pod\n  checkField:\n  - field: [status, phase]\n    equalValue: [Failed]\n    equalValue: [Unknown]\n"
    path = write(tmp_path / "a.yaml", text)
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert "duplicate key 'equalValue'" in caught.value.problem


def test_yaml_merge_keys_allowed(tmp_path: Path) -> None:
    text = (
        "PodRule: &base\n  resource: Pod\n  checkField:\n  - field: [status, phase]\n    equalValue: [Failed]\n"
        "PodRuleSlow:\n  <<: *base\n  duration: 300\n"
    )
    rule_set = load_rules(write(tmp_path / "a.yaml", text))
    assert rule_set.get("PodRuleSlow").duration_seconds == 300
    assert rule_set.get("PodRuleSlow").kind == "Pod"


def test_duplicate_key_in_json_object(tmp_path: Path) -> None:
    text = '{"PodRule": {"resource": "Pod", "resource": "Node", "checkField": []}}'
    path = write(tmp_path / "a.json", text)
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert "invalid JSON" in caught.value.problem
    assert "duplicate key 'resource'" in caught.value.problem


def test_invalid_yaml_syntax(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "PodRule:\n  resource: [Pod\n")
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert caught.value.source == str(path)
    assert caught.value.problem.startswith("invalid YAML: ")
    assert "line" in caught.value.problem


def test_invalid_json_syntax(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", '{"PodRule": ')
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert caught.value.problem.startswith("invalid JSON: ")
    assert caught.value.source == str(path)


def test_json_file_holds_one_document(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", rule_json("RuleOne") + "\n" + rule_json("RuleTwo"))
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert caught.value.problem.startswith("invalid JSON: ")


def test_json_null_document_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", "null")
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert "document must be a mapping" in caught.value.problem


def test_yaml_list_document_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "- PodRule\n")
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert "document must be a mapping" in caught.value.problem
    assert str(path) in str(caught.value)


def test_yaml_unquoted_boolean_value(tmp_path: Path) -> None:
    text = "NodeNotReady:\n  resource: Node\n  checkField:\n  - field: [status, ready]\n    equalValue: [False]\n"
    path = write(tmp_path / "a.yaml", text)
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert caught.value.rule == "NodeNotReady"
    assert caught.value.path == "checkField[0].equalValue[0]"
    assert "boolean false" in caught.value.problem
    assert "Quote the value" in caught.value.problem


def test_yaml_unsafe_tag_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "PodRule: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert caught.value.problem.startswith("invalid YAML: ")


def test_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_bytes(b"PodRule:\n  resource: \xff\xfe\n")
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert "not valid UTF-8" in caught.value.problem


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_rules([tmp_path / "missing"])
    assert "rule path not found" in str(caught.value)
    assert str(tmp_path / "missing") in str(caught.value)


def test_named_file_with_other_suffix(tmp_path: Path) -> None:
    path = write(tmp_path / "rules.txt", rule_yaml("PodRule"))
    with pytest.raises(ConfigError) as caught:
        load_rules([path])
    assert "unsupported rule file" in str(caught.value)
    assert ".yaml" in str(caught.value)


def test_invalid_rule_error_names_file(tmp_path: Path) -> None:
    path = write(tmp_path / "pods.yaml", "PodRule:\n  resource: Pod\n  duration: -1\n  checkField: []\n")
    with pytest.raises(RuleError) as caught:
        load_rules(tmp_path)
    assert caught.value.source == str(path)
    assert str(caught.value).startswith(f"{path}: rule 'PodRule' at duration: ")
