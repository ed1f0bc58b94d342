"""Readers against the real collections in ../shared/data (counts from its README), the other
input formats (TREC topics and qrels, TSV corpora, Parquet, fsspec URLs), and BEIR -> Parquet
round trips."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synrank.data import schemas
from synrank.data.convert import convert
from synrank.data.inspect import inspect_path
from synrank.data.readers import (
    Collection,
    available_splits,
    collection_file,
    iter_corpus,
    load_collection,
    read_corpus,
    read_qrels,
    read_queries,
    read_table,
)

# name: (documents, queries, judged queries, qrels rows, qrels split, grade histogram), from
# ../shared/data/README.md ("Summary"); None where the collection has no corpus / no qrels.
EXPECTED = {
    "cranfield": (1400, 225, 225, 1837, "test", {0: 225, 1: 363, 2: 734, 3: 387, 4: 128}),
    "cisi": (1460, 112, 76, 3114, "test", {1: 3114}),
    "med": (1033, 30, 30, 696, "test", {1: 696}),
    "msmarco/passage-dev-subset": (None, 6980, 6980, 7437, "dev", {1: 7437}),
    "msmarco/dl19-passage": (None, 43, 43, 9260, "test", {0: 5158, 1: 1601, 2: 1804, 3: 697}),
    "msmarco/dl20-passage": (None, 200, 54, 11386, "test", {0: 7780, 1: 1940, 2: 1020, 3: 646}),
    "msmarco/trec-mq-2007": (None, 10000, None, None, None, None),
    "msmarco/trec-mq-2008": (None, 10000, None, None, None, None),
    "msmarco/trec-mq-2009": (None, 40000, None, None, None, None),
    "msmarco/nq-dev": (None, 8757, None, None, None, None),
}
# Per-collection statistics tables of the README: empty titles/texts, positives per judged query.
EXPECTED_DETAIL = {
    "cranfield": {"empty_title": 2, "empty_text": 2, "ppq": (1, 7.16, 39)},
    "cisi": {"empty_title": 0, "empty_text": 0, "ppq": (1, 40.97, 155)},
    "med": {"empty_title": 1033, "empty_text": 0, "ppq": (9, 23.20, 39)},
    "msmarco/passage-dev-subset": {"ppq": (1, 1.07, 4)},
    "msmarco/dl19-passage": {"ppq": (4, 95.40, 341)},
    "msmarco/dl20-passage": {"ppq": (3, 66.78, 217)},
}
ROUND_TRIP = ["cranfield", "cisi", "med"]


@pytest.fixture(scope="module")
def collections(shared_data: Path) -> dict[str, Collection]:
    """Every shared collection, loaded once."""
    out = {}
    for name, (_, _, _, _, split, _) in EXPECTED.items():
        out[name] = load_collection(shared_data / name, split=split or "test", require_corpus=False)
    return out


@pytest.fixture(scope="module")
def converted(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The round-trip collections converted to Parquet once."""
    out = {}
    for name in ROUND_TRIP:
        dst = tmp_path_factory.mktemp("parquet") / name
        convert(shared_data / name, dst, progress=False)
        out[name] = dst
    return out


# ----------------------------------------------------------------------------- real collections


@pytest.mark.parametrize("name", list(EXPECTED))
def test_counts_match_readme(collections: dict[str, Collection], name: str) -> None:
    docs, n_queries, judged, rows, split, histogram = EXPECTED[name]
    c = collections[name]
    assert c.queries.schema == schemas.QUERIES
    assert c.queries.num_rows == n_queries
    if docs is None:
        assert c.corpus is None
    else:
        assert c.corpus.schema == schemas.CORPUS
        assert c.corpus.num_rows == docs
    if rows is None:
        assert c.qrels is None and c.judged_query_ids == []
        return
    assert c.qrels.schema == schemas.QRELS
    assert c.split == split
    assert c.qrels.num_rows == rows
    assert len(c.judged_query_ids) == judged
    assert dict(Counter(c.qrels.column("grade").to_pylist())) == histogram
    assert set(c.qrels.column("source").to_pylist()) == {"human"}
    assert c.dropped_qrels == 0 and c.warnings == []


def test_expected_table_is_the_readme_summary(shared_data: Path) -> None:
    """Guards against drift: the hard-coded counts above are the README's summary table."""
    readme = (shared_data / "README.md").read_text(encoding="utf-8")
    summary = readme.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in summary.splitlines():
        m = re.match(r"\| \[([^\]]+)\]\(#[^)]*\) \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = [cell.strip() for cell in m.group(2).split("|")]
    assert set(rows) == set(EXPECTED)
    for name, (docs, n_queries, judged, n_rows, split, histogram) in EXPECTED.items():
        cells = rows[name]
        assert cells[0] == (str(docs) if docs is not None else "no corpus")
        assert cells[1] == str(n_queries)
        assert cells[2] == (str(judged) if judged is not None else "-")
        assert cells[3] == (str(n_rows) if n_rows is not None else "-")
        assert cells[4] == (f"qrels/{split}.tsv" if split else "-")
        assert cells[5] == (", ".join(f"{g}: {n}" for g, n in histogram.items()) if histogram else "-")


@pytest.mark.parametrize("name", list(EXPECTED_DETAIL))
def test_inspect_matches_readme_details(shared_data: Path, name: str) -> None:
    report = inspect_path(shared_data / name)
    detail = EXPECTED_DETAIL[name]
    if "empty_title" in detail:
        assert report["corpus"]["empty_title"] == detail["empty_title"]
        assert report["corpus"]["empty_text"] == detail["empty_text"]
        assert report["corpus"]["ids_unique"]
    (split, q), = report["qrels"].items()
    ppq = q["positives_per_judged_query"]
    assert (ppq["min"], ppq["mean"], ppq["max"]) == pytest.approx(detail["ppq"], abs=0.005)
    assert report["queries"]["ids_unique"] and report["queries"]["empty_text"] == 0
    assert q["unknown_query_rows"] == 0 and q["repeated_pairs"] == 0
    assert q["judged_queries"] == EXPECTED[name][2]
    assert q["queries_without_judgments"] == EXPECTED[name][1] - EXPECTED[name][2]


def test_available_splits(shared_data: Path) -> None:
    assert available_splits(shared_data / "cranfield") == ["test"]
    assert available_splits(shared_data / "msmarco/passage-dev-subset") == ["dev"]
    assert available_splits(shared_data / "msmarco/nq-dev") == []
    assert available_splits(shared_data / "cranfield/queries.jsonl") == []


def test_texts_kept_verbatim(collections: dict[str, Collection], shared_data: Path) -> None:
    """First and last rows equal the JSON lines, and ids keep their string form."""
    lines = (shared_data / "cranfield/corpus.jsonl").read_text(encoding="utf-8").splitlines()
    corpus = collections["cranfield"].corpus
    for i in (0, len(lines) - 1):
        obj = json.loads(lines[i])
        assert corpus.slice(i, 1).to_pylist()[0] == {"doc_id": obj["_id"], "title": obj["title"], "text": obj["text"]}
    queries = collections["msmarco/nq-dev"].queries
    assert queries.column("query_id")[0].as_py() == "0"
    assert queries.column("text")[0].as_py() == "who sings does he love me with reba"


def test_qrels_dict(collections: dict[str, Collection]) -> None:
    qd = collections["cranfield"].qrels_dict()
    assert len(qd) == 225 and sum(len(v) for v in qd.values()) == 1837
    assert qd["1"]["184"] == 3


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip_beir_to_parquet(collections: dict[str, Collection], converted: dict[str, Path], name: str) -> None:
    dst = converted[name]
    assert sorted(p.name for p in dst.iterdir()) == ["corpus.parquet", "qrels-test.parquet", "queries.parquet"]
    beir = collections[name]
    assert read_queries(dst).equals(beir.queries)
    assert read_corpus(dst).equals(beir.corpus)
    assert read_qrels(dst, split="test").equals(beir.qrels)
    # the files themselves, through read_table and plain pyarrow
    assert read_table(dst / "queries.parquet", "queries").equals(beir.queries)
    assert pq.read_table(dst / "corpus.parquet").equals(beir.corpus)
    assert read_table(dst / "qrels-test.parquet", "qrels").equals(beir.qrels)
    again = load_collection(dst)
    assert again.name == name and again.split == "test"
    assert again.queries.equals(beir.queries) and again.corpus.equals(beir.corpus) and again.qrels.equals(beir.qrels)
    assert available_splits(dst) == ["test"]


def test_iter_corpus_batches(collections: dict[str, Collection], converted: dict[str, Path], shared_data: Path) -> None:
    for source in (shared_data / "cranfield", converted["cranfield"] / "corpus.parquet"):
        batches = list(iter_corpus(source, batch_size=300))
        assert [b.num_rows for b in batches] == [300, 300, 300, 300, 200]
        assert all(b.schema == schemas.CORPUS for b in batches)
        assert pa.Table.from_batches(batches).equals(collections["cranfield"].corpus)


def test_reading_never_writes(shared_data: Path, tmp_path: Path) -> None:
    """Reading, inspecting and loading leave the input folder byte-identical, with no new files."""
    src = tmp_path / "med"
    (src / "qrels").mkdir(parents=True)
    for rel in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        (src / rel).write_bytes((shared_data / "med" / rel).read_bytes())

    def snapshot() -> dict[str, tuple[str, int]]:
        return {str(p.relative_to(src)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
                for p in sorted(src.rglob("*")) if p.is_file()}

    before = snapshot()
    load_collection(src)
    inspect_path(src)
    list(iter_corpus(src, batch_size=100))
    read_qrels(src / "qrels/test.tsv")
    assert snapshot() == before


# ----------------------------------------------------------------------------- other formats


def test_trec_topics_tsv_and_qrels(tmp_path: Path) -> None:
    topics = tmp_path / "topics.dl.txt"
    topics.write_text("1030303\twho is aziz hashim\n1037496\twho is rep scalise?\n\n", encoding="utf-8")
    qrels = tmp_path / "qrels.dl.txt"
    qrels.write_text("1030303 0 8726436 3\n1030303 Q0 8726433 0\n1037496\t0\t7895\t-1\n", encoding="utf-8")
    q = read_queries(topics)
    assert q.to_pylist() == [{"query_id": "1030303", "text": "who is aziz hashim"},
                             {"query_id": "1037496", "text": "who is rep scalise?"}]
    r = read_qrels(qrels, source="llm")
    assert r.schema == schemas.QRELS
    assert r.to_pylist() == [
        {"query_id": "1030303", "doc_id": "8726436", "grade": 3, "source": "llm"},
        {"query_id": "1030303", "doc_id": "8726433", "grade": 0, "source": "llm"},
        {"query_id": "1037496", "doc_id": "7895", "grade": -1, "source": "llm"},
    ]


def test_trec_topics_sgml(tmp_path: Path) -> None:
    path = tmp_path / "topics.301-302"
    path.write_text(
        "<top>\n<num> Number: 301\n<title> International Organized Crime\n\n<desc> Description:\n"
        "Identify organizations that participate in\ninternational criminal activity.\n\n<narr> Narrative:\n"
        "A relevant document must name one.\n</top>\n\n"
        "<top>\n<num> Number: 302 \n<title> Topic: Poliomyelitis and\n  Post-Polio\n</top>\n",
        encoding="latin-1",
    )
    assert read_queries(path).to_pylist() == [
        {"query_id": "301", "text": "International Organized Crime"},
        {"query_id": "302", "text": "Poliomyelitis and Post-Polio"},
    ]
    one = tmp_path / "t.txt"
    one.write_text(path.read_text(encoding="latin-1").split("\n\n<top>")[0] + "\n", encoding="utf-8")
    assert read_queries(one, topic_field="desc").column("text").to_pylist() == [
        "Identify organizations that participate in international criminal activity."]


def test_jsonl_id_aliases_int_ids_gzip_and_bom(tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl.gz"
    with gzip.open(queries, "wt", encoding="utf-8") as fh:
        fh.write('\ufeff{"query_id": 7, "text": "seven"}\n{"id": "8", "query": "eight", "metadata": {}}\n')
    assert read_queries(queries).to_pylist() == [{"query_id": "7", "text": "seven"}, {"query_id": "8", "text": "eight"}]
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text('{"doc_id": "a", "text": "x"}\n{"_id": "b", "title": null, "text": ""}\n'
                      '{"id": 3, "title": "T", "text": "y"}\n', encoding="utf-8")
    assert read_corpus(corpus).to_pylist() == [
        {"doc_id": "a", "title": "", "text": "x"},
        {"doc_id": "b", "title": "", "text": ""},
        {"doc_id": "3", "title": "T", "text": "y"},
    ]


def test_corpus_tsv(tmp_path: Path) -> None:
    two = tmp_path / "collection.tsv"
    two.write_text("0\tThe presence of communication\n1\tThe Manhattan Project\n", encoding="utf-8")
    assert read_corpus(two).column("title").to_pylist() == ["", ""]
    three = tmp_path / "corpus3.tsv"
    three.write_text("d1\tTitle one\tBody one\nd2\t\tBody two\n", encoding="utf-8")
    assert read_corpus(three).to_pylist() == [
        {"doc_id": "d1", "title": "Title one", "text": "Body one"},
        {"doc_id": "d2", "title": "", "text": "Body two"},
    ]


def test_beir_qrels_without_header(tmp_path: Path) -> None:
    path = tmp_path / "q.tsv"
    path.write_text("1\td1\t2\n1\td2\t0\n", encoding="utf-8")
    assert read_qrels(path).column("grade").to_pylist() == [2, 0]


def test_parquet_inputs_are_conformed(tmp_path: Path) -> None:
    """Parquet from other tools: int ids, missing title/source columns, extra columns, null titles."""
    pq.write_table(pa.table({"query_id": pa.array([1, 2]), "text": ["a", "b"], "lang": ["en", "en"]}),
                   tmp_path / "queries.parquet")
    pq.write_table(pa.table({"doc_id": ["d1", "d2"], "text": ["x", "y"]}), tmp_path / "corpus.parquet")
    pq.write_table(pa.table({"query_id": ["1", "2"], "doc_id": ["d1", "d2"], "grade": pa.array([1, 0], pa.int64())}),
                   tmp_path / "qrels-dev.parquet")
    c = load_collection(tmp_path, split="dev")
    assert c.queries.schema == schemas.QUERIES and c.queries.column("query_id").to_pylist() == ["1", "2"]
    assert c.corpus.column("title").to_pylist() == ["", ""]
    assert c.qrels.schema == schemas.QRELS and c.qrels.column("source").to_pylist() == ["human", "human"]
    assert collection_file(tmp_path, "qrels", "dev") == str(tmp_path / "qrels-dev.parquet")
    pq.write_table(pa.table({"doc_id": ["d1"], "title": pa.array([None], pa.string()), "text": ["x"]}),
                   tmp_path / "c2.parquet")
    assert read_corpus(tmp_path / "c2.parquet").column("title").to_pylist() == [""]


def test_read_table_other_kinds(tmp_path: Path) -> None:
    row = {"query_id": "q", "doc_id": "h", "level": 3, "text": "t", "model": "m", "prompt_version": "v1",
           "seed": 0, "n_tokens": 5, "finish_reason": "stop"}
    jsonl = tmp_path / "synthetic.jsonl"
    jsonl.write_text(json.dumps(row) + "\n" + json.dumps({**row, "doc_id": "h2", "level": 0}) + "\n", encoding="utf-8")
    table = read_table(jsonl, "synthetic")
    assert table.schema == schemas.SYNTHETIC_PASSAGES and table.num_rows == 2
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(table.slice(0, 1), shards / "part-0.parquet")
    pq.write_table(table.slice(1, 1), shards / "part-1.parquet")
    assert read_table(shards, "synthetic").num_rows == 2
    groups = pa.table({"query_id": ["q"], "query": ["what"], "doc_ids": [["a", "b"]], "texts": [["x", "y"]],
                       "grades": [[1.0, 0.0]], "sources": [["synthetic", "synthetic"]]})
    pq.write_table(groups, tmp_path / "groups.parquet")
    assert read_table(tmp_path / "groups.parquet", "groups").schema == schemas.TRAINING_GROUPS
    with pytest.raises(ValueError, match="kind must be one of"):
        read_table(jsonl, "nope")


def test_fsspec_urls(shared_data: Path, collections: dict[str, Collection]) -> None:
    """Readers open through fsspec: file:// URLs and an in-memory remote filesystem, convert included."""
    import fsspec

    med = collections["med"]
    assert read_queries(f"file://{shared_data}/med/queries.jsonl").equals(med.queries)
    fs = fsspec.filesystem("memory")
    for rel in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        fs.pipe(f"/synrank-test/med/{rel}", (shared_data / "med" / rel).read_bytes())
    try:
        remote = load_collection("memory://synrank-test/med")
        assert remote.queries.equals(med.queries) and remote.corpus.equals(med.corpus)
        assert remote.qrels.equals(med.qrels)
        convert("memory://synrank-test/med", "memory://synrank-test/out", progress=False)
        assert available_splits("memory://synrank-test/out") == ["test"]
        back = load_collection("memory://synrank-test/out")
        assert back.corpus.equals(med.corpus) and back.qrels.equals(med.qrels)
        assert sum(b.num_rows for b in iter_corpus("memory://synrank-test/out/corpus.parquet", 100)) == 1033
    finally:
        fs.rm("/synrank-test", recursive=True)
