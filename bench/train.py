"""Training throughput: synrank on Ray Train against sentence-transformers, same model, data, batch,
max length, in the same run.

    .venv/bin/python bench/train.py [--batch 16] [--steps 8] [--max-length 64] [--repeats 2] [--length-bucketing]
                                    [--bf16]

Data: Cranfield human groups (train half of the seeded query split, 5 grades, BM25 negatives),
k = 4 passages per query. sentence-transformers gets the same groups as (anchor, positive,
negative_1..3) rows and trains with MultipleNegativesRankingLoss (scale 20 = temperature 0.05)
through SentenceTransformerTrainer, the engine behind ``SentenceTransformer.fit``; synrank trains
InfoNCE (temperature 0.05) over the same B queries x 4 passages with in-batch negatives. Both use
the packaged all-MiniLM-L6-v2, one max length for queries and passages, AdamW at 2e-5, fp32.

Examples/s = queries per wall-clock second over whole steps (data, forward, backward, optimizer,
and for synrank the per-step report to Ray Train), the median over steps after the first (warm-up).
The runs alternate (ST, synrank 1 worker, synrank 2 workers, repeated), so load from elsewhere on
the machine hits both alike; the ratio is synrank / sentence-transformers within the same repeat,
and the table gives each repeat and the median.

sentence-transformers runs with no Ray on the machine, as a user who picks it has it: the embedded
Ray is shut down before its run and started again for synrank's. (Until December 2026 it ran beside
the idle embedded Ray, whose wake-ups cost a CPU step about 13 % (bench/ray_tax.py); that slowed
the peer and flattered synrank's ratios: 0.91x and 1.00x then, 0.70x and 0.86x in the first run
with the peer on a machine without Ray.)

Ray workers run at the driver's priority (``RAY_worker_niceness=0``; Ray's default is 15), like the
ST process. 1 worker: one Ray worker with all the box's CPUs as torch threads, like the ST process. 2 workers:
two Ray workers (gloo DDP, embeddings all-gathered) splitting the same global batch, each with
half the CPUs. "loss share" is the fraction of a synrank step spent in the loss (forward and
backward), measured inside the loop. synrank encodes queries and passages in length-sorted chunks
(always); ``--length-bucketing`` also turns on ``train.length_bucketing`` (batches of groups of
similar length, which changes the in-batch negatives; sentence-transformers keeps its random batches).

``--bf16`` (CPUs with AVX512-BF16 or AMX): synrank trains with ``train.cpu_amp`` (bf16 autocast, fp32
master weights, scores and loss), and sentence-transformers runs twice per repeat: as a user gets it
(fp32, the reference of the ratios) and with ``bf16=True`` in its training arguments (the same
autocast), so the table shows what mixed precision alone gives each.

Writes bench/results/train.json (train-bf16.json with ``--bf16``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray starts its worker processes at niceness 15; the sentence-transformers baseline runs in this
# process at niceness 0. On a machine shared with other work that alone starves the Ray workers (and
# their OpenMP threads stall on each other), so both contenders run at the same priority here.
os.environ.setdefault("RAY_worker_niceness", "0")


def build_groups(data: Path, k: int, out: str) -> int:
    from synrank.config import GroupsConfig
    from synrank.data.groups import build_groups as build, write_groups

    table, stats = build(GroupsConfig(source="human", collection=str(data / "cranfield"), qrels_levels=5,
                                      n_levels=5, group_size=k, bm25_negatives=20))
    # Every group has exactly k passages (ST needs a fixed number of columns).
    import pyarrow.compute as pc

    table = table.filter(pc.equal(pc.list_value_length(table.column("doc_ids")), k))
    write_groups(table, out)
    return table.num_rows


def run_st(groups: str, model_path: str, batch: int, steps: int, max_length: int, threads: int,
           bf16: bool = False) -> dict:
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    torch.set_num_threads(threads)
    rows = pq.read_table(groups).to_pylist()
    k = len(rows[0]["texts"])
    columns = {"anchor": [r["query"] for r in rows], "positive": [r["texts"][0] for r in rows]}
    for j in range(1, k):
        columns[f"negative_{j}"] = [r["texts"][j] for r in rows]
    dataset = Dataset.from_dict(columns)
    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = max_length

    ends: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, learning_rate=2e-5,
            warmup_ratio=0.1, weight_decay=0.01, save_strategy="no", report_to="none", logging_steps=10_000,
            dataloader_drop_last=True, seed=0, use_cpu=True, disable_tqdm=True, max_grad_norm=1.0, bf16=bf16)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                             loss=MultipleNegativesRankingLoss(model, scale=20.0),
                                             callbacks=[Timer()])
        trainer.train()
    cycles = [b - a for a, b in zip(ends, ends[1:])]
    return {"examples_per_s": batch / statistics.median(cycles[1:]), "step_s": cycles}


def run_synrank(groups: str, model_path: str, batch: int, steps: int, max_length: int, workers: int,
                cpus: int, length_bucketing: bool = False, cpu_amp: bool = False) -> dict:
    from synrank.config import EncoderConfig, TrainConfig
    from synrank.train import fit

    cfg = TrainConfig(encoder=EncoderConfig(model=model_path, max_query_length=max_length,
                                            max_passage_length=max_length),
                      loss="infonce", loss_params={"temperature": 0.05}, batch_size=batch // workers,
                      num_workers=workers, cpus_per_worker=max(1, cpus // workers), max_steps=steps, lr=2e-5,
                      warmup_ratio=0.1, checkpoint_every=10_000, keep_checkpoints=1, amp=False,
                      cpu_amp=cpu_amp, length_bucketing=length_bucketing)
    with tempfile.TemporaryDirectory() as out:
        result = fit(cfg, groups, out, export=False)
    h = result.metrics_history[1:]
    return {"examples_per_s": statistics.median(x["examples_per_s"] for x in h),
            "loss_share": statistics.median(x["loss_time_fraction"] for x in h),
            "step_s": [x["step_time_s"] for x in result.metrics_history]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="queries per global batch")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--length-bucketing", action="store_true", help="synrank with train.length_bucketing")
    parser.add_argument("--bf16", action="store_true",
                        help="synrank with train.cpu_amp; sentence-transformers also with bf16=True")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", help="default bench/results/train.json (train-bf16.json with --bf16)")
    args = parser.parse_args()
    args.out = args.out or str(REPO / "bench" / "results" / ("train-bf16.json" if args.bf16 else "train.json"))
    logging.basicConfig(level=logging.WARNING)

    from synrank.models import resolve_encoder
    from peer_machine import stop_embedded_ray
    from synrank.runtime import init_ray

    model_path = resolve_encoder("default")
    work = tempfile.mkdtemp(prefix="synrank-bench-train-")
    groups = os.path.join(work, "groups.parquet")
    n_groups = build_groups(Path(args.data), args.group_size, groups)
    load_before = os.getloadavg()

    repeats = []
    for r in range(args.repeats):
        stop_embedded_ray()  # the peer runs on a machine without Ray (bench/peer_machine.py)
        st = run_st(groups, model_path, args.batch, args.steps, args.max_length, args.cpus)
        st_bf16 = run_st(groups, model_path, args.batch, args.steps, args.max_length, args.cpus, bf16=True) \
            if args.bf16 else None
        init_ray(num_cpus=args.cpus)
        one = run_synrank(groups, model_path, args.batch, args.steps, args.max_length, 1, args.cpus,
                          args.length_bucketing, args.bf16)
        two = run_synrank(groups, model_path, args.batch, args.steps, args.max_length, 2, args.cpus,
                          args.length_bucketing, args.bf16)
        repeats.append({"st": st, "synrank_1": one, "synrank_2": two,
                        "ratio_1": one["examples_per_s"] / st["examples_per_s"],
                        "ratio_2": two["examples_per_s"] / st["examples_per_s"]})
        if st_bf16 is not None:
            repeats[-1].update(st_bf16=st_bf16, ratio_1_vs_st_bf16=one["examples_per_s"] / st_bf16["examples_per_s"])
        print(f"repeat {r + 1}: ST {st['examples_per_s']:.2f}/s, synrank 1w {one['examples_per_s']:.2f}/s "
              f"({repeats[-1]['ratio_1']:.2f}x), 2w {two['examples_per_s']:.2f}/s ({repeats[-1]['ratio_2']:.2f}x)"
              + (f", ST bf16 {st_bf16['examples_per_s']:.2f}/s" if st_bf16 else ""), flush=True)

    def med(key, sub=None):
        return statistics.median(x[key][sub] if sub else x[key] for x in repeats)

    summary = {
        "st_examples_per_s": med("st", "examples_per_s"),
        "synrank_1_worker_examples_per_s": med("synrank_1", "examples_per_s"),
        "synrank_2_workers_examples_per_s": med("synrank_2", "examples_per_s"),
        "ratio_1_worker": med("ratio_1"),
        "ratio_2_workers": med("ratio_2"),
        "loss_share_of_step_1_worker": med("synrank_1", "loss_share"),
        "loss_share_of_step_2_workers": med("synrank_2", "loss_share"),
    }
    if args.bf16:
        summary.update(st_bf16_examples_per_s=med("st_bf16", "examples_per_s"),
                       ratio_1_worker_vs_st_bf16=med("ratio_1_vs_st_bf16"))
    result = {
        "benchmark": "train throughput, synrank (Ray Train) vs sentence-transformers (MNRL)",
        "settings": {"model": "all-MiniLM-L6-v2 (packaged)", "data": f"cranfield human groups ({n_groups})",
                     "batch_queries": args.batch, "group_size": args.group_size, "max_length": args.max_length,
                     "steps": args.steps, "repeats": args.repeats, "cpus": args.cpus,
                     "length_bucketing": args.length_bucketing,
                     "precision": "bf16 autocast (train.cpu_amp; ST bf16=True beside)" if args.bf16 else "fp32",
                     "ray_worker_niceness": os.environ.get("RAY_worker_niceness"),
                     "st_beside_ray": False},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "summary": summary,
        "repeats": repeats,
    }
    amp = ", cpu_amp" if args.bf16 else ""
    rows = [
        ("sentence-transformers fit (MNRL)", summary["st_examples_per_s"], 1.0, None),
        *([("sentence-transformers fit, bf16=True", summary["st_bf16_examples_per_s"],
            summary["st_bf16_examples_per_s"] / summary["st_examples_per_s"], None)] if args.bf16 else []),
        (f"synrank, 1 worker{amp}", summary["synrank_1_worker_examples_per_s"], summary["ratio_1_worker"],
         summary["loss_share_of_step_1_worker"]),
        (f"synrank, 2 workers{amp}", summary["synrank_2_workers_examples_per_s"], summary["ratio_2_workers"],
         summary["loss_share_of_step_2_workers"]),
    ]
    print(f"\n{'run':36} {'examples/s':>11} {'vs ST':>7} {'loss share':>11}")
    for name, eps, ratio, share in rows:
        print(f"{name:36} {eps:11.2f} {ratio:6.2f}x {'' if share is None else f'{share:10.2%}':>11}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out} (load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
