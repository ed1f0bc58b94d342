"""Annotation with candidate search and the pairs in Ray: the driver reads nothing of the
collection, and every output is the one the single-process pipeline wrote. The digests were
recorded from synrank/annotate/pipeline.py before the pairs moved into Ray, on these inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_annotate_pipeline import fake_judge

from synrank.annotate.pipeline import FunctionJudge, annotate
from synrank.config import AnnotateConfig
from synrank.data import readers

RUNS = {
    "bm25-judged": dict(top_n=3, include_judged=True, limit=8, shard_size=2),
    "dense": dict(candidates="default", top_n=2, include_judged=True, limit=3, shard_size=1),
}
# run: (digests of qrels, _failures and _pairs, of the summary, of the manifest, shard files)
# bm25-judged was re-recorded when candidates moved to the one BM25 (synrank.data.bm25: k1=0.9, b=0.4,
# the evaluation baseline's; before, k1=1.5, b=0.75). With k1=1.5, b=0.75 the unified code reproduced the
# previous digests once texts without a usable term were kept empty (allow_empty=False).
RECORDED = {
    "bm25-judged": ({"qrels.parquet": "4e0d9883fb7b907d618a", "_failures.parquet": "e9a140d737b0e3c6df17",
                     "_pairs.parquet": "cbd0ab2610df45eb647c"}, "ddd2c9a1b1ef1caa3fc6", "a3fd15825331e538ebe8", 4),
    "dense": ({"qrels.parquet": "67e6b178b78b93f2a9a6", "_failures.parquet": "211f5356d928a55d6bbd",
               "_pairs.parquet": "bc759ee9e5eec7130868"}, "46c3575dd58f5b39015b", "b5214689f6a06ff4e62b", 3),
}
# Dense scores are float32 dot products whose last bits depend on the CPU's kernels (the digests
# recorded with them held on one machine and not on another with AMX), so the dense run's digests
# leave the scores out (re-recorded so, the rest unchanged: the same candidates, ranks and grades)
# and its scores are checked against this process's encoder instead.
SCORED_RUNS = {"dense"}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _check_dense_scores(collection: Path, pairs: list[dict]) -> None:
    """Every ranked candidate's score is its query and passage embeddings' dot product."""
    from synrank.encoder import BiEncoder
    from synrank.text import format_passage

    docs = {str(d["_id"]): format_passage(d.get("title"), d.get("text"))
            for d in map(json.loads, (collection / "corpus.jsonl").read_text().splitlines())}
    queries = {str(q["_id"]): q["text"] for q in map(json.loads, (collection / "queries.jsonl").read_text().splitlines())}
    ranked = [p for p in pairs if p["rank"] is not None]
    assert ranked
    encoder = BiEncoder.load("default").for_inference("cpu")
    q = encoder.encode([queries[p["query_id"]] for p in ranked], "query")
    d = encoder.encode([docs[p["doc_id"]] for p in ranked], "passage")
    assert [p["score"] for p in ranked] == pytest.approx((q * d).sum(axis=1).tolist(), abs=1e-5)


def _small_cranfield(cranfield: Path, dst: Path) -> Path:
    """The first 40 documents and 5 queries of Cranfield, with their qrels (dense search is slow)."""
    (dst / "qrels").mkdir(parents=True)
    (dst / "corpus.jsonl").write_text("".join((cranfield / "corpus.jsonl").read_text().splitlines(keepends=True)[:40]))
    (dst / "queries.jsonl").write_text("".join((cranfield / "queries.jsonl").read_text().splitlines(keepends=True)[:5]))
    lines = (cranfield / "qrels" / "test.tsv").read_text().splitlines(keepends=True)
    (dst / "qrels" / "test.tsv").write_text(lines[0] + "".join(
        line for line in lines[1:] if int(line.split("\t")[0]) <= 5 and int(line.split("\t")[1]) <= 40))
    return dst


@pytest.fixture
def driver_reads_nothing(monkeypatch):
    """Every reader of input data fails in this process (Ray's workers are other processes)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"input read in the driver: {args}")

    for name in ("read_corpus", "iter_corpus", "read_queries", "read_qrels", "load_collection"):
        monkeypatch.setattr(readers, name, refuse)


@pytest.mark.parametrize("run", sorted(RUNS))
def test_outputs_match_the_single_process_pipeline(shared_data, tmp_path, run, driver_reads_nothing):
    collection = shared_data / "cranfield"
    if run == "dense":
        collection = _small_cranfield(collection, tmp_path / "small")
    out = tmp_path / "run"
    cfg = AnnotateConfig(collection=str(collection), out=str(out), max_retries=2, batch_size=4, **RUNS[run])
    annotate(cfg, judge=FunctionJudge(fake_judge, model="fake-judge"))
    tables, summary_of, manifest_of, n_shards = RECORDED[run]
    rows = {name: pq.read_table(out / name).to_pylist() for name in tables}
    if run in SCORED_RUNS:
        _check_dense_scores(collection, rows["_pairs.parquet"])
        rows = {name: [{k: v for k, v in row.items() if k != "score"} for row in table] for name, table in rows.items()}
    assert {name: _digest(table) for name, table in rows.items()} == tables
    summary = json.loads((out / "_summary.json").read_text())
    manifest = json.loads((out / "_manifest.json").read_text())
    for paths in (summary, manifest):  # where the run lay, and when
        for key in ("collection", "qrels", "failures", "created"):
            paths.pop(key, None)
    assert (_digest(summary), _digest(manifest)) == (summary_of, manifest_of)
    assert sorted(p.name for p in (out / "_shards").iterdir()) == [f"part-{i:05d}.parquet" for i in range(n_shards)]
