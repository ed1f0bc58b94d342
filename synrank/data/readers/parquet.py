"""Parquet inputs (one file or a folder of files): reading, conforming to `synrank.data.schemas`
and the checks of ids and texts, each error naming the file and the row."""

from __future__ import annotations

from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from synrank import storage
from synrank.data import schemas
from synrank.data.errors import DataError
from synrank.data.readers.lines import Progress
from synrank.data.readers.paths import _fs

def _parquet_dataset(path: str) -> pads.Dataset:
    fs, p = _fs(path)
    try:
        if not storage.is_local(path):
            return pads.dataset(p, filesystem=fs, format="parquet")
        return pads.dataset(p, format="parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(path, f"not a readable Parquet file: {exc}") from None


def _conform(table: pa.Table, schema: pa.Schema, path: str) -> pa.Table:
    try:
        return schemas.conform(table, schema, path)
    except DataError:
        raise
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith(f"{path}: "):
            msg = msg[len(path) + 2 :]
        raise DataError(path, msg) from None


def _fill_null(table: pa.Table, name: str, value: str) -> pa.Table:
    col = table.column(name)
    if col.null_count:
        table = table.set_column(table.schema.get_field_index(name), name, pc.fill_null(col, value))
    return table


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int | None:
    mask = pc.fill_null(mask, False)
    if not pc.any(mask).as_py():
        return None
    return int(pc.index(mask, True).as_py())


def _check_table(
    table: pa.Table,
    path: str,
    id_columns: Iterable[str],
    text_columns: Iterable[str] = (),
    unique: str | None = None,
    row_offset: int = 0,
    seen: dict[str, int] | None = None,
) -> None:
    """Null/empty ids, null texts and (optionally) duplicate ids of a Parquet table, by row."""
    for name in id_columns:
        col = table.column(name)
        row = _first_true(pc.is_null(col))
        if row is not None:
            raise DataError(path, f"null {name}", row=row + row_offset)
        row = _first_true(pc.equal(pc.utf8_trim_whitespace(col), ""))
        if row is not None:
            raise DataError(path, f"empty {name}", row=row + row_offset)
    for name in text_columns:
        row = _first_true(pc.is_null(table.column(name)))
        if row is not None:
            raise DataError(path, f"null {name}", row=row + row_offset)
    if unique is not None and seen is not None:
        for i, key in enumerate(table.column(unique).to_pylist()):
            first = seen.setdefault(key, i + row_offset)
            if first != i + row_offset:
                raise DataError(path, f"duplicate {unique} {key!r} (first at row {first})", row=i + row_offset)


def _iter_parquet_batches(path: str, batch_size: int, progress: Progress | None) -> Iterator[pa.RecordBatch]:
    dataset = _parquet_dataset(path)
    try:
        for batch in dataset.to_batches(batch_size=batch_size):
            if progress is not None:
                progress(batch.num_rows)
            yield batch
    except pa.ArrowInvalid as exc:
        raise DataError(path, f"not a readable Parquet file: {exc}") from None


def _read_parquet(path: str) -> pa.Table:
    dataset = _parquet_dataset(path)
    try:
        return dataset.to_table()
    except pa.ArrowInvalid as exc:
        raise DataError(path, f"not a readable Parquet file: {exc}") from None


def _conform_corpus_batch(batch: pa.RecordBatch | pa.Table, path: str) -> pa.Table:
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    if "title" not in table.column_names:
        table = table.append_column("title", pa.array([""] * table.num_rows, pa.string()))
    table = _conform(table, schemas.CORPUS, path).select(schemas.CORPUS.names)
    return _fill_null(table, "title", "")
