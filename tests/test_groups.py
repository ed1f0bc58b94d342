"""Training groups from each label source, on small hand-made data (and one check on Cranfield)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synrank.config import GroupsConfig, QuerySplitConfig
from synrank.data import schemas
from synrank.data.groups import (
    GroupsError,
    build_groups,
    human_split,
    read_groups,
    sample_group,
    split_queries,
    write_groups,
)

# Building groups runs in Ray: one embedded Ray for the session, not one per build.
pytestmark = pytest.mark.usefixtures("ray_session")


# --------------------------------------------------------------------------------------------------
# hand-made data

QUERIES = {"q1": "what is lift on a wing", "q2": "boundary layer transition", "q3": "heat transfer in nozzles"}
DOCS = {
    "d1": ("lift", "lift on a wing in subsonic flow"),
    "d2": ("wings", "wing lift and drag measurements"),
    "d3": ("layers", "boundary layer transition at high speed"),
    "d4": ("transition", "transition of the laminar boundary layer"),
    "d5": ("heat", "heat transfer in rocket nozzles"),
    "d6": ("nozzles", "nozzle flow and heat"),
    "d7": ("misc", "lift of a boundary layer near a nozzle wing"),
    "d8": ("other", "structural vibration of panels"),
}


def _write_collection(root: Path, qrels: dict[str, list[tuple[str, str, int]]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()))
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": t, "text": x}) + "\n" for d, (t, x) in DOCS.items()))
    (root / "qrels").mkdir(exist_ok=True)
    for split, rows in qrels.items():
        (root / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in rows))
    return root


HUMAN = [("q1", "d1", 2), ("q1", "d2", 1), ("q2", "d3", 2), ("q2", "d8", 0), ("q3", "d5", 1)]


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    return _write_collection(tmp_path / "coll", {"train": HUMAN, "test": [("q1", "d1", 1)]})


def _synthetic(path: Path, per_level: int = 1, queries=("q1", "q2", "q3"), levels=(0, 1, 2, 3)) -> Path:
    rows = []
    for q in queries:
        for level in levels:
            for s in range(per_level):
                rows.append({"query_id": q, "doc_id": f"{q}-L{level}-{s}", "level": level,
                             "text": f"synthetic passage for {q} at level {level} sample {s}", "model": "m",
                             "prompt_version": "v1", "seed": 0, "n_tokens": 9, "finish_reason": "stop"})
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.SYNTHETIC_PASSAGES), path)
    return path


def _by_query(table: pa.Table) -> dict[str, dict]:
    return {r["query_id"]: r for r in table.to_pylist()}


# --------------------------------------------------------------------------------------------------
# split and sampling


def test_split_queries_is_deterministic_disjoint_and_order_free():
    ids = [str(i) for i in range(1, 226)]
    train, test = split_queries(ids, 0.5, 13)
    assert len(train) == 112 and len(test) == 113
    assert not set(train) & set(test) and set(train) | set(test) == set(ids)
    assert split_queries(list(reversed(ids)) + ids[:5], 0.5, 13) == (train, test)
    assert split_queries(ids, 0.5, 14) != (train, test)
    assert len(split_queries(ids, 0.8, 1)[0]) == 180
    with pytest.raises(ValueError, match="train_fraction"):
        split_queries(ids, 1.0, 0)
    with pytest.raises(ValueError, match="no query ids"):
        split_queries([], 0.5, 0)


def test_sample_group_keeps_the_highest_grade_and_orders_by_grade():
    from synrank.data.groups import Candidate

    cands = [Candidate(f"d{i}", "", float(g), "x") for i, g in enumerate([0, 0, 0, 1, 1, 2, 0, 3, 0, 0])]
    for seed in range(30):
        for strategy in ("stratified", "uniform"):
            got = sample_group(cands, 4, np.random.default_rng(seed), strategy)
            grades = [c.grade for c in got]
            assert len(got) == 4 and grades[0] == 3.0 and grades == sorted(grades, reverse=True)
            assert len({c.doc_id for c in got}) == 4
        # stratified spans every grade it can: 3 plus one of each of three other grades
        got = sample_group(cands, 4, np.random.default_rng(seed), "stratified")
        assert sorted(c.grade for c in got) == [0.0, 1.0, 2.0, 3.0]
    assert [c.doc_id for c in sample_group(cands[:3], 5, np.random.default_rng(0))] == ["d0", "d1", "d2"]
    with pytest.raises(ValueError):
        sample_group(cands, 0, np.random.default_rng(0))


# --------------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_groups_with_level_collapsing(tmp_path, collection):
    syn = _synthetic(tmp_path / "syn.parquet")
    base = dict(source="synthetic", synthetic=str(syn), collection=str(collection), group_size=4)
    table, stats = build_groups(GroupsConfig(**base))
    # the schema, then the optional origins column (every passage here was written for its own query)
    assert table.schema.equals(schemas.TRAINING_GROUPS.append(schemas.ORIGINS))
    assert all(o is None for row in table.column("origins").to_pylist() for o in row)
    rows = _by_query(table)
    assert set(rows) == {"q1", "q2", "q3"} and stats.n_groups == 3 and stats.sizes == {4: 3}
    assert rows["q1"]["grades"] == [3.0, 2.0, 1.0, 0.0]
    assert rows["q1"]["doc_ids"] == ["q1-L3-0", "q1-L2-0", "q1-L1-0", "q1-L0-0"]
    assert rows["q1"]["query"] == QUERIES["q1"] and set(rows["q1"]["sources"]) == {"synthetic"}
    # 4 -> 3 levels: {0}, {1}, {2, 3}
    rows3 = _by_query(build_groups(GroupsConfig(**base, n_levels=3))[0])
    assert rows3["q2"]["grades"] == [2.0, 2.0, 1.0, 0.0]
    # 4 -> 2 levels: {0, 1}, {2, 3}
    rows2 = _by_query(build_groups(GroupsConfig(**base, n_levels=2))[0])
    assert rows2["q3"]["grades"] == [1.0, 1.0, 0.0, 0.0]


def test_synthetic_group_size_keeps_the_top_level(tmp_path, collection):
    syn = _synthetic(tmp_path / "syn.parquet", per_level=3)
    cfg = GroupsConfig(source="synthetic", synthetic=str(syn), queries=str(collection), group_size=2, seed=5)
    table, stats = build_groups(cfg)
    assert stats.sizes == {2: 3}
    for row in table.to_pylist():
        assert row["grades"][0] == 3.0 and row["grades"][1] < 3.0 or row["grades"] == [3.0, 3.0]
    # deterministic for a seed, and independent of which other queries are built
    again = build_groups(cfg)[0]
    assert again.equals(table)
    only_q1 = _synthetic(tmp_path / "q1.parquet", per_level=3, queries=("q1",))
    single = build_groups(cfg.model_copy(update={"synthetic": str(only_q1)}))[0]
    assert single.to_pylist()[0] == _by_query(table)["q1"]


def test_synthetic_errors(tmp_path, collection):
    with pytest.raises(GroupsError, match="groups.synthetic"):
        build_groups(GroupsConfig(source="synthetic", collection=str(collection)))
    empty = tmp_path / "empty.parquet"
    pq.write_table(schemas.SYNTHETIC_PASSAGES.empty_table(), empty)
    with pytest.raises(GroupsError, match="0 rows"):
        build_groups(GroupsConfig(source="synthetic", synthetic=str(empty), collection=str(collection)))
    five = _synthetic(tmp_path / "five.parquet", levels=(0, 4))
    with pytest.raises(GroupsError, match="from_levels"):
        build_groups(GroupsConfig(source="synthetic", synthetic=str(five), collection=str(collection)))
    stray = _synthetic(tmp_path / "stray.parquet", queries=("q1", "q99"))
    with pytest.raises(GroupsError, match="no query text"):
        build_groups(GroupsConfig(source="synthetic", synthetic=str(stray), collection=str(collection)))
    with pytest.raises(GroupsError, match="query texts"):
        build_groups(GroupsConfig(source="synthetic", synthetic=str(stray)))


# --------------------------------------------------------------------------------------------------
# human


def test_human_groups_judged_passages_and_bm25_negatives(collection):
    cfg = GroupsConfig(source="human", collection=str(collection), qrels_levels=3, n_levels=3, group_size=6,
                       bm25_negatives=3)
    table, stats = build_groups(cfg)
    rows = _by_query(table)
    assert set(rows) == {"q1", "q2", "q3"} and stats.qrels_split == "train" and stats.train_queries is None
    q1 = rows["q1"]
    assert q1["doc_ids"][:2] == ["d1", "d2"] and q1["grades"][:2] == [2.0, 1.0]
    assert q1["sources"][:2] == ["human", "human"]
    negs = [d for d, s in zip(q1["doc_ids"], q1["sources"]) if s == "bm25"]
    assert negs and not {"d1", "d2"} & set(negs) and len(negs) <= 3
    assert all(g == 0.0 for g, s in zip(q1["grades"], q1["sources"]) if s == "bm25")
    # the judged non-relevant passage stays in as a grade-0 negative
    q2 = dict(zip(rows["q2"]["doc_ids"], rows["q2"]["grades"]))
    assert q2["d3"] == 2.0 and q2["d8"] == 0.0
    assert rows["q1"]["texts"][0] == "lift lift on a wing in subsonic flow"
    # 3 -> 2 levels: {0, 1}, {2}
    rows2 = _by_query(build_groups(cfg.model_copy(update={"n_levels": 2, "bm25_negatives": 0}))[0])
    assert rows2["q1"]["grades"] == [1.0, 0.0] and rows2["q2"]["grades"] == [1.0, 0.0]


def test_human_single_qrels_file_is_split_by_query(tmp_path):
    coll = _write_collection(tmp_path / "one", {"test": HUMAN})
    split = human_split(str(coll), "train", None)
    assert split.qrels_split == "test" and split.by_queries
    assert sorted(split.train_ids + split.test_ids) == ["q1", "q2", "q3"]
    cfg = GroupsConfig(source="human", collection=str(coll), qrels_levels=3, n_levels=3, bm25_negatives=0,
                       query_split=QuerySplitConfig(train_fraction=0.5, seed=3))
    table, stats = build_groups(cfg)
    expected_train, _ = split_queries(["q1", "q2", "q3"], 0.5, 3)
    assert sorted(table.column("query_id").to_pylist()) == expected_train
    assert stats.train_queries == len(expected_train) and stats.held_out_queries == 3 - len(expected_train)


def test_human_groups_on_cranfield_hold_out_the_test_queries(shared_data):
    coll = str(shared_data / "cranfield")
    cfg = GroupsConfig(source="human", collection=coll, qrels_levels=5, n_levels=3, group_size=4,
                       bm25_negatives=10, limit=20)
    table, stats = build_groups(cfg)
    split = human_split(coll, "train", None)
    assert split.qrels_split == "test" and len(split.train_ids) == 112 and len(split.test_ids) == 113
    qids = table.column("query_id").to_pylist()
    assert len(qids) == 20 and set(qids) <= set(split.train_ids)
    assert stats.sizes == {4: 20}
    for row in table.to_pylist():
        assert set(row["grades"]) <= {0.0, 1.0, 2.0} and row["grades"] == sorted(row["grades"], reverse=True)


def test_require_positive_leaves_out_exactly_the_queries_without_a_positive(shared_data):
    """Cranfield's human grades on the 4-level scale: some training queries have "useful background"
    (level 1) as their best judged passage. InfoNCE cannot train on them; with require_positive
    they are left out for every objective, and nothing else changes."""
    coll = str(shared_data / "cranfield")
    base = dict(source="human", collection=coll, qrels_levels=5, n_levels=4, group_size=4, bm25_negatives=5)
    every, every_stats = build_groups(GroupsConfig(**base))
    kept, stats = build_groups(GroupsConfig(**base, require_positive=True))
    without = {r["query_id"] for r in every.to_pylist() if max(r["grades"]) < 2}
    assert len(without) > 10  # the case is real on Cranfield, not a corner
    assert stats.no_positive_queries == len(without) and every_stats.no_positive_queries == 0
    assert kept.column("query_id").to_pylist() == [q for q in every.column("query_id").to_pylist()
                                                  if q not in without]
    kept_rows = {r["query_id"]: r for r in kept.to_pylist()}
    for row in every.to_pylist():
        if row["query_id"] in kept_rows:
            assert kept_rows[row["query_id"]]["doc_ids"] == row["doc_ids"]  # the draw is per query


def test_human_errors(tmp_path, collection):
    with pytest.raises(GroupsError, match="groups.collection"):
        build_groups(GroupsConfig(source="human"))
    with pytest.raises(GroupsError, match="qrels_levels"):
        build_groups(GroupsConfig(source="human", collection=str(collection), qrels_levels=2, n_levels=2))
    two = _write_collection(tmp_path / "two", {"dev": HUMAN, "test": HUMAN})
    with pytest.raises(GroupsError, match="dev, test"):
        build_groups(GroupsConfig(source="human", collection=str(two), qrels_levels=3, n_levels=3))
    bare = tmp_path / "bare"
    _write_collection(bare, {})
    with pytest.raises(GroupsError, match="no qrels"):
        build_groups(GroupsConfig(source="human", collection=str(bare), qrels_levels=3, n_levels=3))


# --------------------------------------------------------------------------------------------------
# llm and mixed


def _llm_qrels(path: Path, rows) -> Path:
    pq.write_table(pa.Table.from_pylist(
        [{"query_id": q, "doc_id": d, "grade": g, "source": s} for q, d, g, s in rows], schema=schemas.QRELS), path)
    return path


def test_llm_groups_use_only_llm_rows(tmp_path, collection):
    llm = _llm_qrels(tmp_path / "llm.parquet", [
        ("q1", "d1", 3, "llm"), ("q1", "d2", 2, "llm"), ("q1", "d7", 1, "llm"), ("q1", "d8", 0, "llm"),
        ("q2", "d4", 3, "llm"), ("q3", "d6", 2, "human"),  # a merged label set: human rows stay, as human
    ])
    cfg = GroupsConfig(source="llm", collection=str(collection), llm_qrels=str(llm), group_size=4,
                       bm25_negatives=0)
    rows = _by_query(build_groups(cfg)[0])
    assert set(rows) == {"q1", "q2", "q3"} and rows["q3"]["sources"] == ["human"]
    assert rows["q1"]["doc_ids"] == ["d1", "d2", "d7", "d8"] and rows["q1"]["grades"] == [3.0, 2.0, 1.0, 0.0]
    assert set(rows["q1"]["sources"]) == {"llm"}
    # 4 -> 3 -> 2 levels
    rows3 = _by_query(build_groups(cfg.model_copy(update={"n_levels": 3}))[0])
    assert rows3["q1"]["grades"] == [2.0, 2.0, 1.0, 0.0]
    rows2 = _by_query(build_groups(cfg.model_copy(update={"n_levels": 2}))[0])
    assert rows2["q1"]["grades"] == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(GroupsError, match="llm_qrels"):
        build_groups(cfg.model_copy(update={"llm_qrels": None}))
    only_human = _llm_qrels(tmp_path / "h.parquet", [("q1", "d1", 1, "human")])
    with pytest.raises(GroupsError, match="source=llm"):
        build_groups(cfg.model_copy(update={"llm_qrels": str(only_human)}))


def test_mixed_groups_relabel_and_precedence(tmp_path, collection):
    syn = _synthetic(tmp_path / "syn.parquet", queries=("q1", "q2"))
    llm = _llm_qrels(tmp_path / "llm.parquet", [("q1", "d2", 0, "llm"), ("q1", "d7", 1, "llm"),
                                                 ("q3", "d6", 1, "llm")])
    base = dict(source="mixed", synthetic=str(syn), collection=str(collection), qrels_levels=3, from_levels=4,
                n_levels=4, group_size=10, bm25_negatives=1)
    rows = _by_query(build_groups(GroupsConfig(**base))[0])
    assert set(rows) == {"q1", "q2", "q3"}
    q1 = {d: (g, s) for d, g, s in zip(rows["q1"]["doc_ids"], rows["q1"]["grades"], rows["q1"]["sources"])}
    # real positives take the top level, BM25 negatives level 0; synthetic passages keep their levels
    assert q1["d1"] == (3.0, "human") and q1["d2"] == (3.0, "human")
    assert q1["q1-L2-0"] == (2.0, "synthetic") and q1["q1-L0-0"] == (0.0, "synthetic")
    assert [g for g, s in q1.values() if s == "bm25"] == [0.0]
    q2 = dict(zip(rows["q2"]["doc_ids"], rows["q2"]["grades"]))
    assert q2["d8"] == 0.0  # judged non-relevant real passage -> negative level
    # without relabelling: collapsed human grades (3 -> 4 levels is not allowed, so use 3 levels)
    plain = _by_query(build_groups(GroupsConfig(**{**base, "relabel": False, "n_levels": 3}))[0])
    q1p = dict(zip(plain["q1"]["doc_ids"], plain["q1"]["grades"]))
    assert q1p["d1"] == 2.0 and q1p["d2"] == 1.0 and q1p["q1-L3-0"] == 2.0

    # q3 has no human labels in this collection: only the LLM labels it
    coll12 = _write_collection(tmp_path / "q12", {"train": HUMAN[:4]})
    with_llm = dict(base, collection=str(coll12), llm_qrels=str(llm), relabel=False, n_levels=3, bm25_negatives=0)
    for precedence, d2, has_d7, has_q3 in (("human", (1.0, "human"), True, True), ("llm", (0.0, "llm"), True, True),
                                          ("add", (1.0, "human"), True, False)):
        rows = _by_query(build_groups(GroupsConfig(**with_llm, precedence=precedence))[0])
        q1 = {d: (g, s) for d, g, s in zip(rows["q1"]["doc_ids"], rows["q1"]["grades"], rows["q1"]["sources"])}
        assert q1["d2"] == d2, precedence
        assert ("d7" in q1) == has_d7 and ("q3" in rows) == has_q3, precedence
    with pytest.raises(ValueError, match="real_positive_level"):
        GroupsConfig(**base, real_positive_level=4)
    with pytest.raises(GroupsError, match="real_positive_level"):  # a config that skipped validation
        build_groups(GroupsConfig(**base).model_copy(update={"real_positive_level": 4}))


@pytest.mark.parametrize("n_levels", [2, 3, 4])
def test_mixed_relabelled_negatives_stay_below_every_positive(tmp_path, collection, n_levels):
    """Default mixed labels on every scale: BM25 negatives and judged non-relevant real passages are
    below the scale's positive threshold, real positives at or above it."""
    from synrank.data.levels import positive_threshold

    syn = _synthetic(tmp_path / "syn.parquet", queries=("q1", "q2"))
    cfg = GroupsConfig(source="mixed", synthetic=str(syn), collection=str(collection), qrels_levels=3,
                       from_levels=4, n_levels=n_levels, group_size=10, bm25_negatives=2)
    table, stats = build_groups(cfg)
    t = positive_threshold(n_levels)
    judged = {(q, d): g for q, d, g in HUMAN}
    negatives, positives = [], []
    for row in table.to_pylist():
        for d, g, s in zip(row["doc_ids"], row["grades"], row["sources"]):
            if s == "bm25" or (s == "human" and judged[(row["query_id"], d)] == 0):
                negatives.append(g)
            elif s == "human":
                positives.append(g)
    assert negatives and positives and stats.n_levels == n_levels
    assert max(negatives) < t <= min(positives), (negatives, positives)
    with pytest.raises(GroupsError, match="groups.negative_level=1.*groups.n_levels=2"):
        build_groups(GroupsConfig(**{**cfg.model_dump(), "n_levels": 4}).model_copy(
            update={"n_levels": 2, "negative_level": 1}))


# --------------------------------------------------------------------------------------------------
# files and CLI


def test_write_read_roundtrip_and_bad_files(tmp_path, collection):
    syn = _synthetic(tmp_path / "syn.parquet")
    table, stats = build_groups(GroupsConfig(source="synthetic", synthetic=str(syn), collection=str(collection)))
    out = tmp_path / "g" / "groups.parquet"
    write_groups(table, str(out), stats)
    assert read_groups(str(out)).equals(table)
    assert json.loads(Path(f"{out}.stats.json").read_text())["n_groups"] == 3
    bad = table.to_pylist()
    bad[1]["grades"] = bad[1]["grades"][:2]
    pq.write_table(pa.Table.from_pylist(bad, schema=schemas.TRAINING_GROUPS), tmp_path / "bad.parquet")
    with pytest.raises(GroupsError, match="row 1"):
        read_groups(str(tmp_path / "bad.parquet"))


def test_groups_cli(tmp_path, collection, capsys):
    from synrank.cli import main

    syn = _synthetic(tmp_path / "syn.parquet")
    out = tmp_path / "cli.parquet"
    rc = main(["groups", "groups.source=synthetic", f"groups.synthetic={syn}", f"groups.collection={collection}",
               "groups.n_levels=2", f"groups.out={out}"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["n_groups"] == 3
    assert read_groups(str(out)).column("grades").to_pylist()[0] == [1.0, 1.0, 0.0, 0.0]
    rc = main(["groups", "groups.source=human", f"groups.out={out}"])
    assert rc == 2 and "groups.collection" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["synthetic", "mixed"])
def test_groups_carry_the_query_a_swap_passage_was_written_for(tmp_path, collection, source):
    from synrank.data.groups import build_groups_to

    syn = _synthetic(tmp_path / "syn.parquet")
    table = pq.read_table(syn)
    partner = {"q1": "q2", "q2": "q3", "q3": "q1"}
    written_for = [partner[q] if lv == 0 else q
                   for q, lv in zip(table.column("query_id").to_pylist(), table.column("level").to_pylist())]
    pq.write_table(table.append_column(schemas.WRITTEN_FOR, pa.array(written_for, pa.string())), syn)
    cfg = GroupsConfig(source=source, synthetic=str(syn), collection=str(collection), queries=str(collection),
                       group_size=10, bm25_negatives=1, qrels_levels=3)
    out = str(tmp_path / "groups.parquet")
    build_groups_to(cfg, out)
    groups = read_groups(out)
    assert schemas.ORIGINS.name in groups.column_names
    seen = 0
    for row in groups.to_pylist():
        for d, o in zip(row["doc_ids"], row["origins"]):
            if d.endswith("-L0-0"):
                assert o == partner[row["query_id"]]
                seen += 1
            else:
                assert o is None
    assert seen == 3
    # synthetic passages written without the column: no origins
    _synthetic(syn)
    plain = build_groups(cfg)[0]
    assert all(o is None for row in plain.column("origins").to_pylist() for o in row)


def test_groups_from_real_labels_list_every_passage_judged_relevant_to_the_query(shared_data):
    """Cranfield: a group holds 4 passages, but the query has more judged-relevant ones; the groups
    list all of them (grade > 0 in the qrels), so training can keep them out of its in-batch
    negatives. Synthetic groups have no such column."""
    import csv

    coll = shared_data / "cranfield"
    table, _ = build_groups(GroupsConfig(source="human", collection=str(coll), qrels_levels=5, n_levels=5,
                                         group_size=4, bm25_negatives=5, limit=30))
    assert schemas.KNOWN_POSITIVES.name in table.column_names
    judged: dict[str, set[str]] = {}
    with open(coll / "qrels" / "test.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if int(row["score"]) > 0:
                judged.setdefault(row["query-id"], set()).add(row["corpus-id"])
    more_than_the_group = 0
    for row in table.to_pylist():
        known = set(row["known_positives"])
        assert known == judged[row["query_id"]]
        assert {d for d, g in zip(row["doc_ids"], row["grades"]) if g > 0} <= known
        more_than_the_group += len(known) > sum(g > 0 for g in row["grades"])
    assert more_than_the_group > 15  # most queries have positives outside their group
