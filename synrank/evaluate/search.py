"""Retrieval in Ray tasks, one per corpus, so that no index is ever built in the driver (a job's
driver runs on the cluster's head, which is small): a task builds its corpus's index, searches the
queries of every collection that shares the corpus, and returns only the runs (top k per query).

Dense (`dense_search`): the task reads the corpus's embedding shards into a faiss index
(`index.DenseIndex`) and each collection's query shards. It asks Ray for the memory the index
needs (`index_memory_bytes`); with GPUs in the cluster (or `use_gpu=True`) for one GPU as well,
and DenseIndex puts flat and IVF indexes on it (faiss-gpu). Its stage resources
(`runtime.stage_options`) are those of ``cpu`` work, or of ``encode`` work when it takes a GPU:
the node types that have GPUs are the encoders', not the CPU nodes'.

BM25 (`bm25_search`): the task streams the corpus from its file into a `BM25Retriever` and
searches each collection's query texts. It asks for memory in proportion to the corpus text
(`bm25_memory_bytes`).

A memory request larger than any node up now waits for an autoscaler to add a node that has it;
without stage resources set (no node type to ask for, as on one machine) it is cut to the largest
node's memory, with a warning.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from synrank.evaluate.index import IndexOptions, default_nlist
from synrank.evaluate.runfile import Run

log = logging.getLogger(__name__)

BASE_BYTES = 512 * 2**20  # Python, faiss or bm25s, pyarrow and one shard batch in the task
DOC_ID_BYTES = 100  # one doc id held by the task: a short Python str and its list slot
RUN_ENTRY_BYTES = 100  # one (doc id, score) of a run dict
BM25_BYTES_PER_TEXT_BYTE = 8  # bm25s holds token ids as Python ints (~36 B per ~6-byte token) while indexing
MAX_SEARCH_CPUS = 8


@dataclass
class QuerySet:
    """One collection's queries against a corpus: ids in run order, and their embedding shards
    (dense) or texts (BM25)."""

    query_ids: list[str]
    shard_paths: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


@dataclass
class CorpusRuns:
    """What a search task returns: a run per collection, and where its time went."""

    runs: dict[str, Run]
    index_s: float
    search_s: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)


def index_memory_bytes(num_docs: int, dim: int, options: IndexOptions, num_queries: int = 0, top_k: int = 100) -> int:
    """Bytes a search task holds: the vectors (float32), what the index adds per vector (HNSW:
    2*M level-0 links of 4 bytes, upper levels and the augmented dimension; IVF: an 8-byte id and
    the training sample), the doc ids, the query vectors and the runs, plus a fixed base. The same
    on a GPU, whose task still holds the ids and falls back to a CPU index for k > 2048."""
    per_doc = dim * 4 + DOC_ID_BYTES
    once = 0
    if options.kind == "hnsw":
        per_doc += 4 + options.hnsw_m * 2 * 4 + options.hnsw_m * 4 // max(1, options.hnsw_m - 1) + 16
    elif options.kind == "ivf":
        per_doc += 8
        once = min(num_docs, 256 * (options.nlist or default_nlist(num_docs))) * dim * 4
    return BASE_BYTES + num_docs * per_doc + once + num_queries * (dim * 4 + top_k * RUN_ENTRY_BYTES)


def bm25_memory_bytes(text_bytes: int, num_docs: int, num_queries: int = 0, top_k: int = 100) -> int:
    return (BASE_BYTES + BM25_BYTES_PER_TEXT_BYTE * text_bytes + num_docs * DOC_ID_BYTES
            + num_queries * top_k * RUN_ENTRY_BYTES)


# ---------------------------------------------------------------------------------------------
# the tasks


def _search_threads() -> int:
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def _dense_task(passage_paths: list[str], num_docs: int, dim: int, query_sets: dict[str, QuerySet], top_k: int,
                options: IndexOptions) -> CorpusRuns:
    import faiss

    from synrank.evaluate.encode import read_all, read_shards
    from synrank.evaluate.index import DenseIndex, results_to_run

    faiss.omp_set_num_threads(_search_threads())
    started = time.perf_counter()
    index = DenseIndex.build(dim, lambda: read_shards(passage_paths), num_docs, options, top_k=top_k)
    index_s = time.perf_counter() - started
    runs: dict[str, Run] = {}
    search_s: dict[str, float] = {}
    for name, queries in query_sets.items():
        started = time.perf_counter()
        qids, qvecs = read_all(queries.shard_paths)
        order = {q: i for i, q in enumerate(qids)}
        qvecs = qvecs[[order[q] for q in queries.query_ids]]
        runs[name] = results_to_run(queries.query_ids, index.search(qvecs, top_k), index.doc_ids)
        search_s[name] = time.perf_counter() - started
    return CorpusRuns(runs, index_s, search_s, {"index": index.kind, "on_gpu": index.on_gpu,
                                                "augmented_for_inner_product": index.augment_norm is not None})


def _bm25_task(corpus_path: str, query_sets: dict[str, QuerySet], top_k: int) -> CorpusRuns:
    from synrank.data.readers import iter_corpus
    from synrank.evaluate.bm25 import BM25Retriever

    started = time.perf_counter()
    retriever = BM25Retriever(n_threads=_search_threads())
    retriever.index_batches(iter_corpus(corpus_path, batch_size=10_000))
    index_s = time.perf_counter() - started
    runs: dict[str, Run] = {}
    search_s: dict[str, float] = {}
    for name, queries in query_sets.items():
        started = time.perf_counter()
        runs[name] = retriever.search(queries.query_ids, queries.texts, k=top_k)
        search_s[name] = time.perf_counter() - started
    return CorpusRuns(runs, index_s, search_s, retriever.settings)


# ---------------------------------------------------------------------------------------------
# the driver side


def _alive_nodes() -> list[dict[str, float]]:
    import ray

    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def task_options(memory: int, gpu: bool, what: str) -> dict[str, Any]:
    """Ray options of a search task: CPUs (up to 8, as many as the largest node has), `memory`
    bytes, one GPU if `gpu`, and the stage resources of its kind (module doc)."""
    from synrank import runtime

    nodes = _alive_nodes()
    cpus = max(1, min(MAX_SEARCH_CPUS, int(max((n.get("CPU", 0.0) for n in nodes), default=1))))
    stage = runtime.task_options("encode" if gpu else "cpu")
    largest = int(max((n.get("memory", 0.0) for n in nodes), default=0))
    if memory > largest:
        if stage.get("resources"):
            log.warning("%s needs %.1f GiB; no node up has that much (largest: %.1f GiB): it waits for the "
                        "autoscaler to add one", what, memory / 2**30, largest / 2**30)
        elif largest:
            log.warning("%s needs about %.1f GiB, more than any node has (largest: %.1f GiB): asking for that; "
                        "it may run out of memory", what, memory / 2**30, largest / 2**30)
            memory = largest
    options: dict[str, Any] = {"num_cpus": cpus, "memory": memory, **stage}
    if gpu:
        options["num_gpus"] = 1
    return options


def _wants_gpu(options: IndexOptions, cluster_gpus: float, top_k: int) -> bool:
    from synrank.evaluate.index import GPU_MAX_K

    if options.use_gpu is not None:
        return options.use_gpu
    return cluster_gpus >= 1 and options.kind != "hnsw" and top_k <= GPU_MAX_K


def _ensure_node_for(opts: dict[str, Any], what: str) -> None:
    from synrank.runtime import ensure_node

    ensure_node({"CPU": opts["num_cpus"], "GPU": opts.get("num_gpus", 0), "memory": opts["memory"],
                 **opts.get("resources", {})}, what)


def dense_search(corpus: str, passage_paths: list[str], num_docs: int, dim: int, query_sets: dict[str, QuerySet],
                 top_k: int, options: IndexOptions, cluster_gpus: float):
    """Start the search task of one corpus; returns its ObjectRef (a CorpusRuns)."""
    import dataclasses

    import ray

    gpu = _wants_gpu(options, cluster_gpus, top_k)
    # A task that holds no GPU must not use one its node has (reserved by other work).
    task_index = dataclasses.replace(options, use_gpu=options.use_gpu if gpu else False)
    memory = index_memory_bytes(num_docs, dim, options, sum(len(q.query_ids) for q in query_sets.values()), top_k)
    what = f"the {options.kind} index of {corpus}"
    opts = task_options(memory, gpu, what)
    _ensure_node_for(opts, what)
    log.info("searching %s (%d docs, dim %d) in a task with %s", corpus, num_docs, dim, opts)
    return ray.remote(_dense_task).options(**opts, name=f"synrank-search:{corpus}").remote(
        passage_paths, num_docs, dim, query_sets, top_k, task_index)


def bm25_search(corpus_path: str, num_docs: int, text_bytes: int, query_sets: dict[str, QuerySet], top_k: int):
    """Start the BM25 task of one corpus; returns its ObjectRef (a CorpusRuns)."""
    import ray

    memory = bm25_memory_bytes(text_bytes, num_docs, sum(len(q.query_ids) for q in query_sets.values()), top_k)
    what = f"the BM25 index of {corpus_path}"
    opts = task_options(memory, False, what)
    _ensure_node_for(opts, what)
    return ray.remote(_bm25_task).options(**opts, name=f"synrank-bm25:{corpus_path}").remote(
        corpus_path, query_sets, top_k)


def gather(refs: list, what: str) -> list[CorpusRuns]:
    """The tasks' results in the order of `refs`, waited for with stall warnings while none
    finishes. The first task to fail raises its own error (a DataError stays a DataError)."""
    import ray

    from synrank.runtime import watch_progress

    results: dict[Any, CorpusRuns] = {}
    pending = list(refs)
    with watch_progress(what) as watch:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            watch.tick()
            for ref in done:
                results[ref] = get_unwrapped(ref)
    return [results[ref] for ref in refs]


def get_unwrapped(ref):
    """`ray.get(ref)`, raising a failed task's own exception rather than Ray's wrapper of it."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise

