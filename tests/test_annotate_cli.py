"""`synrank annotate ...` command line: option/override parsing, agreement and merge sub-actions."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synrank.cli import build_parser, main


def _parse(argv):
    args, extra = build_parser().parse_known_args(argv)
    args.overrides = [a for a in extra if "=" in a]
    return args


def test_overrides_and_options(tmp_path):
    from synrank.annotate.cli import annotate_config as _config

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("runtime:\n  address: ray://head:10001\nannotate:\n  top_n: 7\n  limit: 3\n")
    args = _parse(["annotate", "--config", str(cfg_file), "--out", "o", "--no-judged", "annotate.limit=5", "shard_size=4"])
    cfg, address = _config(args)
    assert (cfg.top_n, cfg.limit, cfg.shard_size, cfg.out, cfg.include_judged) == (7, 5, 4, "o", False)
    assert address == "ray://head:10001"
    assert _parse(["annotate", "agreement", "--human", "h", "--llm", "l"]).handler.__name__ == "_agreement"
    # a typo in an override is an error that names it
    assert main(["annotate", "--out", "o", "annotate.top_m=3"]) == 2


def _llm_qrels(path, rows):
    table = pa.table({"query_id": [r[0] for r in rows], "doc_id": [r[1] for r in rows],
                      "grade": pa.array([r[2] for r in rows], pa.int32()), "source": ["llm"] * len(rows),
                      "model": ["m"] * len(rows), "prompt_version": ["v1"] * len(rows)})
    pq.write_table(table, path)


def test_agreement_and_merge_commands(shared_data, tmp_path, capsys):
    cran = shared_data / "cranfield"
    # query 1's judged passages (Cranfield grades 0..4) re-labelled by a pretend judge on 4 levels
    from synrank.data.readers import read_qrels

    human = read_qrels(cran, "test")
    q1 = human.filter(pa.compute.equal(human.column("query_id"), "1"))
    rows = [(q, d, max(0, g - 1)) for q, d, g in zip(*(q1.column(c).to_pylist() for c in ("query_id", "doc_id", "grade")))]
    rows.append(("1", "999999", 3))  # a pair people did not judge
    llm_path = tmp_path / "llm.parquet"
    _llm_qrels(llm_path, rows)

    assert main(["annotate", "agreement", "--human", str(cran), "--llm", str(llm_path), "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "Cohen's kappa" in printed
    report = json.loads((tmp_path / "a" / "agreement.json").read_text())
    # 5 human levels collapse to 4 as {0,1},{2},{3},{4}; the judge said g-1 (0 for 0 and 1): a perfect match
    assert report["scales"] == {"human": 5, "llm": 4, "common": 4, "unjudged_as": None}
    assert report["n"] == q1.num_rows and report["exact_agreement"] == 1.0
    assert report["coverage"]["llm_only"] == 1
    assert (tmp_path / "a" / "agreement.png").stat().st_size > 1000

    out = tmp_path / "merged.parquet"
    assert main(["annotate", "merge", "--human", str(cran), "--llm", str(llm_path), "--out", str(out),
                 "--precedence", "add", "--human-fraction", "1.0"]) == 0
    merged = pq.read_table(out)
    assert merged.schema.names == ["query_id", "doc_id", "grade", "source"]
    assert merged.num_rows == human.num_rows + 1
    stats = json.loads((tmp_path / "merged.parquet.json").read_text())
    assert stats["by_source"] == {"human": human.num_rows, "llm": 1} and stats["n_levels"] == 4

    # the training stage reads the merged file as qrels
    again = read_qrels(out)
    assert again.num_rows == merged.num_rows


def test_agreement_errors(tmp_path, capsys):
    assert main(["annotate", "agreement", "--human", str(tmp_path / "missing"), "--llm", "x"]) != 0
    with pytest.raises(SystemExit):
        main(["annotate", "merge", "--human", "h"])  # --llm and --out are required
