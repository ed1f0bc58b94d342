"""One way for every stage to get Ray: join a cluster, or start an embedded local one on loopback."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

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
    # Ray Train starts an actor per run that polls for nodes being drained (spot preemption) so
    # that workers can checkpoint first. A one-machine Ray has no node to lose without losing the
    # run with it; the actor would cost a worker start and its wake-ups on the CPUs that train.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory: int | None = None,
    stall_warning_s: float | None = None,
    stage_resources: Mapping[str, Mapping[str, float]] | None = None,
    resource_wait_s: float | None = None,
) -> ClusterResources:
    """Connect to `address` (or RAY_ADDRESS), else start an embedded Ray bound to 127.0.0.1.

    Reuses an already initialised Ray in this process. Returns the cluster's resources.
    `stall_warning_s`: the default of `watch_progress` for this process. `stage_resources`: the
    custom resources each kind of work requests (`set_stage_resources`). `resource_wait_s`: how long
    a stage waits for the cluster to offer what it asks for (`wait_for_node`).
    """
    set_stall_warning(stall_warning_s)
    if stage_resources is not None:
        set_stage_resources(stage_resources)
    if resource_wait_s is not None:
        set_resource_wait(resource_wait_s)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        _embedded_defaults()
    import ray

    if not ray.is_initialized():
        if address:
            log.info("connecting to Ray at %s", address)
            ray.init(address=address, log_to_driver=True, runtime_env=_job_runtime_env())
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
                runtime_env=_job_runtime_env(),
            )
    return cluster_resources()


def init_ray_for(runtime: Any, address: str | None = None) -> ClusterResources:
    """`init_ray` with every setting of a `RuntimeConfig` (the `runtime:` section of a config)."""
    return init_ray(address or runtime.address, num_cpus=runtime.num_cpus, num_gpus=runtime.num_gpus,
                    object_store_memory=runtime.object_store_memory, stall_warning_s=runtime.stall_warning_s,
                    stage_resources=runtime.stage_resources, resource_wait_s=runtime.resource_wait_s)


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


# --------------------------------------------------------------------------------------------
# Stage resources: what each kind of work asks of the cluster besides CPUs and GPUs, so that an
# autoscaler brings up the node type meant for it (cluster.yaml gives every worker type one unit of
# its `synrank_*` resource). Requests are a small fraction of that unit: they select the node type
# without limiting how many actors share a node, which CPUs and GPUs already do.

STAGE_KINDS = ("generate", "encode", "train", "cpu")
_STAGE_RESOURCES_ENV = "SYNRANK_STAGE_RESOURCES"
_INHERITED_STAGE_RESOURCES = os.environ.get(_STAGE_RESOURCES_ENV)


def state_api_answers(timeout_s: float = 0.5) -> bool:
    """Whether the connected cluster's state API (served by the dashboard) accepts connections.

    An embedded Ray runs without the dashboard: its address is still registered in the GCS, but
    nothing listens there, so this answers False for it.
    """
    import socket

    import ray._private.ray_constants as ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    address = _internal_kv_get(ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
    if not address:
        return False
    host, _, port = address.decode().rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def set_stage_resources(resources: Mapping[str, Mapping[str, float]]) -> None:
    """`{"generate": {"synrank_generate": 0.001}, "train": {...}, "encode": {...}, "cpu": {...}}`.
    Kept in the environment, which Ray hands to this job's workers, so nested drivers (Tune trials)
    and tasks see the same requests."""
    unknown = sorted(set(resources) - set(STAGE_KINDS))
    if unknown:
        raise ValueError(f"runtime.stage_resources: unknown kind(s) {', '.join(unknown)}; "
                         f"expected some of {', '.join(STAGE_KINDS)}")
    plain = {kind: {str(k): float(v) for k, v in (res or {}).items()} for kind, res in resources.items()}
    for kind, res in plain.items():
        for name, amount in res.items():
            if name in ("CPU", "GPU", "memory") or amount <= 0:
                raise ValueError(f"runtime.stage_resources.{kind}.{name}: give custom resources with a positive "
                                 "amount (CPUs and GPUs are sized by each stage)")
    os.environ[_STAGE_RESOURCES_ENV] = json.dumps(plain, sort_keys=True)


def stage_resources() -> dict[str, dict[str, float]]:
    raw = os.environ.get(_STAGE_RESOURCES_ENV, "")
    return json.loads(raw) if raw else {}


def stage_options(kind: str) -> dict[str, Any]:
    """Ray options (`resources=`) for a task or actor doing `kind` of work; {} when none are set."""
    if kind not in STAGE_KINDS:
        raise ValueError(f"unknown stage kind {kind!r}; expected one of {', '.join(STAGE_KINDS)}")
    res = stage_resources().get(kind) or {}
    return {"resources": dict(res)} if res else {}


def task_options(kind: str) -> dict[str, Any]:
    """`stage_options` for a task or actor a stage starts itself (not Ray Data's, which schedules
    its own): scheduled by its own request, never inside the caller's placement group. A Tune
    trial's driver runs in a placement group sized for the driver alone, and Ray would otherwise
    put the trial's groups, search and writer tasks into it, where they never fit."""
    return {"scheduling_strategy": "DEFAULT", **stage_options(kind)}


def _job_runtime_env() -> dict[str, Any] | None:
    """The stage resources set in this process, for this job's workers (a job submitted with them in
    its runtime_env already hands them on; Ray refuses the same variable twice)."""
    raw = os.environ.get(_STAGE_RESOURCES_ENV)
    if not raw or raw == _INHERITED_STAGE_RESOURCES or not json.loads(raw):
        return None  # nothing to hand on: no resources set here, or the job already has them
    return {"env_vars": {_STAGE_RESOURCES_ENV: raw}}


# --------------------------------------------------------------------------------------------
# Waiting for the cluster to offer what a stage asks for. On a cluster that scales from zero the
# nodes a stage needs are not up when it starts; its pending actors and tasks make the autoscaler
# launch them. A stage waits for them with a progress line, and fails with the missing resources
# named if none joins in time (a node type missing from cluster.yaml, or at its max_workers).

DEFAULT_RESOURCE_WAIT_S = 900.0
_resource_wait_s = DEFAULT_RESOURCE_WAIT_S
_WAIT_LOG_EVERY_S = 30.0


class ResourceWaitError(RuntimeError):
    """No node that can run a stage's work joined the cluster in time."""


def set_resource_wait(seconds: float) -> None:
    global _resource_wait_s
    _resource_wait_s = float(seconds)


def fits(request: Mapping[str, float], node_resources: Mapping[str, float]) -> bool:
    return all(node_resources.get(name, 0.0) >= amount for name, amount in request.items() if amount > 0)


def nodes_that_fit(request: Mapping[str, float]) -> list[str]:
    """Alive nodes whose total resources hold `request` (free or not)."""
    import ray

    return [n["NodeID"] for n in ray.nodes() if n.get("Alive") and fits(request, n.get("Resources", {}))]


def wait_for_node(request: Mapping[str, float], what: str, timeout_s: float | None = None,
                  poll_s: float = 1.0) -> None:
    """Until a node whose resources hold `request` is alive. Logs progress every 30 s; raises
    `ResourceWaitError` naming the resources no node has after `timeout_s` (`runtime.resource_wait_s`)."""
    timeout_s = _resource_wait_s if timeout_s is None else timeout_s
    started = time.monotonic()
    logged = started
    while not nodes_that_fit(request):
        now = time.monotonic()
        if now - started >= timeout_s:
            raise ResourceWaitError(_missing_message(request, what, timeout_s))
        if now - logged >= _WAIT_LOG_EVERY_S:
            logged = now
            log.info("%s: waiting for a node with {%s} (%.0f s of %.0f s; an autoscaling cluster is launching one "
                     "for the pending work)", what, _fmt(request), now - started, timeout_s)
        time.sleep(poll_s)
    if time.monotonic() - started > 1.0:
        log.info("%s: a node with {%s} joined after %.0f s", what, _fmt(request), time.monotonic() - started)


def get_result(ref: Any) -> Any:
    """`ray.get`, raising a task's own input error (ValueError, FileNotFoundError) as it was raised,
    so that its message, which names the file and row, reaches the user unwrapped."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, (ValueError, FileNotFoundError)):
            raise exc.cause from None
        raise


def ensure_node(request: Mapping[str, float], what: str, timeout_s: float | None = None) -> None:
    """Before a stage starts work that needs `request` on one node: if no node up holds it, ask the
    autoscaler for one (`ray.autoscaler.sdk.request_resources`; a no-op on a fixed cluster) and wait
    for it as `wait_for_node` does. Only custom resources, CPUs, GPUs and memory are compared."""
    request = {k: float(v) for k, v in request.items() if v}
    if not request or nodes_that_fit(request):
        return
    log.info("%s: no node with {%s} is up; asking the autoscaler for one", what, _fmt(request))
    timeout_s = _resource_wait_s if timeout_s is None else timeout_s
    with _autoscaler_request(request, what, timeout_s):
        wait_for_node(request, what, timeout_s)


@contextlib.contextmanager
def _autoscaler_request(request: Mapping[str, float], what: str, timeout_s: float) -> Iterator[None]:
    """Ask the autoscaler for a node holding `request` while the body runs.

    Ray keeps one resource request per cluster, and every `request_resources` call replaces it.
    Ray Data's autoscaling coordinator (a detached actor, started by the first dataset a job runs)
    merges its requesters' bundles and sends them every 20 s, so a request made beside it with the
    SDK is wiped within 20 s, often before the autoscaler has read it. The request therefore goes
    through that coordinator as one more requester; the SDK is the fallback where Ray Data's
    coordinator is not importable."""
    try:
        from ray.data._internal.cluster_autoscaler import DefaultAutoscalingCoordinator
    except ImportError:
        DefaultAutoscalingCoordinator = None
    if DefaultAutoscalingCoordinator is None:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[dict(request)])
        try:
            yield
        finally:
            request_resources(bundles=[])
        return
    coordinator = DefaultAutoscalingCoordinator(f"synrank:{what}:{uuid.uuid4().hex[:8]}")
    coordinator.request_resources([dict(request)], expire_after_s=timeout_s + 60.0)
    try:
        yield
    finally:
        coordinator.cancel_request()


def _missing_message(request: Mapping[str, float], what: str, timeout_s: float) -> str:
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    short = sorted(name for name, amount in request.items() if not any(n.get(name, 0.0) >= amount for n in nodes))
    missing = ", ".join(short) or "no single node holds them all"
    return (f"{what} needs a node with {{{_fmt(request)}}}; none joined the cluster within {timeout_s:.0f} s "
            f"(runtime.resource_wait_s). Missing: {missing}. Nodes up: "
            + ("; ".join(f"{{{_fmt(_plain(n))}}}" for n in nodes) or "none")
            + ". On an autoscaling cluster, check that cluster.yaml has a node type with these resources and that "
              "its max_workers is not reached; on a fixed cluster, lower the request or add such a node.")


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


def with_progress_bars(dataset: Any, shown: bool) -> Any:
    """`dataset` with Ray Data's progress bars on or off (a dataset runs with the settings it was
    created with, so this sets its own). A stage that reports its own progress (`watch_progress`)
    turns them off: Ray Data draws them on every step of its scheduling loop, in the driver, on the
    CPUs the stage's model runs on."""
    if not shown:
        from ray.util.debug import log_once

        log_once("ray_data_progress_manager_disabled")  # Ray Data's warning that they are off: they are off on purpose
    dataset.context.enable_progress_bars = shown
    return dataset


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
