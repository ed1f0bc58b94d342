"""The front door: `synrank pipeline` end to end through `ray job submit` on a local cluster, and a
pipeline killed after training that, rerun, skips generation and training and finishes evaluation.

Both run the real stages (vLLM on CPU with SmolLM2, Ray Train, faiss, pytrec_eval) on the tiny
config in tests/configs/pipeline-tiny.yaml.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
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
    # The job's `python` is whatever the head's PATH finds first: make it this environment's.
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def test_ray_job_submit_runs_the_pipeline_on_a_local_cluster(tmp_path):
    env = _env()
    gcs_port, dash_port = _free_port(), _free_port()
    # The test session's own embedded Ray already holds the agents' default ports (52365 and
    # friends); a second head on the same box whose agent cannot bind them never registers an
    # agent, and every submission answers "No available agent". So the head gets free ones.
    agent_ports = [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
                   f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"]
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
         "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
         *agent_ports, "--disable-usage-stats", "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    run_dir = tmp_path / "run"
    try:
        submit = [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash_port}",
                  "--working-dir", str(REPO), "--runtime-env", str(REPO / "jobs" / "runtime_env.yaml"), "--",
                  "python", "jobs/pipeline.py", "--config", "tests/configs/pipeline-tiny.yaml", f"run_dir={run_dir}"]
        deadline = time.time() + 300
        while True:
            out = subprocess.run(submit, env=env, cwd=REPO, capture_output=True, text=True, timeout=1500)
            accepted = "Job 'raysubmit_" in out.stdout
            # The job API and its agent come up some seconds after the head (minutes on a loaded
            # box); until then submission is refused or times out. A job once accepted is final.
            if out.returncode == 0 or accepted or time.time() > deadline:
                break
            time.sleep(5)
        log = out.stdout[-6000:] + out.stderr[-3000:]
        assert out.returncode == 0, log
        assert "Job 'raysubmit_" in out.stdout and "succeeded" in out.stdout.lower(), log
        assert_complete_run(run_dir)
    finally:
        _stop(head)


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
