"""One way for every stage to get Ray: join a cluster, or start an embedded local one on loopback."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

_started_here = False  # whether this process started the Ray it is connected to


@dataclass(frozen=True)
class ClusterResources:
    """What the connected cluster offers, so stages can size their actor pools."""

    address: str
    embedded: bool
    num_cpus: float
    num_gpus: float
    num_nodes: int

    @property
    def has_gpu(self) -> bool:
        return self.num_gpus >= 1


def _embedded_defaults() -> None:
    """Settings for a single-machine Ray: no usage stats (they try the network), loopback only,
    no token auth (Ray 2.60 turns it on by default; a one-user embedded cluster has no use for it)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # With this off, Ray takes 127.0.0.1 as the node address instead of the machine's address.
    # Ray reads it once, at import; set both the variable (for Ray's child processes) and the
    # constant (in case Ray was imported before we got here).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # vLLM's engine processes talk over a message queue bound to the machine's address unless told
    # otherwise; on one machine that is loopback. Ray's workers inherit this environment.
    os.environ.setdefault("VLLM_HOST_IP", LOOPBACK)
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory: int | None = None,
) -> ClusterResources:
    """Connect to `address` (or RAY_ADDRESS), else start an embedded Ray bound to 127.0.0.1.

    Reuses an already initialised Ray in this process. Returns the cluster's resources.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        _embedded_defaults()
    import ray

    if not ray.is_initialized():
        if address:
            log.info("connecting to Ray at %s", address)
            ray.init(address=address, log_to_driver=True)
        else:
            global _started_here
            _started_here = True
            log.info("starting an embedded Ray on %s", LOOPBACK)
            ray.init(
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                object_store_memory=object_store_memory,
                _node_ip_address=LOOPBACK,
                include_dashboard=False,
                log_to_driver=True,
            )
    return cluster_resources()


def cluster_resources() -> ClusterResources:
    import ray

    ctx = ray.get_runtime_context()
    gcs = ctx.gcs_address
    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return ClusterResources(
        address=gcs,
        embedded=_started_here,
        num_cpus=float(total.get("CPU", 0.0)),
        num_gpus=float(total.get("GPU", 0.0)),
        num_nodes=len(nodes),
    )


def shutdown() -> None:
    import ray

    global _started_here
    if ray.is_initialized():
        ray.shutdown()
    _started_here = False
