"""GradCache's memory and time: synrank's training loop with and without `train.grad_cache_chunk`,
on the same groups, batch and lengths, each in a fresh process so that its peak RSS is its own.

    .venv/bin/python bench/grad_cache.py [--batch 32] [--steps 3] [--max-length 256] [--chunk 16]

Data: Cranfield human groups (5 grades, BM25 negatives), k = 4 passages per query; the packaged
all-MiniLM-L6-v2, InfoNCE, fp32, one worker in this process (`synrank.train.loop.run`, the loop a
Ray Train worker runs). Reported per variant: the peak RSS of its process (activations dominate it
at this batch; the model and optimizer are the same for both), seconds per step (median after the
first), and the losses, which must agree (GradCache changes memory, not the step; dropout is off so
the two runs draw nothing random). On a GPU the same comparison is part of `bench/gpu_check.sh`.

Writes bench/results/grad_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def one_run(groups: str, batch: int, steps: int, max_length: int, chunk: int | None) -> dict:
    from synrank.config import EncoderConfig, TrainConfig
    from synrank.train.loop import run

    cfg = TrainConfig(encoder=EncoderConfig(max_query_length=max_length, max_passage_length=max_length),
                      loss="infonce", batch_size=batch, max_steps=steps, lr=2e-5, checkpoint_every=10_000,
                      dropout=0.0, grad_cache_chunk=chunk, cpus_per_worker=os.cpu_count() or 1)
    result, _ = run(cfg, groups)
    history = result["history"]
    return {"grad_cache_chunk": chunk, "losses": [h["loss"] for h in history],
            "step_s": statistics.median(h["step_time_s"] for h in history[1:] or history),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "grad_cache.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one variant, in its own process
        groups, chunk = args.child.rsplit("::", 1)
        print(json.dumps(one_run(groups, args.batch, args.steps, args.max_length, int(chunk) or None)))
        return 0

    from synrank.config import GroupsConfig
    from synrank.data.groups import build_groups, write_groups

    load_before = os.getloadavg()
    groups = str(Path(tempfile.mkdtemp(prefix="synrank-bench-gc-")) / "groups.parquet")
    table, stats = build_groups(GroupsConfig(source="human", collection=str(Path(args.data) / "cranfield"),
                                             qrels_levels=5, n_levels=5, group_size=4, bm25_negatives=20))
    write_groups(table, groups, stats)
    runs = {}
    for name, chunk in (("plain", 0), ("grad_cache", args.chunk)):
        started = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--steps", str(args.steps),
                              "--max-length", str(args.max_length), "--child", f"{groups}::{chunk}"],
                             check=True, capture_output=True, text=True)
        runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
        runs[name]["wall_s"] = time.perf_counter() - started
    plain, cached = runs["plain"], runs["grad_cache"]
    max_loss_diff = max(abs(a - b) for a, b in zip(plain["losses"], cached["losses"]))
    result = {
        "settings": vars(args) | {"child": None, "model": "all-MiniLM-L6-v2 (packaged)", "group_size": 4},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_before": load_before,
                    "load_after": os.getloadavg()},
        "runs": runs,
        "peak_rss_ratio": cached["peak_rss_mib"] / plain["peak_rss_mib"],
        "step_time_ratio": cached["step_s"] / plain["step_s"],
        "max_loss_difference": max_loss_diff,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"batch {args.batch} x 4 passages, {args.max_length} tokens, chunk {args.chunk}")
    print(f"{'':12} {'peak RSS MiB':>13} {'s/step':>8}")
    for name, r in runs.items():
        print(f"{name:12} {r['peak_rss_mib']:13.0f} {r['step_s']:8.2f}")
    print(f"GradCache / plain: peak RSS {result['peak_rss_ratio']:.2f}x, step time {result['step_time_ratio']:.2f}x, "
          f"max loss difference {max_loss_diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
