"""BM25 baseline runs (deterministic, valid TREC) and `compare` on real Cranfield runs."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from synrank.evaluate.compare import compare_runs, holm, paired_ttest, randomization_test
from synrank.evaluate.runfile import check_run, ranked, read_run, write_run


@pytest.fixture(scope="module")
def bm25_runs(shared_data, tmp_path_factory):
    from synrank.evaluate import evaluate_model

    out1, out2 = tmp_path_factory.mktemp("bm25a"), tmp_path_factory.mktemp("bm25b")
    collections = [str(shared_data / "cranfield"), str(shared_data / "med")]
    return (evaluate_model("bm25", collections, str(out1), progress=False),
            evaluate_model("bm25", collections, str(out2), progress=False))


def test_bm25_is_deterministic(bm25_runs):
    first, second = bm25_runs
    assert list(first) == ["cranfield", "med"]
    for name in first:
        with open(first[name]["run_path"], "rb") as a, open(second[name]["run_path"], "rb") as b:
            assert a.read() == b.read()
        assert first[name]["per_query"] == second[name]["per_query"]


def test_bm25_run_file_is_valid_trec(bm25_runs):
    for result in bm25_runs[0].values():
        path = result["run_path"]
        assert check_run(path) == []
        per_query: dict[str, list[tuple[int, float]]] = {}
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                cols = line.split()
                assert len(cols) == 6
                assert cols[1] == "Q0" and cols[5] == "bm25"
                per_query.setdefault(cols[0], []).append((int(cols[3]), float(cols[4])))
        assert set(per_query) == set(result["per_query"])
        for rows in per_query.values():
            ranks = [r for r, _ in rows]
            scores = [s for _, s in rows]
            assert ranks == list(range(1, len(rows) + 1))
            assert 1 <= len(rows) <= 100
            assert all(a >= b for a, b in zip(scores, scores[1:]))
            assert all(s > 0 for s in scores)


def test_bm25_quality_is_in_the_known_range(bm25_runs):
    metrics = bm25_runs[0]["cranfield"]["metrics"]
    assert 0.25 < metrics["ndcg@10"] < 0.45  # BM25 on Cranfield (graded 0-4) is ~0.3-0.4
    assert 0.5 < bm25_runs[0]["med"]["metrics"]["ndcg@10"] < 0.8
    saved = json.loads(open(bm25_runs[0]["cranfield"]["metrics_path"], encoding="utf-8").read())
    assert saved["settings"]["bm25"] == {"method": "lucene", "k1": 0.9, "b": 0.4, "stopwords": "en", "stemmer": None}


# --- compare ----------------------------------------------------------------------------------


def _shuffle_top10(run, seed=0):
    """The same documents with each query's top 10 put in random order (scores reassigned)."""
    rng = random.Random(seed)
    out = {}
    for qid, docs in run.items():
        order = ranked(docs)
        top = [d for d, _ in order[:10]]
        rng.shuffle(top)
        out[qid] = {**{d: s for d, (_, s) in zip(top, order[:10])}, **dict(order[10:])}
    return out


def test_compare_identical_runs_finds_no_difference(bm25_runs, shared_data, tmp_path):
    a = bm25_runs[0]["cranfield"]["run_path"]
    b = bm25_runs[1]["cranfield"]["run_path"]
    result = compare_runs([a, b], collection=str(shared_data / "cranfield"), out_dir=str(tmp_path))
    assert len(result["comparisons"]) == 5
    for c in result["comparisons"]:
        assert c["delta"] == 0.0 and not c["significant"] and c["outcome"] == "tie"
        assert c["p_ttest"] == 1.0 and c["p_randomization"] == 1.0
    assert " W" not in result["table"] and " L" not in result["table"].split("\n\n")[0]
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_compare_shuffled_top10_is_a_significant_loss(bm25_runs, shared_data, tmp_path):
    original = bm25_runs[0]["cranfield"]["run_path"]
    shuffled = tmp_path / "shuffled.trec"
    write_run(_shuffle_top10(read_run(original)), shuffled, tag="shuffled")
    result = compare_runs([original, str(shuffled)], collection=str(shared_data / "cranfield"),
                          out_dir=str(tmp_path / "cmp"))
    by_measure = {c["measure"]: c for c in result["comparisons"]}
    assert by_measure["ndcg@10"]["outcome"] == "loss"
    assert by_measure["ndcg@10"]["delta"] < 0 and by_measure["ndcg@10"]["p_randomization_holm"] < 0.01
    assert by_measure["mrr@10"]["outcome"] == "loss"
    assert by_measure["recall@100"]["outcome"] == "tie"  # same documents in the top 100
    row = next(line for line in result["table"].splitlines() if line.startswith("| shuffled"))
    assert " L " in row or row.rstrip(" |").endswith(" L")
    # Seen from the other side, with the shuffled run as baseline, the original wins.
    swapped = compare_runs([original, str(shuffled)], baseline=str(shuffled), collection=str(shared_data / "cranfield"))
    assert {c["measure"]: c["outcome"] for c in swapped["comparisons"]}["ndcg@10"] == "win"


def test_compare_metrics_files_and_errors(bm25_runs, shared_data, tmp_path):
    metrics = bm25_runs[0]["cranfield"]["metrics_path"]
    run = bm25_runs[1]["cranfield"]["run_path"]
    result = compare_runs([metrics, run], collection=str(shared_data / "cranfield"))
    assert all(c["outcome"] == "tie" for c in result["comparisons"])
    with pytest.raises(ValueError, match="needs the collection's qrels"):
        compare_runs([metrics, run])
    with pytest.raises(ValueError, match="at least two"):
        compare_runs([metrics])
    with pytest.raises(ValueError, match="baseline 'nope' is none of the inputs"):
        compare_runs([metrics, run], baseline="nope", collection=str(shared_data / "cranfield"))


def test_compare_cli(bm25_runs, shared_data, tmp_path, capsys):
    from synrank.cli import main

    a = bm25_runs[0]["cranfield"]["metrics_path"]
    b = bm25_runs[0]["med"]["metrics_path"]
    assert main(["compare", a, b, "--out", str(tmp_path), "--no-plot", "--measures", "ndcg@10"]) == 0
    out = capsys.readouterr().out
    assert "ndcg@10" in out and "(baseline)" in out
    assert json.loads((tmp_path / "compare.json").read_text())["measures"] == ["ndcg@10"]


# --- the statistics on hand-made numbers -----------------------------------------------------


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])


def test_randomization_test_exact_and_sampled():
    a = np.array([1.0, 1.0, 1.0, 1.0])
    b = np.zeros(4)
    # Exact over 2^4 sign patterns: only all-plus and all-minus reach |mean| = 1.
    assert randomization_test(a, b) == pytest.approx(2 / 16)
    rng = np.random.default_rng(0)
    base = rng.random(200)
    better = base + 0.05 + 0.01 * rng.normal(size=200)
    assert randomization_test(better, base, n_resamples=2000) == pytest.approx(1 / 2001)
    noise = base + 0.1 * rng.normal(size=200)
    assert randomization_test(noise, base, n_resamples=2000) > 0.05
    assert randomization_test(base, base) == 1.0


def test_paired_ttest_matches_scipy_and_handles_degenerate_input():
    from scipy import stats

    rng = np.random.default_rng(1)
    a, b = rng.random(50), rng.random(50)
    assert paired_ttest(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert paired_ttest(a, a) == 1.0
    assert paired_ttest(a + 0.1, a) == 0.0
