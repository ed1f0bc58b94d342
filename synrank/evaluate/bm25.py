"""BM25 (bm25s) as the built-in baseline "model" named ``bm25``.

Settings, fixed so that every report's baseline means the same thing: Lucene's BM25 variant
(``method="lucene"``) with Anserini's defaults k1=0.9, b=0.4; lower-cased ``\\w\\w+`` tokens,
bm25s' English stopword list, no stemming (PyStemmer is not a dependency; pass a stemmer
callable to `BM25Retriever` for one). Passages are indexed as ``format_passage(title, text)``,
the same text the dense encoders see.

The corpus is streamed with `readers.iter_corpus` and tokenised batch by batch; only token ids
are kept (the index is in memory, as bm25s' is). Documents that share no term with a query are
not returned (their score is 0, as in Lucene), so a query may have fewer than k results. The
result is deterministic: same corpus and queries, same run.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Iterable

import numpy as np

from synrank.encoder import format_passage
from synrank.evaluate.runfile import Run

log = logging.getLogger(__name__)

BM25_NAME = "bm25"
DEFAULTS = {"method": "lucene", "k1": 0.9, "b": 0.4, "stopwords": "en", "stemmer": None}


class BM25Retriever:
    def __init__(self, k1: float = 0.9, b: float = 0.4, method: str = "lucene", stopwords: str | None = "en",
                 stemmer: Callable[[str], str] | None = None, n_threads: int | None = None) -> None:
        from bm25s.tokenization import Tokenizer

        self.settings = {"method": method, "k1": k1, "b": b, "stopwords": stopwords,
                         "stemmer": getattr(stemmer, "__name__", None) if stemmer else None}
        self._tokenizer = Tokenizer(lower=True, stopwords=stopwords or [], stemmer=stemmer)
        self._k1, self._b, self._method = k1, b, method
        self._n_threads = n_threads if n_threads is not None else min(4, os.cpu_count() or 1)
        self._retriever = None
        self.doc_ids: list[str] = []

    def index_batches(self, batches: Iterable, progress: Callable[[int], None] | None = None) -> int:
        """Index CORPUS record batches (doc_id, title, text); returns the number of documents."""
        import bm25s
        from bm25s.tokenization import Tokenized

        token_ids: list[list[int]] = []
        for batch in batches:
            ids = batch.column(0).to_pylist()
            texts = [format_passage(t, x) for t, x in zip(batch.column(1).to_pylist(), batch.column(2).to_pylist())]
            token_ids.extend(self._tokenizer.tokenize(texts, update_vocab=True, return_as="ids", show_progress=False))
            self.doc_ids.extend(ids)
            if progress is not None:
                progress(len(ids))
        if not self.doc_ids:
            raise ValueError("cannot index an empty corpus")
        retriever = bm25s.BM25(k1=self._k1, b=self._b, method=self._method)
        retriever.index(Tokenized(ids=token_ids, vocab=self._tokenizer.get_vocab_dict()), show_progress=False)
        self._retriever = retriever
        return len(self.doc_ids)

    def search(self, query_ids: list[str], query_texts: list[str], k: int = 100, show_progress: bool = False) -> Run:
        """{qid: {doc_id: score}} with each query's top k documents of positive score."""
        if self._retriever is None:
            raise RuntimeError("index_batches() first")
        k = min(k, len(self.doc_ids))
        tokens = self._tokenizer.tokenize(list(query_texts), update_vocab=False, return_as="ids", show_progress=False)
        run: Run = {}
        nonempty = [i for i, t in enumerate(tokens) if t]
        for i, qid in enumerate(query_ids):
            run[qid] = {}
        if not nonempty:
            return run
        rows, scores = self._retriever.retrieve(
            [tokens[i] for i in nonempty], k=k, return_as="tuple", show_progress=show_progress,
            n_threads=self._n_threads, sorted=True,
        )
        rows, scores = np.asarray(rows), np.asarray(scores, dtype=np.float32)
        for out_row, i in enumerate(nonempty):
            docs: dict[str, float] = {}
            for row, score in zip(rows[out_row].tolist(), scores[out_row].tolist()):
                if score > 0.0:
                    docs[self.doc_ids[row]] = score
            run[query_ids[i]] = docs
        return run
