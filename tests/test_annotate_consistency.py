"""Consistency of synthetic passages: intended level vs judged grade, and the drop/relabel filter."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from synrank.annotate.consistency import check_consistency, filter_synthetic
from synrank.annotate.pipeline import FunctionJudge
from synrank.data import schemas


def _synthetic(levels):
    n = len(levels)
    return pa.table({
        "query_id": [f"q{i // 4}" for i in range(n)],
        "doc_id": [f"s{i}" for i in range(n)],
        "level": pa.array(levels, pa.int8()),
        "text": [f"passage {i} written for level {lv}" for i, lv in enumerate(levels)],
        "model": ["gen"] * n,
        "prompt_version": ["v1"] * n,
        "seed": pa.array([0] * n, pa.int64()),
        "n_tokens": pa.array([10] * n, pa.int32()),
        "finish_reason": ["stop"] * n,
    }, schema=schemas.SYNTHETIC_PASSAGES)


# 3 queries x levels 3,2,1,0; the judge answers by passage number.
LEVELS = [3, 2, 1, 0] * 3
ANSWERS = {0: "3", 1: "2", 2: "1", 3: "0",      # q0: all as intended
           4: "3", 5: "3", 6: "0", 7: "0",      # q1: level 2 judged 3, level 1 judged 0
           8: "2", 9: "nonsense", 10: "1", 11: "3"}  # q2: 3 -> 2, a failure, 0 -> 3


def _judge():
    def fn(prompts, attempt):
        return [ANSWERS[int(p.passage.split()[1])] for p in prompts]
    return FunctionJudge(fn, model="judge")


def test_report_and_filters(tmp_path):
    synthetic = _synthetic(LEVELS)
    queries = pa.table({"query_id": ["q0", "q1", "q2"], "text": ["a?", "b?", "c?"]})
    result = check_consistency(synthetic, queries, str(tmp_path / "c"), _judge(), n_levels=4, max_retries=1,
                               shard_size=1)
    m = result.report.confusion
    # rows = intended level, columns = judged grade
    assert m[3].tolist() == [0, 0, 1, 2] and m[2].tolist() == [0, 0, 1, 1]
    assert m[1].tolist() == [1, 2, 0, 0] and m[0].tolist() == [2, 0, 0, 1]
    assert result.failed_per_level == {0: 0, 1: 0, 2: 1, 3: 0}
    per = result.report.per_row()
    assert per[3]["match"] == pytest.approx(2 / 3) and per[2]["match"] == pytest.approx(0.5)
    assert result.judgments.column("level").to_pylist() == LEVELS
    paths = result.write(str(tmp_path / "report"))
    saved = json.loads(open(paths["json"]).read())
    assert saved["failed_per_level"]["2"] == 1 and saved["rows"] == "intended"
    assert "per intended level" in result.format()

    dropped, stats = filter_synthetic(synthetic, result.judgments, mode="drop")
    assert dropped.column("doc_id").to_pylist() == ["s0", "s1", "s2", "s3", "s4", "s7", "s10"]
    assert (stats.kept, stats.dropped_disagree, stats.dropped_failed) == (7, 4, 1)
    assert dropped.schema.names[: len(schemas.SYNTHETIC_PASSAGES)] == schemas.SYNTHETIC_PASSAGES.names

    within_one, stats1 = filter_synthetic(synthetic, result.judgments, mode="drop", tolerance=1)
    assert stats1.dropped_disagree == 1  # only s11 (0 -> 3) is more than one grade off
    assert "s11" not in within_one.column("doc_id").to_pylist()

    relabelled, stats2 = filter_synthetic(synthetic, result.judgments, mode="relabel")
    rows = dict(zip(relabelled.column("doc_id").to_pylist(), relabelled.column("level").to_pylist()))
    assert rows["s5"] == 3 and rows["s6"] == 0 and rows["s11"] == 3 and "s9" not in rows
    assert stats2.relabelled == 4 and stats2.kept == 11
    intended = dict(zip(relabelled.column("doc_id").to_pylist(), relabelled.column("intended_level").to_pylist()))
    assert intended["s5"] == 2

    kept_failed, _ = filter_synthetic(synthetic, result.judgments, mode="relabel", keep_failed=True)
    row = kept_failed.filter(pa.compute.equal(kept_failed.column("doc_id"), "s9"))
    assert row.column("level").to_pylist() == [2] and row.column("judged_grade").to_pylist() == [None]


def test_errors():
    synthetic = _synthetic([0, 1])
    with pytest.raises(ValueError, match="mode"):
        filter_synthetic(synthetic, pa.table({"query_id": [], "doc_id": [], "grade": []}), mode="keep")
    with pytest.raises(ValueError, match="not in the queries"):
        check_consistency(synthetic, pa.table({"query_id": ["zz"], "text": ["x"]}), "/nonexistent", _judge())
