"""The corpus, streamed (`iter_corpus`) or whole (`read_corpus`): JSONL, TSV and Parquet."""

from __future__ import annotations

import os
from typing import Iterator

import pyarrow as pa

from synrank import storage
from synrank.data import schemas
from synrank.data.errors import DataError, MissingFileError
from synrank.data.readers.lines import Progress, _get_id, _get_text, _iter_json_objects, _iter_lines, _sniff_text_format, _Unique
from synrank.data.readers.parquet import _check_table, _conform_corpus_batch, _iter_parquet_batches
from synrank.data.readers.paths import FOLDER_FILES, _is_parquet, _isdir, _require, collection_file

DOC_ID_FIELDS = ("_id", "doc_id", "id")


def _corpus_source(path: str) -> str:
    path = _require(path)
    if _isdir(path) and not _is_parquet(path):
        found = collection_file(path, "corpus")
        if found is None:
            raise MissingFileError(storage.join(path, "corpus.jsonl"), "no corpus file in the collection folder "
                                   f"(looked for {', '.join(FOLDER_FILES['corpus'])})")
        return found
    return path


def iter_corpus(
    path: str | os.PathLike,
    batch_size: int = 10_000,
    *,
    check_unique: bool = False,
    progress: Progress | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream the corpus as CORPUS record batches of at most `batch_size` rows, in file order.

    Memory stays constant in the corpus size: only one batch is held. With `check_unique` the
    ids seen so far are kept (memory linear in the number of documents) and a duplicate raises.
    `path`: a collection folder, JSONL (id from `_id`, `doc_id` or `id`; `text` required;
    `title` optional, "" when absent or null), a TSV (``id<TAB>text`` or
    ``id<TAB>title<TAB>text``, consistently), or Parquet (a missing title column or null title
    becomes ""). `progress`, if given, is called with the bytes read (text inputs) or the rows
    read (Parquet) as reading advances.

    Raises DataError naming file and line (Parquet: row) for malformed JSON, missing or empty
    ids, a missing or non-string text, a wrong number of TSV columns, invalid UTF-8, a null
    text, and duplicate ids when checked.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = _corpus_source(os.fspath(path))
    if _is_parquet(path):
        seen: dict[str, int] | None = {} if check_unique else None
        offset = 0
        for batch in _iter_parquet_batches(path, batch_size, progress):
            table = _conform_corpus_batch(batch, path)
            _check_table(table, path, ["doc_id"], ["text"], "doc_id" if check_unique else None, offset, seen)
            offset += table.num_rows
            yield from table.combine_chunks().to_batches(max_chunksize=batch_size)
        return
    unique = _Unique(path, "doc id", check_unique)
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []

    def flush() -> pa.RecordBatch:
        return _corpus_batch(ids, titles, texts)

    if _sniff_text_format(path, "corpus") == "jsonl":
        for lineno, obj in _iter_json_objects(path, progress):
            did = _get_id(obj, DOC_ID_FIELDS, path, lineno)
            unique.add(did, lineno)
            ids.append(did)
            titles.append(_get_text(obj, ("title",), path, lineno, required=False))
            texts.append(_get_text(obj, ("text",), path, lineno))
            if len(ids) >= batch_size:
                yield flush()
    else:
        n_columns: int | None = None
        for lineno, line in _iter_lines(path, progress):
            if not line.strip():
                continue
            parts = line.split("\t")
            if n_columns is None and len(parts) in (2, 3):
                n_columns = len(parts)
            if len(parts) != n_columns:
                expected = n_columns or "2 or 3"
                raise DataError(
                    path, f"expected {expected} tab-separated columns (id, [title,] text), got {len(parts)}", line=lineno
                )
            if not parts[0].strip():
                raise DataError(path, "empty doc id", line=lineno)
            unique.add(parts[0], lineno)
            ids.append(parts[0])
            titles.append(parts[1] if n_columns == 3 else "")
            texts.append(parts[-1])
            if len(ids) >= batch_size:
                yield flush()
    if ids:
        yield flush()


def _corpus_batch(ids: list[str], titles: list[str], texts: list[str]) -> pa.RecordBatch:
    """A CORPUS batch of the rows collected so far; the lists are emptied for the next one."""
    batch = pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.string()), pa.array(titles, pa.string()), pa.array(texts, pa.string())],
        schema=schemas.CORPUS,
    )
    ids.clear(), titles.clear(), texts.clear()
    return batch


def read_corpus(path: str | os.PathLike, *, check_unique: bool = True) -> pa.Table:
    """The whole corpus as a CORPUS table (doc_id, title, text), in file order.

    Same inputs and errors as `iter_corpus`; ids are checked for duplicates unless
    `check_unique` is False. For corpora that do not fit in memory use `iter_corpus`.
    """
    batches = list(iter_corpus(path, batch_size=65_536, check_unique=check_unique))
    return pa.Table.from_batches(batches, schema=schemas.CORPUS)
