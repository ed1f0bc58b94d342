"""A collection folder loaded whole (`load_collection`): queries, corpus and one split's qrels,
their ids checked against each other."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from synrank import storage
from synrank.data.errors import DataError, DataWarning, MissingFileError
from synrank.data.readers.corpus import read_corpus
from synrank.data.readers.parquet import _first_true
from synrank.data.readers.paths import FOLDER_FILES, _collection_name, _isdir, _require, available_splits, collection_file
from synrank.data.readers.qrels import _read_qrels_located
from synrank.data.readers.queries import read_queries

@dataclass
class Collection:
    """A test collection: queries, and where present a corpus and the qrels of one split.

    `qrels` is None when the folder has no qrels at all (a query set); `corpus` is None when
    the folder has no corpus and `require_corpus` was False. `warnings` holds the counted
    warnings raised while loading (also emitted as DataWarning); `dropped_qrels` counts the
    qrels rows left out because their document is not in the corpus.
    """

    name: str
    path: str
    corpus: pa.Table | None
    queries: pa.Table
    qrels: pa.Table | None
    split: str | None = None
    qrels_path: str | None = None
    dropped_qrels: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def judged_query_ids(self) -> list[str]:
        """Ids of queries with at least one qrels row, in first-judged order."""
        if self.qrels is None:
            return []
        return pc.unique(self.qrels.column("query_id")).to_pylist()

    def qrels_dict(self) -> dict[str, dict[str, int]]:
        """{query_id: {doc_id: grade}}, the shape pytrec_eval takes."""
        out: dict[str, dict[str, int]] = {}
        if self.qrels is None:
            return out
        for qid, did, grade in zip(*(self.qrels.column(c).to_pylist() for c in ("query_id", "doc_id", "grade"))):
            out.setdefault(qid, {})[did] = grade
        return out


def load_collection(
    path: str | os.PathLike,
    split: str = "test",
    require_corpus: bool = True,
    *,
    source: str = "human",
    strict: bool = False,
) -> Collection:
    """Load a collection folder (BEIR, or Parquet written by `synrank data convert`).

    Queries are required. The corpus is required unless `require_corpus` is False (then it is
    None when absent). The qrels of `split` are read when the folder has any qrels; asking for
    a split the folder lacks raises MissingFileError listing the splits it has; a folder with
    no qrels at all gives `qrels=None`.

    Qrels ids are checked: a row naming a query that is not in the queries is a DataError
    (naming the qrels file, the line of the first such row and how many rows); a row naming a
    document that is not in the corpus is a counted DataWarning and the row is dropped
    (`Collection.dropped_qrels`; real qrels often judge documents missing from a corpus copy),
    or a DataError with `strict=True`. Without a corpus document ids are not checked.
    """
    path = _require(path)
    if not _isdir(path):
        raise DataError(path, "not a collection folder (expected queries.jsonl / queries.parquet inside)")
    queries = read_queries(path)
    corpus_path = collection_file(path, "corpus")
    if corpus_path is None and require_corpus:
        raise MissingFileError(storage.join(path, "corpus.jsonl"), "no corpus file in the collection folder (looked for "
                               f"{', '.join(FOLDER_FILES['corpus'])}; pass require_corpus=False for a query set)")
    corpus = read_corpus(corpus_path) if corpus_path is not None else None
    collection = Collection(_collection_name(path), path, corpus, queries, None)
    if not available_splits(path):
        return collection
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qrels = _read_qrels_located(path, split, source)
    for w in caught:
        collection.warnings.append(str(w.message))
        warnings.warn(w.message, stacklevel=2)
    collection.split, collection.qrels_path = split, qrels.path
    queries_path = collection_file(path, "queries") or path
    unknown = pc.invert(pc.is_in(qrels.table.column("query_id"), value_set=queries.column("query_id")))
    first = _first_true(unknown)
    if first is not None:
        n_rows = pc.sum(unknown).as_py()
        n_ids = len(pc.unique(qrels.table.column("query_id").filter(unknown)))
        raise DataError(qrels.path, f"query id {qrels.table.column('query_id')[first].as_py()!r} is not in "
                        f"{queries_path} ({n_rows} qrels row(s) name {n_ids} unknown query id(s))", **qrels.where(first))
    table = qrels.table
    if corpus is not None:
        unknown = pc.invert(pc.is_in(table.column("doc_id"), value_set=corpus.column("doc_id")))
        first = _first_true(unknown)
        if first is not None:
            n_rows = pc.sum(unknown).as_py()
            n_ids = len(pc.unique(table.column("doc_id").filter(unknown)))
            did = table.column("doc_id")[first].as_py()
            if strict:
                raise DataError(qrels.path, f"doc id {did!r} is not in {corpus_path} ({n_rows} qrels row(s) name "
                                f"{n_ids} unknown doc id(s))", **qrels.where(first))
            message = (f"{qrels.path}: {n_rows} qrels row(s) name {n_ids} doc id(s) not in {corpus_path} "
                       f"(first {did!r} on {qrels.describe(first)}); those rows are dropped")
            collection.warnings.append(message)
            warnings.warn(DataWarning(message), stacklevel=2)
            table = table.filter(pc.invert(unknown))
            collection.dropped_qrels = n_rows
    collection.qrels = table
    return collection
