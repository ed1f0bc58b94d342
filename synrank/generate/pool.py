"""A pool of LLM engines on Ray: one engine per actor, sized from the cluster, shared by stages.

    pool = EnginePool.start(EngineSpec(model="default"))           # one engine per GPU replica / CPU node
    completions = pool.generate(prompts, SamplingSpec(max_tokens=64))  # any list, in order
    texts = pool.generate_texts(prompts, SamplingSpec(temperature=0))
    pool.shutdown()

`generate` splits the prompts into one contiguous chunk per engine, runs the chunks in parallel and
returns the completions in input order; `generate_on(i, ...)` uses engine `i` only (the generation
pipeline sends each shard to one engine, so that vLLM batches a whole shard at once).

Resources per engine actor: on GPU `num_gpus = tensor_parallel_size` (the replica's GPUs; vLLM
runs its tensor-parallel workers inside them) and one CPU; on CPU `cpus_per_engine` Ray CPUs
(default: all of a node's CPUs but one, which stays free for the Ray Data stages around the
engines; asking for a GPU there, as `ray.data.llm` does by default, hangs a CPU cluster) and one
engine per node, since a CPU engine binds its threads to every core it sees.

A pool can be named (`name=`): other drivers on the same cluster - a second `synrank generate`,
the annotation stage, a test - `EnginePool.attach(name)` to it instead of loading the model again.
Named pools live in the Ray namespace "synrank"; a `detached` pool outlives its driver until
`shutdown()` (`synrank engines stop NAME`).

An engine actor restarts once if its process dies (`max_restarts`), and a call that was running
on it is retried there (`max_task_retries`): generation is idempotent for the callers here.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

from synrank.generate.engine import Completion, EngineSpec, Prompt, SamplingSpec, make_engine

log = logging.getLogger(__name__)

NAMESPACE = "synrank"
_PREFIX = "synrank-engine"


class EngineActor:
    """The body of an engine actor (wrapped with `ray.remote` by `EnginePool.start`)."""

    def __init__(self, spec: EngineSpec, log_level: int = logging.INFO) -> None:
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.spec = spec
        self.engine = make_engine(spec)
        _start_reaper()
        self.calls = 0
        self.busy_s = 0.0
        self.tokens = 0

    def ready(self) -> dict[str, Any]:
        return self.info()

    def info(self) -> dict[str, Any]:
        info = dict(self.engine.info())
        info.update(calls=self.calls, busy_s=round(self.busy_s, 3), generated_tokens=self.tokens)
        return info

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingSpec,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        started = time.perf_counter()
        out = self.engine.generate(list(prompts), sampling, None if seeds is None else list(seeds))
        self.calls += 1
        self.busy_s += time.perf_counter() - started
        self.tokens += sum(c.n_tokens for c in out)
        return out

    def close(self) -> None:
        self.engine.close()


_REAPER = r"""
import os, sys, time, signal
import psutil
owner = int(sys.argv[1])
procs = []
for spec in sys.argv[2:]:
    pid, started = spec.split(":")
    procs.append((int(pid), float(started)))
while psutil.pid_exists(owner) and psutil.Process(owner).status() != psutil.STATUS_ZOMBIE:
    time.sleep(2)
for pid, started in procs:
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - started) < 1e-3:
            p.kill()
    except psutil.Error:
        pass
"""


def _start_reaper() -> None:
    """vLLM's engine-core and worker processes outlive an actor that is killed (a killed driver
    takes its actors with it): a detached watcher kills them once this process is gone."""
    import subprocess
    import sys

    try:
        import psutil

        children = psutil.Process().children(recursive=True)
    except Exception:  # pragma: no cover - psutil missing: nothing to watch
        return
    if not children:
        return
    args = [f"{c.pid}:{c.create_time()}" for c in children]
    subprocess.Popen([sys.executable, "-c", _REAPER, str(os.getpid()), *args], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass(frozen=True)
class PoolHandle:
    """What a Ray Data worker needs to reach a pool: picklable, no driver state."""

    actors: tuple[Any, ...]
    spec: EngineSpec
    name: str | None = None

    def generate_on(self, index: int, prompts: Sequence[Prompt], sampling: SamplingSpec,
                    seeds: Sequence[int] | None = None) -> list[Completion]:
        import ray

        actor = self.actors[index % len(self.actors)]
        return ray.get(actor.generate.remote(list(prompts), sampling, None if seeds is None else list(seeds)))


def default_num_engines(spec: EngineSpec, resources: Any) -> int:
    """Engines the connected cluster holds: GPU replicas of `tensor_parallel_size`, else one per node."""
    device = engine_device(spec, resources)
    if device == "cuda":
        n = int(resources.num_gpus // spec.tensor_parallel_size)
        if n < 1:
            raise ValueError(
                f"tensor_parallel_size={spec.tensor_parallel_size} needs {spec.tensor_parallel_size} GPUs per engine, "
                f"the cluster has {resources.num_gpus:g}; set num_engines for an autoscaling cluster"
            )
        return n
    return max(1, int(resources.num_nodes))


def engine_device(spec: EngineSpec, resources: Any) -> str:
    if spec.device != "auto":
        return spec.device
    return "cuda" if resources.has_gpu else "cpu"


def default_cpus_per_engine() -> float:
    """All CPUs of the smallest alive node but one (at least 1)."""
    import ray

    sizes = [n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
    smallest = min((s for s in sizes if s > 0), default=1.0)
    return float(max(1.0, math.floor(smallest) - 1))


class EnginePool:
    """Engine actors on the connected Ray cluster (see the module docstring)."""

    def __init__(self, actors: Sequence[Any], spec: EngineSpec, *, name: str | None = None, owned: bool = True,
                 infos: Sequence[dict[str, Any]] = ()) -> None:
        if not actors:
            raise ValueError("an engine pool needs at least one engine")
        self.actors = tuple(actors)
        self.spec = spec
        self.name = name
        self.owned = owned
        self.infos = list(infos)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        spec: EngineSpec,
        num_engines: int | None = None,
        *,
        name: str | None = None,
        detached: bool = False,
        cpus_per_engine: float | None = None,
        wait: bool = True,
    ) -> "EnginePool":
        """Start engines on the connected cluster (`synrank.runtime.init_ray` first)."""
        import ray

        from synrank.runtime import cluster_resources

        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised: call synrank.runtime.init_ray() first")
        resources = cluster_resources()
        device = engine_device(spec, resources)
        if device == "cuda" and not resources.has_gpu and num_engines is None:
            raise ValueError("device=cuda but the cluster has no GPU; set num_engines for an autoscaling cluster")
        n = num_engines or default_num_engines(spec, resources)
        if name is not None and cls._find(name):
            raise ValueError(f"an engine pool named {name!r} already runs on this cluster; attach to it or stop it")
        options: dict[str, Any] = dict(max_restarts=1, max_task_retries=1, max_concurrency=1)
        if device == "cuda" and resources.has_gpu:
            per_node = max(n.get("Resources", {}).get("GPU", 0.0) for n in ray.nodes() if n.get("Alive"))
            if spec.tensor_parallel_size > per_node:
                raise ValueError(
                    f"tensor_parallel_size={spec.tensor_parallel_size} exceeds the GPUs of any node ({per_node:g}): "
                    "an engine's tensor-parallel workers run on one node"
                )
        if device == "cuda":
            options.update(num_gpus=spec.tensor_parallel_size, num_cpus=1)
        else:
            options.update(num_cpus=cpus_per_engine if cpus_per_engine is not None else default_cpus_per_engine(),
                           scheduling_strategy="SPREAD")
        if detached:
            if name is None:
                raise ValueError("a detached engine pool needs a name")
            options["lifetime"] = "detached"
        remote = ray.remote(EngineActor)
        actors = []
        for i in range(n):
            opts = dict(options)
            if name is not None:
                opts.update(name=f"{_PREFIX}:{name}:{i}", namespace=NAMESPACE)
            actors.append(remote.options(**opts).remote(spec, logging.getLogger().level or logging.INFO))
        log.info("starting %d %s engine(s) of %s%s", n, device, spec.label, f" as pool {name!r}" if name else "")
        pool = cls(actors, spec, name=name, owned=True)
        if wait:
            try:
                pool.infos = ray.get([a.ready.remote() for a in actors])
            except Exception:
                pool.shutdown()
                raise
            for info in pool.infos:
                log.info("engine ready on %s in %.1f s (pid %s)", info["device"], info["startup_s"], info["pid"])
        return pool

    @classmethod
    def _find(cls, name: str) -> list[Any]:
        import ray
        from ray.util import list_named_actors

        found = []
        for entry in list_named_actors(all_namespaces=True):
            if entry.get("namespace") != NAMESPACE:
                continue
            parts = entry.get("name", "").split(":")
            if len(parts) == 3 and parts[0] == _PREFIX and parts[1] == name:
                found.append((int(parts[2]), entry["name"]))
        return [ray.get_actor(n, namespace=NAMESPACE) for _, n in sorted(found)]

    @classmethod
    def attach(cls, name: str, spec: EngineSpec | None = None) -> "EnginePool":
        """A running named pool. With `spec`, its model must be the same (doc ids depend on it)."""
        import ray

        actors = cls._find(name)
        if not actors:
            raise ValueError(f"no engine pool named {name!r} runs on this cluster (namespace {NAMESPACE!r})")
        infos = ray.get([a.info.remote() for a in actors])
        running = EngineSpec(**{**infos[0]["spec"], "extra": infos[0]["spec"].get("extra") or {}})
        if spec is not None and running.label != spec.label:
            raise ValueError(f"engine pool {name!r} runs {running.label}, not {spec.label}")
        return cls(actors, running, name=name, owned=False, infos=infos)

    # -- use ---------------------------------------------------------------------------------
    @property
    def num_engines(self) -> int:
        return len(self.actors)

    @property
    def per_request_seed(self) -> bool:
        return bool(self.infos and all(i.get("per_request_seed") for i in self.infos))

    def handle(self) -> PoolHandle:
        return PoolHandle(self.actors, self.spec, self.name)

    def generate_on(self, index: int, prompts: Sequence[Prompt], sampling: SamplingSpec,
                    seeds: Sequence[int] | None = None) -> list[Completion]:
        return self.handle().generate_on(index, prompts, sampling, seeds)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingSpec = SamplingSpec(),
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        """Completions for `prompts`, in order, using every engine of the pool."""
        import ray

        prompts = list(prompts)
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if not prompts:
            return []
        k = min(self.num_engines, len(prompts))
        bounds = [round(i * len(prompts) / k) for i in range(k + 1)]
        futures = [
            self.actors[i].generate.remote(prompts[a:b], sampling, None if seeds is None else list(seeds[a:b]))
            for i, (a, b) in enumerate(zip(bounds, bounds[1:]))
        ]
        return [c for chunk in ray.get(futures) for c in chunk]

    def generate_texts(self, prompts: Sequence[Prompt], sampling: SamplingSpec = SamplingSpec(),
                       seeds: Sequence[int] | None = None) -> list[str]:
        return [c.text for c in self.generate(prompts, sampling, seeds)]

    def info(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([a.info.remote() for a in self.actors])

    def shutdown(self) -> None:
        """Stop the engines (also those of an attached pool: use `detach` to leave them running)."""
        import ray

        for actor in self.actors:
            try:
                ray.get(actor.close.remote(), timeout=30)
            except Exception:
                pass
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors = ()

    def detach(self) -> None:
        self.actors = ()

    def __enter__(self) -> "EnginePool":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.owned:
            self.shutdown()
        else:
            self.detach()


def run_prompts(prompts: Sequence[Prompt], sampling: SamplingSpec = SamplingSpec(), *,
                pool: EnginePool | None = None, spec: EngineSpec | None = None,
                seeds: Sequence[int] | None = None) -> list[Completion]:
    """Run prompts through `pool`, or through a pool of `spec` started (and stopped) for the call."""
    if pool is not None:
        return pool.generate(prompts, sampling, seeds)
    with EnginePool.start(spec or EngineSpec()) as own:
        return own.generate(prompts, sampling, seeds)
