"""TREC run files: ``qid Q0 docid rank score tag``, one line per retrieved document.

A run in memory is ``{query_id: {doc_id: score}}``, the shape pytrec_eval takes.

Order. trec_eval (and so pytrec_eval) ignores the rank column: it ranks each query's documents by
score, descending, and breaks ties by doc id, descending (strcmp). `ranked` sorts the same way, so
the ranks written here are exactly the ranks the measures are computed on, and cutting a run at k
(`truncate`) keeps the k documents trec_eval would count at k.

Scores are written with ``repr(float(score))``, which reads back to the identical value: metrics
computed on a run read from disk equal those computed on the run in memory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping


from synrank import storage
from synrank.data.errors import DataError, MissingFileError

Run = dict[str, dict[str, float]]


def ranked(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """(doc_id, score) pairs in trec_eval order: score descending, then doc id descending."""
    return sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def truncate(run: Mapping[str, Mapping[str, float]], k: int) -> Run:
    """Each query's top k documents, in trec_eval order."""
    return {qid: dict(ranked(docs)[:k]) for qid, docs in run.items()}


def format_run(run: Mapping[str, Mapping[str, float]], tag: str = "synrank") -> Iterable[str]:
    """Lines of a TREC run (with newline), queries in the run's order, ranks from 1."""
    tag = _clean_tag(tag)
    for qid, docs in run.items():
        _check_id(qid, "query id")
        for rank, (did, score) in enumerate(ranked(docs), start=1):
            _check_id(did, "doc id")
            score = float(score)
            if math.isnan(score):
                raise ValueError(f"run: query {qid!r}, doc {did!r}: score is NaN")
            yield f"{qid} Q0 {did} {rank} {score!r} {tag}\n"


def write_run(run: Mapping[str, Mapping[str, float]], path: str | os.PathLike, tag: str = "synrank") -> str:
    """Write `run` as a TREC run file, atomically (the file appears complete or not at all)."""
    path = os.fspath(path)
    with storage.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(format_run(run, tag))
    return path


def read_run(path: str | os.PathLike, *, strict: bool = False) -> Run:
    """Read a TREC run into ``{qid: {docid: score}}``, queries in file order.

    Raises DataError naming the file and line for a line without 6 whitespace-separated
    columns, a rank that is not an integer, a score that is not a number, and a document
    listed twice for one query. With `strict` also for ranks that do not run 1, 2, 3 ... within
    a query and for scores that increase as the rank grows (see `check_run`).
    """
    path = os.fspath(path)
    if storage.is_local(path) and not Path(path).is_file():
        raise MissingFileError(path, "no such run file")
    run: Run = {}
    last: dict[str, tuple[int, float]] = {}
    with storage.open(path, "r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise DataError(path, f"expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}", line=lineno)
            qid, _, did, rank_text, score_text, _ = parts
            try:
                rank = int(rank_text)
            except ValueError:
                raise DataError(path, f"rank {rank_text!r} is not an integer", line=lineno) from None
            try:
                score = float(score_text)
            except ValueError:
                raise DataError(path, f"score {score_text!r} is not a number", line=lineno) from None
            if math.isnan(score):
                raise DataError(path, "score is NaN", line=lineno)
            docs = run.setdefault(qid, {})
            if did in docs:
                raise DataError(path, f"doc {did!r} listed twice for query {qid!r}", line=lineno)
            if strict:
                prev_rank, prev_score = last.get(qid, (0, math.inf))
                if rank != prev_rank + 1:
                    raise DataError(path, f"query {qid!r}: rank {rank} follows rank {prev_rank} "
                                    "(ranks must run 1, 2, 3 ... within a query)", line=lineno)
                if score > prev_score:
                    raise DataError(path, f"query {qid!r}: score {score_text} at rank {rank} is higher than "
                                    f"{prev_score!r} at rank {prev_rank}", line=lineno)
                last[qid] = (rank, score)
            docs[did] = score
    return run


def check_run(path: str | os.PathLike) -> list[str]:
    """Problems of a run file as 'path:line: message' strings; [] for a valid TREC run.

    Valid: every line has 6 columns with 'Q0' second, an integer rank and a numeric score; each
    query's lines are contiguous, ranks run 1..n, scores never increase with rank, and no
    document is listed twice for a query.
    """
    path = os.fspath(path)
    problems: list[str] = []
    state: dict[str, tuple[int, float, set[str]]] = {}
    finished: set[str] = set()
    current: str | None = None
    with storage.open(path, "r", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            parts = line.split()
            if len(parts) != 6:
                problems.append(f"{where}: expected 6 columns, got {len(parts)}")
                continue
            qid, q0, did, rank_text, score_text, _ = parts
            if q0 != "Q0":
                problems.append(f"{where}: second column is {q0!r}, expected 'Q0'")
            try:
                rank, score = int(rank_text), float(score_text)
            except ValueError:
                problems.append(f"{where}: rank {rank_text!r} or score {score_text!r} is not a number")
                continue
            if qid != current:
                if qid in finished:
                    problems.append(f"{where}: query {qid!r} appears again after other queries")
                if current is not None:
                    finished.add(current)
                current = qid
            prev_rank, prev_score, seen = state.get(qid, (0, math.inf, set()))
            if rank != prev_rank + 1:
                problems.append(f"{where}: query {qid!r}: rank {rank} after {prev_rank}")
            if not score <= prev_score:
                problems.append(f"{where}: query {qid!r}: score {score_text} increases over rank {prev_rank}")
            if did in seen:
                problems.append(f"{where}: query {qid!r}: doc {did!r} listed twice")
            seen.add(did)
            state[qid] = (rank, score, seen)
    return problems


def _check_id(value: str, what: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"run: {what} {value!r} is empty or contains whitespace; a TREC run cannot hold it")


def _clean_tag(tag: str) -> str:
    tag = "".join("_" if c.isspace() else c for c in (tag or "synrank").strip())
    return tag or "synrank"
