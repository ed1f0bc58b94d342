"""BM25 as the built-in baseline "model" named ``bm25``: `synrank.data.bm25.BM25Index` (its settings,
`DEFAULTS`, are the baseline's: Lucene BM25 with Anserini's k1=0.9, b=0.4) turned into runs.

The corpus is streamed (`readers.iter_corpus`) into the index batch by batch; only token ids are
kept (the index is in memory, as bm25s' is). Documents that share no term with a query are not
returned (their score is 0, as in Lucene), so a query may have fewer than k results. The result is
deterministic: same corpus and queries, same run.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

from synrank.data.bm25 import DEFAULTS, BM25Index
from synrank.evaluate.runfile import Run

BM25_NAME = "bm25"

__all__ = ["BM25_NAME", "DEFAULTS", "BM25Retriever"]


class BM25Retriever:
    """The evaluation's side of a `BM25Index`: index a corpus's batches, search query ids into a run."""

    def __init__(self, n_threads: int | None = None, **settings) -> None:
        self._settings = {**settings, "n_threads": n_threads if n_threads is not None else min(4, os.cpu_count() or 1)}
        self._index: BM25Index | None = None

    @property
    def settings(self) -> dict:
        """The BM25 settings the corpus was indexed with (`DEFAULTS` unless overridden)."""
        return self._indexed().settings

    @property
    def doc_ids(self) -> list[str]:
        return self._indexed().doc_ids

    def _indexed(self) -> BM25Index:
        if self._index is None:
            raise RuntimeError("index_batches() first")
        return self._index

    def index_batches(self, batches: Iterable, progress: Callable[[int], None] | None = None) -> int:
        """Index CORPUS record batches (doc_id, title, text); returns the number of documents."""
        self._index = BM25Index.from_corpus_batches(batches, progress, **self._settings)
        return len(self._index)

    def search(self, query_ids: list[str], query_texts: list[str], k: int = 100, show_progress: bool = False) -> Run:
        """{qid: {doc_id: score}} with each query's top k documents of positive score."""
        hits = self._indexed().search(list(query_texts), k, show_progress=show_progress)
        return {qid: dict(row) for qid, row in zip(query_ids, hits)}
