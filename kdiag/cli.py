"""The `kdiag` command line.

Each subcommand lives in the module that does the work and exposes `add_arguments(parser)` and
`run(args, settings) -> int`. This is the only module of the kdiag package that imports connectors and
streams, and it does so lazily, so that the rule engine never depends on them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from kdiag.errors import KdiagError
from kdiag.logs import configure_logging
from kdiag.settings import load_settings

log = logging.getLogger(__name__)

# subcommand -> (module, help text)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("streams.worker", "run a stream worker that evaluates rules and emits alerts"),
    "replay": ("connectors.replay", "publish recorded history files to the changes topic"),
    "watch": ("connectors.watch_command", "publish the changes of a live Kubernetes cluster to the changes topic"),
    "alerts": ("connectors.alerts", "print alerts from the alerts topic"),
    "topics": ("kdiag.topics_command", "create kdiag's topics"),
    "rules": ("kdiag.rules_command", "validate rule files, and apply, list or delete the rules workers follow"),
    "graphs": ("kdiag.graphs_command", "validate root-cause graph files, and apply, list or delete the graphs workers follow"),
    "receive": ("connectors.alertmanager_receiver", "receive Alertmanager webhooks and publish them as events"),
    "sink": ("connectors.alertmanager_sink", "push graded alerts to Alertmanager's v2 API"),
    "ack": ("connectors.ack", "acknowledge a graded alert"),
    "center": ("kdiag.center_command", "apply, show or reset the alert center configuration that workers follow"),
    "stats": ("kdiag.stats_command", "print MTTD, MTTA and MTTR per rule and level"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser. Only the module of `command` is imported, so that e.g. `kdiag alerts` does not
    load the Kubernetes client."""
    parser = argparse.ArgumentParser(prog="kdiag", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bootstrap-servers",
        help="Kafka bootstrap servers, host:port[,host:port] (default: KDIAG_BOOTSTRAP_SERVERS or 127.0.0.1:19092)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        subparser = commands.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(subparser)
            subparser.set_defaults(module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    command = next((argument for argument in arguments if argument in SUBCOMMANDS), None)
    parser = build_parser(command)
    args = parser.parse_args(arguments)
    configure_logging(args.log_level)
    try:
        settings = load_settings(bootstrap_servers=args.bootstrap_servers)
        return int(args.module.run(args, settings) or 0)
    except KdiagError as error:
        print(f"kdiag {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
