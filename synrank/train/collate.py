"""From training groups to batches: this worker's groups, its order of them, and the label matrix of
the global batch.

Groups. A worker holds only its shard of the training groups, as Arrow (``GroupShard``): under Ray
Train an equal share of the table (see ``synrank.train.ingest``), in a single process the whole
table.

Order. Epoch ``e`` visits the worker's groups in
``numpy.random.default_rng([seed, e, rank]).permutation(n_shard)`` (or in shard order with
``shuffle=False``). Micro-batch ``m`` of the run takes the ``m``-th ``batch_size`` groups of that
order (the tail of an epoch that does not fill a batch is skipped). Shards are equal, so every
worker runs the same number of micro-batches per epoch, and the global batch of micro-batch ``m``
is the workers' batches in rank order. The data position is one integer, the micro-batch counter,
so a resumed run continues exactly where it stopped.

Length buckets (``train.length_bucketing``, off by default). The epoch's permutation is cut into
windows of ``bucket_window`` batches; each window is sorted by group length (characters of the query
and of its passages, each clipped to what the encoder keeps), cut into batches, and all full batches
of the epoch are then shuffled (``default_rng([seed, epoch, rank, 1])``). The order stays random at
the epoch level and a pure function of (seed, epoch, rank, lengths), so resume is as exact as
without it; but queries of similar length now share a batch, so a query sees other in-batch
negatives than in the plain order: that is why it is opt-in. Its gain is the padding that the
length-sorted encoder chunks of one batch (``synrank.train.loop.tokenize_batch``) cannot remove.

Candidates. Every query of the global batch scores every passage slot of the global batch:
``N = world_size * batch_size * K`` slots, worker-major, then query, then position in the group
(exactly the order of an all-gather of the per-worker slots). Label of query ``i`` for slot ``j``:
the grade when ``j`` is one of ``i``'s own passages, else 0. The mask removes padding slots (groups
shorter than ``K``), copies of ``i``'s own passages that sit in another query's group (the same
document judged for ``i`` must not count as its negative), passages of another query's group that
were written for ``i`` (a "swap" level-0 passage is a top-level passage written for its partner
query: the groups' optional ``origins`` column names that query), passages of another query's
group that are judged relevant to ``i`` (the groups' optional ``known_positives`` column lists them:
real labels know more positives of a query than its group holds), and, with
``in_batch_negatives=False``, every slot outside ``i``'s own group.

A worker's batch carries compact per-query data (grades, valid slots, document keys and origin
keys, each ``[B, K]``, query keys ``[B]`` and known-positive keys ``[B, M]``); the loop gathers them from every worker and
``synrank.losses.labels.label_matrices`` builds the ``[B_global, N]`` labels and mask from them on the device.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from synrank.data.groups import GroupsError, _rng, sample_group

GROUP_COLUMNS = ["query_id", "query", "doc_ids", "texts", "grades"]
ORIGINS = "origins"  # optional (synrank.data.schemas.ORIGINS)
KNOWN_POSITIVES = "known_positives"  # optional (synrank.data.schemas.KNOWN_POSITIVES)


def group_columns(names: list[str]) -> list[str]:
    """The columns training reads from a groups table with column ``names``: GROUP_COLUMNS, and
    ``origins`` and ``known_positives`` when the table has them."""
    return GROUP_COLUMNS + [c for c in (ORIGINS, KNOWN_POSITIVES) if c in names]


@dataclass
class Group:
    query_id: str
    query: str
    doc_ids: list[str]
    texts: list[str]
    grades: list[float]
    origins: list[str | None] | None = None  # per passage: another query it was written for, or None
    known_positives: list[str] | None = None  # every passage judged relevant to the query


class GroupShard:
    """The training groups one worker holds, as an Arrow table of ``GROUP_COLUMNS`` (and ``origins``)."""

    def __init__(self, table: pa.Table, source: str = "training groups") -> None:
        self.table = table.select(group_columns(table.column_names))
        _check_lengths(self.table, source)

    @classmethod
    def from_path(cls, path: str) -> "GroupShard":
        """The whole table (a single process)."""
        from synrank.data.groups import read_groups

        return cls(read_groups(path), path)

    @classmethod
    def from_batches(cls, batches: Any, source: str) -> "GroupShard":
        """The Arrow batches of a Ray Data shard (``iter_batches(batch_format="pyarrow")``)."""
        from synrank.data import schemas

        tables = list(batches)
        empty = schemas.TRAINING_GROUPS.empty_table().select(GROUP_COLUMNS)
        return cls(pa.concat_tables(tables) if tables else empty, source)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def max_group_size(self) -> int:
        return int(pc.max(pc.list_value_length(self.table.column("doc_ids"))).as_py() or 0)

    def lengths(self, max_query_chars: int | None = None, max_passage_chars: int | None = None) -> np.ndarray:
        """int64 [n]: characters of each group's query and passages, each text clipped to its maximum
        (what survives truncation), for length bucketing."""
        def clipped(texts: pa.Array, cap: int | None) -> np.ndarray:
            n = pc.utf8_length(texts).to_numpy(zero_copy_only=False).astype(np.int64)
            return np.minimum(n, cap) if cap is not None else n

        query = clipped(self.table.column("query").combine_chunks(), max_query_chars)
        texts = self.table.column("texts").combine_chunks()
        owner = pc.list_parent_indices(texts).to_numpy(zero_copy_only=False)
        passages = np.bincount(owner, weights=clipped(pc.list_flatten(texts), max_passage_chars),
                               minlength=len(self)).astype(np.int64)
        return query + passages

    def take(self, indices: np.ndarray) -> list[Group]:
        rows = self.table.take(pa.array(indices, type=pa.int64())).to_pylist()
        # with the column every group has a list (null: none known), so that every worker's batches
        # carry known-positive keys alike
        known = KNOWN_POSITIVES in self.table.column_names
        return [Group(r["query_id"], r["query"], r["doc_ids"], r["texts"], [float(g) for g in r["grades"]],
                      r.get(ORIGINS), (r[KNOWN_POSITIVES] or []) if known else None)
                for r in rows]


def _check_lengths(table: pa.Table, source: str) -> None:
    """Under Ray Train no worker reads the file through ``read_groups``; a group whose lists differ in
    length would otherwise be labelled wrongly without an error."""
    sizes = [pc.fill_null(pc.list_value_length(table.column(c)), 0) for c in ("doc_ids", "texts", "grades")]
    bad = pc.or_(pc.or_(pc.not_equal(sizes[0], sizes[1]), pc.not_equal(sizes[0], sizes[2])), pc.less(sizes[0], 1))
    if ORIGINS in table.column_names:  # null: no origins; else one per passage
        origins = pc.list_value_length(table.column(ORIGINS))
        bad = pc.or_(bad, pc.fill_null(pc.not_equal(origins, sizes[0]), False))
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        raise GroupsError(f"{source}: group {table.column('query_id')[row].as_py()!r}: doc_ids, texts and grades "
                          "(and origins) must be non-empty and of equal length")


class BatchPlan:
    """Which of this worker's groups form its part of micro-batch ``m`` (see the module doc).
    With ``lengths`` (one per group of the shard), batches are length-bucketed."""

    def __init__(self, shard_size: int, batch_size: int, world_size: int, seed: int, rank: int = 0,
                 shuffle: bool = True, lengths: np.ndarray | None = None, bucket_window: int = 32) -> None:
        self.n = shard_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.shuffle = shuffle
        self.per_epoch = shard_size // batch_size
        if self.per_epoch == 0:
            raise ValueError(f"{shard_size * world_size} training groups ({shard_size} per worker) cannot fill one "
                             f"global batch of {batch_size * world_size} (batch_size {batch_size} x {world_size} "
                             "worker(s)); use a smaller batch or more groups")
        if lengths is not None and len(lengths) != shard_size:
            raise ValueError(f"{len(lengths)} lengths for a shard of {shard_size} groups")
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.bucket_window = max(1, bucket_window)
        self._perm: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            perm = (np.random.default_rng([self.seed, epoch, self.rank]).permutation(self.n) if self.shuffle
                    else np.arange(self.n))
            if self.lengths is not None:
                perm = self._bucketed(perm, epoch)
            self._perm = (epoch, perm)
        return self._perm[1]

    def _bucketed(self, perm: np.ndarray, epoch: int) -> np.ndarray:
        """``perm`` sorted by length within windows of ``bucket_window`` batches, its full batches shuffled
        (the tail that fills no batch stays last, skipped as in the plain order)."""
        window = self.bucket_window * self.batch_size
        sorted_ = np.concatenate([chunk[np.argsort(self.lengths[chunk], kind="stable")]
                                  for chunk in np.split(perm, range(window, self.n, window))])
        full = self.per_epoch * self.batch_size
        batches = sorted_[:full].reshape(self.per_epoch, self.batch_size)
        if self.shuffle:
            batches = batches[np.random.default_rng([self.seed, epoch, self.rank, 1]).permutation(self.per_epoch)]
        return np.concatenate([batches.reshape(-1), sorted_[full:]])

    def epoch_of(self, micro: int) -> int:
        return micro // self.per_epoch

    def indices(self, micro: int) -> np.ndarray:
        epoch, m = divmod(micro, self.per_epoch)
        return self.order(epoch)[m * self.batch_size : (m + 1) * self.batch_size]


@dataclass
class Batch:
    """One worker's share of a global batch: texts to encode and compact per-query label data."""

    queries: list[str]  # this worker's queries [B]
    passages: list[str]  # this worker's real passages, flattened (no padding)
    slots: torch.Tensor  # long [len(passages)]: their slot in this worker's [B*K] slots
    grades: torch.Tensor  # float32 [B, K], 0 on padding
    valid: torch.Tensor  # bool [B, K]: a real passage, not padding
    doc_keys: torch.Tensor  # int64 [B, K]: doc_key of each passage, 0 on padding
    group_size: int
    query_keys: torch.Tensor | None = None  # int64 [B]: doc_key of each query id
    origin_keys: torch.Tensor | None = None  # int64 [B, K]: doc_key of the query a passage was written for, else 0
    known_keys: torch.Tensor | None = None  # int64 [B, M]: doc_keys of the passages judged relevant, 0-padded

    @property
    def n_queries(self) -> int:
        return len(self.queries)


def doc_key(doc_id: str) -> int:
    """A 64-bit key of a document id: comparable on the device and across workers."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def _sampled(group: Group, k: int, seed: int, epoch: int) -> Group:
    """The group, or k of its passages (stratified by grade, seeded per epoch) when it has more."""
    if len(group.doc_ids) <= k:
        return group
    rng = _rng(seed * 1_000_003 + epoch, group.query_id)
    chosen = sample_group(list(range(len(group.doc_ids))), k, rng, "stratified", grade=lambda i: group.grades[i])
    origins = None if group.origins is None else [group.origins[i] for i in chosen]
    return Group(group.query_id, group.query, [group.doc_ids[i] for i in chosen], [group.texts[i] for i in chosen],
                 [group.grades[i] for i in chosen], origins, group.known_positives)


def collate(groups: list[Group], group_size: int, *, seed: int = 0, epoch: int = 0) -> Batch:
    """This worker's batch of ``groups``, each padded (or sampled down) to ``group_size`` passages."""
    k = group_size
    chosen = [_sampled(g, k, seed, epoch) for g in groups]
    pad = [k - len(g.doc_ids) for g in chosen]
    grades = [g.grades + [0.0] * p for g, p in zip(chosen, pad)]
    valid = [[True] * len(g.doc_ids) + [False] * p for g, p in zip(chosen, pad)]
    keys = [[doc_key(d) for d in g.doc_ids] + [0] * p for g, p in zip(chosen, pad)]
    slots = [qi * k + j for qi, g in enumerate(chosen) for j in range(len(g.doc_ids))]
    origins = [[doc_key(o) if o else 0 for o in (g.origins or [None] * len(g.doc_ids))] + [0] * p
               for g, p in zip(chosen, pad)]
    known_keys = None
    if any(g.known_positives is not None for g in chosen):
        known = [[doc_key(d) for d in g.known_positives or []] for g in chosen]
        m = max(1, max(len(keys) for keys in known))
        known_keys = torch.tensor([keys + [0] * (m - len(keys)) for keys in known], dtype=torch.int64)
    return Batch(
        queries=[g.query for g in chosen],
        passages=[t for g in chosen for t in g.texts],
        slots=torch.tensor(slots, dtype=torch.long),
        grades=torch.tensor(grades, dtype=torch.float32).reshape(len(chosen), k),
        valid=torch.tensor(valid, dtype=torch.bool).reshape(len(chosen), k),
        doc_keys=torch.tensor(keys, dtype=torch.int64).reshape(len(chosen), k),
        group_size=k,
        query_keys=torch.tensor([doc_key(g.query_id) for g in chosen], dtype=torch.int64),
        origin_keys=torch.tensor(origins, dtype=torch.int64).reshape(len(chosen), k),
        known_keys=known_keys,
    )
