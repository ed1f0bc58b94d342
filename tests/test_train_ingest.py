"""The groups as Ray Train gets them: their shape from the Parquet file, a Ray Dataset read by row
groups, and equal, repeatable shards per worker."""

from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synrank.data import schemas
from synrank.train.collate import GROUP_COLUMNS, GroupShard
from synrank.train.ingest import DATASET, GroupsDatasource, groups_dataset, groups_shape, shard_config


@pytest.fixture
def groups_file(tmp_path) -> str:
    """11 groups of 1..4 passages in 4 row groups (3, 3, 3, 2 rows)."""
    rows = []
    for i in range(11):
        size = 1 + i % 4
        rows.append({"query_id": f"q{i:02d}", "query": f"query {i}", "doc_ids": [f"d{i}-{j}" for j in range(size)],
                     "texts": [f"text {i} {j}" for j in range(size)], "grades": [float(j % 3) for j in range(size)],
                     "sources": ["synthetic"] * size})
    path = str(tmp_path / "groups.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.TRAINING_GROUPS), path, row_group_size=3)
    return path


def test_shape_comes_from_the_file(groups_file):
    assert groups_shape(groups_file) == (11, 4)


def test_read_tasks_cover_runs_of_row_groups(groups_file):
    tasks = GroupsDatasource(groups_file, block_rows=2).get_read_tasks(3)
    assert [t.metadata.num_rows for t in tasks] == [6, 3, 2]
    blocks = [block for t in tasks for block in t()]
    assert max(b.num_rows for b in blocks) == 2 and sum(b.num_rows for b in blocks) == 11
    assert blocks[0].column_names == GROUP_COLUMNS


def _shards(groups_file: str) -> list[list[str]]:
    """The query ids each of two consumers gets through Ray Train's split of the groups dataset."""
    iterators = shard_config().configure({DATASET: groups_dataset(groups_file, block_rows=2)}, world_size=2,
                                         worker_handles=None, worker_node_ids=None)
    found: list[list[str]] = [[], []]

    def consume(rank: int) -> None:  # the consumers of a split read together, as workers do
        batches = iterators[rank][DATASET].iter_batches(batch_size=None, batch_format="pyarrow")
        found[rank] = GroupShard.from_batches(batches, "test").table.column("query_id").to_pylist()

    threads = [threading.Thread(target=consume, args=(rank,)) for rank in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return found


@pytest.mark.slow
def test_workers_get_equal_disjoint_shards_and_the_same_ones_again(ray_session, groups_file):
    first = _shards(groups_file)
    assert [len(s) for s in first] == [5, 5] and not set(first[0]) & set(first[1])
    assert _shards(groups_file) == first
