"""The tiny pipeline with ``run_dir=s3://...`` on one embedded Ray node: every stage's output lands in
the bucket (a real S3 server on 127.0.0.1), nothing in the working directory, and a rerun skips
every stage. The multi-node ``ray job submit`` version lives with the cluster tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synrank import storage

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "pipeline-tiny.yaml"
STAGES = ("queries", "generate", "collections", "groups", "train", "evaluate")

pytestmark = pytest.mark.slow


def _run(run_dir: str, cwd: Path, s3_server) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", **s3_server.env)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "synrank", "pipeline", "--config", str(TINY), f"run_dir={run_dir}"],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=1500)


def _all_files(url: str) -> list[str]:
    fs, root = storage.filesystem(url)
    return sorted(p[len(root.rstrip("/")) + 1:] for p in fs.find(root))


def test_pipeline_writes_everything_to_s3_and_resumes(s3_server, tmp_path):
    run_dir = s3_server.fresh_url("pipeline")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    repo_before = sorted(os.listdir(REPO))

    first = _run(run_dir, cwd, s3_server)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]

    files = _all_files(run_dir)
    for stage in STAGES:
        assert f"{stage}/_stage.json" in files, f"no marker for {stage}: {files}"
    for expected in ("config.yaml", "summary.json", "summary.md", "queries/train.parquet", "queries/test.parquet",
                     "groups/groups.parquet", "train/model/model.safetensors", "train/model/modules.json",
                     "train/curve.png", "train/curve.json", "collections/synthetic-test/corpus.parquet",
                     "evaluate/metrics.json", "evaluate/trained/synthetic-test/run.trec"):
        assert expected in files, f"{expected} missing from {run_dir}: {files}"
    assert any(f.startswith("generate/train/part-") for f in files)
    assert any(f.startswith("train/ray/") and "/checkpoint_" in f for f in files), "no Ray Train checkpoint in S3"
    assert storage.read_parquet(storage.join(run_dir, "queries", "train.parquet")).num_rows == 6
    summary = storage.read_json(storage.join(run_dir, "summary.json"))
    assert set(summary["metrics"]) == {"trained", "bm25"}
    marker = storage.read_json(storage.join(run_dir, "train", "_stage.json"))
    assert marker["outputs"]["model"] == f"{run_dir}/train/model"

    assert os.listdir(cwd) == [], f"the run wrote into its working directory: {os.listdir(cwd)}"
    assert sorted(os.listdir(REPO)) == repo_before

    second = _run(run_dir, cwd, s3_server)
    assert second.returncode == 0, second.stderr[-5000:]
    rerun = storage.read_json(storage.join(run_dir, "summary.json"))
    assert {s["name"]: s["status"] for s in rerun["stages"]} == {s: "skipped" for s in STAGES}
    assert rerun["metrics"] == json.loads(json.dumps(summary["metrics"]))
    assert os.listdir(cwd) == []
