"""Where the inputs are: paths and URLs (through `synrank.storage`), format suffixes, and the
files of a collection folder (`collection_file`, `available_splits`, `guess_kind`)."""

from __future__ import annotations

import os

import fsspec

from synrank import storage
from synrank.data.errors import MissingFileError

# Names looked up in a collection folder, in order; the first that exists is read.
FOLDER_FILES: dict[str, tuple[str, ...]] = {
    "queries": ("queries.jsonl", "queries.jsonl.gz", "queries.parquet"),
    "corpus": ("corpus.jsonl", "corpus.jsonl.gz", "corpus.parquet"),
    "qrels": ("qrels/{split}.tsv", "qrels/{split}.parquet", "qrels-{split}.parquet"),
}

_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


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


def _is_compressed(path: str) -> bool:
    return path.lower().endswith(_COMPRESSION_SUFFIXES)


def _collection_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or path
