"""The `synrank` command: one subcommand per stage, every option also settable from YAML.

Each stage registers its subcommand from its own `cli` module, so adding a stage never touches
the others. Options shared by all: `--config FILE`, dotted overrides after the options
(`synrank train --config c.yaml train.lr=2e-5`), `--address` for an existing Ray cluster.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable

from synrank.config import ConfigError

# Modules that define `register(subparsers)`; order is the order of `synrank --help`.
STAGE_COMMANDS = [
    "synrank.pipeline_cli",
    "synrank.data.cli",
    "synrank.generate.cli",
    "synrank.evaluate.cli",
    "synrank.train.cli",
    "synrank.annotate.cli",
    "synrank.study.cli",
    "synrank.models_cli",
]

Handler = Callable[[argparse.Namespace], int | None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synrank",
        description="Train dense retrievers on LLM-generated graded-relevance data, on Ray.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in STAGE_COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Anything left over must be a dotted override KEY=VALUE for commands that take them.
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides and not getattr(args, "accepts_overrides", False):
        parser.error(f"'{args.command}' takes no KEY=VALUE overrides: {' '.join(overrides)}")
    args.overrides = overrides
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"synrank {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"synrank {args.command}: interrupted", file=sys.stderr)
        return 130


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """--config FILE and --address, and mark the command as taking dotted overrides."""
    parser.add_argument("--config", metavar="FILE", help="YAML run config (see jobs/configs/)")
    parser.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    parser.set_defaults(accepts_overrides=True)


if __name__ == "__main__":
    raise SystemExit(main())
