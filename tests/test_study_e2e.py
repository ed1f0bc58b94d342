"""`synrank study` end to end on the session's embedded Ray: study-tiny.yaml as shipped (Tune trials
that fit a TorchTrainer and evaluate), restoring a finished study, the reference systems of its
report, and a failing trial."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from test_study_report import check_report_matches_trials

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "jobs" / "configs" / "study-tiny.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a hang guard; ~5 min in all on 2 free cores


def _paths(shared_data: Path) -> list[str]:
    """study-tiny.yaml names ../shared/data relative to the repository; follow SYNRANK_SHARED_DATA."""
    cran = shared_data / "cranfield"
    return [f"base.groups.collection={cran}",
            f"test=[{{path: {cran}, name: cranfield, queries: held_out, limit: 60}}]"]


def _mtimes(study_dir: Path) -> dict[str, float]:
    return {p.parent.name: p.stat().st_mtime for p in sorted((study_dir / "trials").glob("*/result.json"))}


@pytest.fixture(scope="module")
def tiny_study(ray_session, shared_data, tmp_path_factory):
    """study-tiny.yaml run once for this module: (study_dir, StudyResult). Its report has the
    default reference systems (the untrained encoder and BM25)."""
    from synrank.study.load import load_study
    from synrank.study.driver import run_study

    here = os.getcwd()
    os.chdir(REPO)
    try:
        study_dir = tmp_path_factory.mktemp("tiny") / "study-tiny"
        result = run_study(load_study(TINY, [f"study_dir={study_dir}", *_paths(shared_data)]))
    finally:
        os.chdir(here)
    return study_dir, result


def test_study_tiny_end_to_end_then_restore(tiny_study, shared_data, monkeypatch) -> None:
    from synrank.study.load import load_study
    from synrank.study.driver import run_study

    monkeypatch.chdir(REPO)
    study_dir, result = tiny_study

    assert [t.status for t in result.trials] == ["completed"] * 4, [(t.trial_id, t.error) for t in result.trials]
    assert not result.restored and result.new_trials == 4
    # the Train metrics reached Tune (one report per step), then the evaluation
    for t in result.trials:
        assert t.metrics["test/cranfield/ndcg@10"] > 0.05
    trials = sorted((study_dir / "trials").iterdir())
    assert [p.name for p in trials] == ["infonce_L2_human_s0", "infonce_L4_human_s0",
                                        "wasserstein_L2_human_s0", "wasserstein_L4_human_s0"]
    for p in trials:
        res = json.loads((p / "result.json").read_text())
        assert res["steps"] == 3 and res["num_queries"]["test"]["cranfield"] == 60
        assert len(json.loads((p / "history.json").read_text())["steps"]) == 3
        assert (p / "eval" / "test" / "cranfield" / "run.trec").exists()
        assert not (study_dir / "train" / p.name).exists()  # checkpoints of finished trials are dropped
    # groups were built once per (source, levels, seed) and shared by the two losses
    assert len(list((study_dir / "data" / "groups").glob("*.parquet"))) == 2
    # Tune's own record: every trial reported every training step, then the final evaluation
    tune_results = list((study_dir / "tune").glob("*/result.json"))
    assert len(tune_results) == 4
    for path in tune_results:
        reports = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert [r.get("step") for r in reports[:3]] == [1, 2, 3] and "loss" in reports[0]
        assert 0.0 < reports[-1]["test/cranfield/ndcg@10"] <= 1.0

    # the report: table, CSV, plots, one row per configuration, numbers equal to the trial files
    report = study_dir / "report"
    md = (report / "report.md").read_text()
    assert md.count("| infonce |") == 2 and md.count("| wasserstein |") == 2
    rows = check_report_matches_trials(study_dir)
    assert len(rows) == 4
    for name in ("ndcg10_by_objective.png", "heatmap_objective_levels.png", "training_curves.png"):
        assert (report / "plots" / name).stat().st_size > 10_000

    # restoring the finished study runs no trial again (nor a reference system); report settings
    # are not part of the study's identity
    before = _mtimes(study_dir)
    refs = {p.parent.name: p.stat().st_mtime for p in (study_dir / "references").glob("*/reference.json")}
    again = run_study(load_study(TINY, [f"study_dir={study_dir}", *_paths(shared_data), "report.alpha=0.01"]))
    assert again.restored and again.new_trials == 0
    assert [t.status for t in again.trials] == ["completed"] * 4
    assert _mtimes(study_dir) == before
    assert sorted(refs) == ["bm25", "default"]
    assert {p.parent.name: p.stat().st_mtime for p in (study_dir / "references").glob("*/reference.json")} == refs


def test_reference_systems_in_the_tiny_study_report(tiny_study, monkeypatch) -> None:
    """The untrained encoder and BM25 on the trials' own test view: rows after the trained
    configurations, equal to their per-query files over the view's queries, cached, optional."""
    import numpy as np

    from synrank.study import references as refs_mod
    from synrank.study.collections import View
    from synrank.study.report import load_saved_study, write_report
    from synrank.study.store import StudyStore

    study_dir, _ = tiny_study
    store = StudyStore(str(study_dir))
    view = json.loads((study_dir / "data" / "views.json").read_text())["test"][0]
    assert view["key"] == "cranfield" and len(view["query_ids"]) == 60
    rows = list(csv.DictReader((study_dir / "report" / "results.csv").open()))
    by = {r["config_id"]: r for r in rows}
    assert [r["reference"] for r in rows] == ["", "", "", "", "default", "bm25"]  # after the trained ones
    measures = ["ndcg@10", "recall@100", "mrr@10"]
    for name, label in (("default", "untrained encoder (reference)"), ("bm25", "BM25 (reference)")):
        ref = study_dir / "references" / name
        meta = json.loads((ref / "reference.json").read_text())
        assert meta["status"] == "completed" and meta["views"] == [view]
        assert meta["method"] == ("stage" if name == "bm25" else "local")  # study-tiny: evaluation=local
        pq = json.loads((ref / "per_query" / "test" / "cranfield.json").read_text())
        assert sorted(pq) == sorted(view["query_ids"])
        row = by[f"reference:{name}"]
        assert row["loss"] == label and row["n_levels"] == row["source"] == "" and row["seeds_completed"] == ""
        for m in measures:
            want = float(np.mean([pq[q][m] for q in view["query_ids"]]))
            assert float(row[f"test/cranfield/{m}/mean"]) == pytest.approx(want, rel=1e-9, abs=1e-12)
            assert float(row[f"test/average/{m}/mean"]) == pytest.approx(want, rel=1e-9, abs=1e-12)
            assert row[f"test/cranfield/{m}/ci_low"] == row[f"test/cranfield/{m}/p"] == ""
            assert row[f"test/cranfield/{m}/significant"] == ""
        assert 0.05 < want <= 1.0
    md = (study_dir / "report" / "report.md").read_text()
    main = md.split("## Results", 1)[1].split("\n## ", 1)[0]
    ref_lines = [ln for ln in main.splitlines() if "(reference) |" in ln]
    assert [ln.split("|")[1].strip() for ln in ref_lines] == ["untrained encoder (reference)", "BM25 (reference)"]
    assert ref_lines[0].startswith("| untrained encoder (reference) | — | — | — | ")
    assert main.index("| wasserstein |") < main.index("(reference) |")
    assert not any(mark in ln for ln in ref_lines for mark in ("▲", "▼", "(base)"))
    bm25_ndcg = float(by["reference:bm25"]["test/cranfield/ndcg@10/mean"])
    assert f"| BM25 (reference) | — | — | — | {bm25_ndcg:.3f} |" in main
    others = md.split("## Other measures", 1)[1].split("\n## ", 1)[0]
    assert "| untrained encoder (reference) |" in others and "| BM25 (reference) |" in others

    # cached: a second report evaluates nothing
    def boom(*args, **kwargs):
        raise RuntimeError("evaluated again")

    monkeypatch.setattr(refs_mod, "_evaluate", boom)
    mtimes = {p.parent.name: p.stat().st_mtime for p in (study_dir / "references").glob("*/reference.json")}
    write_report(str(study_dir))
    assert {p.parent.name: p.stat().st_mtime for p in (study_dir / "references").glob("*/reference.json")} == mtimes
    assert (study_dir / "report" / "report.md").read_text().count("(reference) |") == 4
    # another view (here: a stale cache key) evaluates again; a failure names the reference, the report is written
    meta_path = study_dir / "references" / "bm25" / "reference.json"
    meta = json.loads(meta_path.read_text())
    changed = dict(view, query_ids=view["query_ids"][:10])
    assert refs_mod.cache_key("bm25", [View.from_dict(changed)], 100) != meta["key"]
    meta_path.write_text(json.dumps({**meta, "key": "stale"}))
    try:
        write_report(str(study_dir))
        md = (study_dir / "report" / "report.md").read_text()
        assert "Reference `bm25` could not be evaluated: RuntimeError: evaluated again" in md
        assert "| BM25 (reference) |" not in md and "| untrained encoder (reference) |" in md
        assert [r["reference"] for r in csv.DictReader((study_dir / "report" / "results.csv").open())
                if r["reference"]] == ["default"]
    finally:
        meta_path.write_text(json.dumps(meta))
    # report.references=[]: no reference rows
    write_report(str(study_dir), load_saved_study(store, ["report.references=[]"]))
    md = (study_dir / "report" / "report.md").read_text()
    assert "(reference)" not in md
    assert not any(r["reference"] for r in csv.DictReader((study_dir / "report" / "results.csv").open()))
    write_report(str(study_dir))  # as it was


def test_failing_trial_is_recorded_and_the_study_goes_on(ray_session, shared_data, tmp_path, monkeypatch) -> None:
    """One configuration's training raises at step 1; the other trial completes, evaluated through
    the evaluation stage (Ray Data encoders); the failure is in Tune, status.json and the report."""
    from synrank.study.load import load_study
    from synrank.study.driver import run_study

    monkeypatch.chdir(REPO)
    study_dir = tmp_path / "study-fail"
    study = load_study(TINY, [f"study_dir={study_dir}", *_paths(shared_data), "space.n_levels=[2]",
                              "fail_trials=[wasserstein_*]", "evaluation=stage", "base.train.max_steps=2",
                              "keep_models=true", "report.references=[]"])
    result = run_study(study)

    by = {t.trial_id: t for t in result.trials}
    assert by["infonce_L2_human_s0"].status == "completed"
    failed = by["wasserstein_L2_human_s0"]
    assert failed.status == "failed" and "test fault" in failed.error
    status = json.loads((study_dir / "trials" / "wasserstein_L2_human_s0" / "status.json").read_text())
    assert status["status"] == "failed" and "test fault" in status["error"]
    assert "test fault" in (study_dir / "trials" / "wasserstein_L2_human_s0" / "error.txt").read_text()
    assert not (study_dir / "trials" / "wasserstein_L2_human_s0" / "result.json").exists()
    ok = json.loads((study_dir / "trials" / "infonce_L2_human_s0" / "result.json").read_text())
    assert ok["steps"] == 2 and 0.05 < ok["metrics"]["test"]["cranfield"]["ndcg@10"] <= 1.0
    assert Path(ok["groups"]).exists()
    # the stage's outputs for the trial's model; local evaluation of the same model agrees with them
    assert list((study_dir / "trials" / "infonce_L2_human_s0" / "eval").rglob("run.trec"))
    from synrank.study.collections import View
    from synrank.study.trial import evaluate_local

    views = json.loads((study_dir / "data" / "views.json").read_text())
    local = evaluate_local(str(study_dir / "trials" / "infonce_L2_human_s0" / "model"),
                           {"test": [View.from_dict(v) for v in views["test"]]}, str(tmp_path / "local"), 100, 2)
    stage = json.loads((study_dir / "trials" / "infonce_L2_human_s0" / "per_query" / "test" / "cranfield.json").read_text())
    assert set(local["test"]["cranfield"]["per_query"]) == set(stage)
    for q, values in stage.items():
        for m, v in values.items():
            assert local["test"]["cranfield"]["per_query"][q][m] == pytest.approx(v, abs=1e-4), (q, m)

    md = (study_dir / "report" / "report.md").read_text()
    assert "| wasserstein_L2_human_s0 | failed | " in md and "test fault" in md
    rows = list(csv.DictReader((study_dir / "report" / "results.csv").open()))
    assert {r["config_id"]: r["seeds_completed"] for r in rows} == {"infonce_L2_human": "1",
                                                                     "wasserstein_L2_human": "0"}

    # restoring keeps the failed trial failed (no retry) and trains nothing
    again = run_study(load_study(TINY, [f"study_dir={study_dir}", *_paths(shared_data), "space.n_levels=[2]",
                                        "fail_trials=[wasserstein_*]", "evaluation=stage",
                                        "base.train.max_steps=2", "keep_models=true", "report.references=[]"]))
    assert again.restored and again.new_trials == 0
    assert {t.trial_id: t.status for t in again.trials} == {"infonce_L2_human_s0": "completed",
                                                            "wasserstein_L2_human_s0": "failed"}

    # --fresh after a change to the base config: the completed trial is trained again under it,
    # not re-reported with the old result (the failing configuration is left out of this run)
    fresh = run_study(load_study(TINY, [f"study_dir={study_dir}", *_paths(shared_data), "space.n_levels=[2]",
                                        "space.losses=[infonce]", "evaluation=stage", "base.train.max_steps=3",
                                        "keep_models=true", "report.references=[]"]),
                      fresh=True)
    assert not fresh.restored and fresh.new_trials == 1
    assert {t.trial_id: t.status for t in fresh.trials} == {"infonce_L2_human_s0": "completed"}
    retrained = json.loads((study_dir / "trials" / "infonce_L2_human_s0" / "result.json").read_text())
    assert retrained["steps"] == 3 and retrained["finished_at"] > ok["finished_at"]


def test_changed_study_in_the_same_directory_is_refused(shared_data, tmp_path) -> None:
    from synrank.config import ConfigError
    from synrank.study.load import load_study
    from synrank.study.driver import _check_same_study, _comparable
    from synrank.study.store import StudyStore

    study = load_study(TINY, [f"study_dir={tmp_path}", *_paths(shared_data)])
    store = StudyStore(str(tmp_path))
    store.write_json(_comparable(study), store.path("study.json"))
    _check_same_study(store, study, fresh=False)
    changed = load_study(TINY, [f"study_dir={tmp_path}", *_paths(shared_data), "base.train.lr=1.0e-4"])
    with pytest.raises(ConfigError, match="different configuration .changed: base"):
        _check_same_study(store, changed, fresh=False)
    _check_same_study(store, changed, fresh=True)
    # report settings may change freely
    _check_same_study(store, load_study(TINY, [f"study_dir={tmp_path}", *_paths(shared_data),
                                              "report.baseline={n_levels: 2}"]), fresh=False)
    assert os.path.exists(store.path("study.json"))


def test_a_trial_trained_under_another_base_config_is_not_reused(shared_data, tmp_path) -> None:
    """--fresh after a change to the base config: a completed trial whose recorded run differs must
    be trained again, not re-reported; an option added to synrank later, at its default, is no
    change; where the trial runs (runtime) is none either."""
    from synrank.study.config import absolutize
    from synrank.study.load import load_study
    from synrank.study.space import expand
    from synrank.study.store import StudyStore
    from synrank.study.trial import TRIAL, trained_differently

    def first(*overrides: str):
        study = absolutize(load_study(TINY, [f"study_dir={tmp_path}", *_paths(shared_data), *overrides]))
        spec = expand(study)[0]
        return spec, spec.run_config(study.base)

    store = StudyStore(str(tmp_path))
    spec, run = first()
    recorded = run.model_dump(mode="json")
    store.write_json({"trial_id": spec.trial_id, "run": recorded}, store.trial_file(spec.trial_id, TRIAL))
    assert trained_differently(store, spec.trial_id, run) == []
    assert trained_differently(store, spec.trial_id, first("base.train.lr=1.0e-4")[1]) == ["train.lr"]
    assert trained_differently(store, spec.trial_id, first("base.groups.require_positive=true")[1]) == [
        "groups.require_positive"]
    assert trained_differently(store, spec.trial_id, first("base.runtime.num_cpus=1")[1]) == []

    older = json.loads(json.dumps(recorded))
    del older["groups"]["require_positive"]  # written before the option existed
    store.write_json({"trial_id": spec.trial_id, "run": older}, store.trial_file(spec.trial_id, TRIAL))
    assert trained_differently(store, spec.trial_id, run) == []
    assert trained_differently(store, spec.trial_id, first("base.groups.require_positive=true")[1]) == [
        "groups.require_positive"]
