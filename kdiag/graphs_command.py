"""`kdiag graphs validate|apply|list|delete`: check root-cause graph files, and change the graphs workers follow.

validate reads only files. apply, list and delete work on the compacted graphs topic, which every
running worker follows without restarting.
"""

from __future__ import annotations

import argparse
import sys

import orjson

from kdiag.errors import RuleError
from kdiag.graph_store import check_graph_documents, graphs_on_topic, read_graph_documents
from kdiag.model import format_time_ms
from kdiag.rootcause import GraphSet
from kdiag.rule_store import delete_rules, publish_documents, read_rules
from kdiag.settings import Settings
from kdiag.topics import ensure_topics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    validate = actions.add_parser(
        "validate",
        help="check graph files and folders",
        description="Check root-cause graph files (.yaml, .yml, .json) and folders, read recursively. "
        "Exit status: 0 when every graph is valid, 1 when there is a problem.",
    )
    validate.add_argument("paths", nargs="+", metavar="PATH", help="graph file or folder")
    apply = actions.add_parser(
        "apply",
        help="validate graph files and publish their graphs to the graphs topic",
        description="Validate every graph in the files and folders, then publish them all to the graphs topic. "
        "Nothing is published when a graph is invalid (exit status 1).",
    )
    apply.add_argument("paths", nargs="+", metavar="PATH", help="graph file or folder")
    listing = actions.add_parser("list", help="print the graphs on the graphs topic")
    listing.add_argument("--format", choices=["table", "json"], default="table", help="output format (default table)")
    delete = actions.add_parser("delete", help="delete graphs from the graphs topic by name")
    delete.add_argument("names", nargs="+", metavar="NAME", help="graph name")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the action. Problems go to standard output and the summary to standard error."""
    if args.action == "list":
        return _list(args, settings)
    if args.action == "delete":
        names = delete_rules(settings, args.names, topic=settings.graphs_topic, what="graph")
        print(f"deleted {_count(len(names), 'graph')} from {settings.graphs_topic}: {', '.join(names)}", file=sys.stderr)
        return 0
    try:
        documents = read_graph_documents(args.paths)
    except RuleError as error:
        print(error)
        print(f"a graph file is invalid; {'nothing was published' if args.action == 'apply' else 'fix it and run again'}", file=sys.stderr)
        return 1
    with GraphSet(pool_size=1) as graphs:
        if args.action == "validate":
            problems = check_graph_documents(documents, graphs)
            for problem in problems:
                print(problem)
            if problems:
                print(f"{_count(len(problems), 'problem')} found in {_count(len(documents), 'graph')}", file=sys.stderr)
                return 1
            print(f"{_count(len(documents), 'graph')} valid", file=sys.stderr)
            return 0
        ensure_topics(settings, only=[settings.graphs_topic])
        # The graphs on the topic take part in the check, so that a clash with them is caught here.
        problems = check_graph_documents(documents, graphs, graphs_on_topic(settings))
        for problem in problems:
            print(problem)
        if problems:
            print(f"{_count(len(problems), 'problem')} found; nothing was published", file=sys.stderr)
            return 1
        names = publish_documents(settings, settings.graphs_topic, documents)
    print(f"published {_count(len(names), 'graph')} to {settings.graphs_topic}", file=sys.stderr)
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _list(args: argparse.Namespace, settings: Settings) -> int:
    records = read_rules(settings, topic=settings.graphs_topic)
    if args.format == "json":
        for name in sorted(records):
            record = records[name]
            print(orjson.dumps({"name": name, "source": record["source"], "appliedAt": format_time_ms(record["appliedAt"]),
                                "graph": orjson.loads(record["document"])}).decode())
        return 0
    print(f"{'GRAPH':40} {'APPLIED AT':21} SOURCE")
    for name in sorted(records):
        record = records[name]
        print(f"{name:40} {format_time_ms(record['appliedAt']):21} {record['source']}")
    print(f"{_count(len(records), 'graph')} on {settings.graphs_topic}", file=sys.stderr)
    return 0
