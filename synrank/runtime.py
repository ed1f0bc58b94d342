"""One way for every stage to get Ray: join a cluster, or start an embedded local one on loopback."""

from __future__ import annotations

import logging
import os
import time
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
    stall_warning_s: float | None = None,
) -> ClusterResources:
    """Connect to `address` (or RAY_ADDRESS), else start an embedded Ray bound to 127.0.0.1.

    Reuses an already initialised Ray in this process. Returns the cluster's resources.
    `stall_warning_s`: the default of `watch_progress` for this process.
    """
    set_stall_warning(stall_warning_s)
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


# --------------------------------------------------------------------------------------------
# Stall watchdog: a stage that waits for resources says so instead of hanging silently.

DEFAULT_STALL_WARNING_S = 60.0
_stall_warning_s = DEFAULT_STALL_WARNING_S


def set_stall_warning(seconds: float | None) -> None:
    """The default of `watch_progress` for this process (`runtime.stall_warning_s`; 0 turns it off)."""
    global _stall_warning_s
    if seconds is not None:
        _stall_warning_s = float(seconds)


class ProgressWatch:
    """A daemon thread that logs a WARNING when the watched stage has not ticked for `stall_s`
    seconds, naming what the cluster waits for and what it has; it repeats at most every `stall_s`."""

    def __init__(self, what: str, stall_s: float) -> None:
        import threading

        self.what = what
        self.stall_s = stall_s
        self.warnings = 0
        self._last = self._warned = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"synrank-watch-{what}", daemon=True)

    def tick(self) -> None:
        self._last = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(min(5.0, self.stall_s / 4)):
            now = time.monotonic()
            idle = now - self._last
            if idle >= self.stall_s and now - self._warned >= self.stall_s:
                self._warned = now
                self.warnings += 1
                try:
                    log.warning("%s", stall_report(self.what, idle))
                except Exception as exc:  # the report must never break the stage it watches
                    log.warning("%s: nothing finished for %.0f s (no cluster report: %s)", self.what, idle, exc)

    def __enter__(self) -> "ProgressWatch":
        if self.stall_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


def watch_progress(what: str, stall_s: float | None = None) -> ProgressWatch:
    """`with watch_progress("generation: shards") as watch: ... watch.tick()` on each finished unit."""
    return ProgressWatch(what, _stall_warning_s if stall_s is None else float(stall_s))


def _fmt(resources: dict[str, float]) -> str:
    return ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items()))


def stall_report(what: str, idle_s: float) -> str:
    """What the cluster waits for (actors not yet placed, resource requests it cannot meet now)
    and what it has, per node. GCS-level calls only: embedded Ray runs without a dashboard."""
    import ray
    import ray._private.state as state

    lines = [f"{what}: nothing finished for {idle_s:.0f} s."]
    pending: dict[str, int] = {}
    for info in state.actors().values():
        if info.get("State") in ("PENDING_CREATION", "DEPENDENCIES_UNREADY", "RESTARTING"):
            key = f"{str(info.get('ActorClassName')).rsplit('.', 1)[-1]} ({info.get('State')})"
            pending[key] = pending.get(key, 0) + 1
    if pending:
        lines.append("Actors not running yet (waiting for resources, or starting): " + ", ".join(f"{k} x{n}" for k, n in sorted(pending.items())) + ".")
    demands: list[str] = []
    nodes: list[str] = []
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        for demand in status.resource_demands.ray_task_actor_demand:
            demands += [f"{{{_fmt(b.bundle)}}} x{b.count}" for b in demand.bundles_by_count]
        for demand in status.resource_demands.placement_group_demand:
            demands += [f"placement group {{{_fmt(b)}}}" for b in getattr(demand, "bundles", [])]
        for node in status.active_nodes + status.idle_nodes:
            usage = {u.resource_name: (u.total - u.used, u.total) for u in node.resource_usage.usage
                     if not u.resource_name.startswith("node:") and u.resource_name not in ("memory", "object_store_memory")}
            free = ", ".join(f"{k} {a:g}/{t:g} free" for k, (a, t) in sorted(usage.items()))
            nodes.append(f"{node.ip_address} ({node.node_id[:8]}): {free}")
    except Exception:  # pragma: no cover - older Ray: totals only
        pass
    if demands:
        lines.append("Resource requests the cluster cannot meet now: " + "; ".join(demands) + ".")
    elif not pending:
        lines.append("No actor or task waits for resources: the work may just be slow.")
    total = _plain(ray.cluster_resources())
    available = ray.available_resources()
    lines.append(f"Cluster: {{{_fmt(total)}}} in total, {{{_fmt({k: available.get(k, 0.0) for k in total})}}} available.")
    if nodes:
        lines.append("Nodes: " + "; ".join(nodes) + ".")
    return " ".join(lines)


def _plain(resources: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in resources.items()
            if not k.startswith("node:") and k not in ("memory", "object_store_memory")}
