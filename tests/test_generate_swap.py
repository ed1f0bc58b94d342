"""Level-0 strategy "swap": a passage written for another, randomly paired query - never for the
query itself, nor for a query with the same text under another id."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from synrank.config import GenerateConfig
from synrank.generate.pipeline import build_requests, plan_shards, settings_from_config
from synrank.generate.swap import swap_partners


def _norm(t: str) -> str:
    return " ".join(t.casefold().split())


@settings(max_examples=400, deadline=None)
@given(
    texts=st.lists(st.sampled_from(["cats", "Cats ", "dogs", "fish", "birds", "the sea", "a", "b"]), min_size=1, max_size=40),
    seed=st.integers(0, 2**32),
    block=st.one_of(st.none(), st.integers(1, 8)),
)
def test_partner_is_never_the_query_itself(texts, seed, block):
    ids = [f"q{i}" for i in range(len(texts))]
    partners = swap_partners(ids, texts, seed, block=block, window=4)
    assert len(partners) == len(ids)
    distinct = len({_norm(t) for t in texts})
    for i, j in enumerate(partners):
        if j is None:
            assert distinct < 2  # only when no other text exists
            continue
        assert ids[j] != ids[i]
        assert _norm(texts[j]) != _norm(texts[i])
    assert partners == swap_partners(ids, texts, seed, block=block, window=4)  # deterministic


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 60), extra=st.integers(1, 40), block=st.integers(1, 10), seed=st.integers(0, 99))
def test_appending_queries_keeps_the_pairs_of_earlier_shards(n, extra, block, seed):
    ids = [f"q{i}" for i in range(n + extra)]
    texts = [f"text {i % 17}" for i in range(n + extra)]
    before = swap_partners(ids[:n], texts[:n], seed, block=block, window=8)
    after = swap_partners(ids, texts, seed, block=block, window=8)
    complete = (n // block) * block  # the shards that were complete before
    assert before[:complete] == after[:complete]


def test_duplicate_ids_are_not_partners_either():
    # the same query id twice (a sloppy input) still never pairs with itself
    ids = ["a", "a", "b"]
    texts = ["x one", "x two", "y"]
    for i, j in enumerate(swap_partners(ids, texts, 3)):
        assert j is not None and ids[j] != ids[i]


def test_pairing_is_random_over_queries():
    ids = [f"q{i}" for i in range(200)]
    partners = swap_partners(ids, [f"text {i}" for i in range(200)], seed=1)
    assert len(set(partners)) > 100  # not one fixed partner for all
    assert partners != swap_partners(ids, [f"text {i}" for i in range(200)], seed=2)


def test_a_single_query_has_no_partner_and_falls_back_to_prompting():
    table = pa.table({"query_id": ["only"], "text": ["do goldfish grow"]})
    plan = plan_shards(table, GenerateConfig(level0_strategy="swap"))
    assert plan.swap_fallbacks == ["only"]
    settings = settings_from_config(GenerateConfig(), "/tmp/unused")
    level0 = [r for r in build_requests(plan.tasks[0], settings) if r["level"] == 0]
    assert level0 and all(r["for_query_id"] == "only" for r in level0)


def test_level0_requests_are_written_for_the_partner_at_the_top_level():
    ids = [f"q{i}" for i in range(6)]
    texts = ["do goldfish grow", "what is wifi vs bluetooth", "why did the us enter ww1",
             "definition declaratory judgment", "right pelvic pain causes", "do goldfish grow"]
    cfg = GenerateConfig(level0_strategy="swap", shard_size=4, samples_per_level=2)
    plan = plan_shards(pa.table({"query_id": ids, "text": texts}), cfg)
    settings = settings_from_config(cfg, "/tmp/unused")
    text_of = dict(zip(ids, texts))
    n = 0
    for task in plan.tasks:
        requests = build_requests(task, settings)
        top = {r["query_id"]: r for r in requests if r["level"] == settings.n_levels - 1}
        for r in requests:
            user = r["chat"][-1]["content"]
            if r["level"] == 0:
                n += 1
                partner = r["for_query_id"]
                assert partner != r["query_id"]
                assert _norm(text_of[partner]) != _norm(text_of[r["query_id"]])
                assert text_of[partner] in user and text_of[r["query_id"]] not in user
                # the partner's own top-level prompt: same instruction as the top level
                assert user.split("\n", 1)[1] == top[r["query_id"]]["chat"][-1]["content"].split("\n", 1)[1]
            else:
                assert r["for_query_id"] == r["query_id"]
                assert text_of[r["query_id"]] in user
    assert n == len(ids) * 2
