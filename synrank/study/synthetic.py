"""The study's synthetic passages: generated once, for the training queries only, and cached.

``base.groups.synthetic`` is the generation stage's output folder. Before any trial the study runs
``synrank.generate.pipeline.generate`` on the queries the groups train on (the collection's
training queries: with a query split, only its train part, so no test query ever gets a synthetic
passage). Generation is resumable and skips finished shards, so a second study (or a rerun) with the
same folder and settings generates nothing.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from synrank.study.config import StudyConfig
from synrank.study.store import StudyStore

log = logging.getLogger(__name__)


def training_queries(study: StudyConfig) -> pa.Table:
    """The QUERIES table the synthetic passages are generated for."""
    from synrank.data.groups import human_split
    from synrank.data.readers import read_queries, read_qrels

    g = study.base.groups
    source = g.queries or g.collection
    if not source:
        raise ValueError("synthetic generation needs query texts: set base.groups.queries or base.groups.collection")
    table = read_queries(source)
    if study.synthetic.queries == "all" or not g.collection:
        return table
    split = human_split(g.collection, g.qrels_split, g.query_split)
    if split.by_queries:
        keep = split.train_ids or []
    else:
        keep = sorted(set(read_qrels(g.collection, split=split.qrels_split).column("query_id").to_pylist()))
    if g.limit:  # the queries groups.limit keeps, whatever the label source
        from synrank.data.groups import limit_queries

        keep = limit_queries(keep, g.limit)
    return table.filter(pc.is_in(table.column("query_id"), value_set=pa.array(keep, pa.string())))


def generate_for_study(study: StudyConfig, store: StudyStore, address: str | None = None) -> str:
    """Generate (or complete) the synthetic passages at ``base.groups.synthetic``; returns the path."""
    from synrank.generate.pipeline import generate

    g = study.base.groups
    queries = training_queries(study)
    cfg = study.base.generate.model_copy(update={"out": g.synthetic, "n_levels": g.from_levels, "queries": None})
    runtime = study.base.runtime.model_copy(update={"address": address or study.base.runtime.address})
    log.info("synthetic passages for %d training queries -> %s (generated once, then reused)", queries.num_rows,
             g.synthetic)
    result = generate(cfg, runtime=runtime, queries=queries)
    log.info("synthetic passages: %d shard(s) generated now, %d reused", result.shards_done_now, result.shards_skipped)
    return g.synthetic
