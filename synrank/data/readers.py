"""Readers: the input formats users have, turned into the Parquet schemas of `synrank.data.schemas`.

Inputs (local paths or fsspec URLs such as ``s3://bucket/x``; ``.gz``/``.bz2``/``.xz``/``.zst``
text files are decompressed on the fly):

- a collection folder: BEIR (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) or one
  written by ``synrank data convert`` (``corpus.parquet``, ``queries.parquet``,
  ``qrels-<split>.parquet``); see `collection_file` for the names looked up and their order;
- JSONL: one JSON object per line; ids from ``_id``, ``query_id``/``doc_id`` or ``id`` (strings,
  or integers which become strings); ``text`` (queries also accept ``query``); corpus ``title``
  is optional; other fields (``metadata``) are ignored; blank lines are skipped;
- TREC topics: ``id<TAB>text`` lines (Anserini ``topics.*.txt``/``.tsv``, MS MARCO
  ``queries.tsv``) or classic SGML ``<top> <num> Number: 301 <title> ... </top>``;
- a corpus TSV: ``id<TAB>text`` (MS MARCO ``collection.tsv``) or ``id<TAB>title<TAB>text``;
- qrels: BEIR TSV with the header ``query-id<TAB>corpus-id<TAB>score`` (a file without a header
  is accepted when its first line is data), or TREC ``qid iter docid grade`` (whitespace);
- Parquet: one file or a folder of Parquet files (e.g. Ray Data output), conformed with
  `schemas.conform`.

Every problem is a `DataError` (a ValueError) naming the file and line (Parquet: the row), and a
missing file is a `MissingFileError` (also a FileNotFoundError). Readers only ever open files
for reading. Where continuing makes sense the problem is a counted `DataWarning` instead; every
such case is listed in the function's docstring.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from synrank import storage
from synrank.data import schemas
from synrank.data.errors import DataError, DataWarning, MissingFileError

__all__ = [
    "Collection",
    "CorpusPart",
    "DataError",
    "DataWarning",
    "MissingFileError",
    "available_splits",
    "collection_file",
    "guess_kind",
    "iter_corpus",
    "iter_corpus_part",
    "load_collection",
    "read_corpus",
    "read_qrels",
    "read_queries",
    "read_table",
    "split_corpus",
]

Progress = Callable[[int], None]

QUERY_ID_FIELDS = ("_id", "query_id", "id")
DOC_ID_FIELDS = ("_id", "doc_id", "id")
QUERY_TEXT_FIELDS = ("text", "query")
QRELS_HEADER = ("query-id", "corpus-id", "score")
TOPIC_FIELDS = ("title", "desc", "narr")

# Names looked up in a collection folder, in order; the first that exists is read.
FOLDER_FILES: dict[str, tuple[str, ...]] = {
    "queries": ("queries.jsonl", "queries.jsonl.gz", "queries.parquet"),
    "corpus": ("corpus.jsonl", "corpus.jsonl.gz", "corpus.parquet"),
    "qrels": ("qrels/{split}.tsv", "qrels/{split}.parquet", "qrels-{split}.parquet"),
}

_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_INT_RE = re.compile(r"[+-]?\d+\Z")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_UTF8_BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------------------------
# paths


def _fs(path: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    return storage.filesystem(path)


def _exists(path: str) -> bool:
    fs, p = _fs(path)
    return fs.exists(p)


def _isdir(path: str) -> bool:
    fs, p = _fs(path)
    return fs.isdir(p)


def _size(path: str) -> int | None:
    fs, p = _fs(path)
    try:
        return int(fs.size(p))
    except Exception:  # noqa: BLE001 - size is only used for progress bars
        return None


def _require(path: str | os.PathLike, what: str = "") -> str:
    path = os.fspath(path)
    if not _exists(path):
        raise MissingFileError(path, f"no such file or directory{what}")
    return path


def _suffix(path: str) -> str:
    """The format suffix, compression suffixes removed: 'a/b.jsonl.gz' -> '.jsonl'."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    for comp in _COMPRESSION_SUFFIXES:
        if name.endswith(comp):
            name = name[: -len(comp)]
            break
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def _is_parquet(path: str) -> bool:
    if _suffix(path) in _PARQUET_SUFFIXES:
        return True
    if _isdir(path):  # a folder of Parquet files (Ray Data output), not a collection folder
        fs, p = _fs(path)
        names = [n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(p, detail=False)]
        return any(n.endswith(_PARQUET_SUFFIXES) for n in names) and not any(
            n in ("queries.jsonl", "corpus.jsonl", "qrels") or n.startswith(("queries.", "corpus.", "qrels-"))
            for n in names
        )
    return False


def collection_file(folder: str | os.PathLike, kind: str, split: str = "test") -> str | None:
    """The file of `kind` ('queries', 'corpus' or 'qrels') in a collection folder, or None.

    Looked up in this order (the first that exists wins): queries: queries.jsonl,
    queries.jsonl.gz, queries.parquet; corpus: corpus.jsonl, corpus.jsonl.gz, corpus.parquet;
    qrels: qrels/<split>.tsv, qrels/<split>.parquet, qrels-<split>.parquet.
    """
    for pattern in FOLDER_FILES[kind]:
        candidate = storage.join(folder, pattern.format(split=split))
        if _exists(candidate):
            return candidate
    return None


def available_splits(path: str | os.PathLike) -> list[str]:
    """The qrels splits of a collection folder (qrels/<split>.tsv|.parquet, qrels-<split>.parquet),
    sorted; [] for a folder without qrels or for a single file. A missing path raises."""
    path = _require(path)
    if not _isdir(path):
        return []
    fs, p = _fs(path)
    splits: set[str] = set()
    for entry in fs.ls(p, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("qrels-") and name.endswith(".parquet"):
            splits.add(name[len("qrels-") : -len(".parquet")])
    qrels_dir = storage.join(path, "qrels")
    if _isdir(qrels_dir):
        qfs, qp = _fs(qrels_dir)
        for entry in qfs.ls(qp, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            for ext in (".tsv", ".parquet"):
                if name.endswith(ext) and not name.startswith("."):
                    splits.add(name[: -len(ext)])
    return sorted(s for s in splits if s)


def guess_kind(path: str | os.PathLike) -> str | None:
    """'queries', 'corpus' or 'qrels' from a file name (topics.*, collection.tsv, qrels.*, or any
    file in a folder named qrels, as in BEIR's qrels/test.tsv), else None."""
    parts = os.fspath(path).replace("\\", "/").rstrip("/").rsplit("/", 2)
    name = parts[-1].lower()
    if "qrel" in name or name.startswith("prels") or (len(parts) > 1 and parts[-2].lower() == "qrels"):
        return "qrels"
    if any(w in name for w in ("quer", "topic", "question")):
        return "queries"
    if any(w in name for w in ("corpus", "collection", "doc", "passage")):
        return "corpus"
    return None


# --------------------------------------------------------------------------------------------
# text lines


def _iter_lines(path: str, progress: Progress | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without its line ending); strict UTF-8 per line."""
    with storage.open(path, "rb", compression="infer") as handle:
        yield from _decode_lines(path, enumerate(handle, 1), progress)


def _decode_lines(path: str, numbered: Iterable[tuple[int, bytes]], progress: Progress | None = None,
                  file_start: bool = True) -> Iterator[tuple[int, str]]:
    """Raw numbered lines decoded as `_iter_lines` does; a BOM is dropped only at the `file_start`."""
    for lineno, raw in numbered:
        if progress is not None:
            progress(len(raw))
        if file_start and lineno == 1 and raw.startswith(_UTF8_BOM):
            raw = raw[len(_UTF8_BOM) :]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                path,
                f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line "
                "(re-encode the file as UTF-8)",
                line=lineno,
            ) from None
        yield lineno, line.rstrip("\r\n")


def _iter_json_objects(path: str, progress: Progress | None = None) -> Iterator[tuple[int, dict]]:
    return _parse_json_lines(path, _iter_lines(path, progress))


def _parse_json_lines(path: str, lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, dict]]:
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"malformed JSON: {exc.msg} (column {exc.colno})", line=lineno) from None
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object, got {_json_type(obj)}", line=lineno)
        yield lineno, obj


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _get_id(obj: dict, names: tuple[str, ...], path: str, lineno: int) -> str:
    for name in names:
        if name in obj:
            value = obj[name]
            break
    else:
        raise DataError(path, f"missing required field {' or '.join(map(repr, names))}", line=lineno)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(path, f"field {name!r} must be a string, got {_json_type(value)}", line=lineno)
    value = str(value)
    if not value.strip():
        raise DataError(path, f"empty id in field {name!r}", line=lineno)
    return value


def _get_text(obj: dict, names: tuple[str, ...], path: str, lineno: int, required: bool = True) -> str:
    for name in names:
        if name in obj:
            value = obj[name]
            break
    else:
        if not required:
            return ""
        raise DataError(path, f"missing required field {' or '.join(map(repr, names))}", line=lineno)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataError(path, f"field {name!r} must be a string, got {_json_type(value)}", line=lineno)
    return value


def _is_int(text: str) -> bool:
    return bool(_INT_RE.match(text))


def _grade(text: str, path: str, lineno: int) -> int:
    if not _is_int(text.strip()):
        raise DataError(path, f"grade {text!r} is not an integer", line=lineno)
    value = int(text)
    if not _INT32_MIN <= value <= _INT32_MAX:
        raise DataError(path, f"grade {text!r} does not fit in int32", line=lineno)
    return value


class _Unique:
    """Remembers ids and where they were first seen; raises on the second sighting."""

    def __init__(self, path: str, label: str, enabled: bool = True):
        self.path, self.label, self.enabled = path, label, enabled
        self.seen: dict[str, int] = {}

    def add(self, key: str, lineno: int) -> None:
        if not self.enabled:
            return
        first = self.seen.setdefault(key, lineno)
        if first != lineno:
            raise DataError(self.path, f"duplicate {self.label} {key!r} (first on line {first})", line=lineno)


# --------------------------------------------------------------------------------------------
# Parquet


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


def _parquet_queries(path: str, check_unique: bool) -> pa.Table:
    table = _conform(_read_parquet(path), schemas.QUERIES, path).select(schemas.QUERIES.names)
    _check_table(table, path, ["query_id"], ["text"], "query_id" if check_unique else None, seen={})
    return table


def _conform_corpus_batch(batch: pa.RecordBatch | pa.Table, path: str) -> pa.Table:
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    if "title" not in table.column_names:
        table = table.append_column("title", pa.array([""] * table.num_rows, pa.string()))
    table = _conform(table, schemas.CORPUS, path).select(schemas.CORPUS.names)
    return _fill_null(table, "title", "")


# --------------------------------------------------------------------------------------------
# queries


def read_queries(path: str | os.PathLike, *, topic_field: str = "title", check_unique: bool = True) -> pa.Table:
    """Queries as a QUERIES table (query_id, text), in file order.

    `path`: a collection folder (its queries.jsonl / queries.parquet), a JSONL file (id from
    `_id`, `query_id` or `id`; text from `text` or `query`), a TREC topics file (``id<TAB>text``
    lines, or SGML ``<top>`` blocks whose `topic_field` - title, desc or narr - becomes the text,
    whitespace-normalised, with "Number:", "Topic:", "Description:", "Narrative:" labels removed),
    or Parquet. Text is otherwise kept exactly as in the file; an empty text is allowed.

    Raises DataError naming file and line for: malformed JSON, a line that is not an object,
    a missing id or text field, an empty id, a non-string text, a duplicate id (unless
    `check_unique` is False), invalid UTF-8, a topics line without exactly one tab, a broken
    SGML topic. MissingFileError if the file does not exist.
    """
    path = _require(path)
    if topic_field not in TOPIC_FIELDS:
        raise ValueError(f"topic_field must be one of {TOPIC_FIELDS}, got {topic_field!r}")
    if _isdir(path) and not _is_parquet(path):
        found = collection_file(path, "queries")
        if found is None:
            raise MissingFileError(storage.join(path, "queries.jsonl"), "no queries file in the collection folder "
                                   f"(looked for {', '.join(FOLDER_FILES['queries'])})")
        path = found
    if _is_parquet(path):
        return _parquet_queries(path, check_unique)
    fmt = _sniff_text_format(path, "queries")
    unique = _Unique(path, "query id", check_unique)
    ids: list[str] = []
    texts: list[str] = []
    if fmt == "jsonl":
        for lineno, obj in _iter_json_objects(path):
            qid = _get_id(obj, QUERY_ID_FIELDS, path, lineno)
            unique.add(qid, lineno)
            ids.append(qid)
            texts.append(_get_text(obj, QUERY_TEXT_FIELDS, path, lineno))
    elif fmt == "sgml":
        for lineno, qid, text in _iter_sgml_topics(path, topic_field):
            unique.add(qid, lineno)
            ids.append(qid)
            texts.append(text)
    else:
        for lineno, line in _iter_lines(path):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataError(path, f"expected 2 tab-separated columns (id, text), got {len(parts)}", line=lineno)
            qid, text = parts
            if not qid.strip():
                raise DataError(path, "empty query id", line=lineno)
            unique.add(qid, lineno)
            ids.append(qid)
            texts.append(text)
    return pa.table({"query_id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string())}, schema=schemas.QUERIES)


def _sniff_text_format(path: str, kind: str) -> str:
    """'jsonl', 'sgml' or 'tsv', from the suffix and, for .txt/.tsv/unknown, the first character."""
    suffix = _suffix(path)
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    with storage.open(path, "rb", compression="infer") as handle:
        head = handle.read(4096)
    head = head[len(_UTF8_BOM):] if head.startswith(_UTF8_BOM) else head
    first = head.lstrip()[:1]
    if first == b"{":
        return "jsonl"
    if first == b"<" and kind == "queries":
        return "sgml"
    return "tsv"


_TAG_RE = re.compile(r"<\s*(/?)\s*([A-Za-z]+)[^>]*>")
_LABELS = {"num": r"number\s*:", "title": r"topic\s*:", "desc": r"description\s*:", "narr": r"narrative\s*:"}


def _iter_sgml_topics(path: str, topic_field: str) -> Iterator[tuple[int, str, str]]:
    """(line of <top>, id, text) for classic TREC SGML topics."""
    start: int | None = None
    chunks: list[str] = []
    for lineno, line in _iter_lines(path):
        if start is None:
            if not line.strip():
                continue
            m = _TAG_RE.match(line.strip())
            if not m or m.group(2).lower() != "top" or m.group(1):
                raise DataError(path, f"expected '<top>' to start a topic, got {line.strip()[:40]!r}", line=lineno)
            start = lineno
            chunks = [line.strip()[m.end():]]
            if "</top>" not in line.lower():
                continue
        else:
            chunks.append(line)
            if "</top>" not in line.lower():
                continue
        block = "\n".join(chunks)
        block = block[: block.lower().rfind("</top>")]
        yield (start, *_parse_topic(block, path, start, topic_field))
        start = None
    if start is not None:
        raise DataError(path, "topic started here has no closing '</top>'", line=start)


def _parse_topic(block: str, path: str, lineno: int, topic_field: str) -> tuple[str, str]:
    fields: dict[str, str] = {}
    tags = list(_TAG_RE.finditer(block))
    for i, m in enumerate(tags):
        if m.group(1):  # closing tag
            continue
        name = m.group(2).lower()
        end = tags[i + 1].start() if i + 1 < len(tags) else len(block)
        value = " ".join(block[m.end():end].split())
        label = _LABELS.get(name)
        if label:
            value = re.sub(rf"^{label}\s*", "", value, flags=re.IGNORECASE)
        fields.setdefault(name, value)
    qid = fields.get("num", "")
    if not qid:
        raise DataError(path, "topic has no <num> (or an empty one)", line=lineno)
    if topic_field not in fields:
        raise DataError(path, f"topic {qid!r} has no <{topic_field}>", line=lineno)
    return qid, fields[topic_field]


# --------------------------------------------------------------------------------------------
# corpus


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


# --------------------------------------------------------------------------------------------
# corpus parts: one corpus read by several tasks

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
    checked for duplicates, which would need every part)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if part.layout == "whole":
        return iter_corpus(part.file, batch_size)
    if part.layout == "lines":
        return _iter_json_part(part, batch_size)
    if part.layout == "rows":
        return _iter_parquet_part(part, batch_size)
    raise ValueError(f"unknown corpus part layout {part.layout!r}")


def _is_compressed(path: str) -> bool:
    return path.lower().endswith(_COMPRESSION_SUFFIXES)


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
# qrels


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


# --------------------------------------------------------------------------------------------
# collections


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


def _collection_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or path


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


# --------------------------------------------------------------------------------------------
# any kind


def read_table(path: str | os.PathLike, kind: str, **kwargs: Any) -> pa.Table:
    """Read `path` as the schema `kind` (a key of schemas.BY_NAME), dispatching on the extension.

    queries / corpus / qrels go through `read_queries` / `read_corpus` / `read_qrels` (extra
    keyword arguments are passed on, e.g. ``split=``). synthetic / groups: Parquet (a file or a
    folder of files) is conformed with `schemas.conform` (extra columns kept after the schema's);
    JSONL must carry every column of the schema on every line (extra keys are ignored).
    """
    if kind not in schemas.BY_NAME:
        raise ValueError(f"kind must be one of {sorted(schemas.BY_NAME)}, got {kind!r}")
    if kind == "queries":
        return read_queries(path, **kwargs)
    if kind == "corpus":
        return read_corpus(path, **kwargs)
    if kind == "qrels":
        return read_qrels(path, **kwargs)
    if kwargs:
        raise TypeError(f"read_table(kind={kind!r}) takes no options, got {sorted(kwargs)}")
    path = _require(path)
    schema = schemas.BY_NAME[kind]
    if _is_parquet(path):
        return _conform(_read_parquet(path), schema, path)
    if _suffix(path) not in _JSONL_SUFFIXES:
        raise DataError(path, f"cannot read {kind!r} from this file type (expected .parquet or .jsonl)")
    rows: list[dict] = []
    lines: list[int] = []
    for lineno, obj in _iter_json_objects(path):
        missing = [name for name in schema.names if name not in obj]
        if missing:
            raise DataError(path, f"missing required field(s) {missing}", line=lineno)
        rows.append({name: obj[name] for name in schema.names})
        lines.append(lineno)
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        pass
    for row, lineno in zip(rows, lines):  # find the offending line
        try:
            pa.Table.from_pylist([row], schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
            raise DataError(path, f"value does not fit the {kind} schema: {exc}", line=lineno) from None
    raise DataError(path, f"rows do not fit the {kind} schema")  # pragma: no cover - whole fails, no row does
