"""The cluster path, on several Ray nodes of this one machine (loopback) and a real S3-compatible
server (moto, on 127.0.0.1): `ray job submit` of the pipeline with its run directory in the
bucket (its rerun through `--working-dir` and jobs/pipeline.py), and a worker node lost while
generation on two 1-CPU nodes, training or a study runs.

What is simulated and why: the nodes are `ray start` process groups on one machine (there is one
machine), a node's loss is SIGKILL of its whole process tree, the autoscaler's replacement node is
a `cluster.add_node()` in the test, and S3 is moto (there is no cloud). Everything else is real:
Ray, vLLM on CPU with SmolLM2, Ray Train, Ray Tune, s3fs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from fixtures_cluster import REPO, start_synrank, stop_process
from synrank import storage
from synrank.data import schemas
from synrank.generate.pipeline import expected_doc_ids

pytestmark = pytest.mark.slow

TINY = REPO / "tests" / "configs" / "pipeline-tiny.yaml"
STUDY_TINY = REPO / "jobs" / "configs" / "study-tiny.yaml"
DEMO_QUERIES = REPO / "synrank" / "resources" / "demo_queries.jsonl"
STAGES = ("queries", "generate", "collections", "groups", "train", "evaluate")
GEN_SETTINGS = ["generate.max_tokens=48", "generate.min_words=4", "generate.max_retries=1",
                "generate.fidelity_queries=0"]


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver ended (rc {proc.returncode}) before {what}:\n"
                                 f"{log.read_text()[-4000:] if log else ''}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:] if log else ''}")
        time.sleep(0.5)


def _untracked_files() -> set[str]:
    """Files in the working tree that git does not track (ignored ones included), less the venv
    and caches: what a run that writes into the working tree would add."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--ignored"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    paths = {line[3:].strip('"') for line in out.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not p.startswith((".venv", ".pytest_cache", ".hypothesis")) and "__pycache__" not in p}


def assert_exact_generation(out: str, query_ids: list[str], n_levels: int = 4) -> pa.Table:
    """Every expected passage exactly once, as a row or as its final rejection; none twice."""
    passages = storage.read_parquet(out, schema=schemas.SYNTHETIC_PASSAGES)
    ids = passages.column("doc_id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicated passages"
    errors = storage.read_parquet(storage.join(out, "_errors"))
    final = set(errors.filter(errors.column("final")).column("doc_id").to_pylist()) if errors.num_rows else set()
    assert not final & set(ids)
    model = passages.column("model")[0].as_py()
    assert set(ids) | final == expected_doc_ids(query_ids, n_levels, 1, model, "v1")
    assert passages.num_rows >= len(expected_doc_ids(query_ids, n_levels, 1, model, "v1")) // 2
    return passages


def _demo_ids(limit: int) -> list[str]:
    from synrank.data.readers import read_queries

    return read_queries(str(DEMO_QUERIES)).column("query_id").to_pylist()[:limit]


# ------------------------------------------------------------------------------------------------


def test_job_submit_runs_the_pipeline_on_two_nodes_into_s3_and_a_working_dir_rerun_skips_every_stage(local_cluster, s3_server):
    cluster = local_cluster(head_cpus=1, env=s3_server.env)
    cluster.add_node(num_cpus=1)
    run_dir = s3_server.url("job-run")
    before = _untracked_files()
    # No --working-dir: every node runs the synrank installed on it (as cluster.yaml's setup does);
    # the job only names its config and run directory (see the README's cluster section).
    submit = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", cluster.dashboard_url,
              "--runtime-env-json", json.dumps({"env_vars": s3_server.env}), "--",
              sys.executable, "-m", "synrank", "pipeline", "--config", str(TINY), f"run_dir={run_dir}"]
    first = subprocess.run(submit, env=cluster.env, cwd="/", capture_output=True, text=True, timeout=1500)
    log = first.stdout[-6000:] + first.stderr[-3000:]
    assert first.returncode == 0 and "succeeded" in first.stdout.lower(), log
    for stage in STAGES:
        assert storage.exists(storage.join(run_dir, stage, "_stage.json")), f"no marker for {stage}\n{log}"
    assert storage.read_parquet(storage.join(run_dir, "queries", "train.parquet")).num_rows == 6
    assert storage.read_parquet(storage.join(run_dir, "generate", "train"),
                                schema=schemas.SYNTHETIC_PASSAGES).num_rows > 0
    assert storage.exists(storage.join(run_dir, "train", "model", "model.safetensors"))
    summary = storage.read_json(storage.join(run_dir, "summary.json"))
    assert set(summary["metrics"]) == {"trained", "bm25"}
    assert _untracked_files() - before == set(), "the job wrote into the working tree"

    # The rerun takes the one-machine route: jobs/submit.sh, the working directory uploaded under
    # jobs/runtime_env.yaml's excludes, jobs/pipeline.py. It finds the bucket's stages done.
    rerun = [str(REPO / "jobs" / "submit.sh"), "--address", cluster.dashboard_url, "--working-dir", str(REPO), "--",
             "python", "jobs/pipeline.py", "--config", "tests/configs/pipeline-tiny.yaml", f"run_dir={run_dir}"]
    second = subprocess.run(rerun, env=cluster.env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0 and "succeeded" in second.stdout.lower(), second.stdout[-4000:] + second.stderr[-2000:]
    assert "Uploading package" in second.stdout + second.stderr, second.stdout[-2000:] + second.stderr[-2000:]
    summary = storage.read_json(storage.join(run_dir, "summary.json"))
    assert {s["name"]: s["status"] for s in summary["stages"]} == {s: "skipped" for s in STAGES}


def test_a_worker_node_lost_while_generating_loses_and_duplicates_nothing(local_cluster, s3_server, tmp_path):
    """Two engines, one per 1-CPU node, write shards (they must leave CPU for the Ray Data tasks
    that feed them, or no shard is ever written); then the worker node dies and the run ends on
    the head with every passage exactly once."""
    cluster = local_cluster(head_cpus=1, env=s3_server.env)
    worker = cluster.add_node(num_cpus=1)
    out = s3_server.url("gen-node-loss")
    log = tmp_path / "driver.log"
    proc = start_synrank(cluster, ["generate", "--queries", str(DEMO_QUERIES), "--out", out, "--limit", "16",
                                   "generate.shard_size=2", *GEN_SETTINGS], log)
    try:
        # Both engines up and the first shard written: the worker's engine has work in flight.
        _wait_for(lambda: "shard " in log.read_text() and any(n.startswith("part-") for n in storage.listdir(out)),
                  600, "the first shard", proc, log)
        assert "starting 2 cpu engine(s)" in log.read_text(), log.read_text()[-4000:]
        cluster.remove_node(worker)
        proc.wait(900)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, log.read_text()[-5000:]
    assert_exact_generation(out, _demo_ids(16))


def _human_groups(s3_server, shared_data) -> str:
    from synrank.config import GroupsConfig, QuerySplitConfig
    from synrank.data.groups import build_groups, write_groups

    cfg = GroupsConfig(source="human", collection=str(shared_data / "cranfield"), qrels_split="test",
                       query_split=QuerySplitConfig(train_fraction=0.5, seed=13), qrels_levels=5, n_levels=4,
                       group_size=4, bm25_negatives=8, limit=64)
    table, stats = build_groups(cfg)
    path = s3_server.url("groups/groups.parquet")
    write_groups(table, path, stats)
    return path


def test_a_worker_node_lost_while_training_resumes_from_the_bucket(local_cluster, s3_server, shared_data, tmp_path):
    """The Train worker runs on the only CPU node; it dies, a replacement node comes up, and Ray
    Train restores the last checkpoint from S3 and finishes with exactly max_steps steps."""
    groups = _human_groups(s3_server, shared_data)
    cluster = local_cluster(head_cpus=0, env=s3_server.env)
    worker = cluster.add_node(num_cpus=1)
    out = s3_server.url("train-node-loss")
    steps = 24
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({"train": {
        "groups": groups, "out": out, "loss": "infonce", "batch_size": 4, "max_steps": steps, "checkpoint_every": 4,
        "keep_checkpoints": 2, "max_failures": 3, "lr": 3e-5, "num_workers": 1, "cpus_per_worker": 1,
        "encoder": {"max_query_length": 24, "max_passage_length": 48}}}))
    log = tmp_path / "driver.log"
    proc = start_synrank(cluster, ["train", "--config", str(config)], log)
    try:
        # Two checkpoint folders: the first one is complete and reported (a node lost while the
        # first is being written rightly restarts from step 0).
        _wait_for(lambda: sum(name.startswith("checkpoint_") for name in
                              storage.listdir(storage.join(out, "ray", "train"))) >= 2, 600, "checkpoints in S3",
                  proc, log)
        cluster.remove_node(worker)
        cluster.add_node(num_cpus=1)
        proc.wait(900)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, log.read_text()[-5000:]
    curve = storage.read_json(storage.join(out, "curve.json"))
    assert [s["step"] for s in curve["steps"]] == list(range(1, steps + 1))
    text = log.read_text()
    # The train command's closing JSON; Ray's log lines from the workers may still arrive after it.
    printed, _ = json.JSONDecoder().raw_decode(text[text.rindex("{\n"):])
    assert printed["steps"] == steps
    assert printed["resumed_from"] and all(0 < s < steps for s in printed["resumed_from"]), text[-3000:]
    # Once per resume: with nodes sharing a temp dir every node's log monitor forwarded it.
    assert text.count("resumed from the checkpoint") == len(printed["resumed_from"]), text[-3000:]
    assert storage.exists(storage.join(out, "model", "model.safetensors"))


def test_a_node_lost_while_a_study_runs_retries_the_trial_and_completes_it(
        local_cluster, s3_server, tmp_path):
    cluster = local_cluster(head_cpus=0, env=s3_server.env)
    worker = cluster.add_node(num_cpus=1)
    study_dir = s3_server.url("study-node-loss")
    log = tmp_path / "driver.log"
    proc = start_synrank(cluster, ["study", "--config", str(STUDY_TINY), f"study_dir={study_dir}",
                                   "trial_retries=2", "base.runtime.num_cpus=null", "base.train.max_steps=12",
                                   "base.train.checkpoint_every=2", "space.n_levels=[4]", "space.losses=[infonce]",
                                   "report.references=[]"], log)
    train_dir = storage.join(study_dir, "train")

    def checkpointed() -> bool:
        return any(name.startswith("checkpoint_") for trial in storage.listdir(train_dir)
                   for name in storage.listdir(storage.join(train_dir, trial)))

    try:
        # Kill while the trial trains (it has a checkpoint), not while its worker group starts.
        _wait_for(checkpointed, 600, "the trial's first checkpoint", proc, log)
        cluster.remove_node(worker)
        # Two CPUs, as an autoscaler would add for the pending demand: a worker group lost while
        # it started can leave its placement group holding a CPU for a while (Ray Train 2.60).
        cluster.add_node(num_cpus=2)
        proc.wait(900)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, log.read_text()[-5000:]
    statuses = {}
    for name in storage.listdir(storage.join(study_dir, "trials")):
        status = storage.read_json(storage.join(study_dir, "trials", name, "status.json"))
        statuses[name] = status["status"]
    assert statuses == {"infonce_L4_human_s0": "completed"}, statuses
    assert storage.read_json(storage.join(study_dir, "trials", "infonce_L4_human_s0", "result.json"))["steps"] == 12
    # The lost node held the trial's Train worker: Ray Train (or Tune) retried it.
    assert "RETRY" in log.read_text() or "Trial task failed" in log.read_text()
