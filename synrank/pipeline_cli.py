"""`synrank pipeline --config FILE [KEY=VALUE ...]`: every stage in one run directory."""

from __future__ import annotations

import argparse

from synrank.config import add_config_options


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "pipeline",
        help="generate -> (annotate) -> groups -> train -> evaluate -> summary, in one run directory",
        description=(
            "Run every stage in one run directory. A stage whose outputs exist and whose settings are "
            "unchanged is skipped, so a rerun after a crash continues where it stopped. Without "
            "--config it runs the embedded demo (the 40 shipped queries, SmolLM2, MiniLM)."
        ),
    )
    add_config_options(parser)
    parser.add_argument("--run-dir", help="the run directory (default: run_dir of the config)")
    parser.add_argument("--stop-after", choices=["train"], help="stop after this stage")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from synrank.config import SynrankConfig, load
    from synrank.pipeline import run_pipeline

    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if args.address:
        overrides.append(f"runtime.address={args.address}")
    cfg = load(SynrankConfig, args.config, overrides)
    run_pipeline(cfg, stop_after=args.stop_after)
    return 0
