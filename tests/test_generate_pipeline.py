"""The generation pipeline's mechanics on Ray Data with a scripted engine (no model): rejections
and bounded retries end in the errors table, counts add up, reruns skip finished shards, a changed
query list or a damaged file redoes only the shards concerned, other settings are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synrank.config import GenerateConfig
from synrank.data import schemas
from synrank.generate.parse import REASONS
from synrank.generate.pipeline import (
    GenerateError,
    doc_id,
    expected_doc_ids,
    generate,
    part_path,
)

QUERIES = pa.table({
    "query_id": [f"q{i}" for i in range(7)],
    "text": ["do goldfish grow", "what is wifi vs bluetooth", "why did the us enter ww1",
             "definition declaratory judgment", "right pelvic pain causes",
             "social determinants of health", "how is the weather in jamaica"],
})


def _cfg(out: Path, **kw) -> GenerateConfig:
    base = dict(out=str(out), shard_size=2, max_retries=2, fidelity_queries=0, samples_per_level=2)
    base.update(kw)
    return GenerateConfig(**base)


def _passages(out: Path) -> pa.Table:
    return pq.read_table(out, schema=schemas.SYNTHETIC_PASSAGES)


def _errors(out: Path) -> pa.Table:
    return pq.read_table(out / "_errors")


def test_rejections_retries_and_counts(scripted_pool, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(out, limit=5)
    result = generate(cfg, pool=scripted_pool, queries=QUERIES)
    rep = result.report
    passages, errors = _passages(out), _errors(out)
    # the output is exactly the schema and then the query each passage was written for (extra
    # metadata aside); with the default swap strategy a level-0 passage was written for its partner
    assert pq.read_schema(part_path(str(out), 0)).remove_metadata().equals(
        schemas.SYNTHETIC_PASSAGES.append(schemas.WRITTEN_FOR))
    written = pq.read_table(out, columns=["query_id", "level", "for_query_id"]).to_pylist()
    assert all((r["for_query_id"] != r["query_id"]) == (r["level"] == 0) for r in written)
    assert all(r["for_query_id"] in {f"q{i}" for i in range(7)} for r in written)
    ids = passages.column("doc_id").to_pylist()
    assert len(ids) == len(set(ids))
    final = errors.filter(errors.column("final"))
    expected = expected_doc_ids([f"q{i}" for i in range(5)], 4, 2, rep["model"], "v1")
    assert set(ids) | set(final.column("doc_id").to_pylist()) == expected
    assert not set(ids) & set(final.column("doc_id").to_pylist())
    # the script rejects some attempts (empty, repetition, duplicates): retries happened, bounded
    assert errors.num_rows > 0
    assert set(errors.column("reason").to_pylist()) <= set(REASONS)
    assert max(errors.column("attempt").to_pylist()) <= cfg.max_retries
    retried = {r["doc_id"] for r in errors.to_pylist() if not r["final"]}
    assert retried & set(ids)  # some rejected rows succeeded on a later attempt
    # report counts add up
    assert rep["rows"] == passages.num_rows == sum(rep["per_level"].values())
    assert rep["rows"] + rep["final_failures"] == rep["expected_rows"] == 5 * 4 * 2
    assert rep["rejections"]["total"] == errors.num_rows
    assert sum(rep["rejections"]["by_reason"].values()) == errors.num_rows
    assert rep["complete"] and rep["duplicates_in_output"] == 0
    assert rep["tokens"]["generated"] == sum(passages.column("n_tokens").to_pylist())
    assert json.loads((out / "_report.json").read_text())["rows"] == rep["rows"]
    # duplicates within a query never reach the output
    for qid in {r["query_id"] for r in passages.to_pylist()}:
        texts = [" ".join(r["text"].casefold().split()) for r in passages.to_pylist() if r["query_id"] == qid]
        assert len(texts) == len(set(texts))
    # ids are the stable hash of (query, level, sample, model, prompt version)
    row = passages.to_pylist()[0]
    assert any(row["doc_id"] == doc_id(row["query_id"], row["level"], s, row["model"], "v1") for s in range(2))

    # a rerun finds every shard done and writes nothing
    before = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    again = generate(cfg, pool=scripted_pool, queries=QUERIES)
    assert again.shards_done_now == 0 and again.shards_skipped == 3
    assert {p.name: p.read_bytes() for p in out.glob("part-*.parquet")} == before


def test_a_changed_query_list_redoes_only_the_changed_shards(scripted_pool, tmp_path):
    out = tmp_path / "run"
    generate(_cfg(out, limit=5), pool=scripted_pool, queries=QUERIES)  # shards [q0 q1] [q2 q3] [q4]
    first = (out / "part-00000.parquet").read_bytes()
    (out / "part-00001.parquet").write_bytes(b"PAR1 damaged")  # e.g. a disk problem
    grown = generate(_cfg(out, limit=7), pool=scripted_pool, queries=QUERIES)  # ... [q4 q5] [q6]
    # shard 0 is kept; 1 (damaged), 2 (one more query) and 3 (new) are generated
    assert grown.shards_skipped == 1 and grown.shards_done_now == 3
    assert (out / "part-00000.parquet").read_bytes() == first
    assert grown.report["complete"]
    assert grown.report["rows"] + grown.report["final_failures"] == 7 * 8
    # shrinking removes the shards whose queries are gone
    shrunk = generate(_cfg(out, limit=2), pool=scripted_pool, queries=QUERIES)
    assert shrunk.shards_done_now == 0
    assert sorted(p.name for p in out.glob("part-*.parquet")) == ["part-00000.parquet"]
    assert set(_passages(out).column("query_id").to_pylist()) <= {"q0", "q1"}
    assert shrunk.report["expected_rows"] == 2 * 8 and shrunk.report["complete"]


def test_other_settings_are_refused_and_overwrite_starts_over(scripted_pool, tmp_path):
    out = tmp_path / "run"
    generate(_cfg(out, limit=2), pool=scripted_pool, queries=QUERIES)
    with pytest.raises(GenerateError, match="n_levels: 4 -> 3"):
        generate(_cfg(out, limit=2, n_levels=3), pool=scripted_pool, queries=QUERIES)
    result = generate(_cfg(out, limit=2, n_levels=3, overwrite=True), pool=scripted_pool, queries=QUERIES)
    assert result.shards_done_now == 1
    assert set(_passages(out).column("level").to_pylist()) <= {0, 1, 2}


def test_a_folder_with_foreign_part_files_is_refused(scripted_pool, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "part-00000.parquet").write_bytes(b"someone else's")
    with pytest.raises(GenerateError, match="not a synrank generate folder"):
        generate(_cfg(out, limit=2), pool=scripted_pool, queries=QUERIES)


def test_inputs_are_checked_before_anything_starts(tmp_path):
    with pytest.raises(GenerateError, match="out is required"):
        generate(GenerateConfig(queries="x"))
    with pytest.raises(ValueError, match="unknown prompt_version"):
        generate(GenerateConfig(out=str(tmp_path), prompt_version="v9"), queries=QUERIES)
    empty = pa.table({"query_id": ["a"], "text": ["  "]})
    with pytest.raises(GenerateError, match="no queries"):
        generate(GenerateConfig(out=str(tmp_path)), queries=empty, pool=object())


def test_engines_started_for_a_run_are_stopped_after_it(ray_session, tmp_path):
    """No pool given: the run starts its own engines (here the transformers backend, which loads in
    seconds) and stops them, whatever happens."""
    import time

    import ray

    free_before = ray.available_resources().get("CPU", 0.0)
    cfg = _cfg(tmp_path / "run", limit=2, n_levels=2, samples_per_level=1, max_tokens=24, max_retries=0,
               engine="transformers", batch_size=4, min_words=3)
    result = generate(cfg, queries=QUERIES)
    rep = result.report
    assert rep["rows"] + rep["final_failures"] == rep["expected_rows"] == 4
    assert rep["throughput"]["this_run"]["engine_startup_s"] > 0
    deadline = time.time() + 60  # the engine actor's CPU comes back once it is gone
    while ray.available_resources().get("CPU", 0.0) < free_before and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0.0) >= free_before
