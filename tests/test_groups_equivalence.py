"""Groups built in Ray are the groups the single-process builder made: same queries in the same
order, same passages, grades and sources, same counts, for every label source, on real Cranfield
text. The digests below were recorded from the single-process builder (synrank/data/groups.py
before groups building moved into Ray tasks) on exactly these inputs."""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synrank.config import GroupsConfig, QuerySplitConfig
from synrank.data import schemas
from synrank.data.groups import build_groups, build_groups_to, read_groups
from synrank.data.readers import read_corpus, read_qrels, read_queries

# Building groups runs in Ray: one embedded Ray for the session, not one per build.
pytestmark = pytest.mark.usefixtures("ray_session")


def _stable(*parts: object) -> int:
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


def synthetic_from_cranfield(cranfield: Path, path: Path) -> Path:
    """Synthetic passages for the first 60 Cranfield queries: two per level 0..3, texts taken from
    real Cranfield documents, one (query, doc) row repeated (the reader keeps the first)."""
    corpus = read_corpus(cranfield)
    texts = corpus.column("text").to_pylist()
    qids = read_queries(cranfield).column("query_id").to_pylist()[:60]
    rows = []
    for q in qids:
        for level in (3, 2, 1, 0):
            for s in range(2):
                rows.append({"query_id": q, "doc_id": f"syn-{q}-{level}-{s}", "level": level,
                             "text": texts[_stable(q, level, s) % len(texts)], "model": "m", "prompt_version": "v1",
                             "seed": 0, "n_tokens": 50, "finish_reason": "stop"})
    rows.append(dict(rows[5], text="a repeated row is dropped"))
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.SYNTHETIC_PASSAGES), path)
    return path


def llm_qrels_from_cranfield(cranfield: Path, path: Path) -> Path:
    """LLM labels: every human-judged pair regraded on 0..3, one unjudged document per query, a
    document missing from the corpus for every 10th query, and a few human rows (a merged label
    set keeps them as human)."""
    qrels = read_qrels(cranfield, split="test")
    rows = [{"query_id": q, "doc_id": d, "grade": _stable(q, d) % 4, "source": "llm"}
            for q, d in zip(qrels.column("query_id").to_pylist(), qrels.column("doc_id").to_pylist())]
    for q in sorted({r["query_id"] for r in rows}, key=int):
        rows.append({"query_id": q, "doc_id": str(_stable("extra", q) % 1400 + 1), "grade": 2, "source": "llm"})
        if int(q) % 10 == 0:
            rows.append({"query_id": q, "doc_id": f"missing-{q}", "grade": 3, "source": "llm"})
    for r in rows[:: 97]:
        r["source"] = "human"
    unique = {(r["query_id"], r["doc_id"]): r for r in reversed(rows)}  # the first row of a pair
    pq.write_table(pa.Table.from_pylist(list(reversed(unique.values())), schema=schemas.QRELS), path)
    return path


def configs(cranfield: Path, synthetic: Path, llm: Path) -> dict[str, GroupsConfig]:
    coll = str(cranfield)
    split = QuerySplitConfig(train_fraction=0.6, seed=4)
    return {
        "human": GroupsConfig(source="human", collection=coll, qrels_levels=5, n_levels=3, group_size=8,
                              bm25_negatives=12),
        "human-uniform-limit": GroupsConfig(source="human", collection=coll, qrels_levels=5, n_levels=5,
                                            group_size=4, sampling="uniform", bm25_negatives=30, limit=50, seed=9),
        "llm": GroupsConfig(source="llm", collection=coll, llm_qrels=str(llm), n_levels=4, group_size=6,
                            bm25_negatives=5, query_split=split),
        "mixed-relabel": GroupsConfig(source="mixed", collection=coll, synthetic=str(synthetic), llm_qrels=str(llm),
                                      qrels_levels=5, from_levels=4, n_levels=4, group_size=10, bm25_negatives=6,
                                      precedence="llm", seed=3),
        "mixed-add": GroupsConfig(source="mixed", collection=coll, synthetic=str(synthetic), llm_qrels=str(llm),
                                  qrels_levels=5, from_levels=4, n_levels=3, relabel=False, precedence="add",
                                  group_size=5, bm25_negatives=3, query_split=split),
        "synthetic": GroupsConfig(source="synthetic", synthetic=str(synthetic), collection=coll, group_size=3,
                                  n_levels=2, seed=1),
    }


def digest(table: pa.Table) -> str:
    rows = json.dumps(table.to_pylist(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(rows.encode()).hexdigest()[:24]


def stats_digest(stats) -> str:
    return hashlib.sha256(json.dumps(stats.as_dict(), sort_keys=True).encode()).hexdigest()[:24]


# name: (groups, digest of the table, digest of the stats), from the single-process builder.
# Re-recorded when the groups gained their scale (stats n_levels), the origins column (synthetic and
# mixed sources), mixed negatives at level 0 and `limit` keeping the smallest query ids; without
# those the previous digests still hold.
# Re-recorded (table digests of the configs that mine BM25 negatives; counts and stats unchanged)
# when training negatives and annotation candidates moved to the one BM25 (k1=0.9, b=0.4, the
# evaluation baseline's); with k1=1.5, b=0.75 the unified code reproduced the previous digests.
# Re-recorded (table digests of the sources with real labels) when the groups gained the
# known_positives column; with that column dropped the previous digests still held.
# Re-recorded (stats digests only) when the stats gained no_positive_queries (groups.require_positive);
# tables unchanged, and with that count (0 here) dropped the previous stats digests still held.
RECORDED = {
    "human": (112, "6c8a93363b9083a9c99ddebe", "ee5d7ac815f4426d7699fba0"),
    "human-uniform-limit": (50, "8c0e519301e5bd03d831bd5f", "518312ce2904b4545ed14231"),
    "llm": (135, "a8aca2b7527ddb3e31869b6f", "3f551df21411efeae7d2fdd0"),
    "mixed-add": (135, "569b8388646a421331e1392a", "9bf33935765f41d31621ca95"),
    "mixed-relabel": (112, "2de9a23c7dd81c4f49126e52", "30fdde849ef65c6bd7658dea"),
    "synthetic": (60, "cf278cca124f1afd22518639", "281de45e70ac262b2f4ced25"),
}


@pytest.fixture(scope="module")
def inputs(shared_data, tmp_path_factory) -> dict[str, GroupsConfig]:
    root = tmp_path_factory.mktemp("equivalence")
    cranfield = shared_data / "cranfield"
    return configs(cranfield, synthetic_from_cranfield(cranfield, root / "syn.parquet"),
                   llm_qrels_from_cranfield(cranfield, root / "llm.parquet"))


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_groups_match_the_single_process_builder(inputs, name, tmp_path):
    n_groups, table_digest, stats_of = RECORDED[name]
    table, stats = build_groups(inputs[name], queries_per_part=17)
    assert (table.num_rows, digest(table), stats_digest(stats)) == (n_groups, table_digest, stats_of)
    out = str(tmp_path / "groups.parquet")
    written = build_groups_to(inputs[name], out, queries_per_part=9)
    assert digest(read_groups(out)) == table_digest and stats_digest(written) == stats_of
    assert pq.ParquetFile(out).num_row_groups == math.ceil(n_groups / 9)  # one per part
    assert json.loads(Path(f"{out}.stats.json").read_text()) == stats.as_dict()
