"""Qrels: BEIR TSV, TREC qrels and Parquet; repeated judgments deduplicated or refused."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from synrank import storage
from synrank.data import schemas
from synrank.data.errors import DataError, DataWarning, MissingFileError
from synrank.data.readers.lines import _grade, _is_int, _iter_lines
from synrank.data.readers.parquet import _check_table, _conform, _fill_null, _first_true, _read_parquet
from synrank.data.readers.paths import _is_parquet, _isdir, _require, available_splits, collection_file

QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass
class _Qrels:
    """A qrels table with where each row came from, for messages that name the line."""

    path: str
    table: pa.Table
    lines: list[int] | None  # text files: line of each row; Parquet: None (the row is the row)
    duplicates: int = 0

    def where(self, i: int) -> dict[str, int]:
        return {"line": self.lines[i]} if self.lines is not None else {"row": i}

    def describe(self, i: int) -> str:
        return f"line {self.lines[i]}" if self.lines is not None else f"row {i}"


def _check_source(source: str) -> None:
    if source not in schemas.LABEL_SOURCES:
        raise ValueError(f"source must be one of {schemas.LABEL_SOURCES}, got {source!r}")


def _qrels_file(path: str, split: str) -> str:
    path = _require(path)
    if _isdir(path) and not _is_parquet(path):
        found = collection_file(path, "qrels", split)
        if found is None:
            splits = available_splits(path)
            hint = f"available splits: {splits}" if splits else "the folder has no qrels"
            raise MissingFileError(storage.join(path, f"qrels/{split}.tsv"), f"no qrels for split {split!r} ({hint})")
        return found
    return path


def _read_qrels_located(path: str, split: str, source: str, on_duplicate: str = "warn") -> _Qrels:
    _check_source(source)
    path = _qrels_file(os.fspath(path), split)
    if _is_parquet(path):
        table = _read_parquet(path)
        if "source" not in table.column_names:
            table = table.append_column("source", pa.array([source] * table.num_rows, pa.string()))
        table = _conform(table, schemas.QRELS, path).select(schemas.QRELS.names)
        table = _fill_null(table, "source", source)
        _check_table(table, path, ["query_id", "doc_id"], ["grade"])
        bad = _first_true(pc.invert(pc.is_in(table.column("source"), value_set=pa.array(schemas.LABEL_SOURCES))))
        if bad is not None:
            raise DataError(path, f"source {table.column('source')[bad].as_py()!r} is not one of "
                            f"{schemas.LABEL_SOURCES}", row=bad)
        qrels = _Qrels(path, table, None)
        return _dedupe(qrels, on_duplicate)
    qids: list[str] = []
    dids: list[str] = []
    grades: list[int] = []
    lines: list[int] = []
    mode: str | None = None
    for lineno, line in _iter_lines(path):
        if not line.strip():
            continue
        if mode is None:
            mode = _qrels_mode(line, path, lineno)
            if mode == "beir-header":
                mode = "beir"
                continue
        if mode == "beir":
            parts = line.split("\t")
            if len(parts) != 3:
                raise DataError(path, f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(parts)}",
                                line=lineno)
            qid, did, grade = parts
        else:
            parts = line.split()
            if len(parts) != 4:
                raise DataError(path, f"expected 4 whitespace-separated columns (TREC qrels: query-id iteration "
                                f"doc-id grade), got {len(parts)}", line=lineno)
            qid, _, did, grade = parts
        if not qid.strip():
            raise DataError(path, "empty query id", line=lineno)
        if not did.strip():
            raise DataError(path, "empty doc id", line=lineno)
        qids.append(qid)
        dids.append(did)
        grades.append(_grade(grade, path, lineno))
        lines.append(lineno)
    table = pa.table(
        {
            "query_id": pa.array(qids, pa.string()),
            "doc_id": pa.array(dids, pa.string()),
            "grade": pa.array(grades, pa.int32()),
            "source": pa.array([source] * len(qids), pa.string()),
        },
        schema=schemas.QRELS,
    )
    return _dedupe(_Qrels(path, table, lines), on_duplicate)


def _qrels_mode(line: str, path: str, lineno: int) -> str:
    """Decide from the first non-blank line: 'beir-header', 'beir' (no header) or 'trec'."""
    tabs = line.split("\t")
    words = line.split()
    if len(tabs) == 3 and _is_int(tabs[2].strip()):
        return "beir"
    if len(words) == 4 and _is_int(words[3]):
        return "trec"
    if len(tabs) == 3 and tuple(t.strip() for t in tabs) == QRELS_HEADER:
        return "beir-header"
    last = (tabs if len(tabs) == 3 else words)[-1].strip()
    try:
        float(last)
    except ValueError:
        if len(words) in (3, 4) or len(tabs) in (3, 4):
            raise DataError(path, f"qrels header is {line!r}; expected {chr(9).join(QRELS_HEADER)!r} "
                            "(tab-separated) or no header", line=lineno) from None
    else:
        raise DataError(path, f"grade {last!r} is not an integer", line=lineno)
    raise DataError(path, f"expected 3 tab-separated columns (query-id, corpus-id, score) or 4 whitespace-separated "
                    f"columns (TREC: query-id iteration doc-id grade), got {len(tabs)} / {len(words)}", line=lineno)


def _dedupe(qrels: _Qrels, on_duplicate: str) -> _Qrels:
    """Repeated (query, doc) pairs: same grade -> counted warning, first kept; different grade -> error."""
    table = qrels.table
    if table.num_rows == 0:
        return qrels
    pairs = pc.binary_join_element_wise(table.column("query_id"), table.column("doc_id"), "\x00")
    if len(pc.unique(pairs)) == table.num_rows:
        return qrels
    seen: dict[str, int] = {}
    keep: list[bool] = []
    grades = table.column("grade").to_pylist()
    for i, key in enumerate(pairs.to_pylist()):
        first = seen.setdefault(key, i)
        if first == i:
            keep.append(True)
            continue
        qid, did = key.split("\x00", 1)
        if grades[first] != grades[i]:
            raise DataError(qrels.path, f"query {qid!r} doc {did!r} judged again with grade {grades[i]} "
                            f"(grade {grades[first]} on {qrels.describe(first)})", **qrels.where(i))
        keep.append(False)
    dropped = keep.count(False)
    if on_duplicate == "keep":
        qrels.duplicates = dropped
        return qrels
    warnings.warn(DataWarning(f"{qrels.path}: {dropped} repeated (query, doc) row(s) with the same grade; "
                              "the first of each kept"), stacklevel=3)
    mask = pa.array(keep)
    lines = [ln for ln, k in zip(qrels.lines, keep) if k] if qrels.lines is not None else None
    return _Qrels(qrels.path, table.filter(mask), lines, dropped)


def read_qrels(path: str | os.PathLike, split: str = "test", source: str = "human") -> pa.Table:
    """Relevance judgments as a QRELS table (query_id, doc_id, grade, source), in file order.

    `path`: a collection folder (its qrels/<split>.tsv, qrels/<split>.parquet or
    qrels-<split>.parquet; `split` is ignored for a file), a BEIR TSV (header
    ``query-id<TAB>corpus-id<TAB>score``, or no header), a TREC qrels file (``qid iter docid grade``,
    whitespace-separated; the iteration column is ignored) or Parquet. `source` (human, llm,
    synthetic) fills the source column; a Parquet file's own non-null source values are kept.
    Grades are integers (negative ones, as in some TREC qrels, are kept).

    Raises DataError naming file and line (Parquet: row) for: a header other than
    ``query-id corpus-id score``, a wrong number of columns, a non-integer grade, an empty id,
    invalid UTF-8, and a (query, doc) pair judged twice with different grades. A pair repeated
    with the same grade is a counted DataWarning and only its first row is kept.
    MissingFileError when the file or the split does not exist (the message lists the splits).
    Ids are not checked against queries or corpus here: `load_collection` does that.
    """
    return _read_qrels_located(os.fspath(path), split, source).table
