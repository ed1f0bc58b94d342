"""`synrank data inspect`: what is in a collection (or one file), and what is wrong with it.

Unlike `load_collection`, inspection does not stop at duplicate ids or qrels ids missing from
the queries or corpus: it counts them. Malformed input (a broken line, a bad grade) still raises
the reader's DataError, naming file and line.
"""

from __future__ import annotations

import os
import statistics
import warnings
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from synrank.data import readers
from synrank.data.errors import DataError

EXAMPLES = 5  # how many example ids a report lists


def _duplicates(ids: pa.ChunkedArray | pa.Array) -> tuple[int, list[str]]:
    """(number of rows repeating an earlier id, up to EXAMPLES such ids)."""
    n_unique = len(pc.unique(ids))
    extra = len(ids) - n_unique
    if not extra:
        return 0, []
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    return extra, repeated.to_pylist()[:EXAMPLES]


def _n_empty(column: pa.ChunkedArray) -> int:
    return int(pc.sum(pc.equal(pc.utf8_trim_whitespace(column), "")).as_py() or 0)


def _queries_stats(path: str) -> tuple[dict[str, Any], pa.Table]:
    table = readers.read_queries(path, check_unique=False)
    dup, examples = _duplicates(table.column("query_id"))
    stats = {
        "path": path,
        "count": table.num_rows,
        "ids_unique": dup == 0,
        "duplicate_ids": dup,
        "duplicate_examples": examples,
        "empty_text": _n_empty(table.column("text")),
    }
    return stats, table


def _corpus_stats(path: str) -> tuple[dict[str, Any], pa.ChunkedArray]:
    """Streamed: only the ids are kept."""
    count = empty_title = empty_text = 0
    id_chunks: list[pa.Array] = []
    for batch in readers.iter_corpus(path, batch_size=50_000):
        count += batch.num_rows
        empty_title += _n_empty(pa.chunked_array([batch.column(1)]))
        empty_text += _n_empty(pa.chunked_array([batch.column(2)]))
        id_chunks.append(batch.column(0))
    ids = pa.chunked_array(id_chunks, pa.string())
    dup, examples = _duplicates(ids)
    stats = {
        "path": path,
        "count": count,
        "ids_unique": dup == 0,
        "duplicate_ids": dup,
        "duplicate_examples": examples,
        "empty_title": empty_title,
        "empty_text": empty_text,
    }
    return stats, ids


def _qrels_stats(
    path: str,
    split: str,
    query_ids: pa.ChunkedArray | None,
    doc_ids: pa.ChunkedArray | None,
) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        located = readers.qrels._read_qrels_located(path, split, "human", on_duplicate="keep")
    table = located.table
    qids = table.column("query_id")
    grades = table.column("grade").to_pylist()
    histogram = dict(sorted(Counter(grades).items()))
    positives: Counter[str] = Counter()
    judged: dict[str, None] = {}
    for qid, grade in zip(qids.to_pylist(), grades):
        judged.setdefault(qid, None)
        if grade > 0:
            positives[qid] += 1
    per_query = [positives.get(q, 0) for q in judged]
    stats: dict[str, Any] = {
        "path": located.path,
        "rows": table.num_rows,
        "judged_queries": len(judged),
        "grade_histogram": histogram,
        "queries_with_positive": sum(1 for n in per_query if n),
        "positives_per_judged_query": (
            {"min": min(per_query), "mean": round(statistics.fmean(per_query), 2), "max": max(per_query)}
            if per_query else None
        ),
        "repeated_pairs": located.duplicates,
    }
    if query_ids is not None:
        unknown = pc.invert(pc.is_in(qids, value_set=query_ids))
        bad = qids.filter(unknown)
        stats["unknown_query_rows"] = len(bad)
        stats["unknown_query_ids"] = len(pc.unique(bad))
        stats["unknown_query_examples"] = pc.unique(bad).to_pylist()[:EXAMPLES]
        unjudged = query_ids.filter(pc.invert(pc.is_in(query_ids, value_set=qids)))
        stats["queries_without_judgments"] = len(unjudged)
        stats["unjudged_examples"] = unjudged.to_pylist()[:EXAMPLES]
    if doc_ids is not None:
        dids = table.column("doc_id")
        bad = dids.filter(pc.invert(pc.is_in(dids, value_set=doc_ids)))
        stats["unknown_doc_rows"] = len(bad)
        stats["unknown_doc_ids"] = len(pc.unique(bad))
        stats["unknown_doc_examples"] = pc.unique(bad).to_pylist()[:EXAMPLES]
    return stats


def inspect_path(path: str | os.PathLike, split: str | None = None, kind: str | None = None) -> dict[str, Any]:
    """Statistics of a collection folder, or of one file of `kind` (queries, corpus, qrels;
    guessed from the file name when None).

    For a folder: every qrels split when `split` is None, else that split (which must exist).
    Returns a JSON-serialisable dict: {"path", "name", "queries", "corpus", "qrels": {split: ...}},
    a part being None where the input has none.
    """
    path = os.fspath(path)
    readers.paths._require(path)
    report: dict[str, Any] = {"path": path, "name": readers.paths._collection_name(path),
                              "queries": None, "corpus": None, "qrels": {}}
    is_folder = readers.paths._isdir(path) and not readers.paths._is_parquet(path)
    if not is_folder:
        kind = kind or readers.guess_kind(path)
        if kind not in ("queries", "corpus", "qrels"):
            raise DataError(path, "cannot tell whether this file holds queries, corpus or qrels; pass --kind")
        if kind == "queries":
            report["queries"] = _queries_stats(path)[0]
        elif kind == "corpus":
            report["corpus"] = _corpus_stats(path)[0]
        else:
            report["qrels"][split or "file"] = _qrels_stats(path, split or "test", None, None)
        return report
    queries_path = readers.collection_file(path, "queries")
    query_ids = None
    if queries_path is not None:
        report["queries"], queries = _queries_stats(queries_path)
        query_ids = queries.column("query_id")
    corpus_path = readers.collection_file(path, "corpus")
    doc_ids = None
    if corpus_path is not None:
        report["corpus"], doc_ids = _corpus_stats(corpus_path)
    if queries_path is None and corpus_path is None and not readers.available_splits(path):
        raise DataError(path, "not a collection folder: no queries, corpus or qrels files inside")
    splits = [split] if split is not None else readers.available_splits(path)
    for name in splits:
        report["qrels"][name] = _qrels_stats(path, name, query_ids, doc_ids)
    return report


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of an `inspect_path` report."""
    lines = [f"{report['name']}  ({report['path']})"]
    corpus = report["corpus"]
    if corpus is not None:
        unique = "ids unique" if corpus["ids_unique"] else (
            f"{corpus['duplicate_ids']} DUPLICATE ids (e.g. {', '.join(corpus['duplicate_examples'])})")
        lines.append(f"  documents  {corpus['count']:>8}   {unique}; empty title {corpus['empty_title']}, "
                     f"empty text {corpus['empty_text']}")
    elif report["queries"] is not None:
        lines.append("  documents  no corpus")
    queries = report["queries"]
    if queries is not None:
        unique = "ids unique" if queries["ids_unique"] else (
            f"{queries['duplicate_ids']} DUPLICATE ids (e.g. {', '.join(queries['duplicate_examples'])})")
        lines.append(f"  queries    {queries['count']:>8}   {unique}; empty text {queries['empty_text']}")
    if not report["qrels"] and queries is not None:
        lines.append("  qrels      none (a query set without judgments)")
    for split, q in report["qrels"].items():
        lines.append(f"  qrels [{split}]  {q['path']}")
        lines.append(f"    rows {q['rows']}, judged queries {q['judged_queries']}, "
                     f"queries with a positive (grade > 0) {q['queries_with_positive']}")
        hist = ", ".join(f"{g}: {n}" for g, n in q["grade_histogram"].items()) or "-"
        lines.append(f"    grades     {hist}")
        ppq = q["positives_per_judged_query"]
        if ppq:
            lines.append(f"    positives per judged query  min {ppq['min']} / mean {ppq['mean']:.2f} / max {ppq['max']}")
        if "queries_without_judgments" in q:
            n = q["queries_without_judgments"]
            example = f" (e.g. {', '.join(q['unjudged_examples'])})" if n else ""
            lines.append(f"    queries without judgments {n}{example}")
        if q["repeated_pairs"]:
            lines.append(f"    {_plural(q['repeated_pairs'], 'repeated (query, doc) row')} (same grade)")
        if q.get("unknown_query_rows"):
            lines.append(f"    PROBLEM: {_plural(q['unknown_query_rows'], 'row')} name "
                         f"{_plural(q['unknown_query_ids'], 'query id')} not in the queries "
                         f"(e.g. {', '.join(q['unknown_query_examples'])})")
        if q.get("unknown_doc_rows"):
            lines.append(f"    warning: {_plural(q['unknown_doc_rows'], 'row')} name "
                         f"{_plural(q['unknown_doc_ids'], 'doc id')} not in the corpus "
                         f"(e.g. {', '.join(q['unknown_doc_examples'])}); load_collection drops them")
    return "\n".join(lines)
