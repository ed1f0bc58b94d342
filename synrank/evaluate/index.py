"""faiss indexes over passage embeddings, built from shards on disk, searched in query batches.

Kinds (all inner product: synrank encoders score by dot product, which is cosine for normalised
embeddings):

- ``flat``: exact search (IndexFlatIP). The default; exact for any corpus that fits in memory.
- ``ivf``: IndexIVFFlat, `nlist` k-means cells (default ~4·sqrt(N), at least 39 training points
  per cell), `nprobe` cells visited per query (default 2·sqrt(nlist), at least 16). Trained on a seeded
  random sample of the corpus (at most 256 points per cell), read from the shards.
- ``hnsw``: IndexHNSWFlat (M=32, efConstruction=128, efSearch=max(128, 2k)). No training. A graph
  search needs a metric: on unit-length vectors inner product ranks as (negative) L2 distance
  does, so the graph is built over inner products. Inner product on vectors of other lengths is
  not a metric (a long vector is "nearest" to everything, and greedy graph walks miss neighbours),
  so then each passage x is augmented to [x, sqrt(R^2 - |x|^2)] (R: the largest norm) and each
  query q to [q, 0], whose L2 distance is |q|^2 + R^2 - 2 q.x: the L2 nearest neighbours are the
  inner-product best, and scores are mapped back to q.x (Bachrach et al., RecSys 2014). Which
  case applies is found by one pass over the vectors before they are added.

GPUs. When ``faiss.get_num_gpus() > 0`` (faiss-gpu installed and a GPU visible) flat and IVF
indexes live on the GPUs: the empty (trained) index is cloned onto all of them, sharded, before
the vectors are added, so the corpus is never held twice. faiss has no GPU HNSW; an ``hnsw``
index stays on the CPU. faiss' GPU search returns at most 2048 results per query (k) and visits
at most 2048 cells (nprobe); a larger k falls back to a CPU index.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

log = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "ivf", "hnsw")
GPU_MAX_K = 2048


@dataclass
class IndexOptions:
    kind: str = "flat"
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 128
    ef_search: int | None = None
    use_gpu: bool | None = None  # None: when faiss sees a GPU
    seed: int = 0


def _faiss():
    import faiss

    return faiss


def gpus_available() -> int:
    try:
        return int(_faiss().get_num_gpus())
    except Exception:  # pragma: no cover - a broken faiss-gpu install
        return 0


def default_nlist(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))


def default_nprobe(nlist: int) -> int:
    return min(nlist, max(16, int(2 * math.sqrt(nlist))))


class DenseIndex:
    """A faiss index and the doc ids of its rows.

    Build with `DenseIndex.build(dim, shards, ...)` where `shards` is a callable returning a fresh
    iterator of (doc_ids, float32 matrix) chunks (called twice for IVF: sample, then add).
    """

    def __init__(self, index, doc_ids: list[str], kind: str, on_gpu: bool, augment_norm: float | None = None):
        self.index = index
        self.doc_ids = doc_ids
        self.kind = kind
        self.on_gpu = on_gpu
        self.augment_norm = augment_norm  # R of the inner-product-to-L2 augmentation (module doc), or None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(
        cls,
        dim: int,
        shards: Callable[[], Iterator[tuple[list[str], np.ndarray]]],
        n_total: int,
        options: IndexOptions | None = None,
        *,
        top_k: int = 100,
        progress: Callable[[int], None] | None = None,
    ) -> "DenseIndex":
        faiss = _faiss()
        options = options or IndexOptions()
        if options.kind not in INDEX_KINDS:
            raise ValueError(f"index must be one of {', '.join(INDEX_KINDS)}, got {options.kind!r}")
        if n_total < 1:
            raise ValueError("cannot build an index over an empty corpus")
        n_gpus = gpus_available()
        want_gpu = n_gpus > 0 if options.use_gpu is None else options.use_gpu
        if want_gpu and n_gpus == 0:
            raise ValueError("use_gpu=True but faiss sees no GPU (is faiss-gpu installed?)")
        if want_gpu and options.kind == "hnsw":
            log.info("faiss has no GPU HNSW index; the hnsw index stays on the CPU")
            want_gpu = False
        if want_gpu and top_k > GPU_MAX_K:
            log.warning("top_k=%d exceeds faiss-gpu's limit of %d; searching on the CPU", top_k, GPU_MAX_K)
            want_gpu = False

        augment_norm = None
        if options.kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif options.kind == "hnsw":
            augment_norm = _largest_norm_unless_unit(shards)
            if augment_norm is None:
                index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            else:
                log.info("hnsw: the vectors are not unit-length (largest norm %.4g); the graph is built over L2 "
                         "distances of augmented vectors, which rank as inner products do", augment_norm)
                index = faiss.IndexHNSWFlat(dim + 1, options.hnsw_m, faiss.METRIC_L2)
            index.hnsw.efConstruction = options.ef_construction
            index.hnsw.efSearch = options.ef_search or max(128, 2 * top_k)
        else:
            nlist = options.nlist or default_nlist(n_total)
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.nprobe = min(nlist, options.nprobe or default_nprobe(nlist))
            sample = _training_sample(shards, n_total, min(n_total, 256 * nlist), options.seed)
            log.info("training IVF (nlist=%d, nprobe=%d) on %d vectors", nlist, index.nprobe, len(sample))
            index.train(sample)
            del sample

        if want_gpu:
            index = _to_gpus(index, n_gpus)

        doc_ids: list[str] = []
        for ids, vectors in shards():
            if vectors.shape[1] != dim:
                raise ValueError(f"embedding dimension {vectors.shape[1]} != index dimension {dim}")
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            index.add(vectors if augment_norm is None else _augment_passages(vectors, augment_norm))
            doc_ids.extend(ids)
            if progress is not None:
                progress(len(ids))
        if len(doc_ids) != index.ntotal:  # pragma: no cover - faiss invariant
            raise RuntimeError(f"index holds {index.ntotal} vectors for {len(doc_ids)} ids")
        return cls(index, doc_ids, options.kind, want_gpu, augment_norm)

    def search(self, queries: np.ndarray, k: int, batch_size: int = 1024,
               progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (start row, scores [b, k'], row indices [b, k']) per query batch; -1 marks no result."""
        k = min(k, self.ntotal)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        for start in range(0, len(queries), batch_size):
            batch = queries[start : start + batch_size]
            if self.augment_norm is None:
                scores, rows = self.index.search(batch, k)
            else:
                distances, rows = self.index.search(np.hstack([batch, np.zeros((len(batch), 1), np.float32)]), k)
                scores = _inner_products(batch, distances, self.augment_norm)
            if progress is not None:
                progress(len(rows))
            yield start, scores, rows


def _to_gpus(index, n_gpus: int):
    """Clone an empty (trained) CPU index onto every GPU, sharded; the vectors are added after."""
    faiss = _faiss()
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    options.useFloat16 = False
    gpu_index = faiss.index_cpu_to_all_gpus(index, co=options, ngpu=n_gpus)
    if hasattr(index, "nprobe"):
        faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", min(int(index.nprobe), GPU_MAX_K))
    log.info("faiss index on %d GPU(s)", n_gpus)
    return gpu_index


UNIT_NORM_TOLERANCE = 1e-3


def _largest_norm_unless_unit(shards) -> float | None:
    """The largest vector norm, or None when every vector is unit-length (within 1e-3)."""
    largest, off_unit = 0.0, False
    for _, vectors in shards():
        norms = np.linalg.norm(np.asarray(vectors, dtype=np.float32), axis=1)
        if len(norms):
            largest = max(largest, float(norms.max()))
            off_unit = off_unit or bool(np.any(np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE))
    return largest if off_unit else None


def _augment_passages(vectors: np.ndarray, norm: float) -> np.ndarray:
    extra = np.sqrt(np.maximum(norm * norm - np.einsum("ij,ij->i", vectors, vectors), 0.0))
    return np.ascontiguousarray(np.hstack([vectors, extra[:, None].astype(np.float32)]))


def _inner_products(queries: np.ndarray, distances: np.ndarray, norm: float) -> np.ndarray:
    """q.x from the squared L2 distance |q|^2 + R^2 - 2 q.x of augmented vectors."""
    q_norms = np.einsum("ij,ij->i", queries, queries).astype(np.float64)[:, None]
    return ((q_norms + norm * norm - distances.astype(np.float64)) / 2).astype(np.float32)


def _training_sample(shards, n_total: int, n_sample: int, seed: int) -> np.ndarray:
    """A seeded uniform sample of about n_sample vectors, read shard by shard."""
    rng = np.random.default_rng(seed)
    fraction = min(1.0, n_sample / max(1, n_total))
    parts: list[np.ndarray] = []
    for _, vectors in shards():
        if fraction >= 1.0:
            parts.append(np.asarray(vectors, dtype=np.float32))
        else:
            keep = rng.random(len(vectors)) < fraction
            parts.append(np.asarray(vectors[keep], dtype=np.float32))
    return np.ascontiguousarray(np.concatenate(parts)) if parts else np.zeros((0, 0), np.float32)


def results_to_run(
    query_ids: Iterable[str],
    batches: Iterable[tuple[int, np.ndarray, np.ndarray]],
    doc_ids: list[str],
) -> dict[str, dict[str, float]]:
    """Map faiss rows to doc ids: {qid: {doc_id: score}} (no -1 rows, no non-finite scores)."""
    qids = list(query_ids)
    run: dict[str, dict[str, float]] = {}
    for start, scores, rows in batches:
        for offset in range(len(rows)):
            docs: dict[str, float] = {}
            for score, row in zip(scores[offset].tolist(), rows[offset].tolist()):
                if row >= 0 and math.isfinite(score):
                    docs[doc_ids[row]] = score
            run[qids[start + offset]] = docs
    return run
