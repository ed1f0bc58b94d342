"""Corpus parts: one corpus read by several tasks (`split_corpus`, `iter_corpus_part`), and its
doc ids checked for duplicates across the parts (`check_unique_doc_ids`)."""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synrank import storage
from synrank.data.errors import DataError
from synrank.data.readers.corpus import DOC_ID_FIELDS, _corpus_batch, _corpus_source, iter_corpus
from synrank.data.readers.lines import (
    _decode_lines,
    _get_id,
    _get_text,
    _iter_json_objects,
    _iter_lines,
    _parse_json_lines,
    _sniff_text_format,
)
from synrank.data.readers.parquet import _check_table, _conform_corpus_batch, _parquet_dataset
from synrank.data.readers.paths import _fs, _is_compressed, _is_parquet

PART_BYTES = 64 * 2**20  # at most this much text per part (Parquet: uncompressed), when a corpus is split


@dataclass(frozen=True)
class CorpusPart:
    """One read task's share of a corpus: `split_corpus` cuts a corpus into parts, `iter_corpus_part`
    reads one. The parts of a corpus together read each of its rows exactly once, in file order.

    `layout`: ``"lines"`` (JSONL): the lines of `file` that start at a byte in [start, end);
    ``"rows"`` (Parquet): rows [start, end) of `file`, whose first row is row `first_row` of the
    corpus; ``"whole"``: all of `file` (compressed text, which cannot be entered at an offset, and
    TSV, whose column count the file's first line fixes). `path` is the corpus as messages name it
    (a file, or a folder of Parquet files).
    """

    path: str
    file: str
    layout: str
    start: int = 0
    end: int = 0
    first_row: int = 0


def split_corpus(path: str | os.PathLike, min_parts: int = 1, part_bytes: int = PART_BYTES) -> list[CorpusPart]:
    """The parts of a corpus (file or collection folder, as `iter_corpus` takes): at least
    `min_parts` (fewer only when the corpus has fewer bytes, or rows, than that) and none over
    `part_bytes`. JSONL is cut at byte offsets, Parquet at row-group boundaries where its row
    groups are small enough, else inside row groups; compressed files and TSV are one part.
    Only sizes and Parquet footers are read here."""
    if min_parts < 1 or part_bytes < 1:
        raise ValueError(f"min_parts and part_bytes must be >= 1, got {min_parts} and {part_bytes}")
    path = _corpus_source(os.fspath(path))
    if _is_parquet(path):
        return _parquet_parts(path, min_parts, part_bytes)
    if _is_compressed(path) or _sniff_text_format(path, "corpus") != "jsonl":
        return [CorpusPart(path, path, "whole")]
    fs, p = _fs(path)
    size = int(fs.size(p))
    count = max(1, min(size, max(min_parts, math.ceil(size / part_bytes))))
    bounds = [size * i // count for i in range(count + 1)]
    return [CorpusPart(path, path, "lines", a, b) for a, b in zip(bounds, bounds[1:])]


def iter_corpus_part(part: CorpusPart, batch_size: int = 10_000) -> Iterator[pa.RecordBatch]:
    """The rows of one part as CORPUS record batches of at most `batch_size` rows, checked as
    `iter_corpus` checks them (same errors, naming the corpus and its line or row; ids are not
    checked for duplicates, which would need every part: `check_unique_doc_ids` does that)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if part.layout == "whole":
        return iter_corpus(part.file, batch_size)
    if part.layout == "lines":
        return _iter_json_part(part, batch_size)
    if part.layout == "rows":
        return _iter_parquet_part(part, batch_size)
    raise ValueError(f"unknown corpus part layout {part.layout!r}")


def _iter_json_part(part: CorpusPart, batch_size: int) -> Iterator[pa.RecordBatch]:
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    with storage.open(part.file, "rb") as handle:
        first_line_at = _next_line_start(handle, part.start)
        lines = _decode_lines(part.file, _numbered_lines_until(handle, first_line_at, part.end),
                              file_start=first_line_at == 0)
        try:
            for lineno, obj in _parse_json_lines(part.file, lines):
                ids.append(_get_id(obj, DOC_ID_FIELDS, part.file, lineno))
                titles.append(_get_text(obj, ("title",), part.file, lineno, required=False))
                texts.append(_get_text(obj, ("text",), part.file, lineno))
                if len(ids) >= batch_size:
                    yield _corpus_batch(ids, titles, texts)
        except DataError as exc:
            raise _with_file_line(exc, part.file, first_line_at) from None
    if ids:
        yield _corpus_batch(ids, titles, texts)


def _next_line_start(handle, offset: int) -> int:
    """Seek `handle` to the first line that starts at or after `offset`; return that offset. The
    line `offset` falls inside belongs to the part before, which reads it to its end."""
    if offset == 0:
        handle.seek(0)
        return 0
    handle.seek(offset - 1)
    return offset - 1 + len(handle.readline())


def _numbered_lines_until(handle, position: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(line number counted from 1 at `position`, raw line) for each line starting before `end`."""
    lineno = 0
    while position < end:
        raw = handle.readline()
        if not raw:
            return
        lineno += 1
        position += len(raw)
        yield lineno, raw


def _with_file_line(exc: DataError, file: str, first_line_at: int) -> DataError:
    """`exc` raised with a line number counted within a part, renumbered as a line of the file
    (by counting the line ends before the part: only on this error path)."""
    if exc.line is None or first_line_at == 0:
        return exc
    before = 0
    with storage.open(file, "rb") as handle:
        remaining = first_line_at
        while remaining > 0:
            chunk = handle.read(min(remaining, 2**24))
            if not chunk:
                break
            before += chunk.count(b"\n")
            remaining -= len(chunk)
    return type(exc)(exc.path, exc.reason, line=before + exc.line, row=exc.row)


def _parquet_files(path: str) -> list[str]:
    """The Parquet files of a corpus (one file, or a folder's files in the order `iter_corpus`
    reads them), as URLs `storage.open` takes."""
    files = _parquet_dataset(path).files
    if storage.is_local(path):
        return list(files)
    fs, _ = _fs(path)
    return [fs.unstrip_protocol(f) for f in files]


def _row_group_sizes(file: str) -> list[tuple[int, int]]:
    """(rows, uncompressed bytes) of each row group of a Parquet file, from its footer."""
    try:
        with storage.open(file, "rb") as handle:
            meta = pq.ParquetFile(handle).metadata
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(file, f"not a readable Parquet file: {exc}") from None
    return [(meta.row_group(i).num_rows, meta.row_group(i).total_byte_size) for i in range(meta.num_row_groups)]


def _parquet_parts(path: str, min_parts: int, part_bytes: int) -> list[CorpusPart]:
    sizes = {f: _row_group_sizes(f) for f in _parquet_files(path)}
    total_rows = sum(r for groups in sizes.values() for r, _ in groups)
    total_bytes = sum(b for groups in sizes.values() for _, b in groups)
    count = max(min_parts, math.ceil(total_bytes / part_bytes))
    target = max(1, total_rows // count)  # parts of at most `target` rows: at least `count` of them
    parts: list[CorpusPart] = []
    corpus_row = 0
    for file, groups in sizes.items():
        for start, end in _row_ranges([r for r, _ in groups], target):
            parts.append(CorpusPart(path, file, "rows", start, end, corpus_row + start))
        corpus_row += sum(r for r, _ in groups)
    return parts or [CorpusPart(path, next(iter(sizes), path), "rows")]


def _row_ranges(group_rows: list[int], target: int) -> Iterator[tuple[int, int]]:
    """Row ranges of at most `target` rows over one file: whole row groups joined while they fit,
    a row group larger than `target` cut into equal slices."""
    start = group_start = 0
    for rows in group_rows:
        group_end = group_start + rows
        if start < group_start and (rows > target or group_end - start > target):
            yield start, group_start
            start = group_start
        if rows > target:
            slices = math.ceil(rows / target)
            cuts = [group_start + rows * i // slices for i in range(slices + 1)]
            yield from zip(cuts, cuts[1:])
            start = group_end
        group_start = group_end
    if start < group_start:
        yield start, group_start


def _iter_parquet_part(part: CorpusPart, batch_size: int) -> Iterator[pa.RecordBatch]:
    groups, first_group_row = _row_groups_overlapping(part)
    if not groups:
        return
    with storage.open(part.file, "rb") as handle:
        row = first_group_row  # the file row of the next batch's first row
        try:
            batches = pq.ParquetFile(handle).iter_batches(batch_size=batch_size, row_groups=groups)
            for batch in batches:
                lo, hi = max(part.start - row, 0), min(part.end - row, batch.num_rows)
                if hi > lo:
                    table = _conform_corpus_batch(batch.slice(lo, hi - lo), part.path)
                    _check_table(table, part.path, ["doc_id"], ["text"], row_offset=part.first_row + row + lo - part.start)
                    yield from table.combine_chunks().to_batches(max_chunksize=batch_size)
                row += batch.num_rows
                if row >= part.end:
                    return
        except pa.ArrowInvalid as exc:
            raise DataError(part.file, f"not a readable Parquet file: {exc}") from None


def _row_groups_overlapping(part: CorpusPart) -> tuple[list[int], int]:
    """The row groups of `part.file` that hold rows of the part, and the file row where the first starts."""
    groups: list[int] = []
    first_row = group_start = 0
    for index, (rows, _) in enumerate(_row_group_sizes(part.file)):
        group_end = group_start + rows
        if group_start < part.end and group_end > part.start:
            if not groups:
                first_row = group_start
            groups.append(index)
        group_start = group_end
    return groups, first_row


# --------------------------------------------------------------------------------------------
# duplicate doc ids across parts


def check_unique_doc_ids(parts: Sequence[CorpusPart], ids: Sequence[pa.Array]) -> None:
    """Raise a DataError at the first doc id that repeats one before it, given the ids of every
    part of a corpus (``ids[i]``: those of ``parts[i]`` as `iter_corpus_part` reads them, in
    order). The error names the corpus file and the line of the repeat (Parquet: its row) and
    where the id was first, as `iter_corpus` with `check_unique` does. Memory: the ids and an
    integer per id; the parts are read again only to name the lines of a repeat."""
    if len(parts) != len(ids):
        raise ValueError(f"{len(parts)} parts but {len(ids)} id arrays")
    chunks = [a.cast(pa.large_string()) for a in ids if len(a)]
    if not chunks:
        return
    codes = np.asarray(pa.concat_arrays(chunks).dictionary_encode().indices)
    # Dictionary codes count up in order of first appearance: an id is new iff its code exceeds
    # every code before it.
    seen_max = np.maximum.accumulate(codes)
    repeats = np.flatnonzero(codes[1:] <= seen_max[:-1])
    if not len(repeats):
        return
    second = int(repeats[0]) + 1
    first = int(np.argmax(codes == codes[second]))
    starts = np.cumsum([0] + [len(a) for a in ids])

    def locate(i: int) -> tuple[int, int]:  # (part, index in the part); empty parts are skipped
        at = int(np.searchsorted(starts, i, side="right")) - 1
        return at, i - int(starts[at])

    (first_part, first_index), (part_no, index) = locate(first), locate(second)
    part, doc_id = parts[part_no], ids[part_no][index].as_py()
    if part.layout == "rows":
        raise DataError(part.path, f"duplicate doc_id {doc_id!r} (first at row {parts[first_part].first_row + first_index})",
                        row=part.first_row + index)
    raise DataError(part.file, f"duplicate doc id {doc_id!r} (first on line {_line_of(parts[first_part], first_index)})",
                    line=_line_of(part, index))


def _line_of(part: CorpusPart, index: int) -> int:
    """The file line of the `index`-th document of a text part (read again: only for an error)."""
    if part.layout == "whole":
        if _sniff_text_format(part.file, "corpus") == "jsonl":
            numbers = (lineno for lineno, _ in _iter_json_objects(part.file))
        else:
            numbers = (lineno for lineno, line in _iter_lines(part.file) if line.strip())
        return next(itertools.islice(numbers, index, None))
    with storage.open(part.file, "rb") as handle:
        first_line_at = _next_line_start(handle, part.start)
        lines = _decode_lines(part.file, _numbered_lines_until(handle, first_line_at, part.end),
                              file_start=first_line_at == 0)
        lineno = next(itertools.islice((n for n, _ in _parse_json_lines(part.file, lines)), index, None))
    return _with_file_line(DataError(part.file, "", line=lineno), part.file, first_line_at).line
