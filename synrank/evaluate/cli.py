"""`synrank evaluate` and `synrank compare`.

    synrank evaluate [--model PATH|bm25|default] --collection DIR [DIR ...] [--split test] --out DIR
                     [--top-k 100] [--index flat|ivf|hnsw] [--batch-size 64] [--num-encoders N]
                     [--keep-embeddings] [--relevance-level 1] [--config FILE] [--address ADDR]
                     [evaluate.KEY=VALUE ...]
    synrank compare RUN_OR_METRICS RUN_OR_METRICS [...] [--baseline X] [--collection DIR]
                    [--split test] [--out DIR] [--measures M ...] [--alpha 0.05]
                    [--test randomization|ttest] [--resamples 10000] [--seed 0] [--no-plot]

`--config` takes a whole run config (its `evaluate:` section and `runtime.address` are used) or
an evaluate section alone; dotted overrides may name keys with or without the `evaluate.` prefix
(`evaluate.encoder.max_query_length=128`). Command-line options win over both.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from synrank.config import add_config_options


def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser(
        "evaluate",
        help="retrieval quality of an encoder (or bm25) on test collections",
        description="Encode queries and corpus with Ray Data actors, retrieve the top k with faiss (or BM25), "
        "score with pytrec_eval (nDCG@10, nDCG@100, Recall@100, MRR@10, MAP); write a TREC run and a "
        "metrics JSON per collection and print a summary table.",
    )
    ev.add_argument("--model", help="encoder directory, hub name, 'default' (packaged all-MiniLM-L6-v2) or 'bm25' "
                    "(default: default)")
    ev.add_argument("--collection", nargs="+", metavar="DIR", dest="collections",
                    help="collection folder(s) with corpus, queries and qrels")
    ev.add_argument("--split", help="qrels split (default: test)")
    ev.add_argument("--out", metavar="DIR", help="output folder: <out>/<collection>/run.trec, metrics.json")
    ev.add_argument("--top-k", type=int, dest="top_k", help="documents retrieved per query (default: 100)")
    ev.add_argument("--index", choices=("flat", "ivf", "hnsw"), help="faiss index (default: flat, exact)")
    ev.add_argument("--batch-size", type=int, dest="batch_size", help="encoder batch size (default: 64)")
    ev.add_argument("--num-encoders", type=int, dest="num_encoders",
                    help="the encoder pool's maximum size (default: from what is up now; set it on a cluster "
                         "that scales from zero)")
    ev.add_argument("--keep-embeddings", action="store_true", help="keep <out>/<collection>/embeddings/")
    ev.add_argument("--relevance-level", type=int, default=1, dest="relevance_level",
                    help="lowest grade counted relevant by the binary measures (default: 1)")
    ev.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add_config_options(ev)
    ev.set_defaults(handler=_evaluate)

    cmp = subparsers.add_parser(
        "compare",
        help="paired significance tests between runs or metrics files",
        description="Compare systems with a baseline per measure over their common queries: paired t-test and "
        "paired randomization test, Holm-corrected across systems; prints a table marking significant wins "
        "(W) and losses (L) and writes compare.md, compare.json and compare.png with --out.",
    )
    cmp.add_argument("inputs", nargs="+", metavar="RUN_OR_METRICS",
                     help="TREC run files (need --collection) or metrics.json files from `synrank evaluate`")
    cmp.add_argument("--baseline", help="name, path or 0-based position of the baseline (default: the first)")
    cmp.add_argument("--collection", metavar="DIR", help="collection whose qrels score the run files")
    cmp.add_argument("--split", default="test", help="qrels split (default: test)")
    cmp.add_argument("--out", metavar="DIR", help="write compare.md, compare.json and compare.png here")
    cmp.add_argument("--measures", nargs="+", metavar="M", help="measures (default: all in every input)")
    cmp.add_argument("--alpha", type=float, default=0.05, help="significance level (default: 0.05)")
    cmp.add_argument("--test", choices=("randomization", "ttest"), default="randomization",
                     help="test deciding significance (default: randomization); both are reported")
    cmp.add_argument("--resamples", type=int, default=10_000, help="randomization resamples (default: 10000)")
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--relevance-level", type=int, default=1, dest="relevance_level")
    cmp.add_argument("--no-plot", dest="plot", action="store_false", help="no PNG")
    cmp.set_defaults(handler=_compare)


def _config(args: argparse.Namespace):
    from synrank.config import EvaluateConfig, apply_overrides, build, load_yaml

    data: dict[str, Any] = load_yaml(args.config) if args.config else {}
    address = args.address
    if isinstance(data.get("evaluate"), dict) or "runtime" in data:
        address = address or (data.get("runtime") or {}).get("address")
        data = dict(data.get("evaluate") or {})
    overrides = [o[len("evaluate."):] if o.startswith("evaluate.") else o for o in args.overrides]
    where = args.config or "command line"
    if overrides:
        data = apply_overrides(data, overrides, EvaluateConfig)
        where = f"{where} + overrides"
    for key in ("model", "collections", "split", "out", "top_k", "index", "batch_size", "num_encoders"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    return build(EvaluateConfig, data, where), address


def _evaluate(args: argparse.Namespace) -> int:
    from synrank.data.errors import DataWarning
    from synrank.evaluate.stage import evaluate, summary_table

    config, address = _config(args)
    if not config.collections:
        raise ValueError("no collection given: --collection DIR [DIR ...]")
    if not config.out:
        raise ValueError("no output folder given: --out DIR")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = evaluate(config, address=address, keep_embeddings=args.keep_embeddings,
                           relevance_level=args.relevance_level, progress=args.progress)
    for w in caught:
        if isinstance(w.message, DataWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    print(summary_table(results))
    for name, r in results.items():
        print(f"{name}: {r['run_path']}  {r['metrics_path']}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from synrank.evaluate.compare import compare_runs

    baseline: Any = args.baseline
    if baseline is not None and baseline.isdigit():
        baseline = int(baseline)
    result = compare_runs(args.inputs, baseline=baseline, collection=args.collection, split=args.split,
                          measures=args.measures, out_dir=args.out, alpha=args.alpha, test=args.test,
                          n_resamples=args.resamples, seed=args.seed, relevance_level=args.relevance_level,
                          plot=args.plot)
    print(result["table"])
    for key in ("table_path", "json_path", "plot_path"):
        if key in result:
            print(result[key])
    return 0
