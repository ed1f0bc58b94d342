"""The driver of groups building does not hold the corpus: its peak memory stays flat when the
collection (queries, qrels and corpus) grows tenfold.

Each scale runs in a fresh subprocess driver with its own embedded Ray, which reports its peak RSS
(the driver process only, not Ray's workers). The collections are BEIR
folders made from real Cranfield text with new ids: 1x = 1,400 documents and 225 queries, 10x =
14,000 and 2,250 (each copy drops a different seventh of every document's words, so copies are not
duplicates for BM25)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from driver_output import last_json_object

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent('''
    import json, sys
    from synrank.config import GroupsConfig
    from synrank.data.groups import build_groups_to
    from synrank.runtime import init_ray

    def peak_mb():
        # VmHWM, not getrusage's ru_maxrss: that one keeps the parent's peak across fork and exec,
        # so a driver started from a large pytest process would report pytest's memory.
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024

    collection, out = sys.argv[1], sys.argv[2]
    init_ray(num_cpus=2)
    cfg = GroupsConfig(source="human", collection=collection, qrels_levels=5, n_levels=4, group_size=8,
                       bm25_negatives=30)
    stats = build_groups_to(cfg, out, queries_per_part=200)
    peak = peak_mb()

    # The control: this driver holding the corpus and its BM25 index, as the single-process
    # builder did.
    from synrank.data.bm25 import BM25Index
    from synrank.data.readers import read_corpus
    corpus = read_corpus(collection)
    titles, texts = corpus.column("title").to_pylist(), corpus.column("text").to_pylist()
    index = BM25Index(corpus.column("doc_id").to_pylist(), [f"{t} {x}" for t, x in zip(titles, texts)])
    print(json.dumps({"peak_mb": peak, "holding_corpus_mb": peak_mb(), "groups": stats.n_groups}))
''')


def scaled_cranfield(src: Path, dst: Path, copies: int) -> Path:
    """A BEIR folder of `copies` renamed copies of Cranfield (ids ``<copy>-<id>``)."""
    docs = [json.loads(line) for line in (src / "corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (src / "queries.jsonl").read_text().splitlines()]
    qrels = [line.split("\t") for line in (src / "qrels" / "test.tsv").read_text().splitlines()[1:]]

    def vary(text: str, copy: int) -> str:
        return " ".join(w for i, w in enumerate(text.split()) if copy == 0 or (i + copy) % 7)

    (dst / "qrels").mkdir(parents=True)
    with open(dst / "corpus.jsonl", "w") as f:
        for c in range(copies):
            for d in docs:
                doc = {"_id": f"{c}-{d['_id']}", "title": d["title"], "text": vary(d["text"], c)}
                f.write(json.dumps(doc) + "\n")
    with open(dst / "queries.jsonl", "w") as f:
        for c in range(copies):
            for q in queries:
                f.write(json.dumps({"_id": f"{c}-{q['_id']}", "text": q["text"]}) + "\n")
    with open(dst / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for c in range(copies):
            f.writelines(f"{c}-{q}\t{c}-{d}\t{s}\n" for q, d, s in qrels)
    return dst


def _drive(collection: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(collection), str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return last_json_object(proc.stdout)


def test_driver_memory_is_flat_when_the_collection_grows_tenfold(shared_data, tmp_path):
    runs = {}
    for copies in (1, 10):
        collection = scaled_cranfield(shared_data / "cranfield", tmp_path / f"cran-x{copies}", copies)
        runs[copies] = _drive(collection, tmp_path / f"groups-x{copies}.parquet")
    small, large = runs[1], runs[10]
    assert (small["groups"], large["groups"]) == (112, 1125)
    # Flat: within 20 % of the 1x peak (~210 MB here, so ~40 MB). The control shows the bound
    # bites: a driver holding the corpus and its BM25 index grows by ~90 MB from 1x to 10x.
    allowed = 0.2 * small["peak_mb"]
    assert large["peak_mb"] <= small["peak_mb"] + allowed, runs
    assert large["holding_corpus_mb"] - small["holding_corpus_mb"] > allowed, f"the control grows too little: {runs}"
