"""Reading rule files (.json, .yaml, .yml) from files and folders into a RuleSet, or validating them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from kdiag.documents import parse_documents
from kdiag.errors import ConfigError, KdiagError, RuleError
from kdiag.rules.engine import Rule, RuleSet
from kdiag.rules.parser import check_rules, parse_rules

RULE_FILE_SUFFIXES = (".json", ".yaml", ".yml")

PathLike = str | os.PathLike[str]


def load_rules(paths: PathLike | Iterable[PathLike]) -> RuleSet:
    """Load every rule from the given files and folders into one RuleSet.

    Folders are read recursively in sorted path order. Inside folders, only files ending in .json,
    .yaml or .yml are read, and names starting with "." (editor and VCS files) are skipped. A file
    reached twice is read once. Raises ConfigError when a path does not exist or a file named
    directly has another suffix, and RuleError for an unreadable or invalid document or for a rule
    name defined twice.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]

    rules: list[Rule] = []
    seen: set[Path] = set()
    for path in _rule_files(paths):
        resolved = path.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        rules.extend(load_rule_file(path))
    return RuleSet(rules)


def load_rule_file(path: Path) -> list[Rule]:
    """Parse every document of one rule file. source in errors and in Rule.source is str(path)."""
    source = str(path)
    rules: list[Rule] = []
    for document in _read_documents(path):
        rules.extend(parse_rules(document, source))
    return rules


@dataclass
class ValidationReport:
    """Result of validate_rule_paths: the files read, the number of valid rules and every problem."""

    files: list[str] = field(default_factory=list)
    valid_rules: int = 0
    invalid_rules: int = 0
    problems: list[KdiagError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_rule_paths(paths: PathLike | Iterable[PathLike]) -> ValidationReport:
    """Validate every rule in the given files and folders and collect all problems instead of stopping.

    Files are found as load_rules finds them. Problems are, in order of the files: a path that does
    not exist or has another suffix (ConfigError), a file that cannot be read or parsed, every problem
    of every rule (RuleError), and rule names defined twice.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    report = ValidationReport()
    seen_files: set[Path] = set()
    first_source: dict[str, str] = {}

    for path_argument in paths:
        try:
            files = list(_rule_files([path_argument]))
        except ConfigError as error:
            report.problems.append(error)
            continue
        for path in files:
            resolved = path.resolve()
            if resolved in seen_files:
                continue
            seen_files.add(resolved)
            _validate_file(path, report, first_source)
    return report


def _validate_file(path: Path, report: ValidationReport, first_source: dict[str, str]) -> None:
    source = str(path)
    report.files.append(source)
    try:
        documents = _read_documents(path)
    except KdiagError as error:
        report.problems.append(error)
        return
    for document in documents:
        rules, problems = check_rules(document, source)
        report.problems.extend(problems)
        report.valid_rules += len(rules)
        invalid_names = {problem.rule for problem in problems if problem.rule}
        report.invalid_rules += len(invalid_names)
        names = [name for name in document if isinstance(name, str) and name.strip()] if isinstance(document, dict) else []
        for name in names:
            earlier = first_source.get(name)
            if earlier is None:
                first_source[name] = source
                continue
            report.problems.append(
                RuleError(name, "", f"duplicate rule name, already defined in {earlier}. Rename one of the two rules", source)
            )
            if name not in invalid_names:
                report.valid_rules -= 1
                report.invalid_rules += 1


def _read_documents(path: Path) -> list[Any]:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise RuleError("", "", f"the file is not valid UTF-8: {error}", source) from None
    except OSError as error:
        raise ConfigError(f"cannot read rule file {source}: {error.strerror or error}") from None
    return parse_documents(text, path.suffix, source)


def _rule_files(paths: Iterable[PathLike]) -> Iterable[Path]:
    for path_argument in paths:
        path = Path(path_argument)
        if path.is_dir():
            yield from sorted(_files_under(path))
        elif path.is_file():
            if path.suffix.lower() not in RULE_FILE_SUFFIXES:
                raise ConfigError(
                    f"unsupported rule file {path}: expected a name ending in {', '.join(RULE_FILE_SUFFIXES)}"
                )
            yield path
        else:
            raise ConfigError(f"rule path not found: {path}. Check the rules folder setting or the path given")


def _files_under(folder: Path) -> Iterable[Path]:
    for root, directories, files in os.walk(folder):
        directories[:] = [name for name in directories if not name.startswith(".")]
        for name in files:
            if name.startswith(".") or not name.lower().endswith(RULE_FILE_SUFFIXES):
                continue
            yield Path(root, name)
