"""The `synrank` command: one subcommand per stage, every option also settable from YAML.

Each stage registers its subcommand from its own `cli` module, so adding a stage never touches
the others; the options they share (`--config FILE`, `--address`, dotted overrides after the
options: `synrank train --config c.yaml train.lr=2e-5`) come from `synrank.config.add_config_options`.

Errors: bad input (`is_input_error`) is one line, `synrank CMD: error: ...`, exit status 2; any
other ValueError also prints its traceback, since it comes from a library and the line alone would
hide where; `-v` prints the traceback of every error. Other exceptions propagate as Python's own.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from pathlib import Path
from typing import Callable

from synrank.config import ConfigError
from synrank.data.errors import DataError

# Modules that define `register(subparsers)`; order is the order of `synrank --help`.
STAGE_COMMANDS = [
    "synrank.pipeline_cli",
    "synrank.data.cli",
    "synrank.generate.cli",
    "synrank.evaluate.cli",
    "synrank.train.cli",
    "synrank.annotate.cli",
    "synrank.probe_cli",
    "synrank.study.cli",
    "synrank.models_cli",
]

VERBOSE_FLAGS = ("-v", "--verbose")
PACKAGE_DIR = Path(__file__).resolve().parent

Handler = Callable[[argparse.Namespace], int | None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synrank",
        description="Train dense retrievers on LLM-generated graded-relevance data, on Ray.",
    )
    parser.add_argument(*VERBOSE_FLAGS, dest="verbose", action="store_true",
                        help="debug logging, and the traceback of any error (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in STAGE_COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def raised_by_synrank(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc`'s traceback is synrank's own code (not a library's)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def is_input_error(exc: BaseException) -> bool:
    """A bad-input error whose message says all the user needs: a ConfigError or DataError (synrank's
    own classes), or a ValueError or FileNotFoundError that synrank's code raised with its own
    message. The same types raised inside a library (a ValueError from pyarrow, numpy or torch)
    are unexpected, and come with their traceback."""
    if isinstance(exc, (ConfigError, DataError)):
        return True
    return isinstance(exc, (ValueError, FileNotFoundError)) and raised_by_synrank(exc)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if any(a in VERBOSE_FLAGS for a in extra):  # -v after the subcommand's options
        args.verbose = True
        extra = [a for a in extra if a not in VERBOSE_FLAGS]
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
    except (ValueError, FileNotFoundError) as exc:
        if args.verbose or not is_input_error(exc):
            traceback.print_exc()
        print(f"synrank {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        print(f"synrank {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
