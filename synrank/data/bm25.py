"""BM25 (bm25s) over a corpus, the one implementation behind every lexical ranking in synrank: the
hard negatives of training groups, the candidates of annotation and the ``bm25`` baseline of
`synrank evaluate` (`synrank.evaluate.bm25` turns its hits into runs).

>>> index = BM25Index.from_corpus(corpus)                 # CORPUS table: doc_id, title, text
>>> hits = index.search(["what is lift?"], k=10)          # [[(doc_id, score), ...]] best first

Settings (`DEFAULTS`), the same everywhere so that a baseline, a negative and a candidate mean the
same thing: Lucene's BM25 variant (``method="lucene"``) with Anserini's defaults k1=0.9, b=0.4;
lower-cased ``\\w\\w+`` tokens, bm25s' English stopword list, no stemming (PyStemmer is not a
dependency; pass a stemmer callable for one). Documents are indexed as
``format_passage(title, text)``, the same text the encoder sees.

Only hits with a positive score are returned: a document that shares no term with the query is
not a BM25 candidate, it is a random one (Lucene scores it 0 too), so a query may get fewer than
k hits. Same corpus and queries, same hits.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

from synrank.text import format_passage

DEFAULTS = {"method": "lucene", "k1": 0.9, "b": 0.4, "stopwords": "en", "stemmer": None}

Hits = list[tuple[str, float]]


class BM25Index:
    """An in-memory BM25 index of documents (`doc_ids` with their already formatted `texts`)."""

    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str], **settings) -> None:
        """`settings`: k1, b, method, stopwords, stemmer (`DEFAULTS` for those not given) and
        n_threads (of a search; 1 unless given)."""
        if len(doc_ids) != len(texts):
            raise ValueError(f"BM25Index: {len(doc_ids)} doc ids but {len(texts)} texts")
        self._setup(**settings)
        self._add(doc_ids, texts)
        self._build()

    def _setup(self, *, k1: float = DEFAULTS["k1"], b: float = DEFAULTS["b"], method: str = DEFAULTS["method"],
               stopwords: str | None = DEFAULTS["stopwords"], stemmer: Callable[[str], str] | None = None,
               n_threads: int = 1) -> None:
        from bm25s.tokenization import Tokenizer

        self.settings = {"method": method, "k1": k1, "b": b, "stopwords": stopwords,
                         "stemmer": getattr(stemmer, "__name__", None) if stemmer else None}
        self._tokenizer = Tokenizer(lower=True, stopwords=stopwords or [], stemmer=stemmer)
        self._n_threads = n_threads
        self.doc_ids: list[str] = []
        self._token_ids: list[list[int]] = []
        self._bm25 = None

    @classmethod
    def from_corpus(cls, corpus: pa.Table, **settings) -> "BM25Index":
        """Index a CORPUS table (doc_id, title, text)."""
        return cls.from_corpus_batches(corpus.to_batches(), **settings)

    @classmethod
    def from_corpus_batches(cls, batches: Iterable[pa.RecordBatch | pa.Table],
                            progress: Callable[[int], None] | None = None, **settings) -> "BM25Index":
        """Index CORPUS record batches as they come (only token ids are kept); `progress`, if
        given, is called with each batch's number of documents."""
        index = cls.__new__(cls)
        index._setup(**settings)
        for batch in batches:
            titles, texts = batch.column(1).to_pylist(), batch.column(2).to_pylist()
            index._add(batch.column(0).to_pylist(), [format_passage(t, x) for t, x in zip(titles, texts)])
            if progress is not None:
                progress(batch.num_rows)
        index._build()
        return index

    def _add(self, doc_ids: Sequence[str], texts: Sequence[str]) -> None:
        self._token_ids.extend(self._tokenizer.tokenize(list(texts), update_vocab=True, return_as="ids",
                                                        show_progress=False, allow_empty=False))
        self.doc_ids.extend(doc_ids)

    def _build(self) -> None:
        import bm25s
        from bm25s.tokenization import Tokenized

        if not self.doc_ids:
            raise ValueError("BM25Index: the corpus is empty")
        bm25 = bm25s.BM25(k1=self.settings["k1"], b=self.settings["b"], method=self.settings["method"])
        bm25.index(Tokenized(ids=self._token_ids, vocab=self._tokenizer.get_vocab_dict()), show_progress=False)
        self._bm25, self._token_ids = bm25, []

    def __len__(self) -> int:
        return len(self.doc_ids)

    def search(self, queries: Sequence[str], k: int, show_progress: bool = False) -> list[Hits]:
        """Top-k (doc_id, score) per query, best first, positive scores only."""
        out: list[Hits] = [[] for _ in queries]
        if k <= 0 or not queries:
            return out
        k = min(k, len(self.doc_ids))
        # allow_empty=False: a text without a usable term stays empty; bm25s would otherwise give it the
        # token "", which makes empty documents longer and lets an all-stopword query match them.
        tokens = self._tokenizer.tokenize(list(queries), update_vocab=False, return_as="ids", show_progress=False,
                                          allow_empty=False)
        nonempty = [i for i, t in enumerate(tokens) if t]  # no known term: nothing scores above 0
        if not nonempty:
            return out
        rows, scores = self._bm25.retrieve([tokens[i] for i in nonempty], k=k, return_as="tuple", sorted=True,
                                           show_progress=show_progress, n_threads=self._n_threads)
        rows, scores = np.asarray(rows), np.asarray(scores, dtype=np.float32)
        for out_row, i in enumerate(nonempty):
            out[i] = [(self.doc_ids[row], score)
                      for row, score in zip(rows[out_row].tolist(), scores[out_row].tolist()) if score > 0.0]
        return out
