"""The LLM judge on the shared engine pool (`synrank.llm.pool.EnginePool`).

>>> pool = EnginePool.start(spec_from_config(cfg))         # or EnginePool.attach(cfg.engine_pool)
>>> judge = EngineJudge.from_pool(pool, cfg)
>>> answers = judge(prompts, attempt=0)

Attempt 0 decodes greedily and, with ``constrained`` (the default) on the vLLM backend, through
vLLM structured outputs: the answer is one of the prompt's choices ("0".."3"), so it always parses.
An engine call that raises is restarted and retried by the pool (`engine_retries`); if it
still fails, each of its prompts gets an `EngineFailure` ("error: engine_error: ..."), which the
judging loop retries like an unparseable answer and finally records as the pair's failure reason.
Retries (only for answers the parser rejected, or engine errors) sample without the constraint
(temperature ``retry_temperature``), so an engine whose structured-output backend fails still
gets a chance, and the strict parser decides. On GPU each retry carries a stable per-request seed
(reproducible reruns); on CPU vLLM seeds the engine only (per-request seeds crash its sampler).

A judge handle is picklable: Ray Data workers call the engine actors through it, each shard on
one engine (``shard % num_engines``), so that vLLM batches the whole shard and prefix caching
shares the system prompt and scale across it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from synrank.annotate.prompts import JudgePrompt


class EngineFailure(str):
    """An answer that never came from the model: the engine's error message. Never parsed."""


@dataclass(frozen=True)
class EngineJudge:
    """Judging prompts through an engine pool handle (see the module docstring)."""

    handle: Any  # synrank.llm.pool.PoolHandle
    model: str  # the model label recorded in the `model` column (`synrank.llm.engine.generator_label`)
    num_engines: int = 1
    constrained: bool = True
    max_tokens: int = 8
    retry_temperature: float = 0.7
    seed: int = 0
    per_request_seed: bool = False
    engine_index: int = 0

    @classmethod
    def from_pool(cls, pool: Any, cfg) -> "EngineJudge":
        from synrank.llm.pool import PoolHandle

        handle = pool.handle()
        if isinstance(handle, PoolHandle):
            handle = replace(handle, retries=cfg.engine_retries)
        return cls(
            handle=handle,
            model=pool.spec.label,
            num_engines=pool.num_engines,
            constrained=cfg.constrained and pool.spec.backend == "vllm",
            max_tokens=cfg.max_tokens,
            retry_temperature=cfg.retry_temperature,
            seed=cfg.seed,
            per_request_seed=pool.per_request_seed,
        )

    def on_engine(self, index: int) -> "EngineJudge":
        """The same judge bound to engine `index % num_engines`."""
        return replace(self, engine_index=index % max(1, self.num_engines))

    def sampling(self, prompts: Sequence[JudgePrompt], attempt: int) -> Any:
        from synrank.llm.engine import SamplingSpec

        if attempt == 0:
            choices = prompts[0].choices if (self.constrained and prompts) else None
            if choices is not None and any(p.choices != choices for p in prompts):
                raise ValueError("prompts of one call must share the scale")
            return SamplingSpec(max_tokens=self.max_tokens if choices is None else 2, temperature=0.0, top_p=1.0,
                                choices=choices)
        return SamplingSpec(max_tokens=self.max_tokens, temperature=self.retry_temperature, top_p=0.95)

    def __call__(self, prompts: Sequence[JudgePrompt], attempt: int) -> list[str]:
        from synrank.llm.seeds import stable_int

        if not prompts:
            return []
        sampling = self.sampling(prompts, attempt)
        seeds = None
        if attempt > 0 and self.per_request_seed:
            seeds = [stable_int(self.seed, p.query, p.passage, attempt) for p in prompts]
        from synrank.llm.pool import EngineError

        try:
            completions = self.handle.generate_on(self.engine_index, [list(p.messages) for p in prompts], sampling, seeds)
        except EngineError as exc:  # restarted and retried by the pool already: no answers this attempt
            return [EngineFailure(f"error: engine_error: {exc}"[:300]) for _ in prompts]
        out: list[str] = []
        for c in completions:
            if str(c.finish_reason).startswith("error"):
                out.append(EngineFailure(c.finish_reason))
            else:
                out.append(c.text)
        return out


def start_pool(cfg, address: str | None = None) -> tuple[Any, bool]:
    """The engine pool for `cfg`: the named pool `cfg.engine_pool` if set, else new engines.
    Returns (pool, owned): an owned pool is the caller's to shut down."""
    from synrank.llm.engine import spec_from_config
    from synrank.llm.pool import EnginePool
    from synrank.runtime import init_ray

    init_ray(address)
    spec = spec_from_config(cfg)
    if cfg.engine_pool:
        return EnginePool.attach(cfg.engine_pool, spec), False
    return EnginePool.start(spec, cfg.num_engines, min_engines=cfg.min_engines, cpus_per_engine=cfg.engine_cpus,
                            engine_retries=cfg.engine_retries), True
