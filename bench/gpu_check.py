"""The GPU device check: synrank's training loop and encoder on one CUDA GPU, next to
sentence-transformers on the same model, data, batch and lengths, in the same run.

    bash bench/gpu_check.sh prepare        # here: wheels, Cranfield groups, encoder config (no weights)
    bash bench/gpu_check.sh                # on the GPU machine, from the repository root

Runs with what a GPU machine has (torch, transformers, sentence-transformers); no Ray, vLLM or faiss.
The encoder is all-MiniLM-L6-v2's architecture and tokenizer, randomly initialised (seed 0): its
weights are too large to travel, and speed and memory do not depend on the weights' values.

Measured:
- training: synrank's own loop (`synrank.train.loop.run`, the loop every Ray Train worker runs), one
  worker, InfoNCE over Cranfield human groups (k passages per query, in-batch negatives), with AMP
  (bf16 autocast), with AMP but the next batch prepared in the step (`train.prefetch: false`), with
  AMP and GradCache in chunks of 32 texts (`train.grad_cache_chunk: 32`: peak memory against its
  extra forward pass), and in fp32; seconds per step (median after warm-up), queries/s, the loss's share
  of a step and peak GPU memory. sentence-transformers' trainer with MultipleNegativesRankingLoss on
  the same groups (anchor, positive, k-1 negatives) and bf16, as the peer.
- encoding: `BiEncoder.encode` (length-sorted batches) on the Cranfield corpus repeated to
  `--encode-docs` passages, in fp32 and in bf16 weights, against `SentenceTransformer.encode` in
  both dtypes; docs/s and peak GPU memory.
Writes one JSON (default $OUT/gpu_check.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def random_encoder(config_dir: Path, out: Path) -> str:
    """A MiniLM-shaped encoder with random weights (seed 0), saved where BiEncoder and
    SentenceTransformer both load it."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(config_dir))
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        if (config_dir / name).exists():
            (out / name).write_text((config_dir / name).read_text())
    if (config_dir / "1_Pooling").is_dir():
        (out / "1_Pooling").mkdir(exist_ok=True)
        (out / "1_Pooling" / "config.json").write_text((config_dir / "1_Pooling" / "config.json").read_text())
    return str(out)


DEVICE = "cuda"  # "cpu" only with --cpu-dry-run, which checks this script on a machine without a GPU


def gpu_memory_reset() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def synchronize() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else 0.0


def train_synrank(groups: str, model: str, batch: int, steps: int, max_length: int, amp: bool,
                  prefetch: bool = True, grad_cache_chunk: int | None = None) -> dict:
    from synrank.config import EncoderConfig, TrainConfig
    from synrank.train.loop import run

    cfg = TrainConfig(encoder=EncoderConfig(model=model, max_query_length=max_length, max_passage_length=max_length),
                      loss="infonce", loss_params={"temperature": 0.05}, batch_size=batch, max_steps=steps,
                      lr=2e-5, warmup_ratio=0.1, checkpoint_every=10_000, use_gpu=DEVICE == "cuda", amp=amp,
                      prefetch=prefetch, grad_cache_chunk=grad_cache_chunk)
    gpu_memory_reset()
    result, _ = run(cfg, groups)
    history = result["history"][2:]  # the first steps warm up kernels and the allocator
    step_s = statistics.median(h["step_time_s"] for h in history)
    return {"step_s": step_s, "queries_per_s": batch / step_s,
            "loss_share": statistics.median(h["loss_time_fraction"] for h in history),
            "final_loss": result["history"][-1]["loss"], "peak_gpu_gib": peak_gib()}


def train_st(groups: str, model_path: str, batch: int, steps: int, max_length: int) -> dict:
    import pyarrow.parquet as pq
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    rows = pq.read_table(groups).to_pylist()
    k = min(len(r["texts"]) for r in rows)
    columns = {"anchor": [r["query"] for r in rows], "positive": [r["texts"][0] for r in rows]}
    for j in range(1, k):
        columns[f"negative_{j}"] = [r["texts"][j] for r in rows]
    model = SentenceTransformer(model_path, device=DEVICE)
    model.max_seq_length = max_length
    ends: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            synchronize()
            ends.append(time.perf_counter())

    gpu_memory_reset()
    with tempfile.TemporaryDirectory() as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, learning_rate=2e-5,
            warmup_ratio=0.1, weight_decay=0.01, save_strategy="no", report_to="none", logging_steps=10_000,
            dataloader_drop_last=True, seed=0, bf16=DEVICE == "cuda", use_cpu=DEVICE == "cpu", disable_tqdm=True,
            max_grad_norm=1.0)
        SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(columns),
                                   loss=MultipleNegativesRankingLoss(model, scale=20.0), callbacks=[Timer()]).train()
    cycles = [b - a for a, b in zip(ends, ends[1:])][2:]
    step_s = statistics.median(cycles)
    return {"step_s": step_s, "queries_per_s": batch / step_s, "peak_gpu_gib": peak_gib()}


def corpus_texts(groups: str, n: int) -> list[str]:
    import pyarrow.parquet as pq

    texts = sorted({t for row in pq.read_table(groups, columns=["texts"]).column("texts").to_pylist() for t in row})
    return [texts[i % len(texts)] for i in range(n)]


def encode_synrank(model: str, texts: list[str], max_length: int, batch: int, dtype: str) -> dict:
    import torch

    from synrank.config import EncoderConfig
    from synrank.encoder import BiEncoder

    encoder = BiEncoder(EncoderConfig(model=model, max_passage_length=max_length), model_path=model).to(DEVICE)
    if dtype == "bf16":
        encoder = encoder.to(torch.bfloat16)
    encoder.encode(texts[: 4 * batch], "passage", batch_size=batch)  # warm-up
    gpu_memory_reset()
    synchronize()
    start = time.perf_counter()
    emb = encoder.encode(texts, "passage", batch_size=batch)
    synchronize()
    elapsed = time.perf_counter() - start
    return {"docs_per_s": len(texts) / elapsed, "peak_gpu_gib": peak_gib(), "embeddings": emb}


def encode_st(model: str, texts: list[str], max_length: int, batch: int, dtype: str) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model, device=DEVICE)
    if dtype == "bf16":
        st = st.to(torch.bfloat16)
    st.max_seq_length = max_length
    st.encode(texts[: 4 * batch], batch_size=batch)
    gpu_memory_reset()
    synchronize()
    start = time.perf_counter()
    emb = st.encode(texts, batch_size=batch, convert_to_numpy=True)
    synchronize()
    elapsed = time.perf_counter() - start
    return {"docs_per_s": len(texts) / elapsed, "peak_gpu_gib": peak_gib(), "embeddings": emb}


def cosine_agreement(a, b) -> float:
    """Mean cosine between two embeddings of the same passages (1.0: identical directions)."""
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).mean())


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def guarded(name: str, results: dict, fn, *args):
    """Run one measurement; a failure is recorded with its traceback and the others still run."""
    try:
        results[name] = fn(*args)
    except Exception as exc:  # noqa: BLE001 - a check reports every part it can
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
        print(f"{name} failed: {results[name]['error']}", flush=True)
    return results[name]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", default=str(REPO / ".gpucheck"), help="what `gpu_check.sh prepare` wrote")
    parser.add_argument("--batch", type=int, default=64, help="queries per training step")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--encode-docs", type=int, default=50_000)
    parser.add_argument("--encode-batch", type=int, default=256)
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", str(REPO / "bench" / "results")),
                                                      "gpu_check.json"))
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run every part on the CPU with tiny sizes (checks the script, measures nothing)")
    args = parser.parse_args()

    import torch

    global DEVICE
    if args.cpu_dry_run:
        DEVICE = "cpu"
        args.batch, args.steps, args.max_length, args.encode_docs, args.encode_batch = 4, 4, 32, 64, 16
    elif not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU (--cpu-dry-run checks the script without one)", file=sys.stderr)
        return 2
    prepared = Path(args.prepared)
    groups = str(prepared / "groups.parquet")
    work = Path(tempfile.mkdtemp(prefix="synrank-gpu-check-"))
    model = random_encoder(prepared / "encoder", work / "encoder")
    started = time.perf_counter()

    train: dict = {}
    guarded("synrank_amp_bf16", train, train_synrank, groups, model, args.batch, args.steps, args.max_length, True)
    guarded("synrank_amp_bf16_no_prefetch", train, train_synrank, groups, model, args.batch, args.steps,
            args.max_length, True, False)
    guarded("synrank_fp32", train, train_synrank, groups, model, args.batch, args.steps, args.max_length, False)
    guarded("synrank_amp_bf16_grad_cache32", train, train_synrank, groups, model, args.batch, args.steps,
            args.max_length, True, True, 32)
    guarded("st_mnrl_bf16", train, train_st, groups, model, args.batch, args.steps, args.max_length)

    texts = corpus_texts(groups, args.encode_docs)
    encode: dict = {}
    for dtype in ("fp32", "bf16"):
        guarded(f"synrank_{dtype}", encode, encode_synrank, model, texts, args.max_length, args.encode_batch, dtype)
        guarded(f"st_{dtype}", encode, encode_st, model, texts, args.max_length, args.encode_batch, dtype)
    agreement = {}
    if "embeddings" in encode.get("synrank_fp32", {}):
        ref = encode["synrank_fp32"]["embeddings"]
        for name, res in encode.items():
            if "embeddings" in res:
                agreement[name] = cosine_agreement(ref, res.pop("embeddings"))

    def ratio(a: dict, b: dict, key: str):
        return a[key] / b[key] if key in a and key in b and b[key] else None  # peak GPU memory is 0 on a CPU

    summary = {
        "train_amp_step_s": train["synrank_amp_bf16"].get("step_s"),
        "train_amp_vs_fp32_speedup": ratio(train["synrank_fp32"], train["synrank_amp_bf16"], "step_s"),
        "train_amp_vs_st_bf16": ratio(train["st_mnrl_bf16"], train["synrank_amp_bf16"], "step_s"),
        "train_prefetch_speedup": ratio(train["synrank_amp_bf16_no_prefetch"], train["synrank_amp_bf16"], "step_s"),
        "train_grad_cache_memory_ratio": ratio(train["synrank_amp_bf16_grad_cache32"], train["synrank_amp_bf16"],
                                               "peak_gpu_gib"),
        "train_grad_cache_slowdown": ratio(train["synrank_amp_bf16_grad_cache32"], train["synrank_amp_bf16"], "step_s"),
        "encode_bf16_vs_fp32": ratio(encode["synrank_bf16"], encode["synrank_fp32"], "docs_per_s"),
        "encode_fp32_vs_st_fp32": ratio(encode["synrank_fp32"], encode["st_fp32"], "docs_per_s"),
        "encode_bf16_vs_st_bf16": ratio(encode["synrank_bf16"], encode["st_bf16"], "docs_per_s"),
        "embedding_cosine_vs_synrank_fp32": agreement,
    }
    result = {
        "benchmark": "GPU device check: synrank training loop and encoder vs sentence-transformers",
        "settings": {"model": "all-MiniLM-L6-v2 architecture, random weights (seed 0)",
                     "data": "cranfield human groups (bench/gpu_check.sh prepare)", "batch_queries": args.batch,
                     "steps": args.steps, "max_length": args.max_length, "encode_docs": args.encode_docs,
                     "encode_batch": args.encode_batch},
        "machine": {"platform": platform.platform(),
                    "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else None,
                    "torch": torch.__version__, "cuda": torch.version.cuda, "cpus": os.cpu_count(),
                    "transformers": _version("transformers"), "sentence_transformers": _version("sentence_transformers"),
                    "loadavg": os.getloadavg()},
        "seconds": time.perf_counter() - started,
        "summary": summary, "train": train, "encode": encode,
    }
    print(f"\n{'training (one GPU)':28} {'s/step':>8} {'queries/s':>10} {'loss share':>11} {'peak GiB':>9}")
    for name, res in train.items():
        if "step_s" in res:
            share = f"{res['loss_share']:.1%}" if "loss_share" in res else ""
            print(f"{name:28} {res['step_s']:8.4f} {res['queries_per_s']:10.1f} {share:>11} {res['peak_gpu_gib']:9.2f}")
    print(f"\n{'encoding (one GPU)':28} {'docs/s':>10} {'peak GiB':>9} {'cos vs fp32':>12}")
    for name, res in encode.items():
        if "docs_per_s" in res:
            print(f"{name:28} {res['docs_per_s']:10.0f} {res['peak_gpu_gib']:9.2f} {agreement.get(name, float('nan')):12.5f}")
    print("\n" + json.dumps({k: v for k, v in summary.items()}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} after {result['seconds']:.0f} s")
    return 0 if not any("error" in r for r in (*train.values(), *encode.values())) else 1


if __name__ == "__main__":
    raise SystemExit(main())
