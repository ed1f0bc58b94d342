"""The training groups for Ray Train: a Ray Dataset that the workers share out, and the table's
shape read from the Parquet file without loading it.

The ``TorchTrainer`` gets ``datasets={"train": groups_dataset(url)}`` and ``shard_config()``: Ray
Train splits the dataset into one equal shard per worker (``streaming_split(equal=True)``, which
drops up to ``world_size - 1`` groups), and each worker reads only its shard
(``ray.train.get_dataset_shard("train")``). The split follows file order (``preserve_order``), so a
run and its restarts after a failure give every worker the same groups.

Read tasks take no CPU slot: the train workers often hold every CPU of a node, and reading groups
is light. A local file is read on this node (by its node-id label): other nodes may not see it.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from synrank import storage
from synrank.config import TrainConfig

log = logging.getLogger(__name__)

DATASET = "train"


def groups_shape(url: str) -> tuple[int, int]:
    """(number of groups, largest group): the count from the Parquet footer, the group size from
    the grades column read one batch at a time (no texts, nothing table-sized in memory)."""
    from synrank.data.groups import GroupsError

    if not storage.exists(url):
        raise FileNotFoundError(f"training groups {url}: no such file (build them with `synrank groups`)")
    try:
        with storage.open(url, "rb") as f:
            parquet = pq.ParquetFile(f)
            n = parquet.metadata.num_rows
            k = max((pc.max(pc.list_value_length(b.column(0))).as_py() or 0
                     for b in parquet.iter_batches(batch_size=65_536, columns=["grades"])), default=0)
    except Exception as exc:  # pyarrow raises several kinds for a bad file
        raise GroupsError(f"{url}: not a training-groups Parquet file: {exc}") from exc
    if n == 0:
        raise GroupsError(f"{url}: no training groups (0 rows)")
    return n, int(k)


def groups_scale(url: str) -> tuple[int, str]:
    """(n_levels, where it came from) of the groups at ``url``: the scale written into the file's
    metadata by ``synrank groups``, else ``n_levels`` of ``<url>.stats.json``, else inferred as the
    largest grade + 1 (at least 2)."""
    import json

    from synrank.data.groups import scale_of
    from synrank.data.levels import MAX_LEVELS, MIN_LEVELS

    with storage.open(url, "rb") as f:
        parquet = pq.ParquetFile(f)
        n = scale_of(parquet.schema_arrow)
        if n is not None:
            return n, "file metadata"
        top = max((pc.max(pc.list_flatten(b.column(0))).as_py() or 0.0
                   for b in parquet.iter_batches(batch_size=65_536, columns=["grades"])), default=0.0)
    stats = f"{url}.stats.json"
    if storage.exists(stats):
        with storage.open(stats, "r") as f:
            n = json.load(f).get("n_levels")
        if n:
            return int(n), "stats"
    return int(min(MAX_LEVELS, max(MIN_LEVELS, int(np.ceil(top)) + 1))), "largest grade"


def with_positive_threshold(config: TrainConfig, groups_path: str) -> TrainConfig:
    """``config`` with ``positive_threshold`` set: as given, or from the groups' relevance scale
    (`synrank.data.levels.positive_threshold`, the one rule of what counts as a positive)."""
    if config.positive_threshold is not None:
        return config
    from synrank.data.levels import positive_threshold

    n_levels, where = groups_scale(groups_path)
    threshold = float(positive_threshold(n_levels))
    log.info("positives: grade >= %g (the %d-level scale of %s, from its %s)", threshold, n_levels, groups_path,
             where)
    return config.model_copy(update={"positive_threshold": threshold})


def _read_row_groups(url: str, row_groups: list[int], block_rows: int, columns: list[str]) -> Iterator[pa.Table]:
    with storage.open(url, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=block_rows, row_groups=row_groups,
                                                    columns=columns):
            yield pa.Table.from_batches([batch])


class GroupsDatasource(Datasource):
    """One groups Parquet file: a read task per run of consecutive row groups, each streaming blocks
    of ``block_rows`` groups. Only the footer is read to plan."""

    def __init__(self, url: str, block_rows: int) -> None:
        from synrank.train.collate import group_columns  # torch: needed here, in the driver, not by the read tasks

        super().__init__()
        self.url = url
        self.block_rows = block_rows
        with storage.open(url, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        self.row_group_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.row_group_bytes = [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]
        arrow = meta.schema.to_arrow_schema()
        self.columns = group_columns(arrow.names)
        self.schema = pa.schema([arrow.field(c) for c in self.columns])

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(self.row_group_bytes)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        runs = np.array_split(np.arange(len(self.row_group_rows)), max(1, min(parallelism, len(self.row_group_rows))))
        tasks = []
        for run in (r.tolist() for r in runs if len(r)):
            meta = BlockMetadata(num_rows=sum(self.row_group_rows[i] for i in run),
                                 size_bytes=sum(self.row_group_bytes[i] for i in run),
                                 exec_stats=None, input_files=[self.url])
            tasks.append(ReadTask(lambda run=run, url=self.url, rows=self.block_rows, cols=self.columns:
                                  _read_row_groups(url, run, rows, cols), meta, schema=self.schema))
        return tasks


def groups_dataset(url: str, block_rows: int = 4096):
    """The groups at ``url`` (local or remote) as a Ray Dataset of ``GROUP_COLUMNS``."""
    import ray
    import ray.data

    read_args: dict[str, Any] = {"num_cpus": 0}
    if storage.is_local(url):
        read_args["label_selector"] = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
    return ray.data.read_datasource(GroupsDatasource(storage.absolute(url), block_rows), **read_args)


def shard_config():
    """Ray Train's ``DataConfig`` for the groups: equal shards in file order."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(datasets_to_split=[DATASET], execution_options=options)
