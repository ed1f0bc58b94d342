"""Benchmark of `synrank evaluate` (not a test): encoding throughput against sentence-transformers,
search + metrics time against encoding time, and peak memory at 1x and 10x corpus size.

    .venv/bin/python bench/evaluate.py [--collection ../shared/data/cranfield] [--threads N]
                                       [--reps 2] [--scale 10] [--out bench/results/evaluate.json]

1. Throughput. The collection's corpus ("title text", 256 tokens max, batch 64, the packaged
   all-MiniLM-L6-v2) is encoded by sentence-transformers `encode` in a fresh process with `threads`
   torch threads (a user's script: imports, model load, encode; with synrank's embedded Ray shut
   down meanwhile, bench/peer_machine.py), and by synrank's Ray Data pipeline
   (`encode.encode_sources`: read task, encoder actors, Parquet shards) on an embedded Ray with
   `threads` CPUs, once with the default pool (`plan_pool`; on 2 CPUs two 1-thread actors) and
   once with one actor of `threads` threads, and once with the default pool in bfloat16 weights
   (`encoder.inference_dtype`; fast on CPUs with AVX512-BF16 or AMX, emulated and slow elsewhere),
   and once with each ONNX Runtime backend (`encoder.backend` onnx and onnx-int8, when onnxruntime
   is installed; exported once into the cache before the repetitions, so the actors only load the
   export), reported as docs/s beside torch float32's and as the nDCG@10 difference to it (queries
   encoded in this process with the same backend, flat index, top 100). Two ratios of medians (repetitions alternate, so load
   drifts hit every side): end to end (ST process wall vs `encode_sources` wall, Ray's own start
   excluded, actor start and model load included) and encoder time (ST `encode()` vs the busiest
   synrank actor's time inside `BiEncoder.encode`); and, since wall times on a shared machine swing
   with its load, the same two per CPU-second (ST process CPU time vs the actors' CPU time plus
   the driver's; `encode()` CPU vs the actors' CPU inside `BiEncoder.encode`; all threads
   counted). The embeddings are compared too.
2. Search + metrics. `evaluate_model("default", [collection])`: faiss flat index build + top-100
   search + pytrec_eval, as a fraction of that run's encoding time.
3. Memory. A synthetic collection (documents of 20-40 words drawn from the collection's vocabulary,
   100 queries) of 1x and `scale`x the collection's size is evaluated end to end in a fresh
   process each; a sampler thread records the peak RSS of the driver and of the encoder actor.
   Flat means the 10x peak is within 20 % of the 1x peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _load(folder: Path):
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return docs


def _texts(docs) -> list[str]:
    from synrank.text import format_passage

    return [format_passage(d.get("title"), d.get("text")) for d in docs]


# ---------------------------------------------------------------------------------------------
# 1. throughput


def st_child(collection: Path, threads: int) -> dict:
    """sentence-transformers alone, as a user's script would run it (in a fresh process)."""
    t0 = time.perf_counter()
    import torch
    from sentence_transformers import SentenceTransformer

    from synrank.config import EncoderConfig
    from synrank.models import resolve_encoder

    torch.set_num_threads(threads)
    texts = _texts(_load(collection))
    t1 = time.perf_counter()
    model = SentenceTransformer(resolve_encoder("default"), device="cpu")
    model.max_seq_length = EncoderConfig().max_passage_length
    t2, c2 = time.perf_counter(), time.process_time()
    vectors = model.encode(texts, batch_size=64, convert_to_numpy=True)
    t3, c3 = time.perf_counter(), time.process_time()
    import numpy as np

    np.save(os.environ["BENCH_ST_OUT"], vectors)
    return {"imports_and_read_s": t1 - t0, "load_s": t2 - t1, "encode_s": t3 - t2,
            "encode_cpu_s": c3 - c2, "process_cpu_s": time.process_time()}


ONNX_RUNS = {"synrank_onnx": "onnx", "synrank_onnx_int8": "onnx-int8"}


def onnx_backends() -> list[str]:
    """The ONNX backends to measure: none without onnxruntime."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("  onnxruntime is not installed: no onnx / onnx-int8 runs", flush=True)
        return []
    return list(ONNX_RUNS)


def ndcg_at_10(collection: Path, docs: list[dict], passages, backend: str, dtype: str = "float32") -> float:
    """nDCG@10 of the passage vectors (in `docs` order), the queries encoded here with `backend` in
    `dtype`."""
    from synrank.data.readers import load_collection
    from synrank.encoder import BiEncoder
    from synrank.evaluate.index import DenseIndex, results_to_run
    from synrank.evaluate.metrics import evaluate_run, mean_metrics

    col = load_collection(collection)
    qrels = col.qrels_dict()
    queries = {q: t for q, t in zip(col.queries.column("query_id").to_pylist(), col.queries.column("text").to_pylist())
               if q in qrels}
    vectors = BiEncoder.load("default", backend=backend, inference_dtype=dtype).for_inference("cpu").encode(
        list(queries.values()), "query")
    ids = [str(d["_id"]) for d in docs]
    index = DenseIndex.build(passages.shape[1], lambda: iter([(ids, passages)]), len(ids))
    run = results_to_run(list(queries), index.search(vectors, 100), index.doc_ids)
    return mean_metrics(evaluate_run(qrels, run, ["ndcg@10"]))["ndcg@10"]


def bench_throughput(collection: Path, threads: int, reps: int, work: Path) -> dict:
    import numpy as np

    from synrank.encoder import BiEncoder
    from synrank.evaluate.encode import EncodeSource, EncodeStats, encode_sources, plan_pool, read_all
    from peer_machine import stop_embedded_ray
    from synrank.runtime import init_ray

    docs = _load(collection)
    resources = init_ray(num_cpus=threads)
    onnx_runs = onnx_backends()
    for name in onnx_runs:  # the one-time export, outside the measured runs
        BiEncoder.load("default", backend=ONNX_RUNS[name]).for_inference("cpu")
    runs: dict[str, list[dict]] = {"st": [], "synrank": [], "synrank_1_actor": [], "synrank_bf16": [],
                                   **{name: [] for name in onnx_runs}}
    overrides_of = {"synrank": {"inference_dtype": "float32"}, "synrank_1_actor": {"inference_dtype": "float32"},
                    "synrank_bf16": {"inference_dtype": "bfloat16"},
                    **{name: {"backend": ONNX_RUNS[name]} for name in onnx_runs}}
    last_shards: dict = {}
    for rep in range(reps):
        stop_embedded_ray()  # sentence-transformers encodes on a machine without Ray (bench/peer_machine.py)
        env = {**os.environ, "BENCH_ST_OUT": str(work / "st.npy")}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--st-child", str(collection), "--threads", str(threads)],
                              capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"sentence-transformers child failed:\n{proc.stderr[-4000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        runs["st"].append({"end_to_end_s": wall, **child})
        resources = init_ray(num_cpus=threads)
        print(f"  rep {rep + 1}: sentence-transformers {wall:.1f} s end to end, encode() {child['encode_s']:.1f} s",
              flush=True)
        for name, n_enc in (("synrank", None), ("synrank_1_actor", 1), ("synrank_bf16", None),
                            *((name, None) for name in onnx_runs)):
            stats = EncodeStats()
            t0, c0 = time.perf_counter(), time.process_time()
            shards = encode_sources([EncodeSource("c", str(work / f"emb{rep}-{name}"), [], [], str(collection),
                                                  len(docs))], "default", batch_size=64, resources=resources,
                                    num_encoders=n_enc, progress=False, stats=stats,
                                    overrides=overrides_of[name])
            wall, driver_cpu = time.perf_counter() - t0, time.process_time() - c0
            encode_cpu = sum(stats.busy_cpu_s.values())
            runs[name].append({"end_to_end_s": wall, "encode_s": stats.busiest_s, "encode_cpu_s": encode_cpu,
                               "process_cpu_s": sum(stats.total_cpu_s.values()) + driver_cpu,
                               "actors": stats.as_dict()})
            last_shards[name] = shards["c"]
            print(f"  rep {rep + 1}: {name} {wall:.1f} s end to end, busiest actor encoding {stats.busiest_s:.1f} s",
                  flush=True)
    def in_doc_order(shards):
        ids, vectors = read_all(shards.paths("passage"))
        order = {d: i for i, d in enumerate(ids)}
        return vectors[[order[str(d["_id"])] for d in docs]]

    vectors, bf16_vectors = in_doc_order(last_shards["synrank"]), in_doc_order(last_shards["synrank_bf16"])
    onnx = {}
    reference = ndcg_at_10(collection, docs, vectors, "torch")
    bf16_ndcg = ndcg_at_10(collection, docs, bf16_vectors, "torch", "bfloat16")
    if onnx_runs:
        for name in onnx_runs:
            got = ndcg_at_10(collection, docs, in_doc_order(last_shards[name]), ONNX_RUNS[name])
            onnx[name] = {"backend": ONNX_RUNS[name], "ndcg@10": got, "ndcg@10_minus_torch_fp32": got - reference,
                          "torch_fp32_ndcg@10": reference}
    st_vectors = np.load(work / "st.npy")
    keys = ("end_to_end_s", "encode_s", "encode_cpu_s", "process_cpu_s")
    med = {name: {key: statistics.median(r[key] for r in rs) for key in keys} for name, rs in runs.items()}
    n = len(docs)
    return {
        "documents": n,
        "threads": threads,
        "batch_size": 64,
        "max_length": 256,
        "synrank_pool": plan_pool(resources.num_cpus, resources.num_gpus).describe(),
        "runs": runs,
        "median_s": med,
        "docs_per_s": {name: {k: n / v for k, v in m.items()} for name, m in med.items()},
        "ratio_end_to_end": med["st"]["end_to_end_s"] / med["synrank"]["end_to_end_s"],
        "ratio_encoding": med["st"]["encode_s"] / med["synrank"]["encode_s"],
        "ratio_end_to_end_1_actor": med["st"]["end_to_end_s"] / med["synrank_1_actor"]["end_to_end_s"],
        "ratio_encoding_1_actor": med["st"]["encode_s"] / med["synrank_1_actor"]["encode_s"],
        "ratio_encoding_cpu": med["st"]["encode_cpu_s"] / med["synrank"]["encode_cpu_s"],
        "ratio_end_to_end_cpu": med["st"]["process_cpu_s"] / med["synrank"]["process_cpu_s"],
        "ratio_encoding_cpu_1_actor": med["st"]["encode_cpu_s"] / med["synrank_1_actor"]["encode_cpu_s"],
        "ratio_encoding_bf16": med["st"]["encode_s"] / med["synrank_bf16"]["encode_s"],
        "ratio_end_to_end_bf16": med["st"]["end_to_end_s"] / med["synrank_bf16"]["end_to_end_s"],
        "max_abs_embedding_diff": float(np.abs(vectors - st_vectors).max()),
        "bf16_min_cosine_to_fp32": float((vectors * bf16_vectors).sum(1).min()),
        "torch_fp32_ndcg@10": reference,
        "bf16_ndcg@10_minus_torch_fp32": bf16_ndcg - reference,
        "onnx": onnx,
        "goal": ">= 1.0",
    }


# ---------------------------------------------------------------------------------------------
# 2. search + metrics as a fraction of encoding


def bench_search(collection: Path, work: Path) -> dict:
    from synrank.evaluate import evaluate_model

    result = evaluate_model("default", [str(collection)], str(work / "eval"), progress=False)
    r = next(iter(result.values()))
    t = r["timings"]
    post = t["index_s"] + t["search_s"] + t["metrics_s"]
    return {
        "encode_s": t["encode_s_all_collections"],
        "index_s": t["index_s"], "search_s": t["search_s"], "metrics_s": t["metrics_s"],
        "search_and_metrics_s": post,
        "fraction_of_encoding": post / t["encode_s_all_collections"],
        "ndcg@10": r["metrics"]["ndcg@10"],
        "goal": "<= 0.10",
    }


# ---------------------------------------------------------------------------------------------
# 3. memory at 1x and 10x (each in a fresh process)


def make_synthetic(collection: Path, n_docs: int, out: Path, seed: int = 0) -> Path:
    words = [w for w in re.findall(r"[a-z]{3,}", " ".join(_texts(_load(collection))).lower())]
    vocab = sorted(set(words))
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for i in range(n_docs):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(20, 40)))
            handle.write(json.dumps({"_id": f"s{i}", "title": rng.choice(vocab), "text": text}) + "\n")
    with open(out / "queries.jsonl", "w", encoding="utf-8") as handle:
        for q in range(100):
            handle.write(json.dumps({"_id": f"q{q}", "text": " ".join(rng.choice(words) for _ in range(8))}) + "\n")
    (out / "qrels").mkdir(exist_ok=True)
    with open(out / "qrels" / "test.tsv", "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for q in range(100):
            for d in rng.sample(range(n_docs), 3):
                handle.write(f"q{q}\ts{d}\t{rng.randint(1, 3)}\n")
    return out


class PeakSampler(threading.Thread):
    """Peak RSS of this process and of the encoder actor(s), sampled every 0.1 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.driver = 0
        self.actor = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.driver = max(self.driver, self.me.memory_info().rss)
            for proc in self.psutil.process_iter(["cmdline"]):
                try:
                    cmd = " ".join(proc.info["cmdline"] or [])
                    if "MapBatches(_EncodeBatch)" in cmd and proc.ppid() != 0:
                        self.actor = max(self.actor, proc.memory_info().rss)
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                    pass
            time.sleep(0.1)


def memory_child(folder: Path, threads: int, work: Path) -> dict:
    import resource

    from synrank.evaluate import evaluate_model
    from synrank.runtime import init_ray

    init_ray(num_cpus=threads)
    sampler = PeakSampler()
    sampler.start()
    t0 = time.perf_counter()
    result = evaluate_model("default", [str(folder)], str(work / "out"), progress=False)
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    r = next(iter(result.values()))
    return {
        "documents": r["num_docs"],
        "seconds": seconds,
        "driver_peak_rss_mb": sampler.driver / 2**20,
        "driver_ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "encoder_actor_peak_rss_mb": sampler.actor / 2**20,
    }


def bench_memory(collection: Path, threads: int, scale: int, work: Path) -> dict:
    n = len(_load(collection))
    out = {}
    for factor in (1, scale):
        folder = make_synthetic(collection, n * factor, work / f"synthetic{factor}x")
        cmd = [sys.executable, __file__, "--memory-child", str(folder), "--threads", str(threads),
               "--work", str(work / f"mem{factor}x")]
        print(f"  {factor}x: {n * factor} synthetic documents ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child failed:\n{proc.stderr[-4000:]}")
        out[f"{factor}x"] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {factor}x: {out[f'{factor}x']}", flush=True)
    base, big = out["1x"], out[f"{scale}x"]
    out["driver_growth"] = big["driver_peak_rss_mb"] / base["driver_peak_rss_mb"] - 1
    out["encoder_actor_growth"] = big["encoder_actor_peak_rss_mb"] / max(base["encoder_actor_peak_rss_mb"], 1e-9) - 1
    out["goal"] = "growth <= 0.20"
    return out


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--collection", default=str(REPO.parent / "shared" / "data" / "cranfield"))
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8))
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "evaluate.json"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "search", "memory"])
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--st-child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.st_child:
        print(json.dumps(st_child(Path(args.st_child), args.threads)))
        return 0
    if args.memory_child:
        print(json.dumps(memory_child(Path(args.memory_child), args.threads, Path(args.work))))
        return 0

    collection = Path(args.collection)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_start": os.getloadavg()},
        "collection": str(collection.name),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        work = Path(tmp)
        if "memory" not in args.skip:
            # First, in fresh processes, before this one holds Ray and models.
            print("memory:", flush=True)
            results["memory"] = bench_memory(collection, args.threads, args.scale, work)
        if "throughput" not in args.skip:
            print("throughput:", flush=True)
            results["throughput"] = bench_throughput(collection, args.threads, args.reps, work)
        if "search" not in args.skip:
            print("search + metrics:", flush=True)
            results["search"] = bench_search(collection, work)
    import faiss
    import ray
    import sentence_transformers
    import torch

    results["versions"] = {"torch": torch.__version__, "ray": ray.__version__, "faiss": faiss.__version__,
                           "sentence_transformers": sentence_transformers.__version__}
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started

    rows = []
    if "throughput" in results:
        t = results["throughput"]
        d = t["docs_per_s"]
        rows += [
            ("encoding throughput synrank / ST, end to end", f"{t['ratio_end_to_end']:.3f}", ">= 1.0"),
            ("encoding throughput synrank / ST, encoder time", f"{t['ratio_encoding']:.3f}", ">= 1.0"),
            ("  docs/s end to end: synrank | ST",
             f"{d['synrank']['end_to_end_s']:.1f} | {d['st']['end_to_end_s']:.1f}", ""),
            ("  docs/s encoder time: synrank | ST",
             f"{d['synrank']['encode_s']:.1f} | {d['st']['encode_s']:.1f}", ""),
            ("per CPU-second synrank / ST, encoder | end to end",
             f"{t['ratio_encoding_cpu']:.3f} | {t['ratio_end_to_end_cpu']:.3f}", ">= 1.0"),
            (f"  1 actor x {t['threads']} threads: end to end | encoder time | encoder CPU",
             f"{t['ratio_end_to_end_1_actor']:.3f} | {t['ratio_encoding_1_actor']:.3f} | "
             f"{t['ratio_encoding_cpu_1_actor']:.3f}", ""),
            ("  max |embedding difference| synrank vs ST", f"{t['max_abs_embedding_diff']:.2e}", ""),
            ("encoding synrank bfloat16 / ST float32, encoder time | end to end",
             f"{t['ratio_encoding_bf16']:.3f} | {t['ratio_end_to_end_bf16']:.3f}", ">= 1.5"),
            ("  min cosine bfloat16 vs float32 embedding", f"{t['bf16_min_cosine_to_fp32']:.5f}", ""),
        ]
        if "bf16_ndcg@10_minus_torch_fp32" in t:
            rows.append(("  nDCG@10 bfloat16 - torch float32", f"{t['bf16_ndcg@10_minus_torch_fp32']:+.4f}",
                         "|.| <= 0.005"))
        for name, o in t.get("onnx", {}).items():
            rows += [
                (f"encoding {o['backend']} / torch float32, docs/s encoder time | end to end",
                 f"{d[name]['encode_s']:.1f}/{d['synrank']['encode_s']:.1f} | "
                 f"{d[name]['end_to_end_s']:.1f}/{d['synrank']['end_to_end_s']:.1f}", ""),
                (f"  nDCG@10 {o['backend']} - torch float32", f"{o['ndcg@10_minus_torch_fp32']:+.4f}", "|.| <= 0.005"),
            ]
    if "search" in results:
        s = results["search"]
        rows.append(("search + metrics / encoding", f"{s['fraction_of_encoding']:.4f}", "<= 0.10"))
    if "memory" in results:
        m = results["memory"]
        big = f"{args.scale}x"
        rows += [
            (f"driver peak RSS 1x -> {big} (MB)",
             f"{m['1x']['driver_peak_rss_mb']:.0f} -> {m[big]['driver_peak_rss_mb']:.0f} ({m['driver_growth']:+.1%})",
             "<= +20%"),
            (f"encoder actor peak RSS 1x -> {big} (MB)",
             f"{m['1x']['encoder_actor_peak_rss_mb']:.0f} -> {m[big]['encoder_actor_peak_rss_mb']:.0f} "
             f"({m['encoder_actor_growth']:+.1%})", "<= +20%"),
        ]
    width = max(len(r[0]) for r in rows) if rows else 10
    vwidth = max(len(r[1]) for r in rows) if rows else 10
    print()
    print(f"| {'measure'.ljust(width)} | {'value'.ljust(vwidth)} | goal     |")
    print(f"| {'-' * width} | {'-' * vwidth} | -------- |")
    for name, value, goal in rows:
        print(f"| {name.ljust(width)} | {value.ljust(vwidth)} | {goal.ljust(8)} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
