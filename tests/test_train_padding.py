"""Padding in training batches: queries and passages encoded in length-sorted chunks (each padded to
its own longest text) give the embeddings, loss and gradients of one padded forward; length-bucketed
batch order is a seeded, resumable permutation of the epoch that pads less on real groups.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from synrank.config import GroupsConfig
from synrank.train.collate import BatchPlan, Group, GroupShard, collate
from test_train import _encoder, tiny_encoder  # noqa: F401  (tiny_encoder: a session fixture)

WORDS = "lift drag wing flow shock layer heat nozzle panel flutter boundary supersonic".split()


def _varied_batch(n: int = 7, k: int = 3):
    groups = [Group(f"q{i}", " ".join(WORDS[: 1 + (i * 5) % 11]) + " ?", [f"d{i}-{j}" for j in range(1 + i % k)],
                    [" ".join(WORDS[: 1 + (i * 7 + j * 3) % 12]) for j in range(1 + i % k)],
                    [3.0] + [0.0] * (i % k))
              for i in range(n)]
    return collate(groups, k)


def _one_padded_forward(encoder, batch):
    """Query embeddings [B] and slot embeddings [B*K] from one padded forward per side."""
    q = encoder(encoder.tokenize(batch.queries, "query"))
    p = encoder(encoder.tokenize(batch.passages, "passage"))
    slots = q.new_zeros((batch.n_queries * batch.group_size, q.shape[1])).index_copy(0, batch.slots, p)
    return q, slots


def test_length_chunks_is_the_cheapest_split():
    """Against every split of small sorted length lists: padded tokens + call cost per chunk."""
    from synrank.train.loop import length_chunks

    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 8))
        lengths = np.sort(rng.integers(1, 40, size=n))
        max_rows, cost = int(rng.integers(1, n + 1)), int(rng.integers(0, 30))

        def total(ends):
            starts = [0] + ends[:-1]
            return sum((e - s) * lengths[e - 1] + cost for s, e in zip(starts, ends))

        splits = [list(c) + [n] for r in range(n) for c in itertools.combinations(range(1, n), r)]
        feasible = [e for e in splits if all(b - a <= max_rows for a, b in zip([0] + e[:-1], e))]
        ends = length_chunks(lengths, max_rows, cost)
        assert ends[-1] == n and all(b - a <= max_rows for a, b in zip([0] + ends[:-1], ends))
        assert total(ends) == min(total(e) for e in feasible)
    assert length_chunks(np.array([2, 2, 2, 30, 30]), 5, 0) == [3, 5]
    assert length_chunks(np.array([2, 2, 2, 30, 30]), 5, 10_000) == [5]


def test_chunked_encoding_gives_the_embeddings_loss_and_gradients_of_one_padded_forward(tiny_encoder):  # noqa: F811
    from synrank.encoder import BiEncoder, similarity
    from synrank.losses import build
    from synrank.losses.labels import label_matrices
    from synrank.train.loop import Towers, scores_for, tokenize_batch

    batch = _varied_batch()
    encoder = BiEncoder(_encoder(tiny_encoder)).eval()
    inputs = tokenize_batch(encoder, batch, call_cost=0)
    chunked_tokens = sum(c["attention_mask"].numel() for c in inputs.queries + inputs.chunks)
    padded_tokens = sum(encoder.tokenize(texts, kind)["attention_mask"].numel()
                        for texts, kind in ((batch.queries, "query"), (batch.passages, "passage")))
    assert len(inputs.queries) > 1 and len(inputs.chunks) > 1 and chunked_tokens < padded_tokens

    with torch.no_grad():
        q_chunked, p_chunked = Towers(encoder)(inputs.queries, inputs.chunks)
        q, slots = _one_padded_forward(encoder, batch)
    torch.testing.assert_close(q_chunked[inputs.query_rows], q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p_chunked, slots[inputs.slots], rtol=1e-5, atol=1e-5)

    labels, mask = label_matrices(batch.grades, batch.valid, batch.doc_keys)
    loss_fn = build("infonce", positive_threshold=2.0)

    def grads(loss):
        encoder.zero_grad(set_to_none=True)
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    chunked_loss, chunked = grads(loss_fn(scores_for(Towers(encoder), encoder, batch, torch.device("cpu"), inputs),
                                          labels, mask))
    plain_loss, plain = grads(loss_fn(similarity(*_one_padded_forward(encoder, batch)), labels, mask))
    assert chunked_loss == pytest.approx(plain_loss, abs=1e-5) and chunked.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(chunked[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bucketed_order_is_a_seeded_permutation_of_each_epoch_that_resumes_exactly():
    n, batch = 50, 4
    lengths = np.random.default_rng(1).integers(10, 500, size=n)
    plan = BatchPlan(n, batch, 1, seed=3, lengths=lengths, bucket_window=3)
    plain = BatchPlan(n, batch, 1, seed=3)
    for epoch in range(2):
        order = plan.order(epoch)
        assert sorted(order.tolist()) == list(range(n))
        assert order.tolist() != plain.order(epoch).tolist()
        assert order.tolist() == BatchPlan(n, batch, 1, seed=3, lengths=lengths, bucket_window=3).order(epoch).tolist()
    assert plan.order(0).tolist() != plan.order(1).tolist()
    assert plan.order(0).tolist() != BatchPlan(n, batch, 1, seed=4, lengths=lengths, bucket_window=3).order(0).tolist()
    # within a window of 3 batches, lengths rise: a batch's groups have neighbouring lengths
    spread = [np.ptp(lengths[plan.indices(m)]) for m in range(plan.per_epoch)]
    plain_spread = [np.ptp(lengths[plain.indices(m)]) for m in range(plain.per_epoch)]
    assert np.mean(spread) < 0.5 * np.mean(plain_spread)
    # a resumed run (a fresh plan) continues with the same batches, across the epoch boundary
    seen = [plan.indices(m).tolist() for m in range(2 * plan.per_epoch)]
    resumed = BatchPlan(n, batch, 1, seed=3, lengths=lengths, bucket_window=3)
    assert [resumed.indices(m).tolist() for m in range(plan.per_epoch - 2, 2 * plan.per_epoch)] == \
        seen[plan.per_epoch - 2 :]


@pytest.fixture(scope="module")
def cranfield_shard(shared_data, tmp_path_factory) -> GroupShard:
    from synrank.data.groups import build_groups, write_groups

    cfg = GroupsConfig(source="human", collection=str(shared_data / "cranfield"), qrels_levels=5, n_levels=5,
                       group_size=4, bm25_negatives=10)
    table, stats = build_groups(cfg)
    path = str(tmp_path_factory.mktemp("groups") / "cranfield-human.parquet")
    write_groups(table, path, stats)
    return GroupShard.from_path(path)


def test_bucketed_order_pads_less_on_cranfield_groups(cranfield_shard, tiny_encoder):  # noqa: F811
    """Padded tokens of one padded forward per side and batch, over an epoch of batches of 8."""
    from synrank.encoder import BiEncoder
    from synrank.train.loop import bucket_lengths

    config = _encoder(tiny_encoder).model_copy(update={"max_query_length": 64, "max_passage_length": 64})
    encoder = BiEncoder(config)

    def padded(plan: BatchPlan) -> int:
        total = 0
        for m in range(plan.per_epoch):
            batch = collate(cranfield_shard.take(plan.indices(m)), 4)
            total += sum(encoder.tokenize(texts, kind)["attention_mask"].numel()
                         for texts, kind in ((batch.queries, "query"), (batch.passages, "passage")))
        return total

    n = len(cranfield_shard)
    lengths = bucket_lengths(cranfield_shard, config)
    assert lengths.shape == (n,) and lengths.min() > 0
    assert padded(BatchPlan(n, 8, 1, seed=0, lengths=lengths)) < 0.98 * padded(BatchPlan(n, 8, 1, seed=0))


def test_the_loop_trains_with_length_bucketing(tiny_encoder, tmp_path):  # noqa: F811
    """train.length_bucketing reaches the loop, and a run with it reproduces."""
    from test_train import _hand_groups

    from synrank.config import TrainConfig
    from synrank.train.loop import run

    groups = _hand_groups(tmp_path, n=6)
    cfg = TrainConfig(encoder=_encoder(tiny_encoder), batch_size=2, max_steps=2, lr=1e-4, checkpoint_every=100,
                      seed=5, dropout=0.0, length_bucketing=True, length_bucket_window=3)
    bucketed, _ = run(cfg, groups)
    again, _ = run(cfg, groups)
    assert [h["loss"] for h in bucketed["history"]] == [h["loss"] for h in again["history"]]
