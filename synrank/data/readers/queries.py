"""Queries: JSONL, TREC topics (``id<TAB>text`` or SGML ``<top>`` blocks) and Parquet."""

from __future__ import annotations

import os
import re
from typing import Iterator

import pyarrow as pa

from synrank import storage
from synrank.data import schemas
from synrank.data.errors import DataError, MissingFileError
from synrank.data.readers.lines import (
    _get_id,
    _get_text,
    _iter_json_objects,
    _iter_lines,
    _sniff_text_format,
    _Unique,
)
from synrank.data.readers.parquet import _check_table, _conform, _read_parquet
from synrank.data.readers.paths import FOLDER_FILES, _is_parquet, _isdir, _require, collection_file

QUERY_ID_FIELDS = ("_id", "query_id", "id")
QUERY_TEXT_FIELDS = ("text", "query")
TOPIC_FIELDS = ("title", "desc", "narr")


def _parquet_queries(path: str, check_unique: bool) -> pa.Table:
    table = _conform(_read_parquet(path), schemas.QUERIES, path).select(schemas.QUERIES.names)
    _check_table(table, path, ["query_id"], ["text"], "query_id" if check_unique else None, seen={})
    return table


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
