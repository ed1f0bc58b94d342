"""Any schema by name (`read_table`): queries, corpus and qrels through their readers; synthetic
and groups from Parquet or JSONL."""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa

from synrank.data import schemas
from synrank.data.errors import DataError
from synrank.data.readers.corpus import read_corpus
from synrank.data.readers.lines import _iter_json_objects
from synrank.data.readers.parquet import _conform, _read_parquet
from synrank.data.readers.paths import _JSONL_SUFFIXES, _is_parquet, _require, _suffix
from synrank.data.readers.qrels import read_qrels
from synrank.data.readers.queries import read_queries

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
