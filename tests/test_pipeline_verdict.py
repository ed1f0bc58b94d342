"""The line under the pipeline's table: does the trained model beat the untrained encoder on each
held-out collection, query by query (paired randomization test)?"""

from __future__ import annotations

import numpy as np

from synrank.pipeline import trained_vs_untrained, verdict_line


def _per_query(values) -> dict[str, dict[str, float]]:
    return {f"q{i}": {"ndcg@10": float(v)} for i, v in enumerate(values)}


def test_a_consistent_gain_is_called_significantly_better():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, size=30)
    (v,) = trained_vs_untrained({"trained": {"c": _per_query(base + 0.1)}, "default": {"c": _per_query(base)}})
    assert v["queries"] == 30 and v["wins"] == 30 and v["losses"] == 0
    assert abs(v["difference"] - 0.1) < 1e-9
    assert v["significant"] and v["p_value"] < 0.001
    assert "significantly better" in verdict_line(v) and "better on 30 queries, worse on 0" in verdict_line(v)


def test_a_loss_is_called_worse_and_noise_is_not_called_a_difference():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.6, size=40)
    (worse,) = trained_vs_untrained({"trained": {"c": _per_query(base - 0.05)}, "default": {"c": _per_query(base)}})
    assert worse["significant"] and "significantly worse" in verdict_line(worse)
    noise = base + rng.choice([-0.02, 0.02], size=40)
    (tie,) = trained_vs_untrained({"trained": {"c": _per_query(noise)}, "default": {"c": _per_query(base)}})
    assert not tie["significant"] and "no significant difference" in verdict_line(tie)


def test_only_queries_both_were_scored_on_are_paired_and_no_baseline_means_no_verdict():
    trained = {"c": _per_query([0.5, 0.6, 0.7])}
    untrained = {"c": {"q0": {"ndcg@10": 0.4}, "q2": {"ndcg@10": 0.6}, "other": {"ndcg@10": 0.0}}}
    (v,) = trained_vs_untrained({"trained": trained, "default": untrained})
    assert v["queries"] == 2 and abs(v["difference"] - 0.1) < 1e-9
    assert trained_vs_untrained({"trained": trained, "bm25": untrained}) == []
