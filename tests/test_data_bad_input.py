"""Malformed input: every error names the file and the line (Parquet: the row), warnings are
counted, and neither reading nor a failed conversion writes or corrupts anything."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synrank.cli import main
from synrank.data.convert import convert
from synrank.data.errors import DataError, DataWarning, MissingFileError
from synrank.data.readers import (
    iter_corpus,
    load_collection,
    read_corpus,
    read_qrels,
    read_queries,
    read_table,
)

HEADER = b"query-id\tcorpus-id\tscore\n"


def _queries(path: Path) -> None:
    read_queries(path)


def _corpus(path: Path) -> None:
    read_corpus(path)


def _corpus_stream(path: Path) -> None:
    for _ in iter_corpus(path, batch_size=1):
        pass


def _qrels(path: Path) -> None:
    read_qrels(path)


# (case id, file name, content, reader, line the error must name, words the message must contain)
CASES: list[tuple[str, str, bytes, Callable[[Path], None], int, str]] = [
    ("jsonl-malformed", "queries.jsonl",
     b'{"_id": "1", "text": "a"}\n{"_id": "2", "text": "b"}\n{"_id": "3" "text": "c"}\n', _queries, 3, "malformed JSON"),
    ("jsonl-truncated-last-line", "corpus.jsonl",
     b'{"_id": "1", "text": "a"}\n{"_id": "2", "text": "b', _corpus, 2, "malformed JSON"),
    ("jsonl-not-an-object", "queries.jsonl", b'{"_id": "1", "text": "a"}\n["2", "b"]\n', _queries, 2,
     "expected a JSON object"),
    ("duplicate-query-id", "queries.jsonl",
     b'{"_id": "1", "text": "a"}\n{"_id": "2", "text": "b"}\n\n{"_id": "1", "text": "c"}\n', _queries, 4,
     "duplicate query id '1' (first on line 1)"),
    ("duplicate-doc-id", "corpus.jsonl",
     b'{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "b"}\n{"_id": "d2", "text": "c"}\n', _corpus, 3,
     "duplicate doc id 'd2' (first on line 2)"),
    ("missing-text", "queries.jsonl", b'{"_id": "1", "text": "a"}\n{"_id": "2", "title": "b"}\n', _queries, 2,
     "missing required field 'text' or 'query'"),
    ("missing-id", "corpus.jsonl", b'{"_id": "1", "text": "a"}\n{"title": "t", "text": "b"}\n', _corpus_stream, 2,
     "missing required field '_id' or 'doc_id' or 'id'"),
    ("empty-id", "corpus.jsonl", b'{"_id": "1", "text": "a"}\n{"_id": "  ", "text": "b"}\n', _corpus, 2,
     "empty id"),
    ("text-not-a-string", "queries.jsonl", b'{"_id": "1", "text": 42}\n', _queries, 1,
     "field 'text' must be a string, got number"),
    ("id-not-a-string", "queries.jsonl", b'{"_id": "1", "text": "a"}\n{"_id": ["2"], "text": "b"}\n', _queries, 2,
     "must be a string, got array"),
    ("non-utf8-jsonl", "corpus.jsonl",
     b'{"_id": "1", "text": "a"}\n{"_id": "2", "text": "caf\xe9"}\n', _corpus, 2, "not valid UTF-8: byte 0xe9"),
    ("non-utf8-topics", "topics.txt", b"1\tfine\n2\tna\xefve \xff\n", _queries, 2, "not valid UTF-8: byte 0xef at byte 5"),
    ("topics-no-tab", "topics.tsv", b"1\tfirst\n2 second\n", _queries, 2,
     "expected 2 tab-separated columns (id, text), got 1"),
    ("topics-empty-id", "topics.tsv", b"1\tfirst\n\tsecond\n", _queries, 2, "empty query id"),
    ("sgml-unclosed", "topics.301", b"<top>\n<num> Number: 301\n<title> a\n</top>\n\n<top>\n<num> Number: 302\n",
     _queries, 6, "no closing '</top>'"),
    ("sgml-no-num", "topics.301", b"<top>\n<num> Number: 301\n<title> a\n</top>\n<top>\n<title> b\n</top>\n",
     _queries, 5, "no <num>"),
    ("sgml-stray-text", "topics.301", b"<top>\n<num> 1\n<title> a\n</top>\nstray\n", _queries, 5, "expected '<top>'"),
    ("qrels-non-integer-grade", "test.tsv", HEADER + b"1\td1\t1\n1\td2\t1.5\n", _qrels, 3,
     "grade '1.5' is not an integer"),
    ("qrels-word-grade", "qrels.txt", b"1 0 d1 1\n1 0 d2 high\n", _qrels, 2, "grade 'high' is not an integer"),
    ("qrels-float-grade-first-line", "test.tsv", b"1\td1\t0.5\n", _qrels, 1, "grade '0.5' is not an integer"),
    ("qrels-wrong-header", "test.tsv", b"qid\tdocid\trel\n1\td1\t1\n", _qrels, 1,
     "qrels header is 'qid\\tdocid\\trel'; expected 'query-id\\tcorpus-id\\tscore'"),
    ("qrels-space-header", "test.tsv", b"query-id corpus-id score\n1\td1\t1\n", _qrels, 1, "qrels header is"),
    ("qrels-too-few-columns", "test.tsv", HEADER + b"1\td1\t1\n1\td2\n", _qrels, 3,
     "expected 3 tab-separated columns (query-id, corpus-id, score), got 2"),
    ("qrels-too-many-columns", "test.tsv", HEADER + b"1\td1\t1\n\n1\td2\t1\textra\n", _qrels, 4,
     "expected 3 tab-separated columns (query-id, corpus-id, score), got 4"),
    ("trec-qrels-columns", "qrels.txt", b"1 0 d1 1\n1 0 d2 1 x\n", _qrels, 2,
     "expected 4 whitespace-separated columns"),
    ("qrels-empty-doc-id", "test.tsv", HEADER + b"1\t\t1\n", _qrels, 2, "empty doc id"),
    ("qrels-non-utf8", "test.tsv", HEADER + b"1\td1\t1\n\xc3\x28\td2\t1\n", _qrels, 3, "not valid UTF-8"),
    ("qrels-conflicting-grades", "test.tsv", HEADER + b"1\td1\t1\n1\td2\t0\n1\td1\t2\n", _qrels, 4,
     "judged again with grade 2 (grade 1 on line 2)"),
    ("qrels-grade-overflow", "test.tsv", HEADER + b"1\td1\t99999999999\n", _qrels, 2, "does not fit in int32"),
    ("corpus-tsv-columns", "collection.tsv", b"1\ta\n2\tb\n3\tt\tc\n", _corpus, 3,
     "expected 2 tab-separated columns (id, [title,] text), got 3"),
]


@pytest.mark.parametrize("name,filename,content,reader,line,words", CASES, ids=[c[0] for c in CASES])
def test_error_names_file_and_line(tmp_path: Path, name: str, filename: str, content: bytes,
                                   reader: Callable[[Path], None], line: int, words: str) -> None:
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        reader(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message, message
    assert info.value.path == str(path) and info.value.line == line
    assert isinstance(info.value, ValueError)
    assert path.read_bytes() == content  # reading never touches the input


def test_missing_file_and_missing_split(tmp_path: Path, shared_data: Path) -> None:
    missing = tmp_path / "nope" / "queries.jsonl"
    with pytest.raises(MissingFileError, match=f"^{missing}: no such file") as info:
        read_queries(missing)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DataError)
    with pytest.raises(FileNotFoundError, match="no corpus file"):
        load_collection(shared_data / "msmarco/dl19-passage")
    with pytest.raises(MissingFileError, match=r"qrels/test.tsv: no qrels for split 'test' \(available splits: \['dev'\]\)"):
        load_collection(shared_data / "msmarco/passage-dev-subset", require_corpus=False)
    with pytest.raises(MissingFileError, match="no queries file"):
        read_queries(tmp_path)
    assert not (tmp_path / "nope").exists()


def _collection(root: Path, qrels: bytes, corpus: bytes | None = None) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "queries.jsonl").write_bytes(b'{"_id": "q1", "text": "one"}\n{"_id": "q2", "text": "two"}\n')
    (root / "corpus.jsonl").write_bytes(corpus or b'{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": "y"}\n')
    (root / "qrels/test.tsv").write_bytes(HEADER + qrels)
    return root


def test_qrels_unknown_query_is_an_error(tmp_path: Path) -> None:
    root = _collection(tmp_path / "c", b"q1\td1\t1\nq9\td2\t1\nq9\td1\t0\n")
    with pytest.raises(DataError) as info:
        load_collection(root)
    message = str(info.value)
    assert message.startswith(f"{root / 'qrels/test.tsv'}:3: query id 'q9' is not in {root / 'queries.jsonl'}")
    assert "2 qrels row(s) name 1 unknown query id(s)" in message


def test_qrels_unknown_doc_is_a_counted_warning(tmp_path: Path) -> None:
    root = _collection(tmp_path / "c", b"q1\td1\t1\nq1\tgone\t1\nq2\td2\t1\nq2\tlost\t0\nq2\tgone\t2\n")
    with pytest.warns(DataWarning, match=r"3 qrels row\(s\) name 2 doc id\(s\) not in .*corpus.jsonl "
                                         r"\(first 'gone' on line 3\); those rows are dropped"):
        c = load_collection(root)
    assert c.qrels.column("doc_id").to_pylist() == ["d1", "d2"]
    assert c.dropped_qrels == 3 and len(c.warnings) == 1
    with pytest.raises(DataError, match=rf"^{root / 'qrels/test.tsv'}:3: doc id 'gone' is not in"):
        load_collection(root, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # without a corpus, doc ids are not checked
        (root / "corpus.jsonl").unlink()
        assert load_collection(root, require_corpus=False).qrels.num_rows == 5


def test_repeated_qrels_pair_same_grade_is_a_counted_warning(tmp_path: Path) -> None:
    path = tmp_path / "test.tsv"
    path.write_bytes(HEADER + b"1\td1\t1\n1\td2\t0\n1\td1\t1\n1\td2\t0\n1\td3\t1\n")
    with pytest.warns(DataWarning, match=rf"{path}: 2 repeated \(query, doc\) row\(s\) with the same grade"):
        table = read_qrels(path)
    assert table.column("doc_id").to_pylist() == ["d1", "d2", "d3"]


def test_parquet_errors_name_file_and_row(tmp_path: Path) -> None:
    dup = tmp_path / "queries.parquet"
    pq.write_table(pa.table({"query_id": ["a", "b", "a"], "text": ["x", "y", "z"]}), dup)
    with pytest.raises(DataError, match=rf"^{dup}: row 2: duplicate query_id 'a' \(first at row 0\)"):
        read_queries(dup)
    null_id = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"doc_id": ["a", None], "title": ["", ""], "text": ["x", "y"]}), null_id)
    with pytest.raises(DataError, match=rf"^{null_id}: row 1: null doc_id"):
        read_corpus(null_id)
    no_grade = tmp_path / "qrels.parquet"
    pq.write_table(pa.table({"query_id": ["a"], "doc_id": ["b"]}), no_grade)
    with pytest.raises(DataError, match=rf"^{no_grade}: missing column\(s\) \['grade'\]"):
        read_qrels(no_grade)
    float_grade = tmp_path / "qrels2.parquet"
    pq.write_table(pa.table({"query_id": ["a"], "doc_id": ["b"], "grade": [1.5]}), float_grade)
    with pytest.raises(DataError, match=rf"^{float_grade}: column 'grade' has type double"):
        read_qrels(float_grade)
    bad_source = tmp_path / "qrels3.parquet"
    pq.write_table(pa.table({"query_id": ["a", "a"], "doc_id": ["b", "c"], "grade": [1, 0],
                             "source": ["llm", "oracle"]}), bad_source)
    with pytest.raises(DataError, match=rf"^{bad_source}: row 1: source 'oracle' is not one of"):
        read_qrels(bad_source)
    not_parquet = tmp_path / "broken.parquet"
    not_parquet.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=rf"^{not_parquet}: not a readable Parquet file"):
        read_queries(not_parquet)


def test_read_table_jsonl_errors(tmp_path: Path) -> None:
    path = tmp_path / "groups.jsonl"
    good = '{"query_id": "q", "query": "w", "doc_ids": ["a"], "texts": ["t"], "grades": [1.0], "sources": ["llm"]}'
    path.write_text(good + "\n" + good.replace('"grades": [1.0]', '"grades": "high"') + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: value does not fit the groups schema"):
        read_table(path, "groups")
    path.write_text(good + "\n" + '{"query_id": "q"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: missing required field\(s\) \['query', 'doc_ids'"):
        read_table(path, "groups")


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failed_convert_leaves_destination_untouched(tmp_path: Path) -> None:
    """Queries are fine, the corpus breaks on its last line: no output file appears or changes."""
    lines = b"".join(b'{"_id": "d%d", "text": "doc %d"}\n' % (i, i) for i in range(2000))
    src = _collection(tmp_path / "src", b"q1\td1\t1\n", corpus=lines + b'{"_id": "bad", "text": \n')
    dst = tmp_path / "dst"
    dst.mkdir()
    pq.write_table(pa.table({"query_id": ["old"], "text": ["previous"]}), dst / "queries.parquet")
    before = _snapshot(dst)
    with pytest.raises(DataError, match=rf"^{src / 'corpus.jsonl'}:2001: malformed JSON"):
        convert(src, dst, progress=False)
    assert _snapshot(dst) == before  # no partial corpus, old queries intact, no temp files left
    with pytest.raises(DataError, match=rf"{src / 'qrels/test.tsv'}:2: query id 'q7'"):
        (src / "corpus.jsonl").write_bytes(lines)
        (src / "qrels/test.tsv").write_bytes(HEADER + b"q7\td1\t1\n")
        convert(src, dst, progress=False)
    assert _snapshot(dst) == before


def test_cli_reports_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _collection(tmp_path / "c", b"q1\td1\tyes\n")
    assert main(["data", "inspect", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{root / 'qrels/test.tsv'}:2: grade 'yes' is not an integer" in err
    assert main(["data", "convert", str(root), str(tmp_path / "out")]) == 2
    assert f"{root / 'qrels/test.tsv'}:2:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
