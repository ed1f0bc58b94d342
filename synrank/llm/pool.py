"""A pool of LLM engines on Ray: one engine per actor, sized from the cluster, shared by stages.

    pool = EnginePool.start(EngineSpec(model="default"))           # one engine per GPU replica / CPU node
    completions = pool.generate(prompts, SamplingSpec(max_tokens=64))  # any list, in order
    texts = pool.generate_texts(prompts, SamplingSpec(temperature=0))
    pool.shutdown()

`generate` splits the prompts into one contiguous chunk per engine, runs the chunks in parallel and
returns the completions in input order; `generate_on(i, ...)` uses engine `i` only (the generation
pipeline sends each shard to one engine, so that vLLM batches a whole shard at once), and
`generate_until_valid_on(i, ...)` runs the engine's `generate_until_valid` there (retries of
rejected completions inside the engine's running batch; the validator travels pickled to the
actor, every attempt comes back).

Resources per engine actor: on GPU `num_gpus = tensor_parallel_size` (the replica's GPUs; vLLM
runs its tensor-parallel workers inside them) and one CPU; on CPU `cpus_per_engine` Ray CPUs
(default: a node's CPUs less min(1, half of them), so that the Ray Data tasks and actors that
feed the engines (0.1 CPU each) can always be scheduled - a 1-CPU node gives its engine 0.5; a
CPU engine binds its threads to every core it sees whatever Ray accounts; asking for a GPU
there, as `ray.data.llm` does by default, hangs a CPU cluster) and one engine per node.

A pool can be named (`name=`): other drivers on the same cluster - a second `synrank generate`,
the annotation stage, a test - `EnginePool.attach(name)` to it instead of loading the model again.
Named pools live in the Ray namespace "synrank"; a `detached` pool outlives its driver until
`shutdown()` (`synrank engines stop NAME`).

Failures (`PoolHandle.generate_on`, `generate_until_valid_on` alike: a retried call is repeated
whole):

- an engine call that raises (the engine's own error, its process alive) makes the caller restart
  that engine - `ray.kill(no_restart=False)`: a fresh process and a fresh vLLM, since an engine
  that raised may hold a broken engine core, and rebuilding vLLM inside the old process would leak
  its engine-core processes and memory - and retry the batch, `retries` times (config
  `engine_retries`); then `EngineError` is raised, which the stages record as `engine_error` rows;
- an engine actor takes several calls at once (`MAX_CALLS_PER_ENGINE`; the generation stage sends
  it several shards, which share the engine's batch), so the restart of an engine that raised also
  ends the other calls running on it: those see an engine being restarted (below) and are repeated
  whole;
- a call whose engine is dead or unreachable (its node lost, or being restarted) goes to another
  live engine of the pool, without counting as a failure; engine calls are never retried by Ray
  (`max_task_retries=0`), so nothing waits on an engine whose node is gone. With no live engine a
  call waits for a restarting one for at most `wait_s`, then raises `PoolUnavailableError`.

An engine actor restarts at most `max_restarts` times (default 8); generation is idempotent for
the callers here (deterministic ids, shard files written atomically), so a retried call is safe.

Test-only fault injection (never set these in a real config): `EngineSpec.extra` keys
`synrank_test_fail_calls` (generate calls of the actor's first life, counted from 1, that raise
RuntimeError), `synrank_test_fail_marker` (a call with a prompt containing this text raises, in
every life) and `synrank_test_refuse_marker` (the engine's step loop refuses, with ValueError, to add
a request whose text contains it - as vLLM refuses a request it cannot take - while the engine stays
healthy); `EngineActor` removes them before the engine is built.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Sequence

from synrank.llm.engine import Completion, EngineSpec, Prompt, SamplingSpec, Validator, make_engine

log = logging.getLogger(__name__)

NAMESPACE = "synrank"
_PREFIX = "synrank-engine"
DEFAULT_MAX_RESTARTS = 8
_POLL_S = 5.0  # how often a call in flight looks at its engine's state
_WAIT_POLL_S = 1.0  # how often a call waiting for an engine to come back looks
_TEST_KEYS = ("synrank_test_fail_calls", "synrank_test_fail_marker", "synrank_test_refuse_marker")
# Calls an engine actor takes at once: the generation stage feeds an engine several shards
# (`generate.pipeline.shards_per_engine`), which a vLLM engine serves from one batch
# (`VLLMEngine.generate_until_valid`); other engines take them in turn.
MAX_CALLS_PER_ENGINE = 8


class EngineError(RuntimeError):
    """An engine call that still raised after its retries (the engine's own error)."""


class PoolUnavailableError(RuntimeError):
    """No engine of the pool is alive, or none came back in time."""


class _EngineGone(Exception):
    """A call given up on because its engine stopped being alive."""


class EngineActor:
    """The body of an engine actor (wrapped with `ray.remote` by `EnginePool.start`)."""

    def __init__(self, spec: EngineSpec, log_level: int = logging.INFO) -> None:
        import ray

        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.spec = spec
        extra = dict(spec.extra)
        self._faults = {k: extra.pop(k) for k in _TEST_KEYS if k in extra}
        with warnings.catch_warnings():  # deprecated in Ray 2.60, with no replacement yet
            warnings.simplefilter("ignore", DeprecationWarning)
            self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        self.engine = make_engine(replace(spec, extra=extra))
        if self._faults.get("synrank_test_refuse_marker") and hasattr(self.engine, "steps"):
            self.engine.steps.engine = _RefusingEngine(self.engine.steps.engine,
                                                       self._faults["synrank_test_refuse_marker"])
        _start_reaper()
        self.calls = 0
        self.attempts = 0
        self.busy_s = 0.0  # time with at least one call running
        self.tokens = 0
        self._counting = threading.Lock()
        self._running = 0
        self.most_running = 0  # the most calls the engine has run at once
        self._busy_since = 0.0
        # An engine without a shared step loop takes one call at a time.
        self._one_at_a_time = (contextlib.nullcontext() if getattr(self.engine, "concurrent_calls", False)
                               else threading.Lock())

    def ready(self) -> dict[str, Any]:
        return self.info()

    def info(self) -> dict[str, Any]:
        info = dict(self.engine.info())
        info.update(calls=self.calls, busy_s=round(self.busy_s, 3), generated_tokens=self.tokens,
                    most_calls_at_once=self.most_running, restarted=self.restarted)
        return info

    def _inject_faults(self, prompts: Sequence[Prompt]) -> None:
        """Test-only (see the module docstring)."""
        if not self.restarted and self.attempts in (self._faults.get("synrank_test_fail_calls") or ()):
            raise RuntimeError(f"injected engine fault on call {self.attempts}")
        marker = self._faults.get("synrank_test_fail_marker")
        if marker and any(marker in (p if isinstance(p, str) else " ".join(m["content"] for m in p)) for p in prompts):
            raise RuntimeError(f"injected engine fault: a prompt contains {marker!r}")

    @contextlib.contextmanager
    def _call(self, prompts: Sequence[Prompt]):
        """Counts a call (`calls`, `busy_s`: the union of the calls' times), one at a time where
        the engine needs that."""
        with self._counting:
            self.attempts += 1
        if self._faults:
            self._inject_faults(prompts)
        with self._one_at_a_time:
            with self._counting:
                if not self._running:
                    self._busy_since = time.perf_counter()
                self._running += 1
                self.most_running = max(self.most_running, self._running)
            try:
                yield
            finally:
                with self._counting:
                    self._running -= 1
                    if not self._running:
                        self.busy_s += time.perf_counter() - self._busy_since

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingSpec,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        with self._call(prompts):
            out = self.engine.generate(list(prompts), sampling, None if seeds is None else list(seeds))
        with self._counting:
            self.calls += 1
            self.tokens += sum(c.n_tokens for c in out)
        return out

    def generate_until_valid(self, prompts: Sequence[Prompt], seeds: Sequence[Sequence[int]] | None,
                             validate: Validator, kwargs: dict[str, Any]) -> list[list[Completion]]:
        with self._call(prompts):
            out = self.engine.generate_until_valid(list(prompts), None if seeds is None else [list(s) for s in seeds],
                                                   validate, **kwargs)
        with self._counting:
            self.calls += 1
            self.tokens += sum(c.n_tokens for tries in out for c in tries)
        return out

    def close(self) -> None:
        self.engine.close()


class _RefusingEngine:
    """Test-only (see the module docstring): a vLLM engine that refuses requests with a marker."""

    def __init__(self, engine: Any, marker: str) -> None:
        self._engine, self._marker = engine, marker

    def add_request(self, request_id: str, prompt: str, params: Any) -> None:
        if self._marker in prompt:
            raise ValueError(f"injected refusal: request {request_id} contains {self._marker!r}")
        self._engine.add_request(request_id, prompt, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


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
    retries: int = 2  # restarts of an engine that raised, and retries of its batch
    wait_s: float = 900.0  # how long a call waits for a restarting engine when none is alive

    def generate_on(self, index: int, prompts: Sequence[Prompt], sampling: SamplingSpec,
                    seeds: Sequence[int] | None = None) -> list[Completion]:
        """Completions from engine `index % num_engines`, or another live one (see the module docstring)."""
        return self._call(index, "generate", (list(prompts), sampling, None if seeds is None else list(seeds)))

    def generate_until_valid_on(self, index: int, prompts: Sequence[Prompt], seeds: Sequence[Sequence[int]] | None,
                                validate: Validator, *, sampling: SamplingSpec, retry_sampling: SamplingSpec,
                                max_retries: int, start: Sequence[int] | None = None) -> list[list[Completion]]:
        """`Engine.generate_until_valid` on engine `index` (or another live one), with the failover and
        retries of `generate_on`: a call that raised is repeated whole on the restarted engine."""
        kwargs = dict(sampling=sampling, retry_sampling=retry_sampling, max_retries=max_retries,
                      start=None if start is None else list(start))
        seeds = None if seeds is None else [list(s) for s in seeds]
        return self._call(index, "generate_until_valid", (list(prompts), seeds, validate, kwargs))

    def _call(self, index: int, method: str, args: tuple[Any, ...]) -> Any:
        from ray.exceptions import RayActorError, RayTaskError

        failures = 0
        unavailable: dict[int, float] = {}  # engine -> when a call to it last found it gone
        first_loss: float | None = None
        while True:
            i = self._pick(index, unavailable)
            actor = self.actors[i]
            restarts = _actor_state(actor).get("NumRestarts", 0)
            try:
                return self._get(i, getattr(actor, method).remote(*args))
            except (RayActorError, _EngineGone) as exc:  # dead, unreachable or restarting: another engine takes the call
                now = time.monotonic()
                unavailable[i] = now
                first_loss = first_loss or now
                if now - first_loss > self.wait_s:
                    raise PoolUnavailableError(f"no engine of the pool answered for {self.wait_s:g} s: "
                                               f"{_first_line(exc)}") from None
                log.warning("engine %d is unavailable (%s); the call goes to another engine", i, _first_line(exc))
            except RayTaskError as exc:  # the engine raised; its process lives on
                failures += 1
                cause = _first_line(exc.cause if getattr(exc, "cause", None) is not None else exc)
                if failures > self.retries:
                    raise EngineError(f"engine {i} failed {failures} time(s): {cause}") from None
                log.warning("engine %d raised (%s): restarting it, retry %d of %d", i, cause, failures, self.retries)
                _restart(actor, restarts)

    def _pick(self, index: int, unavailable: dict[int, float]) -> int:
        """Engine `index` if it is alive, else the next alive one. An engine a call just found gone
        may still be ALIVE in the GCS until its node is declared dead: the others come first, and it
        is tried again only after a pause. With no engine alive, wait (at most `wait_s`) for one."""
        n = len(self.actors)
        order = [(index + k) % n for k in range(n)]
        deadline = time.monotonic() + self.wait_s
        warned = False
        while True:
            states = {i: _actor_state(self.actors[i]).get("State", "ALIVE") for i in order}
            alive = [i for i in order if states[i] == "ALIVE"]
            fresh = [i for i in alive if i not in unavailable]
            if fresh:
                return fresh[0]
            if alive:
                i = min(alive, key=lambda j: unavailable[j])
                time.sleep(max(0.0, unavailable[i] + _POLL_S - time.monotonic()))
                return i
            if all(states[i] == "DEAD" for i in order):
                raise PoolUnavailableError(f"every engine of the pool ({n}) is dead")
            if time.monotonic() > deadline:
                raise PoolUnavailableError(f"no engine of the pool came back within {self.wait_s:g} s: {states}")
            if not warned:
                log.warning("no engine of the pool is alive (%s); waiting up to %g s for one", states, self.wait_s)
                warned = True
            time.sleep(_WAIT_POLL_S)

    def _get(self, i: int, ref: Any) -> Any:
        """The call's result; if its engine stops being alive while another one is, give up on it
        (and, with none alive, after `wait_s`)."""
        import ray

        down_since: float | None = None
        while True:
            ready, _ = ray.wait([ref], timeout=_POLL_S)
            if ready:
                return ray.get(ref)
            state = _actor_state(self.actors[i]).get("State", "ALIVE")
            if state == "ALIVE":
                down_since = None
                continue
            down_since = down_since or time.monotonic()
            others = [j for j in range(len(self.actors)) if j != i]
            if (state == "DEAD" or time.monotonic() - down_since > self.wait_s
                    or any(_actor_state(self.actors[j]).get("State") == "ALIVE" for j in others)):
                try:
                    ray.cancel(ref)
                except Exception:
                    pass
                raise _EngineGone(f"engine {i} is {state}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:500]


def _actor_state(actor: Any) -> dict[str, Any]:
    """The GCS's record of an actor (State, NumRestarts); {} if it cannot be read. Works without a
    dashboard (the embedded Ray has none), in drivers and in workers."""
    try:
        import ray._private.state as state

        return state.actors(actor._actor_id.hex()) or {}
    except Exception:
        return {}


def _restart(actor: Any, restarts_before: int) -> None:
    """Restart an engine that raised, unless another caller already did."""
    import ray

    info = _actor_state(actor)
    if info and (info.get("State") != "ALIVE" or info.get("NumRestarts", 0) != restarts_before):
        return
    try:
        ray.kill(actor, no_restart=False)
    except Exception as exc:  # pragma: no cover - already gone
        log.warning("could not restart an engine: %s", exc)
        return
    # The kill is asynchronous: a retry sent before it lands would run on the old engine.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = _actor_state(actor)
        if not info or info.get("State") != "ALIVE" or info.get("NumRestarts", 0) != restarts_before:
            return
        time.sleep(0.2)


def engine_nodes(custom: dict[str, float] | None = None) -> list[dict[str, float]]:
    """The total resources of each alive node that may host engines (those holding the generation
    stage's custom resources, when set)."""
    import ray

    from synrank.runtime import fits

    return [n.get("Resources", {}) for n in ray.nodes()
            if n.get("Alive") and fits(custom or {}, n.get("Resources", {}))]


def default_num_engines(spec: EngineSpec, resources: Any, nodes: Sequence[dict[str, float]] | None = None) -> int:
    """Engines the connected cluster holds now: GPU replicas of `tensor_parallel_size` on the engine
    nodes, else one per CPU engine node. `nodes`: the engine nodes' resources (default: every node)."""
    device = engine_device(spec, resources)
    if nodes is None:
        nodes = engine_nodes()
    if device == "cuda":
        n = int(sum(node.get("GPU", 0.0) for node in nodes) // spec.tensor_parallel_size)
        if n < 1:
            raise ValueError(
                f"tensor_parallel_size={spec.tensor_parallel_size} needs {spec.tensor_parallel_size} GPUs per engine, "
                f"the engine nodes up now have {sum(node.get('GPU', 0.0) for node in nodes):g}; on a cluster that "
                "scales from zero, set generate.num_engines (the pool's maximum)"
            )
        return n
    return max(1, sum(1 for node in nodes if node.get("CPU", 0.0) > 0))


def engine_device(spec: EngineSpec, resources: Any) -> str:
    if spec.device != "auto":
        return spec.device
    return "cuda" if resources.has_gpu else "cpu"


def default_cpus_per_engine(nodes: Sequence[dict[str, float]] | None = None) -> float:
    """The CPUs of the smallest engine node less a reserve of min(1, half of them) for the Ray Data
    tasks that feed the engine (0.5 on a 1-CPU node, 1 on 2 CPUs, 15 on 16)."""
    sizes = [n.get("CPU", 0.0) for n in (engine_nodes() if nodes is None else nodes)]
    smallest = min((s for s in sizes if s > 0), default=1.0)
    return cpus_per_engine_for(smallest)


def cpus_per_engine_for(node_cpus: float) -> float:
    return round(node_cpus - min(1.0, node_cpus / 2), 4)


class EnginePool:
    """Engine actors on the connected Ray cluster (see the module docstring)."""

    def __init__(self, actors: Sequence[Any], spec: EngineSpec, *, name: str | None = None, owned: bool = True,
                 infos: Sequence[dict[str, Any]] = (), engine_retries: int = 2) -> None:
        if not actors:
            raise ValueError("an engine pool needs at least one engine")
        self.actors = tuple(actors)
        self.spec = spec
        self.name = name
        self.owned = owned
        self.infos = list(infos)
        self.engine_retries = engine_retries

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
        engine_retries: int = 2,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        min_engines: int | None = None,
        resource_wait_s: float | None = None,
        calls_per_engine: int = MAX_CALLS_PER_ENGINE,
    ) -> "EnginePool":
        """Start engines on the connected cluster (`synrank.runtime.init_ray` first).

        `num_engines` is the pool's size (default: what the engine nodes up now hold). With `wait`,
        returns once `min_engines` (default: all) are ready; the others join the pool as they come
        up (pending ones are what makes an autoscaler add nodes). Engines request the generation
        stage's custom resources (`runtime.stage_resources.generate`); when none of those nodes is up,
        the pool first asks the autoscaler for one and waits for it (`resource_wait_s`).
        `calls_per_engine`: calls an engine actor runs at once (1: one after another, as before the
        shared step loop; bench/generate.py compares the two).
        """
        import ray

        from synrank.runtime import cluster_resources, ensure_node, stage_options

        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised: call synrank.runtime.init_ray() first")
        if name is not None and cls._find(name):
            raise ValueError(f"an engine pool named {name!r} already runs on this cluster; attach to it or stop it")
        if min_engines is not None and num_engines is not None and min_engines > num_engines:
            raise ValueError(f"min_engines={min_engines} exceeds num_engines={num_engines}")
        custom = stage_options("generate").get("resources", {})
        if custom and wait:  # size the pool from a real engine node: ask the autoscaler for the first
            gpus = spec.tensor_parallel_size if spec.device == "cuda" else 0
            ensure_node({**custom, "GPU": gpus}, f"engine pool ({spec.label})", resource_wait_s)
        nodes = engine_nodes(custom)
        resources = cluster_resources()
        device = spec.device if spec.device != "auto" else (
            "cuda" if any(node.get("GPU", 0.0) >= 1 for node in nodes) else "cpu")
        n = num_engines or default_num_engines(spec, resources, nodes)
        # Ray never retries an engine call: the pool does (another engine, or a restarted one).
        options: dict[str, Any] = dict(max_restarts=max_restarts, max_task_retries=0,
                                       max_concurrency=calls_per_engine,
                                       **stage_options("generate"))
        gpus_per_node = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
        if device == "cuda" and gpus_per_node and spec.tensor_parallel_size > gpus_per_node:
            raise ValueError(
                f"tensor_parallel_size={spec.tensor_parallel_size} exceeds the GPUs of any engine node "
                f"({gpus_per_node:g}): an engine's tensor-parallel workers run on one node"
            )
        if device == "cuda":
            options.update(num_gpus=spec.tensor_parallel_size, num_cpus=1)
        else:
            options.update(num_cpus=cpus_per_engine if cpus_per_engine is not None else default_cpus_per_engine(nodes),
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
        pool = cls(actors, spec, name=name, owned=True, engine_retries=engine_retries)
        if wait:
            one_engine = {k: v for k, v in options.get("resources", {}).items()}
            one_engine.update(CPU=options["num_cpus"], **({"GPU": options["num_gpus"]} if "num_gpus" in options else {}))
            pool._wait_ready(min_engines or n, device, one_engine, resource_wait_s)
        return pool

    def _wait_ready(self, needed: int, device: str, one_engine: dict[str, float],
                    resource_wait_s: float | None) -> None:
        """Until `needed` engines are ready; an engine that fails to start fails the pool, and so does
        a cluster where no node can ever hold one engine (`runtime.resource_wait_s`)."""
        import ray

        from synrank.runtime import wait_for_node, watch_progress

        try:
            wait_for_node(one_engine, f"engine pool ({self.spec.label})", resource_wait_s)
        except Exception:
            self.shutdown()
            raise

        n = len(self.actors)
        try:
            refs = [a.ready.remote() for a in self.actors]
            ready: list[Any] = []
            with watch_progress(f"engine pool: starting {n} {device} engine(s) of {self.spec.label}") as watch:
                left = refs
                while len(ready) < needed:
                    done, left = ray.wait(left, num_returns=1)
                    ready += done
                    watch.tick()
            self.infos = ray.get(ready)
        except Exception:
            self.shutdown()
            raise
        for info in self.infos:
            log.info("engine ready on %s in %.1f s (pid %s)", info["device"], info["startup_s"], info["pid"])
        if needed < n:
            log.info("%d of %d engines ready; the others join as their nodes come up", needed, n)

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

    def handle(self, engine_retries: int | None = None) -> PoolHandle:
        retries = self.engine_retries if engine_retries is None else engine_retries
        return PoolHandle(self.actors, self.spec, self.name, retries=retries)

    def generate_on(self, index: int, prompts: Sequence[Prompt], sampling: SamplingSpec,
                    seeds: Sequence[int] | None = None) -> list[Completion]:
        return self.handle().generate_on(index, prompts, sampling, seeds)

    def generate_until_valid_on(self, index: int, prompts: Sequence[Prompt], seeds: Sequence[Sequence[int]] | None,
                                validate: Validator, **kwargs: Any) -> list[list[Completion]]:
        return self.handle().generate_until_valid_on(index, prompts, seeds, validate, **kwargs)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingSpec = SamplingSpec(),
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        """Completions for `prompts`, in order, using every engine of the pool (one contiguous chunk
        each, with the failover and retries of `PoolHandle.generate_on`)."""
        from concurrent.futures import ThreadPoolExecutor

        prompts = list(prompts)
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if not prompts:
            return []
        k = min(self.num_engines, len(prompts))
        bounds = [round(i * len(prompts) / k) for i in range(k + 1)]
        handle = self.handle()
        with ThreadPoolExecutor(max_workers=k) as threads:
            chunks = [threads.submit(handle.generate_on, i, prompts[a:b], sampling,
                                     None if seeds is None else list(seeds[a:b]))
                      for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
            return [c for chunk in chunks for c in chunk.result()]

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
