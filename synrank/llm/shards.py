"""Outputs written shard by shard, and resumed by skipping the shards that are finished.

Generation and annotation both work through a long list (queries; pairs grouped by query): they
cut it into shards of consecutive items (`split`) and write each shard's result as one file
``part-NNNNN.parquet`` (`shard_name`) by atomic rename (`synrank.storage.write_parquet`), so a
shard file that exists is complete. A rerun asks `pending_shards` which shards are left, in one
of two ways:

- by presence: the file exists. Enough where the folder's manifest pins the whole input
  (annotation: the pair list), so a shard's content cannot change under its name;
- by digest: the file also carries the digest of the inputs it was made from (`with_digest`, in
  its Parquet metadata under `DIGEST_KEY`) and it equals the digest this run would write.
  Generation: a longer query list keeps the shards whose queries did not change.

A plan shorter than the one that wrote a folder leaves files of shards it does not make:
`stale_shard_files` names them.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from synrank import storage

T = TypeVar("T")

PREFIX = "part-"
DIGEST_KEY = b"synrank.shard_digest"


def shard_name(index: int, suffix: str = ".parquet") -> str:
    """The file name of shard `index`: ``part-00012.parquet`` (``part-00012.json`` with `suffix`)."""
    return f"{PREFIX}{index:05d}{suffix}"


def shard_path(folder: str, index: int, suffix: str = ".parquet") -> str:
    return storage.join(folder, shard_name(index, suffix))


def shard_index(name: str) -> int | None:
    """The shard a file name belongs to (``part-00012.parquet``, ``part-00012.json``: 12), or None."""
    if name.startswith(PREFIX) and name[len(PREFIX):len(PREFIX) + 5].isdigit():
        return int(name[len(PREFIX):len(PREFIX) + 5])
    return None


def split(items: Sequence[T], size: int) -> list[list[T]]:
    """`items` cut into shards of `size` consecutive items (the last one may be shorter)."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    return [list(items[start:start + size]) for start in range(0, len(items), size)]


def shard_files(folder: str) -> set[str]:
    """The names of the Parquet files directly under `folder` (none if it does not exist)."""
    return {name for name in storage.listdir(folder) if name.endswith(".parquet")}


def with_digest(table: pa.Table, digest: str) -> pa.Table:
    """`table` carrying `digest` in its Parquet metadata (its other metadata is dropped)."""
    return table.replace_schema_metadata({DIGEST_KEY: digest.encode()})


def read_digest(path: str) -> str | None:
    """The digest a shard file carries, or None if there is no file, no digest, or it is unreadable."""
    fs, p = storage.filesystem(path)
    try:
        if not fs.exists(p):
            return None
        with fs.open(p, "rb") as handle:
            meta = pq.read_schema(handle).metadata or {}
        value = meta.get(DIGEST_KEY)
        return value.decode() if value else None
    except Exception:  # a truncated or foreign file: the shard is redone
        return None


def pending_shards(folder: str, n_shards: int, digests: Sequence[str] | None = None) -> list[int]:
    """The shards of 0..n_shards-1 left to do: those without a file in `folder`, and with `digests`
    (one per shard) those whose file does not carry its shard's digest."""
    if digests is not None and len(digests) != n_shards:
        raise ValueError(f"{len(digests)} digests for {n_shards} shards")
    present = shard_files(folder)
    return [i for i in range(n_shards)
            if shard_name(i) not in present
            or (digests is not None and read_digest(shard_path(folder, i)) != digests[i])]


def stale_shard_files(folder: str, n_shards: int) -> list[str]:
    """The names of the files under `folder`, of any suffix, of shards from `n_shards` on."""
    return [name for name in storage.listdir(folder)
            if (index := shard_index(name)) is not None and index >= n_shards]
