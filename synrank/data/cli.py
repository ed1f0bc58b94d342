"""`synrank data ...`: inspect and convert input collections.

    synrank data inspect PATH [--split S] [--kind K] [--json]
    synrank data convert SRC DST [--split S] [--kind K] [--source human|llm|synthetic] [--no-progress]

`convert` writes DST/queries.parquet, DST/corpus.parquet and DST/qrels-<split>.parquet (see
synrank.data.convert); the result is itself a collection folder every reader accepts.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from synrank.data import schemas

KINDS = ("queries", "corpus", "qrels")


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="inspect and convert input collections (BEIR, TREC, JSONL, Parquet)",
        description="Inspect and convert input collections (BEIR folders, TREC topics/qrels, JSONL, Parquet).",
    )
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    inspect = sub.add_parser(
        "inspect",
        help="counts, id uniqueness, grade histogram, unjudged queries, empty texts",
        description="Print counts (documents, queries, judged queries, qrels rows, grade histogram), id "
        "uniqueness, queries without judgments and empty texts of a collection folder or one file.",
    )
    inspect.add_argument("path", metavar="PATH", help="collection folder, or one queries/corpus/qrels file")
    inspect.add_argument("--split", help="qrels split (default: every split the folder has)")
    inspect.add_argument("--kind", choices=KINDS, help="what a single file holds (default: guessed from its name)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(handler=_inspect)

    convert = sub.add_parser(
        "convert",
        help="write any supported input as Parquet (queries, corpus, qrels-<split>)",
        description="Convert a collection folder (or one file) to DST/queries.parquet, DST/corpus.parquet "
        "and DST/qrels-<split>.parquet, atomically: on any error DST is left as it was.",
    )
    convert.add_argument("src", metavar="SRC", help="collection folder, or one queries/corpus/qrels file")
    convert.add_argument("dst", metavar="DST", help="output folder (local path or fsspec URL)")
    convert.add_argument("--split", help="qrels split to convert (default: every split); for a single qrels "
                         "file, the split its output is named after (default: test)")
    convert.add_argument("--kind", choices=KINDS, help="what a single file holds (default: guessed from its name)")
    convert.add_argument("--source", default="human", choices=schemas.LABEL_SOURCES,
                         help="qrels source column value (default: human)")
    convert.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                         help="never show a progress bar (default: shown on a terminal)")
    convert.set_defaults(handler=_convert)


def _inspect(args: argparse.Namespace) -> int:
    from synrank.data.inspect import format_report, inspect_path

    report = inspect_path(args.path, split=args.split, kind=args.kind)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from synrank.data.convert import convert

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = convert(args.src, args.dst, split=args.split, kind=args.kind, source=args.source,
                         progress=args.progress)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    for name, path in result["written"].items():
        print(f"{path}  ({result['counts'][name]} rows)")
    return 0
