"""The study report from trial files written by hand (no Ray): its numbers are recomputed here
from the per-trial files, independently of synrank.study.report."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from synrank.evaluate.compare import holm, paired_ttest, randomization_test

MEASURES = ["ndcg@10", "recall@100", "mrr@10"]


# --------------------------------------------------------------------------------------------------
# an independent recomputation, shared with tests/test_study_e2e.py


def _read(path: Path):
    return json.loads(path.read_text())


def _completed(study_dir: Path) -> dict[str, list[dict]]:
    """{config_id: [result.json of each completed seed]}"""
    out: dict[str, list[dict]] = {}
    for trial in sorted((study_dir / "trials").iterdir()):
        meta = _read(trial / "trial.json")
        out.setdefault(meta["config_id"], [])
        res = trial / "result.json"
        if res.exists() and _read(res)["status"] == "completed":
            out[meta["config_id"]].append(_read(res))
    return out


def _seed_mean_per_query(study_dir: Path, results: list[dict], coll: str, measure: str) -> dict[str, float]:
    per_seed = [{q: v[measure] for q, v in _read(study_dir / "trials" / r["trial_id"] / "per_query" / "test" / f"{coll}.json").items()}
                for r in results]
    common = set(per_seed[0]).intersection(*per_seed[1:])
    return {q: float(np.mean([s[q] for s in per_seed])) for q in common}


def check_report_matches_trials(study_dir: Path, baseline_axis: str = "loss", baseline_value: str = "infonce",
                                test: str = "randomization", resamples: int = 10_000) -> list[dict[str, str]]:
    """Assert that results.csv equals what the trial files say; returns the CSV rows."""
    study_dir = Path(study_dir)
    study = yaml.safe_load((study_dir / "study.yaml").read_text())
    colls = [c.get("name") or Path(c["path"]).name for c in study["test"]]
    measures = study["report"]["measures"]
    rows = [r for r in csv.DictReader((study_dir / "report" / "results.csv").open()) if not r.get("reference")]
    completed = _completed(study_dir)
    assert sorted(r["config_id"] for r in rows) == sorted(completed), "one row per configuration"
    by_id = {r["config_id"]: r for r in rows}
    axes = {cid: _read(next(p for p in (study_dir / "trials").iterdir()
                            if _read(p / "trial.json")["config_id"] == cid) / "trial.json")["axes"]
            for cid in completed}

    def close(a: str, b: float) -> None:
        if math.isnan(b):
            assert a == "", (a, b)
        else:
            assert float(a) == pytest.approx(b, rel=1e-9, abs=1e-12), (a, b)

    for cid, results in completed.items():
        row = by_id[cid]
        assert int(row["seeds_completed"]) == len(results)
        for m in measures:
            for coll in colls + ["average"]:
                if coll == "average":
                    vals = [float(np.mean([r["metrics"]["test"][c][m] for c in colls])) for r in results]
                else:
                    vals = [r["metrics"]["test"][coll][m] for r in results]
                    # the result's means are the means of its per-query file
                    for r in results:
                        pq = _read(study_dir / "trials" / r["trial_id"] / "per_query" / "test" / f"{coll}.json")
                        assert r["metrics"]["test"][coll][m] == pytest.approx(np.mean([v[m] for v in pq.values()]))
                prefix = f"test/{coll}/{m}"
                if not vals:
                    assert row[f"{prefix}/mean"] == ""
                    continue
                close(row[f"{prefix}/mean"], float(np.mean(vals)))
                if len(vals) > 1:
                    half = stats.t.ppf(0.975, len(vals) - 1) * np.std(vals, ddof=1) / math.sqrt(len(vals))
                    close(row[f"{prefix}/ci_low"], float(np.mean(vals) - half))
                    close(row[f"{prefix}/ci_high"], float(np.mean(vals) + half))
                else:
                    assert row[f"{prefix}/ci_low"] == row[f"{prefix}/ci_high"] == ""

    # significance against the configuration that differs only in the baseline axis
    for coll in colls:
        for m in measures:
            family = []
            for cid, results in completed.items():
                a = axes[cid]
                if a[baseline_axis] == baseline_value or not results:
                    continue
                want = {**a, baseline_axis: baseline_value}
                base = [b for b in completed if axes[b] == want and completed[b]]
                if not base:
                    continue
                x = _seed_mean_per_query(study_dir, results, coll, m)
                y = _seed_mean_per_query(study_dir, completed[base[0]], coll, m)
                qs = sorted(set(x) & set(y))
                xa, ya = np.array([x[q] for q in qs]), np.array([y[q] for q in qs])
                p = paired_ttest(xa, ya) if test == "ttest" else randomization_test(xa, ya, n_resamples=resamples, seed=0)
                family.append((cid, base[0], float(xa.mean() - ya.mean()), p))
            for (cid, base, delta, p), ph in zip(family, holm([f[3] for f in family])):
                row = by_id[cid]
                prefix = f"test/{coll}/{m}"
                assert row[f"{prefix}/baseline"] == base
                close(row[f"{prefix}/delta"], delta)
                close(row[f"{prefix}/p"], p)
                close(row[f"{prefix}/p_holm"], ph)
                assert row[f"{prefix}/significant"] == str(ph < 0.05)
    return rows


# --------------------------------------------------------------------------------------------------
# a hand-made study directory


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _make_study(root: Path, shared_data: Path) -> Path:
    from synrank.config import to_yaml
    from synrank.study.load import load_study

    study = load_study(Path(__file__).resolve().parents[1] / "jobs" / "configs" / "study-tiny.yaml", [
        f"study_dir={root}", f"base.groups.collection={shared_data / 'cranfield'}",
        "space.seeds=[0,1,2]", "report.references=[]",  # reference systems: tests/test_study_e2e.py
        f"test=[{{path: {shared_data / 'cranfield'}, name: colla}}, {{path: {shared_data / 'med'}, name: collb}}]",
    ])
    (root).mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text(to_yaml(study))
    rng = np.random.default_rng(0)
    queries = {"colla": [f"a{i}" for i in range(40)], "collb": [f"b{i}" for i in range(25)]}
    base_q = {c: {q: rng.uniform(0.1, 0.7, size=3) for q in qs} for c, qs in queries.items()}
    shift = {"infonce": 0.0, "wasserstein": 0.12}
    for loss in ("infonce", "wasserstein"):
        for levels in (2, 4):
            cid = f"{loss}_L{levels}_human"
            for seed in (0, 1, 2):
                tid = f"{cid}_s{seed}"
                tdir = root / "trials" / tid
                axes = {"loss": loss, "n_levels": levels, "source": "human"}
                _write(tdir / "trial.json", {"trial_id": tid, "config_id": cid, "axes": axes, "seed": seed})
                if loss == "wasserstein" and levels == 4 and seed == 2:
                    _write(tdir / "status.json", {"status": "failed", "error": "RuntimeError: boom at step 1\ntrace"})
                    (tdir / "error.txt").write_text("RuntimeError: boom at step 1\n")
                    continue
                metrics = {}
                for coll, qs in queries.items():
                    noise = rng.normal(0, 0.05, size=(len(qs), 3))
                    pq = {q: {m: float(np.clip(base_q[coll][q][j] + shift[loss] * (coll == "colla") + noise[i, j]
                                               + 0.01 * levels, 0, 1))
                              for j, m in enumerate(MEASURES)} for i, q in enumerate(qs)}
                    _write(tdir / "per_query" / "test" / f"{coll}.json", pq)
                    metrics[coll] = {m: float(np.mean([v[m] for v in pq.values()])) for m in MEASURES}
                history = [{"step": s + 1, "loss": float(3.0 / (s + 1) + 0.1 * seed + (1.0 if loss == "infonce" else 0.0)),
                            "lr": 1e-5} for s in range(12)]
                _write(tdir / "history.json", {"steps": history})
                _write(tdir / "result.json", {"status": "completed", "trial_id": tid, "config_id": cid, "axes": axes,
                                              "seed": seed, "metrics": {"test": metrics},
                                              "num_queries": {"test": {c: len(q) for c, q in queries.items()}},
                                              "flat": {f"test/{c}/{m}": v for c, mm in metrics.items() for m, v in mm.items()},
                                              "steps": 12, "final_loss": history[-1]["loss"]})
    return root


def test_report_numbers_equal_the_trial_files(tmp_path, shared_data) -> None:
    from synrank.study.report import write_report

    root = _make_study(tmp_path / "study", shared_data)
    paths = write_report(str(root))
    rows = check_report_matches_trials(root)
    assert len(rows) == 4
    by = {r["config_id"]: r for r in rows}
    # wasserstein is 0.12 better on colla on every query: significant after Holm; infonce is the baseline
    assert by["wasserstein_L2_human"]["test/colla/ndcg@10/significant"] == "True"
    assert by["wasserstein_L2_human"]["test/collb/ndcg@10/significant"] == "False"
    assert by["infonce_L2_human"]["test/colla/ndcg@10/baseline"] == "infonce_L2_human"
    assert by["infonce_L2_human"]["test/colla/ndcg@10/p"] == ""
    assert by["wasserstein_L4_human"]["seeds_completed"] == "2" and by["wasserstein_L4_human"]["seeds_failed"] == "1"

    md = Path(paths["markdown"]).read_text()
    assert "| objective | levels | labels | seeds | colla | collb | average |" in md
    row = next(line for line in md.splitlines() if line.startswith("| wasserstein | 2 |"))
    assert "▲" in row.split("|")[5] and "▲" not in row.split("|")[6]
    assert "wasserstein_L4_human_s2 | failed | RuntimeError: boom at step 1" in md
    assert md.index("| wasserstein | 2 |") < md.index("| infonce | 2 |")  # sorted by the average
    trials = list(csv.DictReader(open(paths["trials_csv"])))
    assert len(trials) == 12 and sum(t["status"] == "failed" for t in trials) == 1
    for name in ("ndcg10_by_objective.png", "heatmap_objective_levels.png", "training_curves.png"):
        png = root / "report" / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name
        assert f"plots/{name}" in md


def test_report_with_a_ttest_and_another_baseline(tmp_path, shared_data) -> None:
    from synrank.study.report import load_saved_study, write_report
    from synrank.study.store import StudyStore

    root = _make_study(tmp_path / "study", shared_data)
    study = load_saved_study(StudyStore(str(root)), ["report.test=ttest", "report.baseline={n_levels: 2}"])
    write_report(str(root), study)
    rows = check_report_matches_trials(root, baseline_axis="n_levels", baseline_value=2, test="ttest")
    by = {r["config_id"]: r for r in rows}
    assert by["infonce_L4_human"]["test/colla/ndcg@10/baseline"] == "infonce_L2_human"


def test_report_cli_and_errors(tmp_path, shared_data, capsys) -> None:
    from synrank.cli import main

    assert main(["study", "report", str(tmp_path / "nothing")]) == 2
    assert "not a study directory" in capsys.readouterr().err
    root = _make_study(tmp_path / "study", shared_data)
    assert main(["study", "report", str(root), "report.measure=mrr@10"]) == 0
    assert (root / "report" / "plots" / "mrr10_by_objective.png").exists()
    assert "MRR@10" in (root / "report" / "report.md").read_text()
    assert main(["study", "report", str(root), "report.nosuch=1"]) == 2
    assert "unknown key 'report.nosuch'" in capsys.readouterr().err


def test_mean_ci_and_baseline_matching() -> None:
    from synrank.study.report import Configuration, find_baseline, mean_ci

    m, lo, hi = mean_ci([0.3, 0.4, 0.5])
    assert m == pytest.approx(0.4) and lo == pytest.approx(0.4 - 4.302652729911275 * 0.1 / math.sqrt(3))
    assert all(math.isnan(x) for x in mean_ci([0.3])[1:])
    configs = [Configuration(f"{l}_{n}", {"loss": l, "n_levels": n, "source": "human"}, [])
               for l in ("infonce", "kl(temperature=0.1)") for n in (2, 4)]
    kl4 = configs[3]
    assert find_baseline(kl4, configs, {"loss": "infonce"}).config_id == "infonce_4"
    assert find_baseline(kl4, configs, {"n_levels": 2}).config_id == "kl(temperature=0.1)_2"
    assert find_baseline(configs[0], configs, {"loss": "infonce"}) is configs[0]
    assert find_baseline(kl4, configs, {"source": "synthetic"}) is None
    assert find_baseline(kl4, configs, {"loss": "kl"}) is kl4  # a loss matches its labelled variants


def test_report_of_a_study_directory_behind_an_fsspec_url(tmp_path, shared_data) -> None:
    """The study directory may be any fsspec URL: the report reads and writes only through fsspec."""
    import fsspec

    from synrank.study.report import write_report

    local = _make_study(tmp_path / "study", shared_data)
    fs = fsspec.filesystem("memory")
    root = "memory://synrank-test/study"
    fs.put(str(local) + "/", "/synrank-test/study", recursive=True)
    try:
        paths = write_report(root)
        assert paths["markdown"] == f"{root}/report/report.md"
        md = fs.cat_file("/synrank-test/study/report/report.md").decode()
        assert "![Training curves](plots/training_curves.png)" in md
        assert fs.cat_file("/synrank-test/study/report/plots/heatmap_objective_levels.png")[:4] == b"\x89PNG"
        remote_csv = fs.cat_file("/synrank-test/study/report/results.csv").decode()
        write_report(str(local))
        assert remote_csv == (local / "report" / "results.csv").read_text()
    finally:
        fs.rm("/synrank-test", recursive=True)
