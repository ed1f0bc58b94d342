"""The torch float32 reference that synrank's encoding paths are held to, computed once per session.

The packaged all-MiniLM-L6-v2 encodes Cranfield, CISI and MED with `sentence_transformers`
(`SentenceTransformer.encode`, normalised), the peer a user would check synrank against. The BEIR
files are read with `json` and `csv`, not synrank's readers, so the reference is independent of
the code under test. Passages are "title text" cut at the length a test asks for (each length is
encoded once per session), queries at synrank's default query length.

Used by tests/test_evaluate_dense.py (the Ray Data evaluation path must score as this) and
tests/test_encoder_onnx.py (the ONNX backends must embed and rank as this).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REFERENCE_COLLECTIONS = ("cranfield", "cisi", "med")


@dataclass(frozen=True)
class EncodedCollection:
    doc_ids: list[str]
    passages: list[str]
    query_ids: list[str]  # the judged queries, in queries.jsonl order
    queries: list[str]
    qrels: dict[str, dict[str, int]]
    query_vectors: np.ndarray
    passage_vectors: np.ndarray


def read_beir(folder: Path) -> tuple[list[dict], dict[str, str], dict[str, dict[str, int]]]:
    """(documents, {query id: text}, {query id: {doc id: grade}}) of a BEIR folder's test split."""
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line]
    queries = {}
    for line in (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        if line:
            obj = json.loads(line)
            queries[str(obj["_id"])] = obj["text"]
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / "test.tsv", encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t")
        next(rows)
        for qid, did, score in rows:
            qrels.setdefault(qid, {})[did] = int(score)
    return docs, queries, qrels


def _passage(doc: dict) -> str:
    title, text = (doc.get("title") or "").strip(), (doc.get("text") or "").strip()
    return f"{title} {text}" if title else text


class MiniLMReference:
    """`at(passage_length)`: {collection: EncodedCollection}, each length encoded once per session."""

    def __init__(self, shared_data: Path) -> None:
        self._shared_data = shared_data
        self._model = None
        self._encoded: dict[int, dict[str, EncodedCollection]] = {}

    def at(self, passage_length: int) -> dict[str, EncodedCollection]:
        if passage_length not in self._encoded:
            self._encoded[passage_length] = {name: self._encode(name, passage_length)
                                             for name in REFERENCE_COLLECTIONS}
        return self._encoded[passage_length]

    def _encode(self, name: str, passage_length: int) -> EncodedCollection:
        from sentence_transformers import SentenceTransformer

        from synrank.config import EncoderConfig
        from synrank.models import resolve_encoder

        if self._model is None:
            self._model = SentenceTransformer(resolve_encoder(), device="cpu")
        model = self._model
        docs, queries, qrels = read_beir(self._shared_data / name)
        query_ids = [q for q in queries if q in qrels]
        query_texts = [queries[q] for q in query_ids]
        passages = [_passage(doc) for doc in docs]
        model.max_seq_length = passage_length
        passage_vectors = model.encode(passages, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
        model.max_seq_length = EncoderConfig().max_query_length
        query_vectors = model.encode(query_texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
        return EncodedCollection([str(doc["_id"]) for doc in docs], passages, query_ids, query_texts, qrels,
                                 query_vectors, passage_vectors)


@pytest.fixture(scope="session")
def minilm_reference(shared_data) -> MiniLMReference:
    return MiniLMReference(shared_data)
