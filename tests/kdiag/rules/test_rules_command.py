"""`kdiag rules validate`: exit codes and the problems it prints."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kdiag import rules_command
from kdiag.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[3]

VALID = """
PodPending:
  resource: Pod
  checkField:
  - {field: [status, phase], equalValue: [Pending]}
"""

INVALID = """
PodBadRegex:
  resource: Pod
  checkField:
  - {field: [status, message], regex: "secrets? (not found"}
PodBadDuration:
  duration: -5
  resource: Pod
  checkField:
  - {field: [status, phase], equalValue: [Pending]}
PodUnknownKind:
  resource: Pod
  references:
  - {name: tls, kind: Secrets, field: [spec, x]}
  checkField:
  - referenceMissing: tls
"""


def parse_arguments(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kdiag rules")
    rules_command.add_arguments(parser)
    return parser.parse_args(list(argv))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = rules_command.run(parse_arguments(*argv), Settings())
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_validate_starter_pack(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "validate", str(REPO_ROOT / "rules"))
    assert status == 0
    assert out == ""
    assert "rules valid in 8 files" in err


def test_validate_valid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pods.yaml"
    path.write_text(VALID, encoding="utf-8")
    assert run(capsys, "validate", str(path)) == (0, "", "1 rules valid in 1 file\n")


def test_validate_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-valid.yaml").write_text(VALID, encoding="utf-8")
    (tmp_path / "b-invalid.yaml").write_text(INVALID, encoding="utf-8")
    status, out, err = run(capsys, "validate", str(tmp_path))
    lines = out.splitlines()
    source = str(tmp_path / "b-invalid.yaml")

    assert status == 1
    assert len(lines) == 3
    assert lines[0].startswith(f"{source}: rule 'PodBadRegex' at checkField[0].regex: invalid regular expression")
    assert lines[1] == f"{source}: rule 'PodBadDuration' at duration: must be a finite number of seconds >= 0, got number -5"
    assert lines[2].startswith(f"{source}: rule 'PodUnknownKind' at references[0].kind: unknown kind 'Secrets'")
    assert "Did you mean Secret?" in lines[2]
    assert err == "3 problems found: 3 invalid rules and 1 valid rules in 2 files\n"


def test_validate_several_files_and_duplicates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = tmp_path / "first.yaml"
    second = tmp_path / "second.json"
    first.write_text(VALID, encoding="utf-8")
    second.write_text('{"PodPending": {"resource": "Pod", "checkField": [{"field": ["a"], "nilValue": true}]}}', encoding="utf-8")
    status, out, _ = run(capsys, "validate", str(first), str(second))
    assert status == 1
    assert out.strip() == f"{second}: rule 'PodPending' at <root>: duplicate rule name, already defined in {first}. Rename one of the two rules"


def test_validate_broken_yaml_and_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("PodA: [unclosed\n", encoding="utf-8")
    valid = tmp_path / "valid.yaml"
    valid.write_text(VALID, encoding="utf-8")
    status, out, err = run(capsys, "validate", str(broken), str(tmp_path / "missing.yaml"), str(valid))
    assert status == 1
    # PyYAML's message spans several lines and shows where the parse failed.
    assert out.startswith(f"{broken}: rule '' at <root>: invalid YAML")
    assert out.endswith(f"rule path not found: {tmp_path / 'missing.yaml'}. Check the rules folder setting or the path given\n")
    assert err == "2 problems found: 0 invalid rules and 1 valid rules in 2 files\n"


def test_validate_document_not_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- PodA\n", encoding="utf-8")
    status, out, _ = run(capsys, "validate", str(path))
    assert status == 1
    assert "the document must be a mapping of rule name to rule body" in out


def test_validate_needs_paths() -> None:
    with pytest.raises(SystemExit):
        parse_arguments("validate")


def test_unknown_action_rejected() -> None:
    with pytest.raises(SystemExit):
        parse_arguments("check", "rules")
