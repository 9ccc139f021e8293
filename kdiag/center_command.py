"""`kdiag center apply|show|reset`: change the alert center configuration that workers follow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from kdiag.alertcenter.config_store import CONFIG_NAME, publish_config, read_config_file
from kdiag.errors import ConfigError
from kdiag.model import format_time_ms
from kdiag.rule_store import delete_rules, read_rules
from kdiag.settings import Settings
from kdiag.topics import ensure_topics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    apply = actions.add_parser(
        "apply",
        help="validate a configuration file and publish it",
        description="Validate the alert center configuration (YAML or JSON: levels, escalation, filters, enrichment) "
        "and publish it to the config topic, which every worker follows. Nothing is published when it is invalid.",
    )
    apply.add_argument("path", type=Path, metavar="FILE", help="configuration file")
    actions.add_parser("show", help="print the configuration on the config topic as JSON (keys it leaves out take their defaults)")
    actions.add_parser("reset", help="restore the default configuration")


def run(args: argparse.Namespace, settings: Settings) -> int:
    topic = settings.center_config_topic
    if args.action == "apply":
        try:
            raw = read_config_file(args.path)
        except ConfigError as error:
            print(error)
            print("the configuration is invalid; nothing was published", file=sys.stderr)
            return 1
        ensure_topics(settings, only=[topic])
        publish_config(settings, raw, str(args.path))
        print(f"published the alert center config from {args.path} to {topic}", file=sys.stderr)
        return 0
    if args.action == "reset":
        delete_rules(settings, [CONFIG_NAME], topic=topic, what="config")
        print(f"reset the alert center config on {topic} to the defaults", file=sys.stderr)
        return 0
    record = read_rules(settings, topic=topic).get(CONFIG_NAME)
    if record is None:
        print(f"no configuration on {topic}: workers use the defaults", file=sys.stderr)
        return 0
    print(orjson.dumps(orjson.loads(record["document"]), option=orjson.OPT_INDENT_2).decode())
    print(f"applied {format_time_ms(record['appliedAt'])} from {record['source']}", file=sys.stderr)
    return 0
