"""The corpora of an evaluation. Collections whose corpus is the same file (`corpus_identity`: the
resolved path or URL, its size and modification time) share one corpus: it is scanned, encoded
and indexed once per model, and each collection's queries are searched against it (TREC DL 2019
and 2020 share the MS MARCO passages).

`scan_corpus` is the one pass over a corpus before anything is encoded: its rows are counted and
checked, its text measured, and the judged documents it holds found, in Ray tasks over its parts
(`readers.split_corpus`), so the driver never reads the corpus. Parts are read like the encoding's
read tasks: without a CPU slot (a few at a time), on this node for a local corpus. Results are
taken in part order, so a corpus with several bad lines fails on the first, as a sequential read
would. Each part's doc ids stay in the object store; one more task checks them for duplicates
across the parts (`readers.check_unique_doc_ids`: the error names the file, the line of the repeat
and of the first), so BM25 and dense evaluation refuse a corpus whose ids repeat.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Any

from synrank import storage
from synrank.data.readers import CorpusPart

SCAN_BATCH_ROWS = 8192


@dataclass(frozen=True)
class CorpusIdentity:
    url: str
    size: int
    modified: str


def corpus_identity(path: str) -> CorpusIdentity:
    """What makes two corpus paths the same corpus: the same file, unchanged (a local path with
    symlinks resolved; a URL with its object's size and modification time or ETag)."""
    fs, inner = storage.filesystem(path)
    info = fs.info(inner)
    modified = next((info[k] for k in ("mtime", "LastModified", "updated", "ETag") if info.get(k)), "")
    return CorpusIdentity(storage.absolute(path), int(info.get("size") or 0), str(modified))


@dataclass
class CorpusScan:
    num_docs: int
    text_bytes: int  # UTF-8 bytes of the titles and texts
    found: set[str]  # the judged doc ids the corpus holds


def _scan_part(part: CorpusPart, judged: list[str]) -> tuple[tuple[int, int, list[str]], Any]:
    """((rows, text bytes, judged ids found), the part's doc ids as one Arrow array)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from synrank.data.readers import iter_corpus_part

    wanted = set(judged)
    rows = text_bytes = 0
    found: list[str] = []
    ids: list[Any] = []
    for batch in iter_corpus_part(part, batch_size=SCAN_BATCH_ROWS):
        rows += batch.num_rows
        ids.append(batch.column(0))
        for column in (batch.column(1), batch.column(2)):
            text_bytes += int(pc.sum(pc.binary_length(column)).as_py() or 0)
        found.extend(d for d in batch.column(0).to_pylist() if d in wanted)
    return (rows, text_bytes, found), pa.concat_arrays(ids) if ids else pa.array([], pa.string())


def _check_ids(parts: list[CorpusPart], *ids: Any) -> None:
    from synrank.data.readers import check_unique_doc_ids

    check_unique_doc_ids(parts, ids)


def read_task_options(path: str) -> dict[str, Any]:
    """Ray options of a task that reads `path`: no CPU slot, and this node for a local file."""
    import ray

    options: dict[str, Any] = {"num_cpus": 0, "scheduling_strategy": "DEFAULT"}  # not a trial's placement group
    if storage.is_local(path):
        options["label_selector"] = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
    return options


def scan_corpus(path: str, judged_doc_ids: set[str], slots: int | None = None) -> CorpusScan:
    """Count, check and measure the corpus at `path`, and find which of `judged_doc_ids` it holds,
    `slots` parts at a time (default: this machine's CPUs). Raises the first bad line's DataError,
    then the first repeated doc id's."""
    import ray

    from synrank.data.readers import split_corpus
    from synrank.evaluate.search import get_unwrapped
    from synrank.runtime import watch_progress

    slots = max(1, slots or os.cpu_count() or 1)
    all_parts = split_corpus(path, min_parts=slots)
    parts = deque(all_parts)
    task = ray.remote(_scan_part).options(num_returns=2, **read_task_options(path))
    id_refs: list = []  # each part's ids, left in the object store
    judged = ray.put(sorted(judged_doc_ids))
    running: deque = deque()
    scan = CorpusScan(0, 0, set())
    with watch_progress(f"evaluation: reading {path}") as watch:
        while parts or running:
            while parts and len(running) < slots:
                stats_ref, ids_ref = task.remote(parts.popleft(), judged)
                running.append(stats_ref)
                id_refs.append(ids_ref)
            rows, text_bytes, found = get_unwrapped(running.popleft())
            watch.tick()
            scan.num_docs += rows
            scan.text_bytes += text_bytes
            scan.found.update(found)
        get_unwrapped(ray.remote(_check_ids).options(**read_task_options(path)).remote(all_parts, *id_refs))
    return scan
