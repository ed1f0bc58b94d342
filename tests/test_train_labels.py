"""The global batch's labels and mask, built on the device from compact per-query data, against a
straightforward per-query, per-slot reference: several group sizes, padding, groups sampled down,
documents shared between groups, in-batch negatives on and off, one to three workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synrank.losses.labels import label_matrices
from synrank.train.collate import Group, collate


def _random_groups(rng: np.random.Generator, n_queries: int, max_size: int, n_docs: int) -> list[Group]:
    """Groups of 1..max_size passages drawn from a small pool of documents, so groups share some."""
    groups = []
    for i in range(n_queries):
        size = int(rng.integers(1, max_size + 1))
        docs = [f"d{int(d)}" for d in rng.choice(n_docs, size=size, replace=False)]
        grades = [float(g) for g in rng.integers(0, 4, size=size)]
        groups.append(Group(f"q{i}", f"query {i}", docs, [f"text of {d}" for d in docs], grades))
    return groups


def _reference(groups: list[Group], k: int, in_batch_negatives: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and mask of the global batch of `groups` (each at most k passages), slot by slot."""
    n = len(groups) * k
    labels = torch.zeros(len(groups), n)
    mask = torch.zeros(len(groups), n, dtype=torch.bool)
    for i, mine in enumerate(groups):
        for j, other in enumerate(groups):
            for pos, doc in enumerate(other.doc_ids):
                slot = j * k + pos
                if i == j:
                    labels[i, slot] = mine.grades[pos]
                    mask[i, slot] = True
                else:
                    mask[i, slot] = in_batch_negatives and doc not in mine.doc_ids
    return labels, mask


def _gathered(parts):
    """The per-worker compact data concatenated in rank order, as the all-gather gives it."""
    return (torch.cat([p.grades for p in parts]), torch.cat([p.valid for p in parts]),
            torch.cat([p.doc_keys for p in parts]))


def _kept(groups: list[Group], batch) -> list[Group]:
    """The passages of each group that the batch kept (read back from its flattened passages)."""
    texts = iter(batch.passages)
    kept = []
    for g, size in zip(groups, batch.valid.sum(dim=1).tolist()):
        chosen = [next(texts) for _ in range(size)]
        index = [g.texts.index(t) for t in chosen]
        kept.append(Group(g.query_id, g.query, [g.doc_ids[i] for i in index], chosen, [g.grades[i] for i in index]))
    return kept


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("in_batch", [True, False])
def test_labels_and_mask_match_the_reference(k, world, in_batch):
    for trial in range(20):
        rng = np.random.default_rng([k, world, trial])
        per_worker = int(rng.integers(1, 4))
        groups = _random_groups(rng, per_worker * world, max_size=k + 2, n_docs=3 * k + 2)
        parts = [collate(groups[r * per_worker : (r + 1) * per_worker], k, seed=5, epoch=trial) for r in range(world)]
        labels, mask = label_matrices(*_gathered(parts), in_batch_negatives=in_batch)
        # groups longer than k were sampled down by collate: the reference sees what was kept
        kept = [g for r, p in enumerate(parts) for g in _kept(groups[r * per_worker : (r + 1) * per_worker], p)]
        expected_labels, expected_mask = _reference(kept, k, in_batch)
        assert torch.equal(labels, expected_labels) and torch.equal(mask, expected_mask)


def test_sampled_down_groups_keep_their_best_passage_and_size():
    group = Group("q", "query", [f"d{i}" for i in range(6)], [f"t{i}" for i in range(6)],
                  [0.0, 1.0, 3.0, 0.0, 2.0, 1.0])
    batch = collate([group], 3, seed=1, epoch=0)
    assert batch.valid.tolist() == [[True, True, True]] and batch.grades[0, 0].item() == 3.0
    assert batch.passages[0] == "t2" and len(set(batch.passages)) == 3
    assert collate([group], 3, seed=1, epoch=0).passages == batch.passages


def test_labels_are_built_on_the_device_of_the_inputs():
    parts = [collate(_random_groups(np.random.default_rng(0), 4, 3, 6), 3)]
    grades, valid, keys = (t.to("meta") for t in _gathered(parts))
    labels, mask = label_matrices(grades, valid, keys)
    assert labels.device.type == "meta" and mask.device.type == "meta" and labels.shape == (4, 12)


def test_a_swap_passage_is_never_a_negative_for_the_query_it_was_written_for():
    """q1's level-0 passage was written (at the top level) for q0. When q0 and q1 share a batch it is
    masked for q0 (not labelled a negative), stays q1's own level-0 negative, and is an ordinary
    in-batch negative for q2; across workers too."""
    from synrank.train.loop import global_labels

    groups = [Group("q0", "query 0", ["a0", "b0"], ["top of q0", "zero of q0"], [3.0, 0.0], [None, "q2"]),
              Group("q1", "query 1", ["a1", "s1"], ["top of q1", "written for q0"], [3.0, 0.0], [None, "q0"]),
              Group("q2", "query 2", ["a2"], ["top of q2"], [3.0], None)]
    k = 2
    for parts in ([groups], [groups[:1], groups[1:]]):
        batches = [collate(p, k) for p in parts]
        labels, mask = label_matrices(*_gathered(batches), query_keys=torch.cat([b.query_keys for b in batches]),
                                      origin_keys=torch.cat([b.origin_keys for b in batches]))
        swap_of_q1, swap_of_q0 = 1 * k + 1, 0 * k + 1
        assert not mask[0, swap_of_q1] and labels[0, swap_of_q1] == 0  # written for q0: masked for q0
        assert mask[1, swap_of_q1] and labels[1, swap_of_q1] == 0  # q1's own negative
        assert mask[2, swap_of_q1]  # another query's in-batch negative
        assert not mask[2, swap_of_q0] and mask[1, swap_of_q0]  # q0's passage written for q2
        # everything else as without origins
        plain_labels, plain_mask = label_matrices(*_gathered(batches))
        assert torch.equal(labels, plain_labels)
        expected = plain_mask.clone()
        expected[0, swap_of_q1] = expected[2, swap_of_q0] = False
        assert torch.equal(mask, expected)
    labels, mask = global_labels(collate(groups, k), torch.device("cpu"), True)  # what the loop uses
    assert not mask[0, 3] and not mask[2, 1] and mask[1, 3]


def test_origins_travel_from_the_groups_file_to_the_batch(tmp_path):
    import pyarrow as pa

    from synrank.data import schemas
    from synrank.train.collate import GroupShard

    rows = [{"query_id": "q0", "query": "x", "doc_ids": ["a", "b"], "texts": ["t", "u"], "grades": [3.0, 0.0],
             "sources": ["synthetic"] * 2, "origins": [None, "q1"]},
            {"query_id": "q1", "query": "y", "doc_ids": ["c"], "texts": ["v"], "grades": [3.0],
             "sources": ["synthetic"], "origins": None}]
    table = pa.Table.from_pylist(rows, schema=schemas.TRAINING_GROUPS.append(schemas.ORIGINS))
    shard = GroupShard(table)
    got = shard.take(np.array([0, 1]))
    assert got[0].origins == [None, "q1"] and got[1].origins is None
    batch = collate(got, 2)
    assert batch.origin_keys[0, 1] == batch.query_keys[1] and batch.origin_keys[0, 0] == 0
    assert int(batch.origin_keys[1].abs().sum()) == 0
    # a file without the column still reads
    assert GroupShard(table.drop_columns(["origins"])).take(np.array([0]))[0].origins is None


def test_a_passage_judged_relevant_to_a_query_is_never_its_in_batch_negative():
    """Real labels know more positives of a query than its group holds: "d2" is judged relevant to q0
    but was sampled into q1's group only. Without the groups' known positives it is labelled a
    negative of q0 (what training did before); with them it is masked for q0, stays q1's own
    positive and q2's in-batch negative, and nothing else changes; across workers too, where each
    worker's batch knows a different number of positives."""
    from synrank.train.loop import global_labels

    groups = [Group("q0", "query 0", ["d0", "n0"], ["t d0", "t n0"], [2.0, 0.0], None, ["d0", "d2", "d9"]),
              Group("q1", "query 1", ["d2", "n1"], ["t d2", "t n1"], [2.0, 0.0], None, ["d2"]),
              Group("q2", "query 2", ["d3"], ["t d3"], [1.0], None, [])]
    k, d2 = 2, 1 * 2 + 0
    for parts in ([groups], [groups[:1], groups[1:]]):
        batches = [collate(p, k) for p in parts]
        plain_labels, plain_mask = label_matrices(*_gathered(batches))
        assert plain_mask[0, d2] and plain_labels[0, d2] == 0  # the false negative of before
        widest = max(b.known_keys.shape[1] for b in batches)
        known = torch.cat([torch.nn.functional.pad(b.known_keys, (0, widest - b.known_keys.shape[1]))
                           for b in batches])
        labels, mask = label_matrices(*_gathered(batches), known_keys=known)
        assert not mask[0, d2]
        assert mask[1, d2] and labels[1, d2] == 2.0 and mask[2, d2] and labels[2, d2] == 0
        expected = plain_mask.clone()
        expected[0, d2] = False
        assert torch.equal(mask, expected) and torch.equal(labels, plain_labels)
    labels, mask = global_labels(collate(groups, k), torch.device("cpu"), True)  # what the loop uses
    assert not mask[0, d2] and mask[2, d2]


def test_known_positives_travel_from_the_groups_file_to_the_batch():
    import pyarrow as pa

    from synrank.data import schemas
    from synrank.train.collate import GroupShard, doc_key

    rows = [{"query_id": "q0", "query": "x", "doc_ids": ["a", "b"], "texts": ["t", "u"], "grades": [3.0, 0.0],
             "sources": ["human", "bm25"], "known_positives": ["a", "c", "e"]},
            {"query_id": "q1", "query": "y", "doc_ids": ["c"], "texts": ["v"], "grades": [3.0],
             "sources": ["human"], "known_positives": None}]
    table = pa.Table.from_pylist(rows, schema=schemas.TRAINING_GROUPS.append(schemas.KNOWN_POSITIVES))
    got = GroupShard(table).take(np.array([0, 1]))
    assert got[0].known_positives == ["a", "c", "e"] and got[1].known_positives == []
    batch = collate(got, 2)
    assert batch.known_keys.tolist() == [[doc_key("a"), doc_key("c"), doc_key("e")], [0, 0, 0]]
    labels, mask = label_matrices(batch.grades, batch.valid, batch.doc_keys, known_keys=batch.known_keys)
    assert not mask[0, 2] and mask[1, 2] and mask[1, 0]  # "c", judged for q0, sits in q1's group
    # a file without the column: no keys, the batch as before
    plain = collate(GroupShard(table.drop_columns(["known_positives"])).take(np.array([0, 1])), 2)
    assert plain.known_keys is None
