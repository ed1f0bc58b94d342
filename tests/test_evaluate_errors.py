"""Clear errors before any encoding starts: bad model, missing split, unrelated qrels, empty corpus."""

from __future__ import annotations

import json
import shutil

import pytest

from synrank.data.errors import DataError, MissingFileError
from synrank.evaluate.stage import ModelError, evaluate_model, prepare_collection


def _collection(root, docs, queries, qrels, split="test"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries))
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in qrels))
    return root


@pytest.fixture
def tiny(tmp_path):
    return _collection(tmp_path / "tiny", [("d1", "wing lift"), ("d2", "heat transfer")],
                       [("q1", "lift of a wing"), ("q2", "heat")], [("q1", "d1", 2), ("q2", "d2", 1)])


def test_tiny_collection_evaluates(tiny, tmp_path):
    result = evaluate_model("bm25", [str(tiny)], str(tmp_path / "out"), progress=False)["tiny"]
    assert result["metrics"]["ndcg@10"] == 1.0 and result["num_queries"] == 2


@pytest.mark.parametrize("make, message", [
    (lambda p: p, r"no such directory"),
    (lambda p: (p.mkdir(), p)[1], r"no config.json"),
    (lambda p: (p.mkdir(), (p / "config.json").write_text("{}"), p)[2], r"is not an encoder"),
    (lambda p: (p.write_text("x"), p)[1], r"must be a directory"),
])
def test_model_that_is_not_an_encoder(tiny, tmp_path, make, message):
    model = make(tmp_path / "model")
    with pytest.raises(ModelError, match=message) as info:
        evaluate_model(str(model), [str(tiny)], str(tmp_path / "out"), progress=False)
    assert str(model) in str(info.value)


def test_model_without_weights(tiny, tmp_path):
    from synrank.models import resolve_encoder

    model = tmp_path / "noweights"
    shutil.copytree(resolve_encoder(), model, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    with pytest.raises(ModelError, match="no weights"):
        evaluate_model(str(model), [str(tiny)], str(tmp_path / "out"), progress=False)


def test_collection_without_the_split_lists_the_available_ones(shared_data, tmp_path):
    with pytest.raises(MissingFileError, match=r"no qrels for split 'dev'; this collection has: test") as info:
        evaluate_model("bm25", [str(shared_data / "cranfield")], str(tmp_path), split="dev", progress=False)
    assert "cranfield" in str(info.value)
    with pytest.raises(MissingFileError, match="has: dev"):
        prepare_collection(str(shared_data / "msmarco" / "passage-dev-subset"), "test")


def test_collection_without_corpus_or_qrels(shared_data, tmp_path):
    with pytest.raises(MissingFileError, match="no corpus"):
        prepare_collection(str(shared_data / "msmarco" / "dl19-passage"), "test")
    with pytest.raises(MissingFileError, match="no qrels at all"):
        prepare_collection(str(shared_data / "msmarco" / "nq-dev"), "test")
    with pytest.raises(MissingFileError):
        prepare_collection(str(tmp_path / "nowhere"), "test")


def test_qrels_with_no_judged_document_in_the_corpus(tmp_path):
    col = _collection(tmp_path / "c", [("d1", "a"), ("d2", "b")], [("q1", "a")], [("q1", "x9", 1), ("q1", "x8", 2)])
    with pytest.raises(DataError, match=r"no judged document is in the corpus \(2 judged doc id\(s\), none among the 2"):
        evaluate_model("bm25", [str(col)], str(tmp_path / "out"), progress=False)


def test_qrels_with_no_judged_query_in_the_queries(tmp_path):
    col = _collection(tmp_path / "c", [("d1", "a")], [("q1", "a")], [("q7", "d1", 1)])
    with pytest.raises(DataError, match=r"no judged query is in the queries file"):
        evaluate_model("bm25", [str(col)], str(tmp_path / "out"), progress=False)


def test_empty_corpus(tmp_path):
    col = _collection(tmp_path / "c", [], [("q1", "a")], [("q1", "d1", 1)])
    with pytest.raises(DataError, match="the corpus is empty") as info:
        evaluate_model("default", [str(col)], str(tmp_path / "out"), progress=False)
    assert "corpus.jsonl" in str(info.value)


def test_bad_corpus_line_is_named_by_file_and_line(tmp_path):
    col = _collection(tmp_path / "c", [(f"d{i}", f"text {i}") for i in range(200)], [("q1", "a")], [("q1", "d1", 1)])
    lines = (col / "corpus.jsonl").read_text().splitlines(keepends=True)
    lines[170] = '{"_id": "d170", "text": 17}\n'
    (col / "corpus.jsonl").write_text("".join(lines))
    with pytest.raises(DataError) as info:
        evaluate_model("bm25", [str(col)], str(tmp_path / "out"), progress=False)
    assert str(info.value).startswith(f"{col / 'corpus.jsonl'}:171: field 'text' must be a string")


def test_partly_matching_qrels_warn_and_keep_unretrievable_documents(tmp_path):
    col = _collection(tmp_path / "c", [("d1", "wing"), ("d2", "heat")], [("q1", "wing"), ("q2", "sun")],
                      [("q1", "d1", 1), ("q1", "gone", 1), ("q2", "gone2", 1)])
    with pytest.warns(UserWarning) as caught:
        result = evaluate_model("bm25", [str(col)], str(tmp_path / "out"), progress=False)["c"]
    text = " ".join(str(w.message) for w in caught)
    assert "2 of 3 judged doc id(s) are not in the corpus" in text and "score 0" in text
    assert result["per_query"]["q1"]["recall@100"] == 0.5  # the missing document still counts
    assert result["per_query"]["q2"]["ndcg@10"] == 0.0


def test_cli_reports_errors_with_exit_code_2(tiny, tmp_path, capsys):
    from synrank.cli import main

    assert main(["evaluate", "--model", str(tmp_path / "nope"), "--collection", str(tiny),
                 "--out", str(tmp_path / "o")]) == 2
    assert "is not an encoder" in capsys.readouterr().err
    assert main(["evaluate", "--model", "bm25", "--collection", str(tiny), "--split", "train",
                 "--out", str(tmp_path / "o")]) == 2
    assert "this collection has: test" in capsys.readouterr().err
    assert main(["evaluate", "--model", "bm25", "--collection", str(tiny)]) == 2
    assert "--out" in capsys.readouterr().err


def test_cli_runs_bm25_with_config_and_overrides(tiny, tmp_path, capsys):
    from synrank.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(f"evaluate:\n  model: bm25\n  collections: [{tiny}]\n  top_k: 50\n")
    assert main(["evaluate", "--config", str(config), "--out", str(tmp_path / "o"), "evaluate.top_k=1",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| tiny" in out and "ndcg@10" in out
    saved = json.loads((tmp_path / "o" / "tiny" / "metrics.json").read_text())
    assert saved["settings"]["top_k"] == 1
    assert (tmp_path / "o" / "summary.md").exists()
