"""Distributed encoding: Ray Data streams queries and corpora through a pool of encoder actors,
each owning one `BiEncoder`, and every encoded batch is written to a Parquet shard on disk.

Data flow (nothing corpus-sized passes through the driver):

    EncodeSource per query set and per corpus (a corpus shared by collections is one source)
      -> `_TextDatasource` read tasks: the queries (small, sent with the task), and each corpus
         cut into parts (`readers.split_corpus`: JSONL byte ranges, Parquet row groups), four
         per actor of the pool at least, each part streamed with `readers.iter_corpus_part`
         inside its read task, in blocks of `block_rows` (`block_rows_for`: large, as each
         encoder call sorts its rows by length to pad less)
      -> `map_batches(_EncodeBatch)` on an autoscaling actor pool (one GPU per actor when the
         cluster has GPUs and `encoder.backend` is torch, else a share of the CPUs with torch or
         ONNX Runtime threads to match), each actor
         also asking for the `encode` stage resources (`runtime.stage_options`)
      -> each batch grouped by (collection, kind), encoded with BiEncoder.encode (length-sorted
         sub-batches of `batch_size`), written to ``<emb_dir>/<kind>/<sha1 of ids>.parquet``
         with columns ``id: string, embedding: fixed_size_list<float32>[dim]``
      -> the actors return only (collection, kind, path, rows); the driver collects those.

A shard's name is a hash of the ids it holds, so a batch retried after an actor failure rewrites
the same file (atomically) instead of adding a duplicate. Only shards reported by this run are
read back (`read_shards`), never a directory listing, so stale files cannot leak in.

Text formatting is the encoder's own: passages as ``format_passage(title, text)``, prefixes and
maximum lengths from the encoder's config (a synrank export brings its own; `overrides` win).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synrank.data.readers import CorpusPart

log = logging.getLogger(__name__)

KINDS = ("query", "passage")
MIN_BLOCK_ROWS, MAX_BLOCK_ROWS = 256, 4096
BLOCKS_PER_ACTOR = 4
TASKS_IN_FLIGHT_PER_ACTOR = 2


def block_rows_for(total_docs: int | None, pool_size: int) -> int:
    """Rows per Ray Data block and per encoder call. An encoder call sorts its rows by length
    before cutting batches (less padding), so blocks are large, yet several per actor: an actor
    holds up to two blocks (one running, one fetched), and the first actors up must not take
    every block before the others start: total / (4 x pool size), within [256, 4096]."""
    if not total_docs:
        return 1024
    per_block = -(-total_docs // (BLOCKS_PER_ACTOR * max(1, pool_size)))
    return int(min(MAX_BLOCK_ROWS, max(MIN_BLOCK_ROWS, per_block)))


_TEXT_SCHEMA = pa.schema([
    ("collection", pa.string()),
    ("kind", pa.string()),
    ("id", pa.string()),
    ("title", pa.string()),
    ("text", pa.string()),
])
_RESULT_SCHEMA = pa.schema([
    ("collection", pa.string()),
    ("kind", pa.string()),
    ("path", pa.string()),
    ("rows", pa.int64()),
    ("actor", pa.string()),
    ("init_s", pa.float64()),    # the actor's start (model load), reported with its first shard
    ("encode_s", pa.float64()),  # BiEncoder.encode time of this shard
    ("init_cpu_s", pa.float64()),    # CPU time of the actor process up to the end of its start
    ("encode_cpu_s", pa.float64()),  # CPU time (all threads) of BiEncoder.encode for this shard
    ("actor_cpu_s", pa.float64()),   # CPU time of the actor process so far, after this shard
])


@dataclass
class EncodeSource:
    """What to encode under one key: queries (ids and texts), a corpus path, or both."""

    key: str
    emb_dir: str
    query_ids: list[str]
    query_texts: list[str]
    corpus_path: str | None
    num_docs: int | None = None  # when known: sizes the blocks


@dataclass
class EncodeStats:
    """Where the encoding time went, per actor: model load and encoder calls (seconds)."""

    init_s: dict[str, float] = field(default_factory=dict)
    busy_s: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    init_cpu_s: dict[str, float] = field(default_factory=dict)
    busy_cpu_s: dict[str, float] = field(default_factory=dict)
    total_cpu_s: dict[str, float] = field(default_factory=dict)

    def add(self, actor: str, init_s: float, encode_s: float, rows: int, init_cpu_s: float = 0.0,
            encode_cpu_s: float = 0.0, actor_cpu_s: float = 0.0) -> None:
        self.total_cpu_s[actor] = max(self.total_cpu_s.get(actor, 0.0), actor_cpu_s)
        self.init_s[actor] = self.init_s.get(actor, 0.0) + init_s
        self.busy_s[actor] = self.busy_s.get(actor, 0.0) + encode_s
        self.rows[actor] = self.rows.get(actor, 0) + rows
        self.init_cpu_s[actor] = self.init_cpu_s.get(actor, 0.0) + init_cpu_s
        self.busy_cpu_s[actor] = self.busy_cpu_s.get(actor, 0.0) + encode_cpu_s

    @property
    def busiest_s(self) -> float:
        """Encoding time of the busiest actor: the encode phase's length when the actors overlap."""
        return max(self.busy_s.values(), default=0.0)

    def as_dict(self) -> dict:
        return {"actors": len(self.busy_s), "init_s": self.init_s, "busy_s": self.busy_s, "rows": self.rows,
                "busiest_s": self.busiest_s, "init_cpu_s": self.init_cpu_s, "busy_cpu_s": self.busy_cpu_s,
                "total_cpu_s": self.total_cpu_s}


@dataclass
class EncodedShards:
    """Shard files per kind for one collection, with their row counts."""

    shards: dict[str, list[tuple[str, int]]] = field(default_factory=lambda: {k: [] for k in KINDS})

    def rows(self, kind: str) -> int:
        return sum(n for _, n in self.shards[kind])

    def paths(self, kind: str) -> list[str]:
        return [p for p, _ in self.shards[kind]]


# ---------------------------------------------------------------------------------------------
# reading: queries and streamed corpora as Ray Data blocks


def _text_block(key: str, kind: str, ids, titles, texts) -> pa.Table:
    n = len(ids)
    return pa.Table.from_arrays(
        [pa.array([key] * n, pa.string()), pa.array([kind] * n, pa.string()), pa.array(ids, pa.string()),
         pa.array(titles, pa.string()), pa.array(texts, pa.string())],
        schema=_TEXT_SCHEMA,
    )


def _read_queries_block(key: str, ids: list[str], texts: list[str], block_rows: int) -> Iterator[pa.Table]:
    for start in range(0, len(ids), block_rows):
        chunk = ids[start : start + block_rows]
        yield _text_block(key, "query", chunk, [""] * len(chunk), texts[start : start + block_rows])


def _read_corpus_blocks(key: str, part: CorpusPart, block_rows: int) -> Iterator[pa.Table]:
    from synrank.data.readers import iter_corpus_part

    for batch in iter_corpus_part(part, batch_size=block_rows):
        yield _text_block(key, "passage", batch.column(0), batch.column(1), batch.column(2))


def _text_datasource(sources: list[EncodeSource], parts: dict[str, list[CorpusPart]], block_rows: int):
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class _TextDatasource(Datasource):
        """One read task per query set (data shipped with the task) and per corpus part (streamed)."""

        def __init__(self) -> None:
            super().__init__()

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            tasks = []
            for src in sources:
                if src.query_ids:
                    ids, texts, key = list(src.query_ids), list(src.query_texts), src.key
                    tasks.append(ReadTask(
                        lambda key=key, ids=ids, texts=texts: _read_queries_block(key, ids, texts, block_rows),
                        BlockMetadata(num_rows=len(ids), size_bytes=sum(len(t) for t in texts), exec_stats=None,
                                      input_files=None),
                        schema=_TEXT_SCHEMA,
                    ))
                for part in parts.get(src.key, []):
                    tasks.append(ReadTask(
                        lambda key=src.key, part=part: _read_corpus_blocks(key, part, block_rows),
                        BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(part.file,)),
                        schema=_TEXT_SCHEMA,
                    ))
            return tasks

    return _TextDatasource()


# ---------------------------------------------------------------------------------------------
# encoding: the actor


def shard_name(ids: list[str]) -> str:
    digest = hashlib.sha1()
    for i in ids:
        digest.update(i.encode("utf-8"))
        digest.update(b"\0")
    return f"{digest.hexdigest()[:20]}-{len(ids)}.parquet"


def embeddings_table(ids: list[str], vectors: np.ndarray) -> pa.Table:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    return pa.table({
        "id": pa.array(ids, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
    })


class _EncodeBatch:
    """Ray Data callable class: owns one BiEncoder for the life of the actor."""

    def __init__(self, model: str, overrides: dict, batch_size: int, emb_dirs: dict[str, str],
                 num_threads: int | None, device: str | None = None) -> None:
        import os
        import socket
        import time

        import torch

        from synrank.encoder import BiEncoder

        started = time.perf_counter()
        self.actor = f"{socket.gethostname()}:{os.getpid()}"
        if num_threads:
            torch.set_num_threads(num_threads)
        if device is None:  # an ONNX backend runs on CPUs only
            on_gpu = torch.cuda.is_available() and overrides.get("backend", "torch") == "torch"
            device = "cuda" if on_gpu else "cpu"
        from synrank import storage

        # `model` may be a URL (s3://...): each node loads its own cached copy.
        self.encoder = BiEncoder.load(storage.local_copy(model), **overrides).for_inference(device)
        self.batch_size = batch_size
        self.emb_dirs = emb_dirs
        self.init_s = time.perf_counter() - started
        self.init_cpu_s = time.process_time()

    def __call__(self, batch: pa.Table) -> pa.Table:
        import time

        from synrank.storage import join, write_parquet
        from synrank.text import format_passage

        keys = batch.column("collection").to_pylist()
        kinds = batch.column("kind").to_pylist()
        ids = batch.column("id").to_pylist()
        titles = batch.column("title").to_pylist()
        texts = batch.column("text").to_pylist()
        groups: dict[tuple[str, str], list[int]] = {}
        for row, group in enumerate(zip(keys, kinds)):
            groups.setdefault(group, []).append(row)
        out: list[dict] = []
        for (key, kind), rows in groups.items():
            if kind == "passage":
                strings = [format_passage(titles[r], texts[r]) for r in rows]
            else:
                strings = [texts[r] for r in rows]
            started, started_cpu = time.perf_counter(), time.process_time()
            vectors = self.encoder.encode(strings, kind, batch_size=self.batch_size)
            encode_s, encode_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
            group_ids = [ids[r] for r in rows]
            path = join(self.emb_dirs[key], kind, shard_name(group_ids))
            write_parquet(embeddings_table(group_ids, vectors), path)
            out.append({"collection": key, "kind": kind, "path": path, "rows": len(rows), "actor": self.actor,
                        "init_s": self.init_s, "encode_s": encode_s, "init_cpu_s": self.init_cpu_s,
                        "encode_cpu_s": encode_cpu_s, "actor_cpu_s": time.process_time()})
            self.init_s = self.init_cpu_s = 0.0
        return pa.Table.from_pylist(out, schema=_RESULT_SCHEMA)


# ---------------------------------------------------------------------------------------------
# the driver side


@dataclass
class PoolPlan:
    """The encoder pool's maximum size and what each actor asks of Ray."""

    size: int
    num_cpus: float
    num_gpus: float
    threads: int | None

    def describe(self) -> str:
        per = f"{self.num_gpus:g} GPU" if self.num_gpus else f"{self.num_cpus:g} CPU ({self.threads} torch threads)"
        return f"up to {self.size} encoder actor(s), {per} each"


def plan_pool(num_cpus: float, num_gpus: float, num_encoders: int | None = None,
              max_node_cpus: float | None = None, max_threads: int = 8, use_gpus: bool | None = None) -> PoolPlan:
    """GPUs (`use_gpus`; default: when the cluster has one now): one actor per GPU, `num_encoders`
    of them (default: the GPUs up now), 1 CPU each for tokenisation. On a cluster that scales from
    zero no GPU is up yet: pass `num_encoders` and `use_gpus=True`, and the autoscaler brings up
    nodes for the actors.

    CPUs only: data parallelism across actors scales better than torch's intra-op threads (no
    barrier per operator, and a descheduled thread stalls only its own actor), so the CPUs are
    cut into actors of about sqrt(CPUs per node) threads (2 CPUs: 2 actors x 1 thread; 16: 4 x 4;
    64: 8 x 8), at most `max_threads` each; fewer, fatter actors save memory (a model copy each).
    With `num_encoders`, the CPUs are shared out among that many actors (1 CPU each when no CPU
    is up yet).
    """
    if use_gpus is None:
        use_gpus = num_gpus >= 1
    if use_gpus:
        return PoolPlan(size=num_encoders or max(1, int(num_gpus)), num_cpus=1, num_gpus=1, threads=None)
    total = max(1, int(num_cpus))
    per_node = max(1, int(max_node_cpus or total))
    if num_encoders:
        per_actor = max(1, min(per_node, total // num_encoders))
        size = num_encoders
    else:
        per_actor = max(1, min(max_threads, per_node, round(math.sqrt(per_node))))
        size = max(1, total // per_actor)
    return PoolPlan(size=size, num_cpus=per_actor, num_gpus=0, threads=per_actor)


def _warn_if_nothing_is_up(num_cpus: float, num_gpus: float, num_encoders: int | None, plan: PoolPlan) -> None:
    if num_cpus >= 1 or num_gpus >= 1:
        return
    if num_encoders is None:
        log.warning("no CPU or GPU is up in the cluster (does it scale from zero?): the encoder pool can grow to "
                    "only %s; set evaluate.num_encoders to the pool's maximum", plan.describe())
    elif not plan.num_gpus:
        log.warning("no CPU or GPU is up in the cluster yet: %s (to encode on GPUs, ask for them)", plan.describe())


def _check_backend(backend: str, use_gpus: bool | None) -> bool | None:
    """`use_gpus` for the encoder backend: an ONNX backend (CPUs only) needs onnxruntime here, before
    any actor starts, and CPU actors."""
    if backend == "torch":
        return use_gpus
    from synrank.encoder_onnx import check_backend, require_onnxruntime

    check_backend(backend)
    require_onnxruntime(backend)
    if use_gpus:
        raise ValueError(f"encoder.backend={backend!r} runs on CPUs, but GPU encoder actors were asked for; "
                         "use encoder.backend=torch on GPUs")
    return False


def _max_node_cpus() -> float | None:
    import ray

    cpus = [n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    return max(cpus) if cpus else None


def encode_sources(
    sources: list[EncodeSource],
    model: str,
    *,
    overrides: dict | None = None,
    batch_size: int = 64,
    num_encoders: int | None = None,
    use_gpus: bool | None = None,
    block_rows: int | None = None,
    resources=None,
    progress: bool = True,
    stats: EncodeStats | None = None,
) -> dict[str, EncodedShards]:
    """Encode every source's queries and corpus on a Ray Data actor pool; return shard paths.

    Ray must be initialised (`synrank.runtime.init_ray`). `num_encoders`: the pool's maximum
    (default: from the cluster as it is now); `use_gpus`: see `plan_pool`. `resources` is its
    ClusterResources (looked up when None). `stats`, if given, is filled with per-actor timings.
    """
    import ray

    from synrank.data.readers import split_corpus
    from synrank.runtime import cluster_resources, ensure_node, stage_options, watch_progress, with_progress_bars

    use_gpus = _check_backend((overrides or {}).get("backend", "torch"), use_gpus)
    resources = resources or cluster_resources()
    plan = plan_pool(resources.num_cpus, resources.num_gpus, num_encoders, _max_node_cpus(), use_gpus=use_gpus)
    _warn_if_nothing_is_up(resources.num_cpus, resources.num_gpus, num_encoders, plan)
    # A read task's rows reach the pool as one block (Ray Data joins what it yields, up to 128 MiB),
    # and an actor takes whole blocks: several parts per actor keep every actor busy on one corpus.
    parts = {s.key: split_corpus(s.corpus_path, min_parts=BLOCKS_PER_ACTOR * plan.size)
             for s in sources if s.corpus_path}
    if block_rows is None:
        known = [s.num_docs for s in sources if s.corpus_path]
        block_rows = block_rows_for(sum(known) if known and None not in known else None, plan.size)
    read_tasks = sum(1 for s in sources if s.query_ids) + sum(len(p) for p in parts.values())
    log.info("encoding with %s, %d read task(s), blocks of %d rows", plan.describe(), read_tasks, block_rows)
    emb_dirs = {s.key: s.emb_dir for s in sources}

    # Read tasks take no CPU slot (the encoders hold them all on a CPU-only cluster; reading is
    # light), so the pool can take every CPU and its input still flows. A local corpus is read on this node, by its node-id label: others may not see it.
    read_args: dict[str, Any] = {"num_cpus": 0}
    if any(s.corpus_path and "://" not in s.corpus_path for s in sources):
        read_args["label_selector"] = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
    ds = ray.data.read_datasource(_text_datasource(sources, parts, block_rows), override_num_blocks=max(1, read_tasks),
                                  **read_args)
    remote: dict[str, Any] = {"num_cpus": plan.num_cpus, **stage_options("encode")}
    if plan.num_gpus:
        remote["num_gpus"] = plan.num_gpus
    ensure_node({"CPU": plan.num_cpus, "GPU": plan.num_gpus, **remote.get("resources", {})},
                f"evaluation encoding ({plan.describe()})")
    encoded = ds.map_batches(
        _EncodeBatch,
        fn_constructor_kwargs={
            "model": model, "overrides": dict(overrides or {}), "batch_size": batch_size,
            "emb_dirs": emb_dirs, "num_threads": plan.threads,
        },
        batch_size=block_rows,
        batch_format="pyarrow",
        # The pool asks for its maximum at once: Ray Data grows a pool only into resources the
        # cluster already has, while pending actors make an autoscaler bring up nodes for them.
        # It gives actors back when they idle, and grows again when every actor has a block
        # queued (Ray Data's threshold of 175 % utilisation needs two blocks in flight per actor).
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.size, initial_size=plan.size,
                                           max_tasks_in_flight_per_actor=TASKS_IN_FLIGHT_PER_ACTOR),
        zero_copy_batch=True,
        **remote,
    )
    result = {s.key: EncodedShards() for s in sources}
    with watch_progress(f"evaluation encoding: {plan.describe()}") as watch:
        for batch in with_progress_bars(encoded, progress).iter_batches(batch_format="pyarrow", batch_size=None):
            watch.tick()
            for key, kind, path, rows, actor, init_s, encode_s, init_cpu_s, encode_cpu_s, actor_cpu_s in zip(
                    *(batch.column(c).to_pylist() for c in _RESULT_SCHEMA.names)):
                result[key].shards[kind].append((path, rows))
                if stats is not None:
                    stats.add(actor, init_s, encode_s, rows, init_cpu_s, encode_cpu_s, actor_cpu_s)
    return result


def read_shards(paths: list[str], batch_rows: int = 65_536) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, float32 [n, dim]) chunks from embedding shards, one shard's row group at a time."""
    from synrank import storage

    for path in paths:
        with storage.open(path, "rb") as handle:
            reader = pq.ParquetFile(handle)
            for batch in reader.iter_batches(batch_size=batch_rows, columns=["id", "embedding"]):
                emb = batch.column(1)
                dim = emb.type.list_size
                vectors = emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
                yield batch.column(0).to_pylist(), vectors


def embedding_dim(path: str) -> int:
    """The embedding dimension of a shard, from its Parquet footer."""
    from synrank import storage

    with storage.open(path, "rb") as handle:
        return int(pq.ParquetFile(handle).schema_arrow.field("embedding").type.list_size)


def read_all(paths: list[str]) -> tuple[list[str], np.ndarray]:
    """All ids and vectors of `paths` (for query sets, which are small)."""
    ids: list[str] = []
    parts: list[np.ndarray] = []
    for chunk_ids, vectors in read_shards(paths):
        ids.extend(chunk_ids)
        parts.append(vectors)
    if not parts:
        return [], np.zeros((0, 0), dtype=np.float32)
    return ids, np.concatenate(parts)
