"""A stage whose nodes are not up waits for them, and fails naming what is missing when none comes
(`runtime.resource_wait_s`); the custom resources a config gives each kind of work reach the
work's Ray options. Runs on the test session's embedded Ray, which has no autoscaler: a request
for a node type it lacks can never be met (tests/test_autoscaling.py shows one being met)."""

from __future__ import annotations

import time

import pytest

from synrank import runtime
from synrank.llm.engine import EngineSpec
from synrank.llm.pool import EnginePool


@pytest.fixture
def stage_resources():
    """Set stage resources for one test; restored afterwards."""
    before = runtime.stage_resources()

    def set_(resources):
        runtime.set_stage_resources(resources)

    yield set_
    runtime.set_stage_resources(before)


def test_stage_options_carry_the_configured_custom_resources(stage_resources):
    stage_resources({"generate": {"synrank_generate": 0.001}})
    assert runtime.stage_options("generate") == {"resources": {"synrank_generate": 0.001}}
    assert runtime.stage_options("train") == {}
    with pytest.raises(ValueError, match="unknown stage kind 'gpu'"):
        runtime.stage_options("gpu")


@pytest.mark.parametrize("bad, message", [
    ({"gpu": {"x": 1}}, "unknown kind"),
    ({"train": {"GPU": 1}}, "runtime.stage_resources.train.GPU"),
    ({"cpu": {"synrank_cpu": 0}}, "runtime.stage_resources.cpu.synrank_cpu"),
])
def test_bad_stage_resources_are_refused_naming_the_key(bad, message):
    with pytest.raises(ValueError, match=message):
        runtime.set_stage_resources(bad)


def test_waiting_for_a_node_type_that_never_comes_names_the_missing_resource(ray_session):
    started = time.monotonic()
    with pytest.raises(runtime.ResourceWaitError) as err:
        runtime.wait_for_node({"CPU": 1, "synrank_generate": 0.001}, "test stage", timeout_s=2, poll_s=0.2)
    assert 2 <= time.monotonic() - started < 10
    text = str(err.value)
    assert "test stage needs a node with {CPU: 1, synrank_generate: 0.001}" in text
    assert "Missing: synrank_generate." in text and "runtime.resource_wait_s" in text


def test_waiting_ends_as_soon_as_a_fitting_node_is_up(ray_session):
    started = time.monotonic()
    runtime.wait_for_node({"CPU": 1}, "test stage", timeout_s=30)
    assert time.monotonic() - started < 2


def test_an_engine_pool_waits_for_its_node_type_then_fails_clearly_and_leaves_no_engine(ray_session, stage_resources):
    import ray._private.state as state

    stage_resources({"generate": {"synrank_generate": 0.001}})
    engines_before = _engine_actors(state)
    with pytest.raises(runtime.ResourceWaitError, match="engine pool .* synrank_generate"):
        EnginePool.start(EngineSpec(model="default"), resource_wait_s=2)
    assert _engine_actors(state) == engines_before


def _engine_actors(state) -> int:
    return sum(1 for a in state.actors().values()
               if str(a.get("ActorClassName", "")).endswith("EngineActor") and a.get("State") != "DEAD")


@pytest.fixture
def short_wait():
    runtime.set_resource_wait(2)
    yield
    runtime.set_resource_wait(runtime.DEFAULT_RESOURCE_WAIT_S)


def test_training_whose_node_type_never_comes_fails_naming_it(ray_session, stage_resources, short_wait, tmp_path):
    from synrank.config import TrainConfig
    from synrank.train.trainer import fit

    import pyarrow as pa

    from synrank.data import schemas
    from synrank.data.groups import write_groups

    groups = str(tmp_path / "groups.parquet")
    write_groups(pa.table({
        "query_id": ["1", "2"], "query": ["shock waves", "boundary layers"],
        "doc_ids": [["a", "b"], ["c", "d"]], "texts": [["shock wave text", "other"], ["boundary layer", "other"]],
        "grades": [[1.0, 0.0], [1.0, 0.0]], "sources": [["human", "bm25"], ["human", "bm25"]],
    }, schema=schemas.TRAINING_GROUPS), groups)
    stage_resources({"train": {"synrank_train": 0.001}})
    with pytest.raises(runtime.ResourceWaitError, match=r"training \(1 worker\(s\)\) needs a node with .*synrank_train"):
        fit(TrainConfig(max_steps=1, batch_size=1), groups, str(tmp_path / "out"))


def test_evaluation_encoding_whose_node_type_never_comes_fails_naming_it(ray_session, stage_resources, short_wait,
                                                                        tmp_path):
    from synrank.evaluate.encode import EncodeSource, encode_sources

    stage_resources({"encode": {"synrank_train": 0.001}})
    source = EncodeSource("q", str(tmp_path / "emb"), ["1"], ["what is a shock wave"], None, 0)
    with pytest.raises(runtime.ResourceWaitError, match="evaluation encoding .* synrank_train"):
        encode_sources([source], "default", num_encoders=1, progress=False)


def _requested_bundles() -> list[dict]:
    """The resource request the (v1) autoscaler would read now."""
    import json

    from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(raw) if raw else []


def test_a_stage_request_outlives_ray_datas_autoscaling_ticks(ray_session):
    """Ray keeps one resource request per cluster, and Ray Data's coordinator re-sends its own every
    20 s once any dataset has run. A stage waiting for its node must still be asking for it after
    such a tick (a plain SDK request was wiped here, and the autoscaling test's evaluation once
    waited 300 s for a node nobody was asking for). No autoscaler reads the request on this Ray."""
    import threading

    import ray

    ray.data.range(8).map_batches(lambda b: b).materialize()  # starts Ray Data's coordinator
    request = {"CPU": 1, "synrank_cpu": 0.001}
    failed = []
    waiter = threading.Thread(target=lambda: failed.append(
        pytest.raises(runtime.ResourceWaitError, runtime.ensure_node, request, "test stage", timeout_s=35)))
    waiter.start()
    seen_after_tick = False
    started = time.monotonic()
    while time.monotonic() - started < 30:
        time.sleep(1)
        present = request in _requested_bundles()
        if time.monotonic() - started > 22:  # the coordinator ticks every 20 s
            seen_after_tick = present
            if not present:
                break
    waiter.join()
    assert seen_after_tick, f"the request was dropped; the cluster now asks for {_requested_bundles()}"
    assert failed
    deadline = time.monotonic() + 10  # the request is withdrawn asynchronously, through the coordinator
    while request in _requested_bundles() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert request not in _requested_bundles(), "the request outlived the wait"
