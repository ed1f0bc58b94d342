"""`synrank groups` and `synrank train`.

    synrank groups --config run.yaml groups.source=human groups.collection=../shared/data/cranfield \\
        groups.qrels_levels=5 groups.n_levels=3 groups.out=runs/x/groups.parquet
    synrank train --config run.yaml train.loss=wasserstein train.num_workers=2 train.out=runs/x/train

Both read the run config (YAML with sections, see synrank.config.SynrankConfig) and take dotted
overrides. `synrank train` uses `train.groups` when set; otherwise it first builds the groups
described by the `groups` section into `<train.out>/groups.parquet`. `--dry-run` prints the
resolved config and exits without starting Ray.
"""

from __future__ import annotations

import argparse
import json
import sys

from synrank import storage
from synrank.config import SynrankConfig, load, to_yaml


def register(subparsers: argparse._SubParsersAction) -> None:
    from synrank.config import add_config_options

    groups = subparsers.add_parser(
        "groups",
        help="build training groups (query, k graded passages) from synthetic, human, llm or mixed labels",
        description="Build training groups from one label source and write them as Parquet "
        "(groups.out, default <run_dir>/groups.parquet). Settings: the `groups` section.",
    )
    add_config_options(groups)
    groups.set_defaults(handler=_groups)

    train = subparsers.add_parser(
        "train",
        help="train a bi-encoder on training groups with Ray Train (any loss of synrank.losses)",
        description="Train a bi-encoder with Ray Train (TorchTrainer; gloo on CPU, NCCL on GPU) and "
        "export it as a sentence-transformers model. Settings: the `train` section (and `groups` when "
        "train.groups is not set).",
    )
    add_config_options(train)
    train.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    train.set_defaults(handler=_train)


def _load(args: argparse.Namespace) -> SynrankConfig:
    return load(SynrankConfig, args.config, args.overrides)


def _build_groups(run: SynrankConfig, out: str) -> str:
    from synrank.data.groups import build_groups_to

    stats = build_groups_to(run.groups, out)
    print(json.dumps({"groups": out, **stats.as_dict()}, indent=2))
    return out


def _groups(args: argparse.Namespace) -> int:
    from synrank.runtime import init_ray_for

    run = _load(args)
    out = run.groups.out or storage.join(run.run_dir, "groups.parquet")
    init_ray_for(run.runtime, getattr(args, "address", None))
    _build_groups(run, out)
    return 0


def _train(args: argparse.Namespace) -> int:
    run = _load(args)
    cfg = run.train
    out = cfg.out or storage.join(run.run_dir, "train")
    groups = cfg.groups
    if args.dry_run:
        print(to_yaml(cfg.model_copy(update={"out": out, "groups": groups})), end="")
        return 0
    if groups is None and not (run.groups.synthetic or run.groups.collection):
        raise ValueError("no training groups: set train.groups (a groups Parquet), or describe them in the "
                         "groups section (groups.source with groups.synthetic / groups.collection)")

    from synrank.runtime import init_ray_for
    from synrank.train.trainer import fit

    init_ray_for(run.runtime, args.address)  # groups are built on the same cluster the training uses
    if groups is None:
        groups = _build_groups(run, run.groups.out or storage.join(out, "groups.parquet"))
    result = fit(cfg, groups, out)
    last = result.metrics_history[-1] if result.metrics_history else {}
    print(json.dumps({"model": result.model_dir, "out": out, "steps": last.get("step"),
                      "final_loss": last.get("loss"), "resumed_from": result.resumes}, indent=2))
    sys.stdout.flush()
    return 0
