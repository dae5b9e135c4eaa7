"""The ``otamerge`` command line: one subcommand per stage of the workflow, grouped by
concept (models, publish, ffg, evaluation, curvature), each group's parsers beside its handlers."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from otamerge.cli import curvature, evaluation, ffg, models, publish
from otamerge.errors import OtaMergeError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="otamerge", description="OTA merging with Fast Fisher Grafting: one "
                                "subcommand per stage of the workflow")
    sub = p.add_subparsers(dest="command", required=True)
    for group in (models, publish, ffg, evaluation, curvature):
        group.add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except OtaMergeError as exc:
        print(f"otamerge: error: {exc}", file=sys.stderr)
        return 1
    return 0
