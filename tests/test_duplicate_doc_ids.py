"""A corpus whose doc ids repeat is refused by every stage that reads it, with the file, the line
(Parquet: the row) of the repeat, where the id was first, and the id; a corpus without repeats
loads. And text formatting sits below data and encoder: importing it, or the data modules that
format passages, pulls no torch."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synrank.data.errors import DataError
from synrank.data.readers import (
    check_unique_doc_ids,
    iter_corpus,
    iter_corpus_part,
    load_collection,
    read_corpus,
    split_corpus,
)

# (doc id, title, text); "1" repeats: its first is the 1st document, the repeat the 4th.
DOCS = [("1", "Lift", "wing lift"), ("2", "Drag", "drag of wings"), ("3", "", "flutter"),
        ("1", "Other", "something else about lift"), ("4", "Stall", "stall speed")]


def _jsonl(path: Path, docs, blank_after: int | None = None) -> Path:
    lines = [json.dumps({"_id": d, "title": t, "text": x}) for d, t, x in docs]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _write(kind: str, folder: Path, docs=DOCS) -> tuple[Path, str]:
    """The corpus file of `kind` and where its repeat of "1" is reported (as the error writes it)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":  # a blank line before the repeat: lines are lines, not documents
        return _jsonl(folder / "corpus.jsonl", docs, blank_after=2), ":5: duplicate doc id '1' (first on line 1)"
    if kind == "jsonl.gz":
        path = folder / "corpus.jsonl.gz"
        path.write_bytes(gzip.compress("".join(json.dumps({"_id": d, "title": t, "text": x}) + "\n"
                                               for d, t, x in docs).encode()))
        return path, ":4: duplicate doc id '1' (first on line 1)"
    if kind == "tsv2":
        path = folder / "collection.tsv"
        path.write_text("".join(f"{d}\t{x}\n" for d, _, x in docs))
        return path, ":4: duplicate doc id '1' (first on line 1)"
    if kind == "tsv3":
        path = folder / "collection.tsv"
        path.write_text("".join(f"{d}\t{t}\t{x}\n" for d, t, x in docs))
        return path, ":4: duplicate doc id '1' (first on line 1)"
    if kind == "parquet":
        path = folder / "corpus.parquet"
        table = pa.table({"doc_id": [d for d, _, _ in docs], "title": [t for _, t, _ in docs],
                          "text": [x for _, _, x in docs]})
        pq.write_table(table, path, row_group_size=2)
        return path, ": row 3: duplicate doc_id '1' (first at row 0)"
    raise ValueError(kind)


FORMATS = ["jsonl", "jsonl.gz", "tsv2", "tsv3", "parquet"]


def _expect(path: Path, where: str) -> str:
    return "^" + re.escape(f"{path}{where}") + "$"


@pytest.mark.parametrize("kind", FORMATS)
def test_every_corpus_format_names_file_line_and_id(tmp_path, kind):
    path, where = _write(kind, tmp_path / kind)
    with pytest.raises(DataError, match=_expect(path, where)):
        read_corpus(path)
    with pytest.raises(DataError, match=_expect(path, where)):
        list(iter_corpus(path, batch_size=2, check_unique=True))


@pytest.mark.parametrize("kind", FORMATS)
def test_a_corpus_without_repeats_loads(tmp_path, kind):
    docs = [d for d in DOCS if d[2] != "something else about lift"]
    path, _ = _write(kind, tmp_path / kind, docs)
    table = read_corpus(path)
    assert table.column("doc_id").to_pylist() == ["1", "2", "3", "4"]
    parts = split_corpus(path, min_parts=3, part_bytes=40)
    check_unique_doc_ids(parts, [_part_ids(p) for p in parts])  # no error


def _part_ids(part) -> pa.Array:
    batches = list(iter_corpus_part(part, batch_size=2))
    return pa.concat_arrays([b.column(0) for b in batches]) if batches else pa.array([], pa.string())


@pytest.mark.parametrize("kind", FORMATS)
def test_repeats_across_parts_name_the_file_line_and_id(tmp_path, kind):
    """The parts a corpus is cut into for Ray tasks see the repeat only together."""
    path, where = _write(kind, tmp_path / kind)
    parts = split_corpus(path, min_parts=4, part_bytes=40)
    if kind in ("jsonl", "parquet"):
        assert len({(p.file, p.start) for p in parts}) > 2  # the first and the repeat are in different parts
    with pytest.raises(DataError, match=_expect(path, where)):
        check_unique_doc_ids(parts, [_part_ids(p) for p in parts])


def test_the_repeat_reported_is_the_first_in_file_order(tmp_path):
    docs = [("a", "", "x"), ("b", "", "y"), ("c", "", "z"), ("b", "", "w"), ("a", "", "v")]
    path = _jsonl(tmp_path / "corpus.jsonl", docs)
    parts = split_corpus(path, min_parts=5, part_bytes=30)
    with pytest.raises(DataError, match=_expect(path, ":4: duplicate doc id 'b' (first on line 2)")):
        check_unique_doc_ids(parts, [_part_ids(p) for p in parts])


def _collection(folder: Path, kind: str = "jsonl") -> tuple[Path, str]:
    path, where = _write(kind, folder)
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "what is lift"}\n')
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\t1\t1\n")
    return path, where


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_annotation_and_groups_refuse_the_corpus(tmp_path, kind):
    from synrank.data.groups import _Corpus

    path, where = _collection(tmp_path / "c", kind)
    with pytest.raises(DataError, match=_expect(path, where)):  # what annotation and the pipeline load
        load_collection(tmp_path / "c")
    with pytest.raises(DataError, match=_expect(path, where)):  # the groups' corpus actor
        _Corpus(str(tmp_path / "c"))


@pytest.mark.usefixtures("ray_session")
def test_evaluation_refuses_the_corpus_and_keeps_what_was_there(tmp_path):
    """`synrank evaluate --model bm25` (and dense: the same scan comes first) fails before writing."""
    from synrank.evaluate import evaluate_model

    path, where = _collection(tmp_path / "c")
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("kept")
    with pytest.raises(DataError, match=_expect(path, where)):
        evaluate_model("bm25", [str(tmp_path / "c")], str(out), progress=False)
    assert [p.name for p in out.iterdir()] == ["earlier.txt"]
    assert (out / "earlier.txt").read_text() == "kept"


@pytest.mark.parametrize("module", ["synrank.text", "synrank.data.bm25", "synrank.data.groups"])
def test_text_and_data_modules_do_not_pull_torch(module):
    code = f"import {module}, sys; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_format_passage_has_one_home():
    import synrank.encoder
    from synrank.text import format_passage

    assert format_passage(" Lift ", "wing lift\n") == "Lift wing lift"
    assert format_passage(None, "text") == "text"
    assert not hasattr(synrank.encoder, "format_passage")
