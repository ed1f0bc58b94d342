"""A small BM25 index over a corpus table (bm25s), shared by training groups (hard negatives) and
anything else that needs lexical candidates.

>>> index = BM25Index.from_corpus(corpus)                 # CORPUS table: doc_id, title, text
>>> hits = index.search(["what is lift?"], k=10)          # [[(doc_id, score), ...]] best first

Documents are indexed as ``format_passage(title, text)`` (the same text the encoder sees),
lower-cased, English stop words removed, no stemming (PyStemmer is not a dependency). Only hits
with a positive score are returned: a document that shares no term with the query is not a BM25
candidate, it is a random one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa


class BM25Index:
    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75) -> None:
        import bm25s

        if len(doc_ids) != len(texts):
            raise ValueError(f"BM25Index: {len(doc_ids)} doc ids but {len(texts)} texts")
        if not doc_ids:
            raise ValueError("BM25Index: the corpus is empty")
        self.doc_ids = list(doc_ids)
        tokens = bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        self._bm25.index(tokens, show_progress=False)

    @classmethod
    def from_corpus(cls, corpus: pa.Table, **kwargs) -> "BM25Index":
        from synrank.encoder import format_passage

        ids = corpus.column("doc_id").to_pylist()
        titles = corpus.column("title").to_pylist()
        texts = corpus.column("text").to_pylist()
        return cls(ids, [format_passage(t, x) for t, x in zip(titles, texts)], **kwargs)

    def __len__(self) -> int:
        return len(self.doc_ids)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Top-k (doc_id, score) per query, best first, positive scores only."""
        import bm25s

        if k <= 0 or not queries:
            return [[] for _ in queries]
        k = min(k, len(self.doc_ids))
        tokens = bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
        # bm25s rejects an all-empty query list entry poorly; give empty queries a no-match token.
        tokens = [t if t else ["\x00"] for t in tokens]
        docs, scores = self._bm25.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        out: list[list[tuple[str, float]]] = []
        for row_docs, row_scores in zip(np.asarray(docs), np.asarray(scores)):
            out.append([(self.doc_ids[int(d)], float(s)) for d, s in zip(row_docs, row_scores) if s > 0])
        return out
