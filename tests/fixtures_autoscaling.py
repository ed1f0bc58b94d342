"""A cluster that starts with no worker node and lets Ray's autoscaler add and remove them: Ray's
fake multi-node provider (`ray.cluster_utils.AutoscalingCluster`) on this one machine.

What is real: the autoscaler (monitor) reads pending resource requests from the GCS, picks node
types, launches Ray nodes (raylets with the type's resources) and terminates them when idle. What
is faked: the machines - a "node" is a set of Ray processes here, and custom resources stand in
for GPUs (`synrank_generate` marks the generation type, as in cluster.yaml).

`AutoscalingCluster` as shipped reads a base config the wheel lacks and runs `ray stop --force`
(which would kill every other Ray on the machine, the test session's included); this subclass
gives its own base config and starts the head as a `LocalCluster` head on its own ports. Its
provider is the fake one with node types that may declare memory (`FakeProviderWithMemory`).

    with LocalAutoscalingCluster(NODE_TYPES) as cluster:
        run_synrank(cluster, ["pipeline", ...])
        cluster.history()   # every worker node seen: type, first and last time alive
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.cluster_utils import AutoscalingCluster

from fixtures_cluster import LocalCluster

TESTS = Path(__file__).resolve().parent


class FakeProviderWithMemory(FakeMultiNodeProvider):
    """The fake provider, for node types that declare `memory` as the AWS provider derives it from
    the instance type (the autoscaler needs it to place tasks that request memory). The shipped
    fake provider would pass it to the node as a custom resource, which Ray refuses; a node here
    detects its memory itself, which is more than the types in the tests declare."""

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        resources = {k: v for k, v in resources.items() if k != "memory"}
        super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)


@dataclass
class SeenNode:
    node_id: str
    node_type: str
    first_alive: float
    last_alive: float
    dead: bool = False


class LocalAutoscalingCluster(AutoscalingCluster):
    """A 0-CPU head whose autoscaler brings up `worker_node_types` (cluster.yaml's shape) on demand."""

    def __init__(self, worker_node_types: dict, *, head_resources: dict | None = None,
                 idle_timeout_minutes: float = 0.25, max_workers: int = 4) -> None:
        self._head_cluster: LocalCluster | None = None
        self._idle_timeout_minutes = idle_timeout_minutes
        self._max_workers = max_workers
        self._seen: dict[str, SeenNode] = {}
        self._stop_watch = threading.Event()
        self._watch: threading.Thread | None = None
        super().__init__(dict(head_resources or {"CPU": 0}), worker_node_types)

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        types = {name: {"min_workers": 0, **spec, "node_config": spec.get("node_config", {})}
                 for name, spec in worker_node_types.items()}
        types["ray.head.default"] = {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}
        return {
            "cluster_name": "synrank-fake",
            "max_workers": self._max_workers,
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": self._idle_timeout_minutes,
            "provider": {"type": "external", "module": "fixtures_autoscaling.FakeProviderWithMemory",
                         "disable_launch_config_check": True,
                         "disable_node_updaters": True, "use_node_id_as_ip": True},
            "auth": {"ssh_user": "ubuntu"},
            "available_node_types": types,
            "head_node_type": "ray.head.default",
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
            **config_kwargs,
        }

    # -- lifetime ----------------------------------------------------------------------------
    def start(self, _system_config=None, override_env=None) -> "LocalAutoscalingCluster":
        head = LocalCluster.__new__(LocalCluster)
        config = dict(self._config)
        head_cpus = config["available_node_types"]["ray.head.default"]["resources"].get("CPU", 0)
        env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", **(override_env or {})}
        # The autoscaler (on the head) imports the provider from here.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
        LocalCluster.__init__(head, head_cpus=head_cpus, env=env, defer_head=True)
        # The launched nodes join this head's GCS (the provider's default is port 6379).
        config["provider"] = {**config["provider"], "gcs_address": head.address}
        path = Path(head.temp) / "autoscaling.json"
        path.write_text(json.dumps(config))
        head.start_head(extra_args=[f"--autoscaling-config={path}"])
        self._head_cluster = head
        self._watch = threading.Thread(target=self._watch_nodes, daemon=True)
        self._watch.start()
        return self

    def shutdown(self) -> None:
        self._stop_watch.set()
        if self._head_cluster is not None:
            self._head_cluster.stop()

    def __enter__(self) -> "LocalAutoscalingCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- what a driver needs (the same as LocalCluster, so run_synrank takes either) -----------
    @property
    def address(self) -> str:
        return self._head_cluster.address

    def driver_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return self._head_cluster.driver_env(extra)

    @property
    def temp(self) -> Path:
        return self._head_cluster.temp

    # -- what the autoscaler did -------------------------------------------------------------
    def _watch_nodes(self) -> None:
        while not self._stop_watch.wait(1.0):
            try:
                states = self._head_cluster.node_states()
            except Exception:
                continue
            now = time.time()
            for node in states:
                if node.get("is_head_node"):
                    continue
                node_id = node["node_id"]
                node_type = (node.get("labels") or {}).get("ray.io/node-group") or _type_from(node, self._config)
                seen = self._seen.setdefault(node_id, SeenNode(node_id, node_type, now, now))
                if node.get("state") == "ALIVE":
                    seen.last_alive = now
                else:
                    seen.dead = True

    def history(self) -> list[SeenNode]:
        return sorted(self._seen.values(), key=lambda n: n.first_alive)

    def alive_workers(self) -> list[SeenNode]:
        return [n for n in self._seen.values() if not n.dead]

    def wait_until_no_workers(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            states = self._head_cluster.node_states()
            if not [n for n in states if not n.get("is_head_node") and n.get("state") == "ALIVE"]:
                time.sleep(1.5)  # let the watcher record the last change
                return
            time.sleep(1)
        alive = [n for n in self._head_cluster.node_states() if n.get("state") == "ALIVE" and not n.get("is_head_node")]
        raise TimeoutError(f"{len(alive)} worker node(s) still alive after {timeout:.0f} s")


def _type_from(node: dict, config: dict) -> str:
    """The node type whose custom resources the node has (the provider's type label may be absent)."""
    resources = node.get("resources_total") or {}
    for name, spec in config["available_node_types"].items():
        custom = {k for k in spec.get("resources", {}) if k not in ("CPU", "GPU", "memory", "object_store_memory")}
        if custom and custom <= set(resources):
            return name
    return "unknown"


@pytest.fixture
def autoscaling_cluster():
    """A factory: `cluster = autoscaling_cluster(NODE_TYPES)`, started; stopped afterwards."""
    made: list[LocalAutoscalingCluster] = []

    def make(worker_node_types: dict, **kwargs) -> LocalAutoscalingCluster:
        cluster = LocalAutoscalingCluster(worker_node_types, **kwargs)
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.shutdown()
