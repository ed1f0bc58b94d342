"""The judging pipeline without an LLM: a deterministic function judge exercises sharding, retries,
recorded failures, resumption after a kill, and refusing to mix runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synrank.annotate.pipeline import AnnotateError, FunctionJudge, annotate, judge_pairs, read_judgments
from synrank.config import AnnotateConfig

REPO = Path(__file__).resolve().parents[1]

# A deterministic judge: the grade is a hash of the pair; some pairs answer junk on the first
# try only (retried and graded), some always (recorded failures). Shared with the subprocess.
JUDGE_SOURCE = '''
import hashlib, time

def _h(p):
    return int(hashlib.sha256((p.query + "\\x1f" + p.passage).encode()).hexdigest(), 16)

def fake_judge(prompts, attempt, delay=0.0, calls=None):
    if calls is not None:
        calls.append((len(prompts), attempt))
    time.sleep(delay)
    out = []
    for p in prompts:
        h = _h(p)
        if h % 11 == 0:
            out.append("I cannot decide between 1 and 2")  # never parseable
        elif h % 5 == 0 and attempt == 0:
            out.append("The passage is about wings.")  # unparseable once
        else:
            out.append(f"Grade: {h % 4}")
    return out
'''
namespace: dict = {}
exec(JUDGE_SOURCE, namespace)
fake_judge = namespace["fake_judge"]


def _cfg(shared_data, out, **kw) -> AnnotateConfig:
    base = dict(collection=str(shared_data / "cranfield"), out=str(out), limit=8, top_n=3, include_judged=False,
                shard_size=2, max_retries=2, batch_size=1)
    base.update(kw)
    return AnnotateConfig(**base)


def _pairs_of(table: pa.Table) -> list[tuple[str, str]]:
    return list(zip(table.column("query_id").to_pylist(), table.column("doc_id").to_pylist()))


def test_grades_retries_and_failures(shared_data, tmp_path):
    calls: list = []
    judge = FunctionJudge(lambda p, a: fake_judge(p, a, calls=calls), model="fake-judge")
    result = annotate(_cfg(shared_data, tmp_path / "run"), judge=judge)
    qrels = pq.read_table(result.qrels_path)
    failures = pq.read_table(result.failures_path)
    judged = read_judgments(str(tmp_path / "run"))
    pairs = pq.read_table(tmp_path / "run" / "_pairs.parquet")
    assert pairs.num_rows == 8 * 3
    # every pair is either graded or a recorded failure, never both, never lost
    assert sorted(_pairs_of(qrels) + _pairs_of(failures)) == sorted(_pairs_of(pairs))
    assert len(set(_pairs_of(judged))) == judged.num_rows == pairs.num_rows
    assert qrels.schema.names[:4] == ["query_id", "doc_id", "grade", "source"]
    assert qrels.schema.field("grade").type == pa.int32()
    assert set(qrels.column("source").to_pylist()) == {"llm"}
    assert set(qrels.column("model").to_pylist()) == {"fake-judge"}
    assert set(qrels.column("prompt_version").to_pylist()) == {"v1"}
    assert all(0 <= g < 4 for g in qrels.column("grade").to_pylist())
    for raw, g in zip(qrels.column("raw_answer").to_pylist(), qrels.column("grade").to_pylist()):
        assert raw == f"Grade: {g}"
    # failures keep every raw answer (1 + max_retries) and are never given a grade
    assert failures.num_rows > 0 and "grade" not in failures.column_names
    assert all(a == 3 for a in failures.column("attempts").to_pylist())
    assert all(len(x) == 3 for x in failures.column("answers").to_pylist())
    retried = [a for a in qrels.column("attempts").to_pylist() if a > 1]
    assert retried and all(a == 2 for a in retried)
    summary = json.loads((tmp_path / "run" / "_summary.json").read_text())
    assert summary["pairs"] == 24 and summary["graded"] + summary["failed"] == 24
    assert summary["failed"] == failures.num_rows
    # retries ask only for the unparseable answers
    assert all(n <= 6 for n, attempt in calls if attempt > 0)
    # the qrels file is what the training stage reads
    from synrank.data.readers import read_qrels

    again = read_qrels(result.qrels_path, source="llm")
    assert again.num_rows == qrels.num_rows and set(again.column("source").to_pylist()) == {"llm"}
    folder = read_qrels(str(tmp_path / "run"), split="train", source="llm")  # the folder reads as the qrels
    assert _pairs_of(folder) == _pairs_of(qrels)

    # a finished run rerun does nothing but rebuild the outputs
    calls.clear()
    annotate(_cfg(shared_data, tmp_path / "run"), judge=judge)
    assert calls == []


def test_refuses_to_mix_runs(shared_data, tmp_path):
    judge = FunctionJudge(fake_judge, model="fake-judge")
    annotate(_cfg(shared_data, tmp_path / "run", limit=2), judge=judge)
    with pytest.raises(AnnotateError, match="model"):
        annotate(_cfg(shared_data, tmp_path / "run", limit=2), judge=FunctionJudge(fake_judge, model="other"))
    with pytest.raises(AnnotateError, match="top_n"):
        annotate(_cfg(shared_data, tmp_path / "run", limit=2, top_n=4), judge=judge)
    with pytest.raises(AnnotateError, match="n_levels"):
        annotate(_cfg(shared_data, tmp_path / "run", limit=2, n_levels=3), judge=judge)
    result = annotate(_cfg(shared_data, tmp_path / "run", limit=2, top_n=4), judge=judge, overwrite=True)
    assert result.summary["pairs"] == 8


def test_pass_through_columns_and_bad_pairs(tmp_path):
    pairs = pa.table({"query_id": ["a", "a", "b"], "doc_id": ["x", "y", "x"], "query": ["q a"] * 2 + ["q b"],
                      "passage": ["p x", "p y", "p x"], "level": pa.array([3, 0, 1], pa.int8())})
    result = judge_pairs(pairs, str(tmp_path / "j"), FunctionJudge(lambda p, a: ["2"] * len(p), model="m"),
                         shard_size=1)
    qrels = pq.read_table(result.qrels_path)
    assert qrels.column("level").to_pylist() == [3, 0, 1]
    assert qrels.column("grade").to_pylist() == [2, 2, 2]
    dup = pa.concat_tables([pairs, pairs.slice(0, 1)])
    with pytest.raises(AnnotateError, match="more than once"):
        judge_pairs(dup, str(tmp_path / "k"), FunctionJudge(lambda p, a: ["2"] * len(p)))
    with pytest.raises(AnnotateError, match="lacks column"):
        judge_pairs(pairs.drop_columns(["passage"]), str(tmp_path / "k"), FunctionJudge(lambda p, a: []))
    with pytest.raises(RuntimeError, match="returned 0 answers"):
        judge_pairs(pairs, str(tmp_path / "k"), FunctionJudge(lambda p, a: []))


def test_killed_run_resumes_without_loss_or_duplicates(shared_data, tmp_path):
    """A subprocess annotating 8 queries (4 shards) is killed (SIGKILL) once 2 shards are written;
    the rerun judges only the missing shards, and the result has every pair exactly once."""
    out = tmp_path / "run"
    script = tmp_path / "run_annotate.py"
    script.write_text(JUDGE_SOURCE + textwrap.dedent(f'''
        import logging
        from synrank.annotate.pipeline import FunctionJudge, annotate
        from synrank.config import AnnotateConfig
        logging.basicConfig(level=logging.INFO)
        cfg = AnnotateConfig(collection={str(shared_data / "cranfield")!r}, out={str(out)!r}, limit=8, top_n=3,
                             include_judged=False, shard_size=2, max_retries=2, batch_size=1)
        annotate(cfg, judge=FunctionJudge(lambda p, a: fake_judge(p, a, delay=1.5), model="fake-judge"))
        print("FINISHED")
    '''))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    shards = out / "_shards"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if shards.is_dir() and len(list(shards.glob("part-*.parquet"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read().decode()}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    written = {p.name: p.stat().st_mtime_ns for p in shards.glob("part-*.parquet")}
    assert 2 <= len(written) < 4, written
    assert not (out / "_summary.json").exists()

    calls: list = []
    result = annotate(_cfg(shared_data, out), judge=FunctionJudge(lambda p, a: fake_judge(p, a, calls=calls),
                                                                  model="fake-judge"))
    # the shards written before the kill were kept as they were, not judged again
    for name, mtime in written.items():
        assert (shards / name).stat().st_mtime_ns == mtime
    first_attempt = sum(n for n, attempt in calls if attempt == 0)
    assert first_attempt == 3 * 2 * (4 - len(written))
    pairs = _pairs_of(pq.read_table(out / "_pairs.parquet"))
    judged = _pairs_of(read_judgments(str(out)))
    assert sorted(judged) == sorted(pairs) and len(set(judged)) == len(pairs) == 24
    final = _pairs_of(pq.read_table(result.qrels_path)) + _pairs_of(pq.read_table(result.failures_path))
    assert sorted(final) == sorted(pairs)

    # and an uninterrupted run gives the same labels
    clean = annotate(_cfg(shared_data, tmp_path / "clean"), judge=FunctionJudge(fake_judge, model="fake-judge"))
    a = pq.read_table(result.qrels_path).select(["query_id", "doc_id", "grade"]).sort_by([("query_id", "ascending"), ("doc_id", "ascending")])
    b = pq.read_table(clean.qrels_path).select(["query_id", "doc_id", "grade"]).sort_by([("query_id", "ascending"), ("doc_id", "ascending")])
    assert a.equals(b)


def test_candidates_bm25_and_dense(shared_data):
    """BM25 and dense candidates over a slice of Cranfield: top-n by the retriever, then the judged
    passages the retriever missed; the dense route with the packaged encoder ranks by its score."""
    import numpy as np

    from synrank.annotate.candidates import select_candidates
    from synrank.data.readers import Collection, load_collection

    full = load_collection(shared_data / "cranfield", "test")
    qrels = full.qrels.filter(pa.compute.is_in(full.qrels.column("query_id"), pa.array(["1", "2"])))
    judged = set(qrels.column("doc_id").to_pylist())
    ids = full.corpus.column("doc_id").to_pylist()
    keep = [i for i, d in enumerate(ids) if d in judged or i < 120]
    small = Collection(name="cran-small", path=full.path, corpus=full.corpus.take(keep), queries=full.queries,
                       qrels=qrels)
    bm25 = select_candidates(small, top_n=5, query_ids=["1", "2"])
    for q in ("1", "2"):
        rows = bm25.filter(pa.compute.equal(bm25.column("query_id"), q))
        ranks = rows.column("rank").to_pylist()
        assert ranks[:5] == [1, 2, 3, 4, 5] and all(r is None for r in ranks[5:])
        scores = rows.column("score").to_pylist()[:5]
        assert scores == sorted(scores, reverse=True)
        q_judged = set(qrels.filter(pa.compute.equal(qrels.column("query_id"), q)).column("doc_id").to_pylist())
        assert set(rows.column("doc_id").to_pylist()) >= q_judged
        assert rows.column("judged").to_pylist() == [d in q_judged for d in rows.column("doc_id").to_pylist()]
    assert bm25.num_rows == len(set(zip(bm25.column("query_id").to_pylist(), bm25.column("doc_id").to_pylist())))
    only_top = select_candidates(small, top_n=3, include_judged=False, query_ids=["2"])
    assert only_top.num_rows == 3 and set(only_top.column("retriever").to_pylist()) == {"bm25"}

    tiny = Collection(name="cran-tiny", path=full.path, corpus=full.corpus.slice(0, 30), queries=full.queries,
                      qrels=None)
    dense = select_candidates(tiny, retriever="default", top_n=4, include_judged=False, query_ids=["1", "2"])
    assert dense.num_rows == 8 and set(dense.column("retriever").to_pylist()) == {"dense:default"}
    from synrank.annotate.candidates import _load_encoder
    from synrank.text import format_passage

    enc = _load_encoder("default")
    texts = [format_passage(t, x) for t, x in zip(tiny.corpus.column("title").to_pylist(),
                                                 tiny.corpus.column("text").to_pylist())]
    qtext = dict(zip(tiny.queries.column("query_id").to_pylist(), tiny.queries.column("text").to_pylist()))
    scores = enc.encode([qtext["1"]], "query") @ enc.encode(texts, "passage").T
    expected = [tiny.corpus.column("doc_id")[int(i)].as_py() for i in np.argsort(-scores[0], kind="stable")[:4]]
    assert dense.column("doc_id").to_pylist()[:4] == expected
    np.testing.assert_allclose(dense.column("score").to_pylist()[:4], np.sort(scores[0])[::-1][:4], rtol=1e-4)
