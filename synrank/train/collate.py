"""From training groups to batches: a deterministic order, per-worker slices, and the label matrix of
the global batch.

Order. Epoch ``e`` visits the groups in ``numpy.random.default_rng([seed, e]).permutation(n)`` (or
in file order with ``shuffle=False``). Micro-batch ``m`` of the run is the ``m``-th slice of
``batch_size * world_size`` groups of that order (the tail of an epoch that does not fill a global
batch is skipped); worker ``r`` takes the ``r``-th ``batch_size`` of it. So the data position is
one integer, the micro-batch counter, and a resumed run continues exactly where it stopped.

Candidates. Every query of the global batch scores every passage slot of the global batch:
``N = world_size * batch_size * K`` slots, worker-major, then query, then position in the group
(exactly the order of an all-gather of the per-worker slots). Label of query ``i`` for slot ``j``:
the grade when ``j`` is one of ``i``'s own passages, else 0. The mask removes padding slots (groups
shorter than ``K``), copies of ``i``'s own passages that sit in another query's group (the same
document judged for ``i`` must not count as its negative), and, with ``in_batch_negatives=False``,
every slot outside ``i``'s own group.

Every worker holds the group table, so every worker builds the same global labels and mask without
communication; only the embeddings are gathered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from synrank.data.groups import _rng, sample_group


@dataclass
class GroupData:
    query_ids: list[str]
    queries: list[str]
    doc_ids: list[list[str]]
    texts: list[list[str]]
    grades: list[list[float]]

    @classmethod
    def from_table(cls, table: pa.Table) -> "GroupData":
        return cls(
            table.column("query_id").to_pylist(),
            table.column("query").to_pylist(),
            table.column("doc_ids").to_pylist(),
            table.column("texts").to_pylist(),
            [[float(g) for g in row] for row in table.column("grades").to_pylist()],
        )

    @classmethod
    def from_path(cls, path: str) -> "GroupData":
        from synrank.data.groups import read_groups

        return cls.from_table(read_groups(path))

    def __len__(self) -> int:
        return len(self.query_ids)

    @property
    def max_group_size(self) -> int:
        return max(len(d) for d in self.doc_ids)


class BatchPlan:
    """Which groups form micro-batch ``m`` (see the module doc)."""

    def __init__(self, n_groups: int, batch_size: int, world_size: int, seed: int, shuffle: bool = True) -> None:
        self.n = n_groups
        self.batch_size = batch_size
        self.world_size = world_size
        self.global_batch = batch_size * world_size
        self.seed = seed
        self.shuffle = shuffle
        self.per_epoch = n_groups // self.global_batch
        if self.per_epoch == 0:
            raise ValueError(f"{n_groups} training groups cannot fill one global batch of {self.global_batch} "
                             f"(batch_size {batch_size} x {world_size} worker(s)); use a smaller batch or more groups")
        self._perm: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            perm = (np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle
                    else np.arange(self.n))
            self._perm = (epoch, perm)
        return self._perm[1]

    def epoch_of(self, micro: int) -> int:
        return micro // self.per_epoch

    def global_indices(self, micro: int) -> np.ndarray:
        epoch, m = divmod(micro, self.per_epoch)
        return self.order(epoch)[m * self.global_batch : (m + 1) * self.global_batch]


@dataclass
class Batch:
    """One worker's share of a global batch, plus the global labels and mask."""

    queries: list[str]  # this worker's queries [B]
    passages: list[str]  # this worker's real passages, flattened (no padding)
    slots: torch.Tensor  # long [len(passages)]: their slot in this worker's [B*K] slots
    labels: torch.Tensor  # float32 [B_global, N]
    mask: torch.Tensor  # bool [B_global, N]
    group_size: int

    @property
    def n_queries(self) -> int:
        return len(self.queries)


def _group(data: GroupData, idx: int, k: int, seed: int, epoch: int) -> tuple[list[str], list[str], list[float]]:
    ids, texts, grades = data.doc_ids[idx], data.texts[idx], data.grades[idx]
    if len(ids) <= k:
        return ids, texts, grades
    rng = _rng(seed * 1_000_003 + epoch, data.query_ids[idx])
    chosen = sample_group(list(range(len(ids))), k, rng, "stratified", grade=lambda i: grades[i])
    return [ids[i] for i in chosen], [texts[i] for i in chosen], [grades[i] for i in chosen]


def collate(data: GroupData, global_idx: np.ndarray, rank: int, world_size: int, group_size: int, *,
            in_batch_negatives: bool = True, seed: int = 0, epoch: int = 0) -> Batch:
    """The batch of worker ``rank`` for the global batch ``global_idx`` (see the module doc)."""
    n_q = len(global_idx)
    if n_q % world_size:
        raise ValueError(f"a global batch of {n_q} queries does not split over {world_size} workers")
    b = n_q // world_size
    k = group_size
    n = n_q * k
    groups = [_group(data, int(i), k, seed, epoch) for i in global_idx]

    labels = np.zeros((n_q, n), dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    codes = np.full(n, -1, dtype=np.int64)
    vocab: dict[str, int] = {}
    for qi, (ids, _, grades) in enumerate(groups):
        start = qi * k
        labels[qi, start : start + len(ids)] = grades
        valid[start : start + len(ids)] = True
        codes[start : start + len(ids)] = [vocab.setdefault(d, len(vocab)) for d in ids]
    mask = np.broadcast_to(valid, (n_q, n)).copy()
    own = np.zeros((n_q, n), dtype=bool)
    for qi in range(n_q):
        own[qi, qi * k : (qi + 1) * k] = True
    if in_batch_negatives:
        for qi, (ids, _, _) in enumerate(groups):
            own_codes = codes[qi * k : qi * k + len(ids)]
            dup = np.isin(codes, own_codes) & ~own[qi]
            mask[qi, dup] = False
    else:
        mask &= own

    local = groups[rank * b : (rank + 1) * b]
    passages: list[str] = []
    slots: list[int] = []
    for qi, (_, texts, _) in enumerate(local):
        passages.extend(texts)
        slots.extend(range(qi * k, qi * k + len(texts)))
    queries = [data.queries[int(i)] for i in global_idx[rank * b : (rank + 1) * b]]
    return Batch(queries, passages, torch.tensor(slots, dtype=torch.long), torch.from_numpy(labels),
                 torch.from_numpy(mask), k)
