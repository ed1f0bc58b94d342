"""The engine pool's failure handling without a model: a call whose engine raises restarts that
engine and is retried (bounded), a call to a dead engine goes to another one, and what still
fails becomes `engine_error` rows (generation) or engine failures (annotation)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from synrank.llm.engine import Completion, EngineSpec, SamplingSpec
from synrank.llm.pool import EngineError, PoolHandle, PoolUnavailableError, _actor_state


class _Flaky:
    """Raises on the calls of its first life listed in `fail`, or always when `always`."""

    def __init__(self, name: str, fail=(), always: bool = False) -> None:
        import ray

        self.name, self.fail, self.always = name, set(fail), always
        self.first_life = not ray.get_runtime_context().was_current_actor_reconstructed
        self.calls = 0

    def generate(self, prompts, sampling, seeds=None):
        self.calls += 1
        if self.always or (self.first_life and self.calls in self.fail):
            raise RuntimeError(f"{self.name} broke on call {self.calls}")
        return [Completion(f"{self.name}:{p}", 1, "stop") for p in prompts]


def _actors(*kwargs):
    import ray

    remote = ray.remote(_Flaky).options(max_restarts=4, max_task_retries=0, num_cpus=0)
    return tuple(remote.remote(**kw) for kw in kwargs)


def _kill(actors):
    import ray

    for a in actors:
        ray.kill(a, no_restart=True)


def test_an_engine_that_raises_is_restarted_and_the_batch_retried(ray_session):
    actors = _actors(dict(name="a", fail=[1]))
    try:
        handle = PoolHandle(actors, EngineSpec(), retries=2)
        out = handle.generate_on(0, ["x", "y"], SamplingSpec())
        assert [c.text for c in out] == ["a:x", "a:y"]
        assert _actor_state(actors[0])["NumRestarts"] == 1
    finally:
        _kill(actors)


def test_a_batch_that_keeps_failing_raises_engine_error_after_the_bound(ray_session):
    actors = _actors(dict(name="a", always=True))
    try:
        with pytest.raises(EngineError, match="failed 2 time"):
            PoolHandle(actors, EngineSpec(), retries=1).generate_on(0, ["x"], SamplingSpec())
        assert _actor_state(actors[0])["NumRestarts"] == 1
    finally:
        _kill(actors)


def test_a_call_to_a_dead_engine_goes_to_another_one(ray_session):
    import ray

    actors = _actors(dict(name="a"), dict(name="b"))
    try:
        ray.kill(actors[0], no_restart=True)
        out = PoolHandle(actors, EngineSpec()).generate_on(0, ["x"], SamplingSpec())
        assert [c.text for c in out] == ["b:x"]
        ray.kill(actors[1], no_restart=True)
        with pytest.raises(PoolUnavailableError):
            PoolHandle(actors, EngineSpec()).generate_on(0, ["x"], SamplingSpec())
    finally:
        _kill(actors)


def test_rows_of_a_failed_engine_call_are_engine_errors(tmp_path):
    from synrank.config import GenerateConfig
    from synrank.generate.pipeline import ShardTask, build_requests, errors_path, part_path, run_shard, \
        settings_from_config, shard_digest_on_disk

    cfg = GenerateConfig(out=str(tmp_path), level0_strategy="prompt", max_retries=1)
    settings = settings_from_config(cfg, str(tmp_path))
    task = ShardTask(0, 0, ["q1"], ["how do fish breathe"], [None], [None])
    requests = build_requests(task, settings)

    def broken(index, prompts, sampling, seeds=None):
        raise EngineError("engine 0 failed 3 time(s): RuntimeError: boom")

    summary = run_shard(task, requests, settings, broken)
    assert summary["rows"] == 0 and summary["final_failures"] == 4 and summary["rejections"] == {"engine_error": 4}
    errors = pq.read_table(errors_path(str(tmp_path), 0)).to_pylist()
    assert {e["doc_id"] for e in errors} == {r["doc_id"] for r in requests}
    assert all(e["final"] and e["reason"] == "engine_error" and "boom" in e["detail"] for e in errors)
    assert pq.read_table(part_path(str(tmp_path), 0)).num_rows == 0
    # Not marked done: a rerun generates the shard again.
    assert shard_digest_on_disk(str(tmp_path), 0) != task.digest

    def working(index, prompts, sampling, seeds=None):
        from synrank.llm.engine import Completion

        texts = ["Fish breathe with gills, which take oxygen from the water that flows over them.",
                 "Most fish open their mouths to pull water in and push it out past the gill slits.",
                 "Aquariums need filters and pumps so that enough dissolved oxygen stays in the tank.",
                 "The stock market closed higher on Friday after a week of strong earnings reports."]
        return [Completion(text=t, n_tokens=16, prompt_tokens=30, finish_reason="stop") for t in texts[:len(prompts)]]

    summary = run_shard(task, requests, settings, working)
    assert summary["rows"] == 4 and summary["rejections"] == {}
    assert shard_digest_on_disk(str(tmp_path), 0) == task.digest


def test_the_judge_turns_an_engine_error_into_engine_failures():
    from synrank.annotate.engine import EngineFailure, EngineJudge
    from synrank.annotate.pipeline import judge_prompts
    from synrank.annotate.prompts import build_prompt

    class Broken:
        def generate_on(self, index, prompts, sampling, seeds=None):
            raise EngineError("engine 0 failed 3 time(s): RuntimeError: boom")

    judge = EngineJudge(handle=Broken(), model="m")
    prompts = [build_prompt("q", "p"), build_prompt("q", "p2")]
    answers = judge(prompts, attempt=0)
    assert all(isinstance(a, EngineFailure) and "engine_error" in a for a in answers)
    results = judge_prompts(prompts, judge, 4, max_retries=1)
    assert all(r.grade is None and "engine_error" in r.reason and len(r.answers) == 2 for r in results)


def _pickle_by_value() -> None:
    # Ray workers may not have tests/ on sys.path: ship this module's classes by value.
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


_pickle_by_value()
