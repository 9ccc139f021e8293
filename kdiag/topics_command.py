"""`kdiag topics create`: create the changes, alerts, dead-letter and changelog topics."""

from __future__ import annotations

import argparse

from kdiag.settings import Settings
from kdiag.topics import ensure_topics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["create"], help="create: create the missing topics")
    parser.add_argument("--partitions", type=int, help="partitions of the changes, alerts and changelog topics")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.partitions:
        settings = settings.replace(partitions=args.partitions)
    created = ensure_topics(settings)
    print(f"created {len(created)} topics: {', '.join(created) or 'none (all exist)'}")
    return 0
