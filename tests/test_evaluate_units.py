"""Run files, measures, faiss indexes and pool sizing: small hand-made inputs, no Ray."""

from __future__ import annotations

import numpy as np
import pytest
import pytrec_eval

from synrank.evaluate.encode import embeddings_table, plan_pool, read_all, shard_name
from synrank.evaluate.index import DenseIndex, IndexOptions, default_nlist, default_nprobe, results_to_run
from synrank.evaluate.metrics import MEASURES, evaluate_run, mean_metrics
from synrank.evaluate.runfile import check_run, ranked, read_run, truncate, write_run
from synrank.data.errors import DataError


# --- run files --------------------------------------------------------------------------------


def test_ranked_follows_trec_eval_tie_order():
    # trec_eval breaks score ties by doc id, descending: 'b' before 'a' at equal scores.
    run = {"q": {"a": 1.0, "b": 1.0}}
    rr = pytrec_eval.RelevanceEvaluator({"q": {"a": 1}}, {"recip_rank"}).evaluate(run)["q"]["recip_rank"]
    assert rr == 0.5
    assert [d for d, _ in ranked(run["q"])] == ["b", "a"]


def test_write_read_roundtrip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    run = {f"q{i}": {f"d{j}": float(np.float32(rng.normal())) for j in range(30)} for i in range(5)}
    path = tmp_path / "run.trec"
    write_run(run, path, tag="my tag")
    assert check_run(path) == []
    back = read_run(path, strict=True)
    assert back == run  # exact floats
    assert list(back) == list(run)
    first = path.read_text().splitlines()[0].split()
    assert len(first) == 6 and first[1] == "Q0" and first[3] == "1" and first[5] == "my_tag"


def test_read_run_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 x t\n")
    with pytest.raises(DataError, match=r"bad.trec:2: score 'x' is not a number"):
        read_run(bad)
    bad.write_text("q1 Q0 d1 1 0.5\n")
    with pytest.raises(DataError, match=r"bad.trec:1: expected 6 columns"):
        read_run(bad)
    bad.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n")
    with pytest.raises(DataError, match="listed twice"):
        read_run(bad)
    bad.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 0.9 t\n")
    assert read_run(bad) == {"q1": {"d1": 0.5, "d2": 0.9}}  # trec_eval ignores ranks
    with pytest.raises(DataError, match="higher than"):
        read_run(bad, strict=True)
    assert any("increases" in p for p in check_run(bad))


def test_check_run_reports_rank_gaps_and_split_queries(tmp_path):
    path = tmp_path / "r.trec"
    path.write_text("q1 Q0 a 1 3 t\nq1 Q0 b 3 2 t\nq2 Q0 a 1 1 t\nq1 Q0 c 4 0 t\n")
    problems = check_run(path)
    assert any("rank 3 after 1" in p for p in problems)
    assert any("appears again" in p for p in problems)


def test_write_run_rejects_ids_with_spaces(tmp_path):
    with pytest.raises(ValueError, match="whitespace"):
        write_run({"q 1": {"d": 1.0}}, tmp_path / "r.trec")


# --- measures ---------------------------------------------------------------------------------


def test_mrr_is_cut_at_10():
    qrels = {"q": {"rel": 1}}
    run = {"q": {**{f"n{i:02d}": 1.0 - i / 100 for i in range(10)}, "rel": 0.5}}  # relevant at rank 11
    uncut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)["q"]["recip_rank"]
    assert uncut == pytest.approx(1 / 11)
    assert evaluate_run(qrels, run)["q"]["mrr@10"] == 0.0
    run["q"]["rel"] = 0.95  # rank 6
    assert evaluate_run(qrels, run)["q"]["mrr@10"] == pytest.approx(1 / 6)


def test_truncate_keeps_what_trec_eval_counts_at_k():
    run = {"q": {"a": 1.0, "b": 1.0, "c": 1.0, "d": 2.0}}
    assert list(truncate(run, 2)["q"]) == ["d", "c"]


def test_graded_ndcg_and_binary_threshold():
    qrels = {"q": {"a": 3, "b": 1, "c": 0}}
    run = {"q": {"b": 3.0, "a": 2.0, "c": 1.0}}
    got = evaluate_run(qrels, run)["q"]
    ideal = 3 / np.log2(2) + 1 / np.log2(3)
    dcg = 1 / np.log2(2) + 3 / np.log2(3)
    assert got["ndcg@10"] == pytest.approx(dcg / ideal)
    assert got["recall@100"] == 1.0  # grades 3 and 1 are relevant at level 1
    assert got["mrr@10"] == 1.0
    strict = evaluate_run(qrels, run, relevance_level=2)["q"]
    assert strict["mrr@10"] == 0.5 and strict["recall@100"] == 1.0
    assert strict["ndcg@10"] == pytest.approx(got["ndcg@10"])  # nDCG always uses the grades


def test_judged_queries_missing_from_the_run_score_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    per_query = evaluate_run(qrels, {"q1": {"a": 1.0}, "other": {"b": 1.0}})
    assert set(per_query) == {"q1", "q2"}
    assert per_query["q2"] == {m: 0.0 for m in MEASURES}
    assert mean_metrics(per_query)["ndcg@10"] == pytest.approx(0.5)


def test_unknown_measure_is_an_error():
    with pytest.raises(ValueError, match="unknown measure"):
        evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0}}, measures=["p@5"])


# --- faiss indexes ----------------------------------------------------------------------------


def _vectors(n, dim=32, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _shards(x, size=700):
    ids = [f"d{i}" for i in range(len(x))]
    return lambda: ((ids[s : s + size], x[s : s + size]) for s in range(0, len(x), size))


def test_flat_index_equals_brute_force():
    x, q = _vectors(2000), _vectors(20, seed=1)
    index = DenseIndex.build(32, _shards(x), len(x), IndexOptions("flat"), top_k=10)
    assert index.ntotal == 2000 and not index.on_gpu
    run = results_to_run([f"q{i}" for i in range(20)], index.search(q, 10, batch_size=7), index.doc_ids)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    for i in range(20):
        assert set(run[f"q{i}"]) == {f"d{j}" for j in truth[i]}
        assert max(run[f"q{i}"].values()) == pytest.approx(float((q[i] @ x.T).max()), abs=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_neighbours(kind):
    # Clustered points, as embeddings are: 40 topics, each point near one topic centre.
    rng = np.random.default_rng(3)
    centres = _vectors(40, seed=4)
    x = centres[rng.integers(0, 40, 3000)] + 0.15 * _vectors(3000, seed=5)
    q = centres[rng.integers(0, 40, 30)] + 0.15 * _vectors(30, seed=6)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    index = DenseIndex.build(32, _shards(x), len(x), IndexOptions(kind), top_k=10)
    run = results_to_run([f"q{i}" for i in range(30)], index.search(q, 10), index.doc_ids)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    recall = np.mean([len(set(run[f"q{i}"]) & {f"d{j}" for j in truth[i]}) / 10 for i in range(30)])
    assert recall > 0.8, recall


def test_hnsw_on_vectors_of_any_length_ranks_by_inner_product():
    rng = np.random.default_rng(7)
    x = (_vectors(3000, seed=8) * rng.uniform(0.2, 3.0, (3000, 1))).astype(np.float32)
    q = (2 * _vectors(30, seed=9)).astype(np.float32)
    index = DenseIndex.build(32, _shards(x), len(x), IndexOptions("hnsw"), top_k=10)
    assert index.augment_norm == pytest.approx(float(np.linalg.norm(x, axis=1).max()), rel=1e-6)
    run = results_to_run([f"q{i}" for i in range(30)], index.search(q, 10), index.doc_ids)
    scores = q @ x.T
    truth = np.argsort(-scores, axis=1)[:, :10]
    recall = np.mean([len(set(run[f"q{i}"]) & {f"d{j}" for j in truth[i]}) / 10 for i in range(30)])
    assert recall > 0.9, recall
    for i in range(30):  # the scores are inner products again
        for doc, score in run[f"q{i}"].items():
            assert score == pytest.approx(float(scores[i, int(doc[1:])]), abs=1e-3)
    unit = DenseIndex.build(32, _shards(_vectors(500)), 500, IndexOptions("hnsw"), top_k=10)
    assert unit.augment_norm is None  # unit vectors: a graph over inner products as they are


def test_index_on_a_tiny_corpus_returns_fewer_than_k():
    x = _vectors(3)
    index = DenseIndex.build(32, _shards(x), 3, IndexOptions("flat"), top_k=100)
    run = results_to_run(["q"], index.search(x[:1], 100), index.doc_ids)
    assert len(run["q"]) == 3


def test_index_errors():
    with pytest.raises(ValueError, match="index must be one of"):
        DenseIndex.build(32, _shards(_vectors(5)), 5, IndexOptions("lsh"))
    with pytest.raises(ValueError, match="empty corpus"):
        DenseIndex.build(32, lambda: iter(()), 0, IndexOptions("flat"))
    with pytest.raises(ValueError, match="no GPU"):
        DenseIndex.build(32, _shards(_vectors(5)), 5, IndexOptions("flat", use_gpu=True))


def test_default_nlist_has_enough_training_points():
    assert default_nlist(1400) == 35
    assert default_nlist(1_000_000) == 4000
    assert default_nlist(10) == 1
    assert default_nprobe(35) == 16 and default_nprobe(4000) == 126 and default_nprobe(1) == 1


# --- shards and pools -------------------------------------------------------------------------


def test_embedding_shards_roundtrip(tmp_path):
    from synrank.storage import write_parquet

    x = _vectors(10, dim=8)
    ids = [f"d{i}" for i in range(10)]
    paths = []
    for s in (0, 4):
        path = tmp_path / shard_name(ids[s : s + 6][:4] if s == 0 else ids[s:])
        write_parquet(embeddings_table(ids[s : s + 4] if s == 0 else ids[s:], x[s : s + 4] if s == 0 else x[s:]), path)
        paths.append(str(path))
    got_ids, got = read_all(paths)
    assert got_ids == ids and np.array_equal(got, x)
    assert shard_name(["a", "b"]) == shard_name(["a", "b"]) != shard_name(["ab"])


def test_pool_plan():
    gpu = plan_pool(num_cpus=32, num_gpus=4)
    assert (gpu.size, gpu.num_gpus, gpu.num_cpus) == (4, 1, 1)
    assert plan_pool(32, 4, num_encoders=2).size == 2
    cpu = plan_pool(num_cpus=2, num_gpus=0)
    assert (cpu.size, cpu.num_cpus, cpu.threads, cpu.num_gpus) == (2, 1, 1, 0)
    assert (plan_pool(16, 0).size, plan_pool(16, 0).threads) == (4, 4)
    big = plan_pool(num_cpus=64, num_gpus=0, max_node_cpus=16)
    assert (big.size, big.num_cpus) == (16, 4)
    two = plan_pool(num_cpus=8, num_gpus=0, num_encoders=2)
    assert (two.size, two.num_cpus) == (2, 4)
    one = plan_pool(num_cpus=2, num_gpus=0, num_encoders=1)
    assert (one.size, one.threads) == (1, 2)


def test_pool_plan_on_a_cluster_that_scales_from_zero():
    # Nothing is up yet: the maximum asked for is the pool's size, not what is up now.
    cpu = plan_pool(num_cpus=0, num_gpus=0, num_encoders=6)
    assert (cpu.size, cpu.num_cpus, cpu.num_gpus) == (6, 1, 0)
    gpu = plan_pool(num_cpus=0, num_gpus=0, num_encoders=4, use_gpus=True)
    assert (gpu.size, gpu.num_gpus, gpu.num_cpus) == (4, 1, 1)
    assert plan_pool(32, 2, num_encoders=8).size == 8  # more GPU actors than GPUs up: nodes are added
    assert plan_pool(32, 2, use_gpus=False).num_gpus == 0


def test_block_rows_fill_every_actor_within_bounds():
    from synrank.evaluate.encode import block_rows_for

    assert block_rows_for(1400, 1) == 350  # four blocks per actor
    assert block_rows_for(4000, 2) == 500
    assert block_rows_for(1400, 4) == 256
    assert block_rows_for(100, 1) == 256
    assert block_rows_for(10_000_000, 8) == 4096
    assert block_rows_for(None, 2) == 1024


def test_gpu_branch_clones_the_empty_index_and_keeps_hnsw_on_cpu(monkeypatch):
    """faiss-gpu cannot run here: stand-ins record what the GPU branch asks of faiss."""
    import faiss

    from synrank.evaluate import index as index_module

    calls = []

    class Options:
        shard = False
        useFloat16 = True

    class ParameterSpace:
        def set_index_parameter(self, idx, name, value):
            calls.append(("param", name, value))

    def to_all_gpus(cpu_index, co=None, ngpu=-1):
        calls.append(("clone", type(cpu_index).__name__, cpu_index.ntotal, co.shard, co.useFloat16, ngpu))
        return cpu_index

    monkeypatch.setattr(index_module, "gpus_available", lambda: 2)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", Options, raising=False)
    monkeypatch.setattr(faiss, "GpuParameterSpace", ParameterSpace, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_all_gpus, raising=False)
    x = _vectors(2000)
    flat = DenseIndex.build(32, _shards(x), len(x), IndexOptions("flat"), top_k=10)
    assert flat.on_gpu and calls == [("clone", "IndexFlatIP", 0, True, False, 2)]
    assert flat.ntotal == 2000
    calls.clear()
    ivf = DenseIndex.build(32, _shards(x), len(x), IndexOptions("ivf", nlist=16, nprobe=4), top_k=10)
    assert ivf.on_gpu and calls == [("clone", "IndexIVFFlat", 0, True, False, 2), ("param", "nprobe", 4)]
    calls.clear()
    hnsw = DenseIndex.build(32, _shards(x), len(x), IndexOptions("hnsw"), top_k=10)
    assert not hnsw.on_gpu and calls == []
    big_k = DenseIndex.build(32, _shards(x), len(x), IndexOptions("flat"), top_k=5000)
    assert not big_k.on_gpu and calls == []
    cpu = DenseIndex.build(32, _shards(x), len(x), IndexOptions("flat", use_gpu=False), top_k=10)
    assert not cpu.on_gpu and calls == []
