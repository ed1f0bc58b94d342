"""Merging human and LLM qrels: each precedence rule and the human-query fraction, by hand."""

from __future__ import annotations

import pyarrow as pa
import pytest

from synrank.annotate.merge import merge_qrels, select_queries


def _qrels(rows, source):
    return pa.table({"query_id": [r[0] for r in rows], "doc_id": [r[1] for r in rows],
                     "grade": pa.array([r[2] for r in rows], pa.int32()), "source": [source] * len(rows)})


# q1: both labelled d1 (agree) and d2 (disagree); human only d3; LLM only d4.
# q2: human only.   q3: LLM only (a query people never judged).
HUMAN = _qrels([("q1", "d1", 3), ("q1", "d2", 0), ("q1", "d3", 2), ("q2", "d5", 1)], "human")
LLM = _qrels([("q1", "d1", 3), ("q1", "d2", 2), ("q1", "d4", 1), ("q3", "d6", 3), ("q3", "d7", 0)], "llm")


def _rows(table):
    return {(q, d): (g, s) for q, d, g, s in zip(*(table.column(c).to_pylist()
                                                   for c in ("query_id", "doc_id", "grade", "source")))}


def test_human_wins():
    merged, stats = merge_qrels(HUMAN, LLM, precedence="human")
    assert _rows(merged) == {
        ("q1", "d1"): (3, "human"), ("q1", "d2"): (0, "human"), ("q1", "d3"): (2, "human"),
        ("q1", "d4"): (1, "llm"), ("q2", "d5"): (1, "human"), ("q3", "d6"): (3, "llm"), ("q3", "d7"): (0, "llm"),
    }
    assert (stats.overlaps, stats.conflicts, stats.llm_dropped, stats.human_dropped) == (2, 1, 2, 0)
    assert merged.schema.names == ["query_id", "doc_id", "grade", "source"]


def test_llm_wins():
    merged, stats = merge_qrels(HUMAN, LLM, precedence="llm")
    assert _rows(merged) == {
        ("q1", "d1"): (3, "llm"), ("q1", "d2"): (2, "llm"), ("q1", "d3"): (2, "human"),
        ("q1", "d4"): (1, "llm"), ("q2", "d5"): (1, "human"), ("q3", "d6"): (3, "llm"), ("q3", "d7"): (0, "llm"),
    }
    assert (stats.overlaps, stats.conflicts, stats.llm_dropped, stats.human_dropped) == (2, 1, 0, 2)


def test_llm_only_adds_new_pairs():
    merged, stats = merge_qrels(HUMAN, LLM, precedence="add")
    # human grades stay; the LLM adds d4 to the judged query q1; q3 (no human labels) is not added
    assert _rows(merged) == {
        ("q1", "d1"): (3, "human"), ("q1", "d2"): (0, "human"), ("q1", "d3"): (2, "human"),
        ("q1", "d4"): (1, "llm"), ("q2", "d5"): (1, "human"),
    }
    assert stats.llm_dropped == 4 and stats.by_source == {"human": 4, "llm": 1}


def test_human_fraction_mixture():
    human = _qrels([(f"q{i}", f"h{i}", 2) for i in range(10)], "human")
    llm = _qrels([(f"q{i}", f"l{i}", 1) for i in range(10)] + [(f"q{i}", f"h{i}", 0) for i in range(10)], "llm")
    merged, stats = merge_qrels(human, llm, precedence="human", human_fraction=0.3, seed=5)
    kept = set(stats.kept_queries)
    assert len(kept) == 3 and stats.human_queries == 10
    rows = _rows(merged)
    for i in range(10):
        q = f"q{i}"
        if q in kept:  # human labels kept, and they win the shared pair
            assert rows[(q, f"h{i}")] == (2, "human")
        else:  # the query is labelled by the LLM alone
            assert rows[(q, f"h{i}")] == (0, "llm")
        assert rows[(q, f"l{i}")] == (1, "llm")
    # nested: a larger fraction keeps a superset; the same seed gives the same set
    assert kept <= select_queries([f"q{i}" for i in range(10)], 0.6, seed=5)
    assert kept == select_queries([f"q{i}" for i in range(10)], 0.3, seed=5)
    # fraction 0: LLM labels only
    merged0, stats0 = merge_qrels(human, llm, human_fraction=0.0)
    assert set(merged0.column("source").to_pylist()) == {"llm"} and stats0.human_queries_kept == 0
    # add with a fraction: LLM pairs only join queries whose human labels were kept
    merged_add, _ = merge_qrels(human, llm, precedence="add", human_fraction=0.3, seed=5)
    assert {q for q in merged_add.column("query_id").to_pylist()} == kept


def test_scales_failures_and_errors():
    human5 = _qrels([("q", "a", 4), ("q", "b", 1)], "human")  # Cranfield-like 5 levels
    llm = _qrels([("q", "c", 3)], "llm")
    llm = pa.concat_tables([llm, _qrels([("q", "x", 0)], "synthetic")])  # non-llm rows are ignored
    merged, stats = merge_qrels(human5, llm, human_levels=5, llm_levels=4)
    assert stats.n_levels == 4
    assert _rows(merged) == {("q", "a"): (3, "human"), ("q", "b"): (0, "human"), ("q", "c"): (3, "llm")}
    with pytest.raises(ValueError, match="precedence"):
        merge_qrels(HUMAN, LLM, precedence="both")
    with pytest.raises(ValueError, match="human_fraction"):
        merge_qrels(HUMAN, LLM, human_fraction=1.5)
    with pytest.raises(ValueError, match="4-level scale"):
        merge_qrels(human5, llm, human_levels=4)
