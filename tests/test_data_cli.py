"""`synrank data inspect` and `synrank data convert`, through synrank.cli.main and once as a
subprocess (`python -m synrank`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from synrank.cli import main
from synrank.data.convert import convert
from synrank.data.readers import load_collection, read_qrels, read_queries

REPO = Path(__file__).resolve().parents[1]


def test_inspect_text(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(shared_data / "cranfield")]) == 0
    out = capsys.readouterr().out
    assert "documents      1400   ids unique; empty title 2, empty text 2" in out
    assert "queries         225   ids unique; empty text 0" in out
    assert "rows 1837, judged queries 225" in out
    assert "grades     0: 225, 1: 363, 2: 734, 3: 387, 4: 128" in out
    assert "queries without judgments 0" in out


def test_inspect_json_query_set_and_unjudged(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(shared_data / "msmarco/dl20-passage"), "--split", "test", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["corpus"] is None and report["queries"]["count"] == 200
    test = report["qrels"]["test"]
    assert (test["rows"], test["judged_queries"], test["queries_without_judgments"]) == (11386, 54, 146)
    assert test["grade_histogram"] == {"0": 7780, "1": 1940, "2": 1020, "3": 646}
    assert main(["data", "inspect", str(shared_data / "msmarco/trec-mq-2008")]) == 0
    assert "qrels      none" in capsys.readouterr().out


def test_inspect_counts_problems_instead_of_failing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "queries.jsonl").write_text('{"_id": "1", "text": ""}\n{"_id": "1", "text": "b"}\n'
                                            '{"_id": "2", "text": "c"}\n', encoding="utf-8")
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n', encoding="utf-8")
    (tmp_path / "qrels/dev.tsv").write_text("query-id\tcorpus-id\tscore\n1\td\t1\n9\td\t0\n1\tzz\t1\n",
                                            encoding="utf-8")
    assert main(["data", "inspect", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["queries"]["ids_unique"] is False and report["queries"]["duplicate_examples"] == ["1"]
    assert report["queries"]["empty_text"] == 1
    dev = report["qrels"]["dev"]
    assert (dev["unknown_query_rows"], dev["unknown_doc_rows"], dev["queries_without_judgments"]) == (1, 1, 1)
    assert main(["data", "inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 DUPLICATE ids (e.g. 1)" in out and "PROBLEM: 1 row name 1 query id not in the queries" in out


def test_inspect_single_files(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(shared_data / "med/qrels/test.tsv"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["qrels"]["file"]["rows"] == 696
    odd = tmp_path / "thing.txt"
    odd.write_text("1\thello\n", encoding="utf-8")
    assert main(["data", "inspect", str(odd)]) == 2
    assert "pass --kind" in capsys.readouterr().err
    assert main(["data", "inspect", str(odd), "--kind", "queries", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queries"]["count"] == 1


def test_convert_collection(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "med"
    assert main(["data", "convert", str(shared_data / "med"), str(dst), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert f"{dst / 'corpus.parquet'}  (1033 rows)" in out and f"{dst / 'qrels-test.parquet'}  (696 rows)" in out
    assert sorted(p.name for p in dst.iterdir()) == ["corpus.parquet", "qrels-test.parquet", "queries.parquet"]
    assert load_collection(dst).corpus.num_rows == 1033
    # a converted folder is itself a valid input for inspect and for convert
    assert main(["data", "inspect", str(dst), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["qrels"]["test"]["rows"] == 696
    assert main(["data", "convert", str(dst), str(tmp_path / "again")]) == 0
    assert load_collection(tmp_path / "again").qrels.equals(load_collection(dst).qrels)


def test_convert_query_set_and_single_files(shared_data: Path, tmp_path: Path) -> None:
    assert main(["data", "convert", str(shared_data / "msmarco/dl19-passage"), str(tmp_path / "dl19"),
                 "--source", "llm"]) == 0
    assert sorted(p.name for p in (tmp_path / "dl19").iterdir()) == ["qrels-test.parquet", "queries.parquet"]
    assert set(read_qrels(tmp_path / "dl19", "test").column("source").to_pylist()) == {"llm"}
    assert main(["data", "convert", str(shared_data / "msmarco/passage-dev-subset/qrels/dev.tsv"),
                 str(tmp_path / "one"), "--split", "dev"]) == 0
    assert main(["data", "convert", str(shared_data / "msmarco/nq-dev/queries.jsonl"), str(tmp_path / "one")]) == 0
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["qrels-dev.parquet", "queries.parquet"]
    assert read_queries(tmp_path / "one").num_rows == 8757
    assert read_qrels(tmp_path / "one", split="dev").num_rows == 7437


def test_convert_progress_bar(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    convert(shared_data / "cisi", tmp_path / "cisi", progress=True)
    assert "corpus" in capsys.readouterr().err


def test_subprocess_python_m_synrank(shared_data: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "synrank", "data", "inspect", str(shared_data / "msmarco/passage-dev-subset"),
         "--split", "dev", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    dev = report["qrels"]["dev"]
    assert (report["queries"]["count"], dev["rows"], dev["judged_queries"]) == (6980, 7437, 6980)
    assert dev["grade_histogram"] == {"1": 7437}
