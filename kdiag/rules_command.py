"""`kdiag rules validate|apply|list|delete`: check rule files, and change the rules workers follow.

validate reads only files. apply, list and delete work on the compacted rules topic, which every
running worker follows without restarting.
"""

from __future__ import annotations

import argparse
import sys

import orjson

from kdiag.model import format_time_ms
from kdiag.rule_store import delete_rules, publish_rules, read_rule_documents, read_rules
from kdiag.rules.loader import validate_rule_paths
from kdiag.settings import Settings
from kdiag.topics import ensure_topics


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

    apply = actions.add_parser(
        "apply",
        help="validate rule files and publish their rules to the rules topic",
        description="Validate every rule in the files and folders, then publish them all to the rules topic. "
        "Nothing is published when any rule is invalid (exit status 1).",
    )
    apply.add_argument("paths", nargs="+", metavar="PATH", help="rule file or folder")

    listing = actions.add_parser("list", help="print the rules on the rules topic")
    listing.add_argument("--format", choices=["table", "json"], default="table", help="output format (default table)")

    delete = actions.add_parser("delete", help="delete rules from the rules topic by name")
    delete.add_argument("names", nargs="+", metavar="NAME", help="rule name")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the action. Problems go to standard output, one per line, and the summary to standard error."""
    if args.action == "apply":
        return _apply(args, settings)
    if args.action == "list":
        return _list(args, settings)
    if args.action == "delete":
        names = delete_rules(settings, args.names)
        print(f"deleted {len(names)} rules from {settings.rules_topic}: {', '.join(names)}", file=sys.stderr)
        return 0
    return _validate(args)


def _apply(args: argparse.Namespace, settings: Settings) -> int:
    report = validate_rule_paths(args.paths)
    if not report.ok:
        for problem in report.problems:
            print(problem)
        print(f"{len(report.problems)} problems found; nothing was published", file=sys.stderr)
        return 1
    ensure_topics(settings, only=[settings.rules_topic])
    names = publish_rules(settings, read_rule_documents(args.paths))
    print(f"published {len(names)} rules to {settings.rules_topic}", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    records = read_rules(settings)
    if args.format == "json":
        for name in sorted(records):
            record = records[name]
            print(orjson.dumps({"name": name, "source": record["source"], "appliedAt": format_time_ms(record["appliedAt"]),
                                "rule": orjson.loads(record["document"])}).decode())
        return 0
    print(f"{'RULE':40} {'APPLIED AT':21} SOURCE")
    for name in sorted(records):
        record = records[name]
        print(f"{name:40} {format_time_ms(record['appliedAt']):21} {record['source']}")
    print(f"{len(records)} rules on {settings.rules_topic}", file=sys.stderr)
    return 0


def _validate(args: argparse.Namespace) -> int:
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
