"""`synrank annotate`: LLM relevance labels for real passages, and the tools around them.

    synrank annotate [--collection DIR] [--out DIR] [--split test] [--model M] [--candidates bm25|ENCODER]
                     [--top-n 10] [--no-judged] [--limit N] [--overwrite] [--no-agreement]
                     [--config FILE] [--address ADDR] [annotate.KEY=VALUE ...]
    synrank annotate agreement --human QRELS --llm QRELS [--human-levels 4] [--llm-levels 4] [--levels N]
                     [--unjudged-as G] [--split test] [--out DIR]
    synrank annotate merge --human QRELS --llm QRELS --out FILE [--precedence human|llm|add]
                     [--human-fraction 1.0] [--seed 0] [--human-levels 4] [--llm-levels 4] [--levels N]
    synrank annotate consistency --synthetic PATH --queries PATH --out DIR [--filter drop|relabel]
                     [--tolerance 0] [--keep-failed] [--filtered FILE] [--config FILE] [annotate.KEY=VALUE ...]

The first form judges the top-n candidates of every query (BM25 by default) with the LLM engines
on Ray and writes OUT/qrels.parquet (source=llm), OUT/_failures.parquet and OUT/_summary.json (OUT
itself reads as the qrels: `groups.llm_qrels=OUT`); it resumes an interrupted run in the same OUT.
When the collection has human qrels it also writes the agreement report (OUT/_agreement.{json,txt,png}); Cranfield-style 5-level qrels are collapsed onto
the judge's scale (`--human-levels` is read from the data: the largest grade + 1, at least 2).

`--config` takes a whole run config (its `annotate:` section and `runtime.address` are used) or an
annotate section alone; dotted overrides may name keys with or without the `annotate.` prefix.
Command-line options win over both.

QRELS arguments are anything `synrank.data.readers.read_qrels` reads: a collection folder (with
`--split`), a BEIR/TREC qrels file or Parquet (such as OUT/qrels.parquet).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from synrank.config import add_config_options

ACTIONS = ("agreement", "merge", "consistency")


class _Choices(dict):
    """The sub-actions; a KEY=VALUE word in the action's place is an override for the default
    action (annotating), not an unknown action."""

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or (isinstance(key, str) and "=" in key)


class _OptionalActions(argparse._SubParsersAction):
    """Sub-actions that may be left out: `synrank annotate --out X annotate.top_n=5` annotates."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._name_parser_map = _Choices()
        self.choices = self._name_parser_map

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        if values and values[0] not in self._name_parser_map.keys():
            # overrides (and whatever follows them) go back to the caller as unparsed arguments
            extras = getattr(namespace, argparse._UNRECOGNIZED_ARGS_ATTR, [])
            setattr(namespace, argparse._UNRECOGNIZED_ARGS_ATTR, [*extras, *values])
            return
        super().__call__(parser, namespace, values, option_string)


def register(subparsers: argparse._SubParsersAction) -> None:
    ann = subparsers.add_parser(
        "annotate",
        help="LLM relevance labels for real (query, passage) pairs; agreement, merging, consistency",
        description="Judge the top-n candidates of a collection's queries with an LLM on Ray (one pair per "
        "request, grades on the project's relevance scale), resumably; report agreement with human labels. "
        "Sub-actions: agreement, merge, consistency (see `synrank annotate ACTION --help`).",
    )
    ann.add_argument("--collection", metavar="DIR", help="collection folder with corpus and queries (and qrels)")
    ann.add_argument("--split", help="qrels split for judged passages and agreement (default: test)")
    ann.add_argument("--out", metavar="DIR", help="output folder (resumed when it holds the same run)")
    ann.add_argument("--model", help="judge model: directory, .gguf file, recipe (synrank models list), hub name or 'default' (SmolLM2-135M-Instruct)")
    ann.add_argument("--candidates", help="'bm25' (default) or an encoder for dense candidates")
    ann.add_argument("--top-n", type=int, dest="top_n", help="candidates per query (default: 10)")
    ann.add_argument("--no-judged", dest="include_judged", action="store_false", default=None,
                     help="do not add the human-judged passages to the candidates")
    ann.add_argument("--limit", type=int, help="only the first N queries")
    ann.add_argument("--n-levels", type=int, dest="n_levels", help="grades of the judge's scale (default: 4)")
    ann.add_argument("--overwrite", action="store_true", help="discard what OUT holds and start over")
    ann.add_argument("--no-agreement", dest="agreement", action="store_false",
                     help="do not write the agreement report")
    add_config_options(ann)
    ann.set_defaults(handler=_annotate)

    sub = ann.add_subparsers(dest="annotate_action", metavar="ACTION", action=_OptionalActions)

    agr = sub.add_parser("agreement", help="human vs LLM labels: confusion, kappas, positive P/R, heatmap",
                         description="Confusion matrix of human (rows) vs LLM (columns) grades on a common scale, "
                         "Cohen's kappa (unweighted, linear, quadratic), precision/recall of 'positive'; printed, "
                         "and as OUT/agreement.json, .txt and .png with --out.")
    agr.add_argument("--human", required=True, metavar="QRELS", help="human qrels (collection folder or file)")
    agr.add_argument("--llm", required=True, metavar="QRELS", help="LLM qrels (e.g. OUT/qrels.parquet)")
    _scale_options(agr)
    agr.add_argument("--unjudged-as", type=int, dest="unjudged_as",
                     help="count LLM pairs people did not judge as this human grade (default: leave them out)")
    agr.add_argument("--positive", type=int, dest="positive_threshold",
                     help="lowest positive grade on the common scale (default: the upper half)")
    agr.add_argument("--out", metavar="DIR", help="write agreement.json/.txt/.png here")
    agr.add_argument("--json", action="store_true", help="print JSON instead of the table")
    agr.set_defaults(handler=_agreement, accepts_overrides=False)

    mrg = sub.add_parser("merge", help="merge human and LLM qrels with a precedence and a human-query fraction",
                         description="Merge human and LLM qrels into one QRELS Parquet file. Precedence for a pair "
                         "labelled by both: human (human grade), llm (LLM grade), add (human labels kept; LLM only "
                         "adds pairs to human-judged queries). --human-fraction keeps human labels for a seeded "
                         "fraction of the human-judged queries (Paper B's heterogeneous mixtures).")
    mrg.add_argument("--human", required=True, metavar="QRELS")
    mrg.add_argument("--llm", required=True, metavar="QRELS")
    mrg.add_argument("--out", required=True, metavar="FILE", help="merged qrels (.parquet; stats in FILE.json)")
    mrg.add_argument("--precedence", choices=("human", "llm", "add"), default="human")
    mrg.add_argument("--human-fraction", type=float, default=1.0, dest="human_fraction")
    mrg.add_argument("--seed", type=int, default=0)
    _scale_options(mrg)
    mrg.set_defaults(handler=_merge, accepts_overrides=False)

    con = sub.add_parser("consistency", help="judge synthetic passages: intended level vs judged grade, filter",
                         description="Judge `synrank generate` output with the annotation judge (resumable, into "
                         "OUT), report intended level x judged grade (OUT/_consistency.json/.txt/.png), and with "
                         "--filter write the passages kept (drop) or relabelled (relabel) to --filtered.")
    con.add_argument("--synthetic", required=True, metavar="PATH", help="synthetic passages (Parquet file or folder)")
    con.add_argument("--queries", required=True, metavar="PATH", help="queries file or collection folder")
    con.add_argument("--out", metavar="DIR", help="judgments and report folder")
    con.add_argument("--model", help="judge model (default: the config's annotate.model)")
    con.add_argument("--n-levels", type=int, dest="n_levels", help="scale the passages were generated on")
    con.add_argument("--filter", choices=("drop", "relabel"), dest="filter_mode")
    con.add_argument("--tolerance", type=int, default=0, help="drop: largest |judged - level| kept (default: 0)")
    con.add_argument("--keep-failed", action="store_true", help="keep passages the judge could not grade")
    con.add_argument("--filtered", metavar="FILE", help="where --filter writes (default: OUT/filtered.parquet)")
    con.add_argument("--overwrite", action="store_true")
    add_config_options(con)
    con.set_defaults(handler=_consistency)


def _scale_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="test", help="qrels split of a collection folder (default: test)")
    p.add_argument("--human-levels", type=int, dest="human_levels",
                   help="grades of the human scale (default: largest human grade + 1, at least 2)")
    p.add_argument("--llm-levels", type=int, dest="llm_levels",
                   help="grades of the LLM scale (default: from an annotate folder's _summary.json, else 4)")
    p.add_argument("--levels", type=int, dest="n_levels", help="common scale (default: the coarser)")


# --------------------------------------------------------------------------------------------


def annotate_config(args: argparse.Namespace):
    """(AnnotateConfig, Ray address) from --config (a whole run config or an annotate section), overrides
    (`annotate.` prefix optional) and options; `synrank probe` configures its judge the same way."""
    from synrank.config import AnnotateConfig, apply_overrides, build, load_yaml

    data: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    address = getattr(args, "address", None)
    if isinstance(data.get("annotate"), dict) or "runtime" in data:
        address = address or (data.get("runtime") or {}).get("address")
        data = dict(data.get("annotate") or {})
    overrides = [o[len("annotate."):] if o.startswith("annotate.") else o for o in getattr(args, "overrides", [])]
    where = getattr(args, "config", None) or "command line"
    if overrides:
        data = apply_overrides(data, overrides, AnnotateConfig)
        where = f"{where} + overrides"
    for key in ("collection", "split", "out", "model", "candidates", "top_n", "include_judged", "limit", "n_levels"):
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    return build(AnnotateConfig, data, where), address


def _infer_levels(table, default: int = 4) -> int:
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return default
    top = pc.max(table.column("grade")).as_py()
    return max(2, int(top) + 1)


def _llm_levels(path: str, table) -> int:
    """The judge's scale from an annotate folder's _summary.json (given the folder or its
    qrels.parquet), else from the grades (at least 4)."""
    from synrank import storage
    from synrank.annotate.pipeline import SUMMARY_FILE

    base = path.rstrip("/")
    folder = base if not base.endswith(".parquet") else storage.parent(base)
    try:
        return int(storage.read_json(storage.join(folder, SUMMARY_FILE))["n_levels"])
    except (OSError, KeyError, ValueError, TypeError):
        return max(4, _infer_levels(table))


def _read_pair(args: argparse.Namespace):
    from synrank.data.readers import read_qrels

    human = read_qrels(args.human, split=args.split, source="human")
    llm = read_qrels(args.llm, split=args.split, source="llm")
    human_levels = args.human_levels or _infer_levels(human)
    llm_levels = args.llm_levels or _llm_levels(args.llm, llm)
    return human, llm, human_levels, llm_levels


def _print_agreement(report, out: str | None, as_json: bool, name: str = "agreement") -> None:
    if as_json:
        from synrank.annotate.agreement import _json_safe

        print(json.dumps(_json_safe(report.as_dict()), indent=2))
    else:
        print(report.format())
    if out:
        paths = report.write(out, name)
        print(f"wrote {paths['json']}, {paths['text']}, {paths['png']}", file=sys.stderr)


def _agreement(args: argparse.Namespace) -> int:
    from synrank.annotate.agreement import agreement

    human, llm, hl, ll = _read_pair(args)
    report = agreement(human, llm, human_levels=hl, llm_levels=ll, n_levels=args.n_levels,
                       positive_threshold=args.positive_threshold, unjudged_as=args.unjudged_as)
    _print_agreement(report, args.out, args.json)
    return 0


def _merge(args: argparse.Namespace) -> int:
    from synrank.annotate.merge import merge_qrels
    from synrank.storage import write_json, write_parquet

    human, llm, hl, ll = _read_pair(args)
    merged, stats = merge_qrels(human, llm, precedence=args.precedence, human_fraction=args.human_fraction,
                                seed=args.seed, human_levels=hl, llm_levels=ll, n_levels=args.n_levels)
    write_parquet(merged, args.out)
    info = stats.as_dict()
    write_json(info, args.out + ".json")
    info.pop("kept_queries")
    print(json.dumps(info, indent=2))
    return 0


def _annotate(args: argparse.Namespace) -> int:
    from synrank.annotate.pipeline import annotate

    cfg, address = annotate_config(args)

    def progress(done: int, total: int) -> None:
        print(f"annotate: {done}/{total} shards", file=sys.stderr, flush=True)

    result = annotate(cfg, overwrite=args.overwrite or cfg.overwrite, address=address, on_shard=progress)
    s = result.summary
    print(f"{s['pairs']} pairs of {s['queries']} queries: {s['graded']} graded, {s['failed']} failed "
          f"(retried {s['retried_pairs']}); grades {s['grade_histogram']}")
    print(f"qrels: {result.qrels_path}\nfailures: {result.failures_path}")
    if args.agreement:
        report = _collection_agreement(cfg, result.qrels_path)
        if report is not None:
            _print_agreement(report, cfg.out, as_json=False, name="_agreement")
    return 0


def _collection_agreement(cfg, qrels_path: str):
    """Agreement of the run's labels with the collection's human qrels, if it has any (None: none,
    or nothing in common). The human scale is read from the data (largest grade + 1)."""
    import warnings

    import pyarrow.compute as pc

    from synrank.annotate.agreement import agreement
    from synrank.data.readers import MissingFileError, read_qrels

    try:
        human = read_qrels(cfg.collection, split=cfg.split, source="human")
    except MissingFileError:
        return None
    human = human.filter(pc.greater_equal(human.column("grade"), 0))  # TREC's -1 "junk" rows are not grades
    llm = read_qrels(qrels_path, source="llm")
    try:
        report = agreement(human, llm, human_levels=_infer_levels(human), llm_levels=cfg.n_levels)
    except ValueError as exc:  # a report is a by-product: the labels are written either way
        warnings.warn(f"no agreement report: {exc}", stacklevel=1)
        return None
    return report if report.n else None


def _consistency(args: argparse.Namespace) -> int:
    from synrank.annotate.consistency import filter_synthetic, run_consistency
    from synrank.storage import write_json, write_parquet
    from synrank.data.readers import collection_file, read_queries, read_table

    cfg, address = annotate_config(args)
    out = args.out or cfg.out
    if not out:
        raise ValueError("consistency needs an output folder: --out DIR")
    synthetic = read_table(args.synthetic, "synthetic")
    queries_path = collection_file(args.queries, "queries") or args.queries
    queries = read_queries(queries_path)
    result = run_consistency(cfg, synthetic, queries, out, address=address,
                             overwrite=args.overwrite or cfg.overwrite)
    print(result.format())
    paths = result.write(out)
    print(f"wrote {paths['json']}, {paths['text']}, {paths['png']}", file=sys.stderr)
    if args.filter_mode:
        kept, stats = filter_synthetic(synthetic, result.judgments, mode=args.filter_mode,
                                       tolerance=args.tolerance, keep_failed=args.keep_failed)
        target = args.filtered or out.rstrip("/") + "/filtered.parquet"
        write_parquet(kept, target)
        write_json(stats.as_dict(), target + ".json")
        print(f"{args.filter_mode}: kept {stats.kept} of {stats.passages} passages -> {target}")
    return 0
