"""The `st-mnrl` baseline: sentence-transformers `fit` with MultipleNegativesRankingLoss on the same
groups and budget as synrank's trainer (synrank.train.st_peer), and the pipeline's verdict against it.
Real sentence-transformers trainer and the packaged MiniLM; nothing is faked."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from synrank.config import EncoderConfig, TrainConfig
from synrank.data import schemas
from synrank.pipeline import ST_PEER, trained_vs_untrained, verdict_line
from synrank.storage import write_parquet
from synrank.train.st_peer import fit_st_mnrl, mnrl_triples


def _groups(path, rows) -> str:
    table = pa.table({
        "query_id": [f"q{i}" for i in range(len(rows))],
        "query": [r[0] for r in rows],
        "doc_ids": [[f"d{i}-{j}" for j in range(len(r[1]))] for i, r in enumerate(rows)],
        "texts": [[t for t, _ in r[1]] for r in rows],
        "grades": [[float(g) for _, g in r[1]] for r in rows],
        "sources": [["human"] * len(r[1]) for r in rows],
    }, schema=schemas.TRAINING_GROUPS)
    write_parquet(table, str(path))
    return str(path)


def test_triples_take_the_best_positive_and_the_best_graded_negative_below_the_threshold(tmp_path):
    path = _groups(tmp_path / "g.parquet", [
        ("q zero", [("on topic, no answer", 1), ("full answer", 3), ("unrelated", 0), ("partial", 2)]),
        ("only level one", [("topic only", 1), ("unrelated", 0)]),  # level 1 is not a positive on 4 levels
        ("no negative", [("full", 3), ("partial", 2)]),
    ])
    triples = mnrl_triples(path, threshold=2)
    assert triples.anchor == ["q zero"]
    assert triples.positive == ["full answer"] and triples.negative == ["on topic, no answer"]
    assert triples.skipped == 2


def test_groups_without_any_usable_row_are_an_error_naming_the_file(tmp_path):
    path = _groups(tmp_path / "bad.parquet", [("q", [("topic only", 1), ("unrelated", 0)])])
    with pytest.raises(ValueError, match="bad.parquet"):
        mnrl_triples(path, threshold=2)


def test_the_peer_trains_and_saves_a_model_synrank_evaluates(tmp_path):
    from synrank.encoder import BiEncoder
    from synrank.models import resolve_encoder

    rows = [(f"what is the boundary layer thickness at mach {m}",
             [(f"The boundary layer at mach {m} is {m / 10:.1f} mm thick at the trailing edge.", 3),
              (f"Flows at mach {m} are studied in wind tunnels.", 1),
              ("Heat transfer in rarefied gases.", 0)]) for m in range(2, 10)]
    groups = _groups(tmp_path / "g.parquet", rows)
    cfg = TrainConfig(encoder=EncoderConfig(max_query_length=32, max_passage_length=32), batch_size=4,
                      max_steps=2, lr=1e-4, cpus_per_worker=2)
    out = fit_st_mnrl(cfg, groups, str(tmp_path / "peer"), n_levels=4)
    tuned = BiEncoder.load(out).encode(["heat transfer"], "passage")
    base = BiEncoder.load(resolve_encoder("default")).encode(["heat transfer"], "passage")
    assert tuned.shape == base.shape
    assert not np.allclose(tuned, base, atol=1e-4), "two MNRL steps at lr 1e-4 left the weights unchanged"



@pytest.mark.parametrize("cpu_amp", [False, True])
def test_the_peer_trains_in_bf16_exactly_when_synrank_does(cpu_amp, tmp_path, monkeypatch):
    """Same budget, same precision: train.cpu_amp reaches the peer's training arguments."""
    from sentence_transformers import SentenceTransformerTrainer

    seen = {}
    monkeypatch.setattr(SentenceTransformerTrainer, "train", lambda self: seen.setdefault("bf16", self.args.bf16))
    groups = _groups(tmp_path / "g.parquet", [("wing flutter", [("flutter of a swept wing", 3), ("nozzles", 0)])])
    cfg = TrainConfig(encoder=EncoderConfig(max_query_length=16, max_passage_length=16), batch_size=1, max_steps=1,
                      cpu_amp=cpu_amp)
    fit_st_mnrl(cfg, groups, str(tmp_path / "peer"), n_levels=4)
    assert seen == {"bf16": cpu_amp}

def test_the_verdict_against_the_peer_names_it():
    qs = {f"q{i}": {"ndcg@10": 0.5 + 0.01 * i} for i in range(20)}
    peer = {q: {"ndcg@10": v["ndcg@10"] - 0.05} for q, v in qs.items()}
    (v,) = trained_vs_untrained({"trained": {"c": qs}, ST_PEER: {"c": peer}}, against=ST_PEER)
    assert v["against"] == ST_PEER and abs(v["difference"] - 0.05) < 1e-9
    assert f"vs {ST_PEER} " in verdict_line(v) and "significantly better" in verdict_line(v)


def test_the_peer_stage_refuses_human_grades_off_the_configured_scale_naming_the_key(tmp_path, shared_data):
    from synrank.config import SynrankConfig
    from synrank.pipeline import Pipeline

    cranfield = shared_data / "cranfield"
    cfg = SynrankConfig.model_validate({
        "run_dir": str(tmp_path / "run"),
        "pipeline": {"collection": str(cranfield), "test_fraction": 0.3, "baselines": [ST_PEER]},
        "groups": {"source": "synthetic", "n_levels": 4},  # Cranfield grades 0..4 need qrels_levels: 5
    })
    pipeline = Pipeline(cfg)
    queries, fp = pipeline.split()
    with pytest.raises(Exception, match="qrels_levels"):
        pipeline.st_peer(queries, fp)
    assert not (tmp_path / "run" / ST_PEER / "model").exists()
