"""`kdiag rules validate PATH...`: check rule files and list every problem found."""

from __future__ import annotations

import argparse
import sys

from kdiag.rules.loader import validate_rule_paths
from kdiag.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    validate = actions.add_parser(
        "validate",
        help="check rule files and folders and list every problem",
        description=(
            "Check rule files (.yaml, .yml, .json) and folders, which are read recursively. "
            "Prints every problem with its file, rule and path inside the rule. "
            "Exit status: 0 when every rule is valid, 1 when there is any problem."
        ),
    )
    validate.add_argument("paths", nargs="+", metavar="PATH", help="rule file or folder")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the action. Problems go to standard output, one per line, and the summary to standard error."""
    del settings  # Validation reads only the files given.
    if args.action != "validate":
        raise ValueError(f"unknown rules action {args.action!r}")
    report = validate_rule_paths(args.paths)
    for problem in report.problems:
        print(problem)
    files = f"{len(report.files)} file{'s' if len(report.files) != 1 else ''}"
    if report.ok:
        print(f"{report.valid_rules} rules valid in {files}", file=sys.stderr)
        return 0
    print(
        f"{len(report.problems)} problem{'s' if len(report.problems) != 1 else ''} found: "
        f"{report.invalid_rules} invalid rules and {report.valid_rules} valid rules in {files}",
        file=sys.stderr,
    )
    return 1
