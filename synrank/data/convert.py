"""`synrank data convert`: any supported input -> Parquet in the project's schemas.

A collection folder SRC becomes::

    DST/queries.parquet          QUERIES
    DST/corpus.parquet           CORPUS (when SRC has a corpus; streamed, constant memory in text)
    DST/qrels-<split>.parquet    QRELS, one file per split (all of SRC's splits, or --split)

and DST is itself a valid collection folder for `load_collection` and every `read_*`.
A single file SRC (with its kind given or guessed from its name) becomes DST/<kind>.parquet,
or DST/qrels-<split>.parquet for qrels (split default "test").

All outputs are written to temporary files beside their final names and renamed only after
every input has been read and checked, so a failure (a malformed line at row 8 million, an
interrupt) leaves DST exactly as it was: no partial file under a final name, no old file
replaced. On remote DST (s3://...) each object is uploaded after all are written locally.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from synrank.data import readers, schemas
from synrank import storage
from synrank.storage import atomic_path
from synrank.data.errors import DataError, DataWarning

CORPUS_BATCH = 10_000


def qrels_name(split: str) -> str:
    """The file name convert gives the qrels of `split`: ``qrels-<split>.parquet``."""
    return f"qrels-{split}.parquet"


def _stage(stack: contextlib.ExitStack, final: str) -> str:
    """A local temporary path whose content lands on `final` when `stack` closes without error
    (`storage.atomic_path`: a renamed sibling locally, one upload remotely); on error nothing lands."""
    return stack.enter_context(atomic_path(final))


def _write_table(table: pa.Table, tmp: str) -> None:
    pq.write_table(table, tmp)


def _progress_bar(path: str, enabled: bool | None, label: str) -> tqdm:
    disable = None if enabled is None else not enabled  # None: only on a terminal
    if readers.paths._is_parquet(path):
        try:
            total = readers.parquet._parquet_dataset(path).count_rows()
        except Exception:  # noqa: BLE001 - the progress total is cosmetic
            total = None
        return tqdm(total=total, unit=" docs", unit_scale=True, desc=label, disable=disable, leave=False)
    return tqdm(total=readers.paths._size(path), unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                disable=disable, leave=False)


def _write_corpus(src: str, tmp: str, progress: bool | None) -> tuple[int, pa.ChunkedArray]:
    """Stream src's corpus into tmp; returns (rows, doc ids)."""
    bar = _progress_bar(src, progress, "corpus")
    rows = 0
    ids: list[pa.Array] = []
    try:
        with pq.ParquetWriter(tmp, schemas.CORPUS) as writer:
            for batch in readers.iter_corpus(src, CORPUS_BATCH, check_unique=True, progress=bar.update):
                writer.write_batch(batch)
                rows += batch.num_rows
                ids.append(batch.column(0))
    finally:
        bar.close()
    return rows, pa.chunked_array(ids, pa.string())


def _check_qrels(located: Any, query_ids: pa.ChunkedArray | None, doc_ids: pa.ChunkedArray | None,
                 queries_path: str | None, corpus_path: str | None, notes: list[str]) -> None:
    table = located.table
    if query_ids is not None:
        unknown = pc.invert(pc.is_in(table.column("query_id"), value_set=query_ids))
        first = readers.parquet._first_true(unknown)
        if first is not None:
            raise DataError(located.path, f"query id {table.column('query_id')[first].as_py()!r} is not in "
                            f"{queries_path} ({pc.sum(unknown).as_py()} qrels row(s) name unknown query ids)",
                            **located.where(first))
    if doc_ids is not None:
        unknown = pc.invert(pc.is_in(table.column("doc_id"), value_set=doc_ids))
        first = readers.parquet._first_true(unknown)
        if first is not None:
            message = (f"{located.path}: {pc.sum(unknown).as_py()} qrels row(s) name doc ids not in {corpus_path} "
                       f"(first {table.column('doc_id')[first].as_py()!r} on {located.describe(first)}); "
                       "kept in the output, load_collection drops them")
            notes.append(message)
            warnings.warn(DataWarning(message), stacklevel=3)


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    split: str | None = None,
    *,
    kind: str | None = None,
    source: str = "human",
    progress: bool | None = None,
) -> dict[str, Any]:
    """Convert `src` (a collection folder or one file) into Parquet files under `dst`.

    See the module docstring for the layout. A folder's qrels are checked like
    `load_collection` does: a row naming an unknown query is a DataError; rows naming documents
    missing from the corpus are kept (a faithful copy) with a counted DataWarning. `source`
    fills the qrels source column (human, llm, synthetic). `progress`: True/False forces the
    progress bar on/off; None shows it on a terminal only.

    Returns {"written": {name: path}, "counts": {name: rows}, "warnings": [...]}.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    readers.paths._require(src)
    readers.qrels._check_source(source)
    if readers.paths._exists(dst) and not readers.paths._isdir(dst):
        raise DataError(dst, "destination exists and is not a folder")
    written: dict[str, str] = {}
    counts: dict[str, int] = {}
    notes: list[str] = []
    is_folder = readers.paths._isdir(src) and not readers.paths._is_parquet(src)
    with contextlib.ExitStack() as stack:
        if not is_folder:
            kind = kind or readers.guess_kind(src)
            if kind not in ("queries", "corpus", "qrels"):
                raise DataError(src, "cannot tell whether this file holds queries, corpus or qrels; pass --kind")
            name = qrels_name(split or "test") if kind == "qrels" else f"{kind}.parquet"
            final = storage.join(dst, name)
            if kind == "corpus":
                counts["corpus"], _ = _write_corpus(src, _stage(stack, final), progress)
            else:
                table = readers.read_queries(src) if kind == "queries" else readers.read_qrels(src, source=source)
                _write_table(table, _stage(stack, final))
                counts[name.removesuffix(".parquet")] = table.num_rows
            written[name.removesuffix(".parquet")] = final
            return {"written": written, "counts": counts, "warnings": notes}

        queries_path = readers.collection_file(src, "queries")
        corpus_path = readers.collection_file(src, "corpus")
        splits = [split] if split is not None else readers.available_splits(src)
        if queries_path is None and corpus_path is None:
            raise DataError(src, "not a collection folder: no queries or corpus file inside")
        query_ids = doc_ids = None
        if queries_path is not None:
            queries = readers.read_queries(queries_path)
            _write_table(queries, _stage(stack, storage.join(dst, "queries.parquet")))
            written["queries"], counts["queries"] = storage.join(dst, "queries.parquet"), queries.num_rows
            query_ids = queries.column("query_id")
        if corpus_path is not None:
            final = storage.join(dst, "corpus.parquet")
            counts["corpus"], doc_ids = _write_corpus(corpus_path, _stage(stack, final), progress)
            written["corpus"] = final
        for name in splits:
            located = readers.qrels._read_qrels_located(src, name, source)
            _check_qrels(located, query_ids, doc_ids, queries_path, corpus_path, notes)
            final = storage.join(dst, qrels_name(name))
            _write_table(located.table, _stage(stack, final))
            written[f"qrels-{name}"], counts[f"qrels-{name}"] = final, located.table.num_rows
    return {"written": written, "counts": counts, "warnings": notes}
