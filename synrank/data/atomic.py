"""Atomic writes: a file appears under its final name complete, or not at all.

Local paths are written to a temporary sibling and renamed (rename is atomic on POSIX). Remote
fsspec URLs (s3://, gs://) are written whole by the object store, which is atomic per object.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def _local(path: str | os.PathLike) -> Path:
    text = str(path)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary local path; on success rename it onto `path`, on error remove it."""
    final = _local(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_parquet(table: pa.Table, path: str | os.PathLike, **kwargs: Any) -> None:
    """Write a Parquet file atomically (local: temp + rename; remote: one object put)."""
    if is_local(path):
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, **kwargs)
    else:
        with fsspec.open(str(path), "wb") as handle:
            pq.write_table(table, handle, **kwargs)


def write_text(text: str, path: str | os.PathLike) -> None:
    if is_local(path):
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    else:
        with fsspec.open(str(path), "w", encoding="utf-8") as handle:
            handle.write(text)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def exists(path: str | os.PathLike) -> bool:
    if is_local(path):
        return _local(path).exists()
    fs, p = fsspec.core.url_to_fs(str(path))
    return fs.exists(p)
