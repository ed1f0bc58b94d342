"""The front door on one machine: `synrank pipeline` killed after training that, rerun, skips
generation and training and finishes evaluation. (`ray job submit` of the same config, on two nodes
and through `--working-dir`, is in tests/test_cluster.py.)

It runs the real stages (vLLM on CPU with SmolLM2, Ray Train, faiss, pytrec_eval) on the tiny
config in tests/configs/pipeline-tiny.yaml.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "pipeline-tiny.yaml"
BIN = Path(sys.executable).parent
STAGES = ("queries", "generate", "collections", "groups", "train", "evaluate")

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    # Any `python` the run starts is this environment's.
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    return env


def _stop(proc: subprocess.Popen, timeout: float = 90) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def assert_complete_run(run_dir: Path) -> None:
    for stage in STAGES:
        marker = run_dir / stage / "_stage.json"
        assert marker.exists(), f"stage {stage} left no marker in {run_dir}"
    assert pq.read_table(run_dir / "queries" / "train.parquet").num_rows == 6
    assert pq.read_table(run_dir / "queries" / "test.parquet").num_rows == 2
    generated = pq.read_table(run_dir / "generate" / "train")
    assert set(generated.column("query_id").to_pylist()) <= set(pq.read_table(run_dir / "queries" / "train.parquet")
                                                               .column("query_id").to_pylist())
    assert pq.read_table(run_dir / "groups" / "groups.parquet").num_rows > 0
    model = run_dir / "train" / "model"
    assert (model / "modules.json").exists() and (model / "model.safetensors").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = summary["metrics"]
    assert set(metrics) == {"trained", "bm25"}
    for system in metrics.values():
        (values,) = system.values()  # one collection: the synthetic test collection
        assert 0.0 <= values["ndcg@10"] <= 1.0
    assert "| trained | synthetic-test |" in (run_dir / "summary.md").read_text()


def test_pipeline_killed_after_training_resumes_with_evaluation_only(tmp_path):
    env = _env()
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "synrank", "pipeline", "--config", str(TINY), f"run_dir={run_dir}"]
    first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    train_marker = run_dir / "train" / "_stage.json"
    try:
        deadline = time.time() + 1200
        while not train_marker.exists():
            assert first.poll() is None, "the first run ended before training finished"
            assert time.time() < deadline, "training did not finish in time"
            time.sleep(0.5)
        # As a crash would: no clean-up. Ray's and vLLM's processes are killed with the driver; they
        # run in process groups of their own, so they are collected first.
        family = psutil.Process(first.pid).children(recursive=True)
        os.killpg(first.pid, signal.SIGKILL)
        for proc in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        first.wait(30)
    finally:
        _stop(first)
    assert not (run_dir / "summary.json").exists(), "killed too late: the first run already finished"
    trained_at = train_marker.stat().st_mtime

    second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0, second.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["stages"]}
    assert status["generate"] == "skipped" and status["train"] == "skipped" and status["groups"] == "skipped"
    assert status["evaluate"] == "ran"
    assert train_marker.stat().st_mtime == trained_at
    assert_complete_run(run_dir)
