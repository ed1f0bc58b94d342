"""The output folder of a generation run: where each file goes, and the schema of rejected rows.

Shared by the run (`synrank.generate.pipeline`, which writes the shards) and its report
(`synrank.generate.report`, which reads them back); see the pipeline's docstring for what each
file holds.
"""

from __future__ import annotations

import pyarrow as pa

from synrank import storage
from synrank.llm.shards import shard_path

MANIFEST = "_manifest.json"
REPORT = "_report.json"
FIDELITY = "_fidelity.parquet"
ERRORS_DIR = "_errors"
STATS_DIR = "_stats"

ERRORS = pa.schema([
    ("query_id", pa.string()),
    ("doc_id", pa.string()),
    ("level", pa.int8()),
    ("sample", pa.int32()),
    ("attempt", pa.int32()),
    ("final", pa.bool_()),  # no attempt left: the row is missing from the passages
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("text", pa.string()),  # raw model output
    ("n_tokens", pa.int32()),
    ("finish_reason", pa.string()),
    ("for_query_id", pa.string()),  # the query the prompt was written for (swap: the partner)
    ("model", pa.string()),
    ("prompt_version", pa.string()),
])


def part_path(out: str, shard: int) -> str:
    """The passages of shard `shard`: written last, its presence (with the right digest) marks the shard done."""
    return shard_path(out, shard)


def errors_path(out: str, shard: int) -> str:
    return shard_path(storage.join(out, ERRORS_DIR), shard)


def stats_path(out: str, shard: int) -> str:
    return shard_path(storage.join(out, STATS_DIR), shard, ".json")
