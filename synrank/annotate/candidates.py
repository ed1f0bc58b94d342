"""Candidates to judge: per query, the top-n passages of a first-stage retriever over a
collection's corpus, optionally plus every passage people judged for the query.

>>> table = select_candidates(collection, retriever="bm25", top_n=10, include_judged=True)

`retriever` is ``bm25`` (bm25s, through `synrank.data.bm25.BM25Index`, shared with the training
stage's hard negatives) or an encoder: ``default`` (the packaged all-MiniLM-L6-v2), a synrank
export, a sentence-transformers directory or a hub name, encoded with the shared
`synrank.encoder.BiEncoder` (exact inner-product search in blocks; fine for the corpora this
stage judges, which are judged pair by pair by an LLM anyway). The annotation stage runs the search
in a Ray task, beside the corpus (`synrank.annotate.pipeline`), not in its driver.

Output columns (`CANDIDATES`): query_id, doc_id, rank (1-based retriever rank; null for a
judged passage the retriever did not return), score (null likewise), retriever, judged (whether
the pair has a human label). One row per (query, passage), queries in collection order, ranked
passages first, then judged ones in qrels order.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

CANDIDATES = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("rank", pa.int32()),
        ("score", pa.float32()),
        ("retriever", pa.string()),
        ("judged", pa.bool_()),
    ]
)


def bm25_search(corpus: pa.Table, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    from synrank.data.bm25 import BM25Index

    return BM25Index.from_corpus(corpus).search(list(queries), k)


def _load_encoder(name: str):
    """A BiEncoder; a plain sentence-transformers directory brings its own pooling and normalisation."""
    from synrank.encoder import SYNRANK_ENCODER_FILE, BiEncoder
    from synrank.models import resolve_encoder

    path = Path(resolve_encoder(name))
    overrides: dict = {}
    if path.is_dir() and not (path / SYNRANK_ENCODER_FILE).exists():
        pooling = path / "1_Pooling" / "config.json"
        if pooling.exists():
            cfg = json.loads(pooling.read_text())
            if cfg.get("pooling_mode_cls_token"):
                overrides["pooling"] = "cls"
            elif not cfg.get("pooling_mode_mean_tokens", True):
                raise ValueError(f"encoder {name!r}: only mean or CLS pooling is supported")
        modules = path / "modules.json"
        if modules.exists():
            types = [m.get("type", "") for m in json.loads(modules.read_text())]
            overrides["normalize"] = any(t.endswith("Normalize") for t in types)
            if not overrides["normalize"]:
                overrides["similarity"] = "dot"
    return BiEncoder.load(str(path), **overrides)


def _passages(corpus: pa.Table) -> list[str]:
    from synrank.text import format_passage

    return [format_passage(t, x) for t, x in zip(corpus.column("title").to_pylist(), corpus.column("text").to_pylist())]


def dense_search(corpus: pa.Table, queries: Sequence[str], k: int, model: str,
                 batch_size: int = 64, block: int = 8192) -> list[list[tuple[str, float]]]:
    """Exact top-k by the encoder's score, corpus in blocks so memory stays at block x queries
    (texts are formatted a block at a time too)."""
    encoder = _load_encoder(model)
    q = encoder.encode(list(queries), "query", batch_size=batch_size)
    k = min(k, corpus.num_rows)
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_idx = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, corpus.num_rows, block):
        emb = encoder.encode(_passages(corpus.slice(start, block)), "passage", batch_size=batch_size)
        scores = np.concatenate([best_scores, q @ emb.T], axis=1)
        idx = np.concatenate([best_idx, np.arange(start, start + len(emb))[None, :].repeat(len(queries), 0)], axis=1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(scores, top, 1)
        best_idx = np.take_along_axis(idx, top, 1)
    ids = corpus.column("doc_id")
    return [[(ids[int(i)].as_py(), float(s)) for i, s in zip(row_i, row_s)]
            for row_i, row_s in zip(best_idx, best_scores)]


def select_candidates(
    collection,
    *,
    retriever: str = "bm25",
    top_n: int = 10,
    include_judged: bool = True,
    query_ids: Sequence[str] | None = None,
    batch_size: int = 64,
) -> pa.Table:
    """CANDIDATES for the collection's queries (or `query_ids`, in that order).

    `collection`: a `synrank.data.readers.Collection` with a corpus. Judged passages come from its
    qrels (any grade, 0 included: a judged non-relevant passage is as useful for agreement).
    """
    if collection.corpus is None:
        raise ValueError(f"{collection.path}: candidates need a corpus, and this collection has none")
    if top_n < 0:
        raise ValueError(f"top_n must be >= 0, got {top_n}")
    texts = dict(zip(collection.queries.column("query_id").to_pylist(), collection.queries.column("text").to_pylist()))
    if query_ids is None:
        query_ids = list(texts)
    missing = [q for q in query_ids if q not in texts]
    if missing:
        raise ValueError(f"{collection.path}: query ids not in the collection: {missing[:5]}")
    query_ids = list(dict.fromkeys(query_ids))
    judged: dict[str, list[str]] = {}
    if collection.qrels is not None:
        for q, d in zip(collection.qrels.column("query_id").to_pylist(), collection.qrels.column("doc_id").to_pylist()):
            judged.setdefault(q, []).append(d)
    if include_judged and collection.qrels is None:
        log.warning("%s: include_judged is set but the collection has no qrels", collection.path)

    name = "bm25" if retriever == "bm25" else f"dense:{retriever}"
    if top_n == 0 or not query_ids:
        hits: list[list[tuple[str, float]]] = [[] for _ in query_ids]
    elif retriever == "bm25":
        hits = bm25_search(collection.corpus, [texts[q] for q in query_ids], top_n)
    else:
        hits = dense_search(collection.corpus, [texts[q] for q in query_ids], top_n, retriever, batch_size)

    cols: dict[str, list] = {f.name: [] for f in CANDIDATES}

    def add(q: str, d: str, rank: int | None, score: float | None, is_judged: bool) -> None:
        cols["query_id"].append(q)
        cols["doc_id"].append(d)
        cols["rank"].append(rank)
        cols["score"].append(score)
        cols["retriever"].append(name)
        cols["judged"].append(is_judged)

    for q, row in zip(query_ids, hits):
        human = set(judged.get(q, ()))
        seen = set()
        for rank, (d, s) in enumerate(row, 1):
            seen.add(d)
            add(q, d, rank, s, d in human)
        if include_judged:
            for d in judged.get(q, ()):
                if d not in seen:
                    seen.add(d)
                    add(q, d, None, None, True)
    return pa.table(cols, schema=CANDIDATES)
