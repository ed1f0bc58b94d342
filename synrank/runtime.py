"""One way for every stage to get Ray: join a cluster, or start an embedded local one on loopback."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


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


def _quiet_local_defaults() -> None:
    # Usage stats would try the network; a local cluster stays on loopback, and token auth is
    # meaningless for a single-user embedded cluster (Ray 2.60 turns it on by default).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


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
    import ray

    _quiet_local_defaults()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        if address:
            log.info("connecting to Ray at %s", address)
            ray.init(address=address, log_to_driver=True)
        else:
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
    embedded = os.environ.get("RAY_ADDRESS") is None and bool(nodes) and all(
        n.get("NodeManagerAddress") == LOOPBACK for n in nodes
    )
    return ClusterResources(
        address=gcs,
        embedded=embedded,
        num_cpus=float(total.get("CPU", 0.0)),
        num_gpus=float(total.get("GPU", 0.0)),
        num_nodes=len(nodes),
    )


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
