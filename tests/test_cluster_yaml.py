"""cluster.yaml must pass the Ray cluster launcher's own validation (no cloud access needed)."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def launcher_validate(config: dict) -> dict:
    """What `ray up` does before it talks to the cloud: fill defaults, then validate."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_ray_validation(cluster):
    prepared = launcher_validate(cluster)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] == "head"
    assert types["head"]["resources"] == {"CPU": 0}, "the head must schedule no work"
    for name in ("gen_gpu", "train_gpu", "cpu"):
        assert types[name]["min_workers"] == 0 < types[name]["max_workers"], name
    assert prepared["idle_timeout_minutes"] > 0
    assert ":2.60.0-" in prepared["docker"]["image"], "the image is pinned to the Ray version we test with"


@pytest.mark.parametrize(
    "breakage, reason",
    [
        (lambda c: c.update(max_workers="many"), "is not of type 'integer'"),
        (lambda c: c.update(head_node_type="nope"), "must be one of `available_node_types`"),
        (lambda c: c["available_node_types"]["cpu"].update(min_workers=99), "smaller than the sum of `min_workers`"),
        (lambda c: c.update(unknown_top_level_field=1), "Additional properties are not allowed"),
        (lambda c: c["available_node_types"]["gen_gpu"].pop("node_config"), "'node_config' is a required property"),
    ],
    ids=["type", "head", "min_workers", "extra-field", "missing-node-config"],
)
def test_broken_copies_fail_validation(cluster, breakage, reason):
    broken = copy.deepcopy(cluster)
    breakage(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)) as err:
        launcher_validate(broken)
    assert reason in str(err.value)


# GPUs per instance type (AWS): what the autoscaler reads from the instance type.
INSTANCE_GPUS = {"p4d.24xlarge": 8, "g5.12xlarge": 4, "m6i.4xlarge": 0, "m6i.2xlarge": 0}


@pytest.mark.parametrize("config_name", ["msmarco-gpu.yaml", "study-msmarco-gpu.yaml"])
def test_gpu_configs_request_resources_cluster_yaml_declares_within_its_maxima(cluster, config_name):
    """Each kind of work asks for a custom resource some node type has (else the autoscaler can
    never bring its node up), and the pool maxima fit the node types' max_workers."""
    from synrank.config import SynrankConfig, load
    from synrank.study.load import load_study

    path = CLUSTER_YAML.parent / "jobs" / "configs" / config_name
    run = load_study(path).base if config_name.startswith("study") else load(SynrankConfig, path)
    types = cluster["available_node_types"]
    holder = {}
    for kind, resources in run.runtime.stage_resources.items():
        for name in resources:
            owners = [t for t, spec in types.items() if name in spec.get("resources", {})]
            assert owners, f"{config_name}: runtime.stage_resources.{kind} asks for {name}, no node type has it"
            holder[kind] = owners[0]
    assert set(holder) == {"generate", "train", "encode", "cpu"}, config_name
    gen = types[holder["generate"]]
    engines_per_node = INSTANCE_GPUS[gen["node_config"]["InstanceType"]] // run.generate.tensor_parallel_size
    assert run.generate.num_engines, f"{config_name}: a pool on a cluster that scales from zero needs a maximum"
    assert run.generate.num_engines <= gen["max_workers"] * engines_per_node
    if run.evaluate.num_encoders:
        enc = types[holder["encode"]]
        assert run.evaluate.num_encoders <= enc["max_workers"] * INSTANCE_GPUS[enc["node_config"]["InstanceType"]]
