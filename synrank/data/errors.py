"""Errors and warnings about input data, each naming the file and, where there is one, the line.

Messages read like compiler diagnostics, so editors and terminals can jump to them::

    data/queries.jsonl:17: malformed JSON: Expecting ',' delimiter (column 23)
    data/qrels/test.tsv:1: qrels header is 'qid docid rel'; expected 'query-id<TAB>corpus-id<TAB>score'
    data/corpus.parquet: row 8: duplicate doc_id '42' (first at row 3)
"""

from __future__ import annotations

import os


def _where(path: str | os.PathLike, line: int | None, row: int | None) -> str:
    where = str(path)
    if line is not None:
        return f"{where}:{line}"
    if row is not None:
        return f"{where}: row {row}"
    return where


class DataError(ValueError):
    """Input that cannot be read as the expected schema.

    `path` is the file, `line` the 1-based line of a text file (None where there is none), `row`
    the 0-based row of a Parquet file (None where there is none). `str(error)` always starts with
    the file and the line: ``"path/queries.jsonl:17: ..."`` (Parquet: ``"path: row 17: ..."``).
    """

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None, row: int | None = None):
        self.path = str(path)
        self.line = line
        self.row = row
        self.reason = message
        super().__init__(f"{_where(path, line, row)}: {message}")

    def __reduce__(self):  # picklable across Ray workers
        return (type(self), (self.path, self.reason, self.line, self.row))


class MissingFileError(DataError, FileNotFoundError):
    """A required input file (or folder) does not exist. Also a FileNotFoundError."""

    def __init__(self, path: str | os.PathLike, message: str = "no such file or directory", line: int | None = None, row: int | None = None):
        super().__init__(path, message, line, row)


class DataWarning(UserWarning):
    """Input that can be read, with rows skipped or questionable; the message says how many."""
