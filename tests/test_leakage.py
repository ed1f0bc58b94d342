"""No test query ever reaches training: for every label source, with `limit` set, the query ids of
the pipeline's training groups and of its held-out test queries are disjoint; and label sources
limited to N queries train on the same N queries (a study compares them on one query set)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from synrank.config import SynrankConfig
from synrank.data import schemas

pytestmark = pytest.mark.usefixtures("ray_session")

SOURCES = ("synthetic", "human", "llm", "mixed")


def _ids(path: str) -> set[str]:
    return set(pq.read_table(path, columns=["query_id"]).column("query_id").to_pylist())


def _synthetic(queries_path: str, out: Path) -> str:
    """What generation writes for the pipeline's training queries (two levels are enough here)."""
    qids = pq.read_table(queries_path).column("query_id").to_pylist()
    rows = [{"query_id": q, "doc_id": f"syn-{q}-{lv}", "level": lv, "text": f"passage for {q} at level {lv}",
             "model": "m", "prompt_version": "v1", "seed": 0, "n_tokens": 5, "finish_reason": "stop"}
            for q in qids for lv in (3, 0)]
    out.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.SYNTHETIC_PASSAGES), out / "part-00000.parquet")
    return str(out)


def _llm_qrels(cranfield: Path, out: Path) -> str:
    """LLM labels for every judged query of the collection, test queries included (an annotation run
    that was not restricted): the groups must still keep to the training queries."""
    from synrank.data.readers import read_qrels

    qrels = read_qrels(str(cranfield), split="test", source="human")
    table = qrels.set_column(qrels.schema.get_field_index("source"), "source",
                             pa.array(["llm"] * qrels.num_rows, pa.string()))
    pq.write_table(table, out)
    return str(out)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("groups_limit", [None, 12])
def test_training_and_test_query_ids_are_disjoint_for_every_source_with_limit(shared_data, tmp_path, source,
                                                                               groups_limit):
    from synrank.pipeline import Pipeline

    cranfield = shared_data / "cranfield"
    cfg = SynrankConfig.model_validate({
        "run_dir": str(tmp_path / "run"),
        "pipeline": {"collection": str(cranfield), "test_fraction": 0.25, "split_seed": 13},
        "generate": {"limit": 40},
        "groups": {"source": source, "qrels_levels": 5, "from_levels": 4, "n_levels": 4, "group_size": 3,
                   "bm25_negatives": 2, "limit": groups_limit,
                   **({"llm_qrels": _llm_qrels(cranfield, tmp_path / "llm.parquet")} if source == "llm" else {})},
    })
    pipe = Pipeline(cfg)
    queries, fp = pipe.split()
    train_ids, test_ids = _ids(queries["train"]), _ids(queries["test"])
    assert train_ids and test_ids and not train_ids & test_ids
    generated = {"train": _synthetic(queries["train"], tmp_path / "generate" / "train")} \
        if source in ("synthetic", "mixed") else {}
    groups_path, _ = pipe.groups(queries, generated, None, fp)
    grouped = _ids(groups_path)
    assert grouped, source
    assert not grouped & test_ids, (source, sorted(grouped & test_ids)[:5])
    # no passage of a test query either (synthetic passages are generated for training queries only)
    groups = pq.read_table(groups_path)
    assert not set(pc.list_flatten(groups.column("doc_ids")).to_pylist()) & {f"syn-{q}-3" for q in test_ids}
    if groups_limit:
        assert len(grouped) == groups_limit


def test_label_sources_limited_to_n_queries_train_on_the_same_queries(shared_data, tmp_path):
    from synrank.config import GroupsConfig, QuerySplitConfig
    from synrank.data.groups import build_groups, human_split, limit_queries

    cranfield = shared_data / "cranfield"
    split = QuerySplitConfig(train_fraction=0.6, seed=4)
    train = human_split(str(cranfield), "train", split).train_ids
    # synthetic passages for the training queries, listed in another order than the qrels
    qfile = tmp_path / "train_queries.parquet"
    from synrank.data.readers import read_queries

    texts = read_queries(str(cranfield))
    keep = texts.filter(pc.is_in(texts.column("query_id"), pa.array(train, pa.string())))
    pq.write_table(keep.take(pa.array(list(range(keep.num_rows))[::-1])), qfile)
    syn = _synthetic(str(qfile), tmp_path / "syn")
    common = dict(collection=str(cranfield), query_split=split, qrels_levels=5, from_levels=4, n_levels=4,
                  group_size=3, bm25_negatives=2, limit=15)
    chosen = {}
    for source in ("synthetic", "human", "mixed"):
        table, _ = build_groups(GroupsConfig(source=source, synthetic=syn, **common))
        chosen[source] = set(table.column("query_id").to_pylist())
    assert chosen["synthetic"] == chosen["human"] == chosen["mixed"] == set(limit_queries(train, 15))
