"""The dense evaluation path end to end on the real collections, against an independent computation.

The untrained packaged all-MiniLM-L6-v2 is evaluated by `synrank.evaluate.evaluate_model` (Ray Data
actor encoding, Parquet shards, faiss flat index, pytrec_eval) on Cranfield, CISI and MED; the test
recomputes nDCG@10 and Recall@100 on its own from the session's sentence-transformers reference
(tests/fixtures_minilm.py: the BEIR files read with `json`, `SentenceTransformer(...).encode`),
NumPy brute-force top 100 and pytrec_eval. Both use the same settings: passages "title text",
queries cut at 64 tokens (synrank's default), normalised embeddings, dot product. Passages are cut
at 64 tokens instead of the default 256, which cuts the cost of encoding 3,893 documents on 2 CPUs
(the Ray path: about 103 s here against 170 s at 128 tokens) and checks on the way that encoder
overrides reach the Ray actors; the default length goes through the same code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures_minilm import REFERENCE_COLLECTIONS
from synrank.evaluate.runfile import check_run, read_run

COLLECTIONS = REFERENCE_COLLECTIONS
PASSAGE_LENGTH = 64

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synrank_results(ray_session, shared_data, tmp_path_factory):
    from synrank.evaluate import evaluate_model

    out = tmp_path_factory.mktemp("dense")
    return evaluate_model("default", [str(shared_data / c) for c in COLLECTIONS], str(out), progress=False,
                          encoder={"max_passage_length": PASSAGE_LENGTH})


@pytest.fixture(scope="module")
def reference(minilm_reference):
    """nDCG@10 and Recall@100 of sentence-transformers' embeddings: NumPy brute-force top 100, pytrec_eval."""
    import pytrec_eval

    out = {}
    for name, encoded in minilm_reference.at(PASSAGE_LENGTH).items():
        scores = encoded.query_vectors.astype(np.float64) @ encoded.passage_vectors.astype(np.float64).T
        top = np.argpartition(-scores, 100, axis=1)[:, :100]
        run = {qid: {encoded.doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(encoded.query_ids)}
        per_query = pytrec_eval.RelevanceEvaluator(encoded.qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
        out[name] = {
            "ndcg@10": float(np.mean([v["ndcg_cut_10"] for v in per_query.values()])),
            "recall@100": float(np.mean([v["recall_100"] for v in per_query.values()])),
            "n_queries": len(per_query),
            "n_docs": len(encoded.doc_ids),
        }
    return out


@pytest.mark.parametrize("name", COLLECTIONS)
def test_dense_metrics_equal_an_independent_computation(synrank_results, reference, name):
    got, ref = synrank_results[name], reference[name]
    assert got["num_queries"] == ref["n_queries"] == len(got["per_query"])
    assert got["num_docs"] == ref["n_docs"]
    for measure in ("ndcg@10", "recall@100"):
        assert got["metrics"][measure] == pytest.approx(ref[measure], abs=1e-4), measure
    assert 0.0 < got["metrics"]["ndcg@10"] < 1.0


@pytest.mark.parametrize("name", COLLECTIONS)
def test_dense_outputs_are_valid_and_consistent(synrank_results, name):
    from synrank.data.readers import read_qrels
    from synrank.evaluate.metrics import evaluate_run, mean_metrics, qrels_from_table

    result = synrank_results[name]
    assert check_run(result["run_path"]) == []
    run = read_run(result["run_path"], strict=True)
    assert all(len(docs) == 100 for docs in run.values())
    saved = json.loads(Path(result["metrics_path"]).read_text(encoding="utf-8"))
    assert saved["metrics"] == pytest.approx(result["metrics"])
    assert saved["settings"]["encoder"] == {"max_passage_length": PASSAGE_LENGTH}
    assert set(saved["per_query"]) == set(run)
    # The run read back from disk gives the same numbers: scores round-trip exactly.
    qrels = qrels_from_table(read_qrels(saved["collection_path"]))
    again = mean_metrics(evaluate_run({q: qrels[q] for q in run}, run))
    assert again == pytest.approx(result["metrics"], abs=1e-12)
    # Embedding shards are removed unless keep_embeddings=True.
    assert not (Path(result["run_path"]).parent / "embeddings").exists()


@pytest.fixture(scope="module")
def bfloat16_results(ray_session, shared_data, tmp_path_factory):
    from synrank.evaluate import evaluate_model

    out = tmp_path_factory.mktemp("dense-bf16")
    return evaluate_model("default", [str(shared_data / c) for c in COLLECTIONS], str(out), progress=False,
                          encoder={"max_passage_length": PASSAGE_LENGTH, "inference_dtype": "bfloat16"})


@pytest.mark.parametrize("name", COLLECTIONS)
def test_bfloat16_encoding_ranks_as_float32_does(synrank_results, bfloat16_results, name):
    """bfloat16 weights (the default on GPUs, an option on CPUs) must not change the ranking beyond
    noise: nDCG@10 within 0.005 of the float32 path, and not identical runs (the weights did change)."""
    fp32, bf16 = synrank_results[name], bfloat16_results[name]
    assert bf16["metrics"]["ndcg@10"] == pytest.approx(fp32["metrics"]["ndcg@10"], abs=0.005)
    assert bf16["metrics"]["recall@100"] == pytest.approx(fp32["metrics"]["recall@100"], abs=0.01)
    assert read_run(bf16["run_path"], strict=True) != read_run(fp32["run_path"], strict=True)
