"""Autoscaling from zero: the demo pipeline on a cluster that starts with no worker node.

Ray's fake multi-node autoscaler (tests/fixtures_autoscaling.py) runs the real autoscaler against
node types that mirror cluster.yaml: a head with no CPU, and generation, training and CPU worker
types that scale from zero. What is faked, because there is one machine and no GPU: each node is a
set of Ray processes here, and a node type's custom resource (`synrank_generate`, ...) stands in for
its GPUs; the engines are vLLM on CPU. Each stage requests its type's resource
(`runtime.stage_resources`), so the autoscaler must bring up the right type for each stage and take
it down once idle.
"""

from __future__ import annotations

import time

import pytest
import yaml

from fixtures_cluster import REPO, run_synrank
from synrank import storage

pytestmark = pytest.mark.slow

TINY = REPO / "tests" / "configs" / "pipeline-tiny.yaml"

# cluster.yaml's worker types, one machine's worth each; 2 CPUs so an engine (1 CPU) leaves room
# for the Ray Data tasks that feed it. Memory is declared as the AWS provider derives it from the
# instance type: tasks that hold an index request memory, and the autoscaler must know what fits.
GIB = 2**30
NODE_TYPES = {
    "gen_gpu": {"resources": {"CPU": 2, "memory": 8 * GIB, "synrank_generate": 1}, "max_workers": 1},
    "train_gpu": {"resources": {"CPU": 2, "memory": 4 * GIB, "synrank_train": 1}, "max_workers": 1},
    "cpu": {"resources": {"CPU": 2, "memory": 4 * GIB, "synrank_cpu": 1}, "max_workers": 1},
}
STAGE_RESOURCES = {
    "generate": {"synrank_generate": 0.001},
    "train": {"synrank_train": 0.001},
    "encode": {"synrank_train": 0.001},
    "cpu": {"synrank_cpu": 0.001},
}
IDLE_TIMEOUT_MIN = 0.25


def _config(tmp_path) -> str:
    config = yaml.safe_load(TINY.read_text())
    config["run_dir"] = str(tmp_path / "run")
    config["runtime"] = {"stage_resources": STAGE_RESOURCES, "resource_wait_s": 300}
    config["generate"]["max_tokens"] = 48
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_the_demo_pipeline_scales_up_from_zero_the_right_node_types_and_back_down(autoscaling_cluster, tmp_path):
    cluster = autoscaling_cluster(NODE_TYPES, idle_timeout_minutes=IDLE_TIMEOUT_MIN)
    assert cluster.history() == [], "the cluster must start with no worker node"
    started = time.time()
    done = run_synrank(cluster, ["pipeline", "--config", _config(tmp_path)], timeout=1500)
    finished = time.time()
    log = done.stdout[-3000:] + done.stderr[-6000:]
    assert done.returncode == 0, log
    run_dir = str(tmp_path / "run")
    summary = storage.read_json(storage.join(run_dir, "summary.json"))
    assert set(summary["metrics"]) == {"trained", "bm25"}, log

    cluster.wait_until_no_workers(timeout=60 * IDLE_TIMEOUT_MIN + 90)
    history = cluster.history()
    by_type: dict[str, list] = {}
    for node in history:
        by_type.setdefault(node.node_type, []).append(node)
    summary_line = [(n.node_type, round(n.first_alive - started), round(n.last_alive - started)) for n in history]
    # Each stage's node type came up for it, and nothing else did.
    assert set(by_type) == set(NODE_TYPES), f"node types added: {summary_line}\n{log}"
    # A type may come and go more than once (idle between two stages), never above its max_workers.
    assert all(_most_alive_at_once(nodes) <= NODE_TYPES[t]["max_workers"] for t, nodes in by_type.items()), summary_line
    # Generation comes first: its node is up before training's and is released while the pipeline
    # still runs (idle after generation), not only at the end.
    gen, train = by_type["gen_gpu"][0], by_type["train_gpu"][0]
    assert gen.first_alive < train.first_alive, summary_line
    assert gen.last_alive < finished - 5, f"the generation node stayed up until the end: {summary_line}"
    # And once the work is done, every worker node is removed.
    assert not cluster.alive_workers(), summary_line


def _most_alive_at_once(nodes) -> int:
    events = sorted([(n.first_alive, 1) for n in nodes] + [(n.last_alive, -1) for n in nodes],
                    key=lambda e: (e[0], e[1]))  # a node that left as another arrived counts once
    alive = most = 0
    for _, change in events:
        alive += change
        most = max(most, alive)
    return most
