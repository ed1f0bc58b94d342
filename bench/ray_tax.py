"""What an idle Ray costs a CPU-bound process on the same machine: synrank's training step outside
Ray, alone and with a Ray Train run idling beside it.

    .venv/bin/python bench/ray_tax.py [--batch 16] [--steps 8] [--max-length 64] [--repeats 2]

Why it exists: on this 2-core box synrank's loop takes about 15 % longer per step in a Ray Train
worker than in a plain process, which alone puts bench/train.py's ratio below 1. This benchmark
separates Ray's presence from anything synrank does inside the worker: the step runs in a plain
child process (`synrank.train.loop.run`, no Ray in it), while the parent holds an embedded Ray with a
one-worker Ray Train run whose worker only waits. Two variants per repeat, each in a fresh child:

- ``alone``: no Ray on the machine;
- ``ray``: the idle Ray Train run beside it (controller, worker, the helper actors Ray Train and Ray
  Data start, raylet, GCS).

Also recorded: the wake-ups per second of Ray's processes while idle (voluntary context switches;
every Python Ray worker runs a 10 ms timer in its task loop), and the child's involuntary context
switches per second (how often its threads were preempted).

Data and step as bench/train.py's synrank side with 1 worker: Cranfield human groups, k = 4, the
packaged all-MiniLM-L6-v2, InfoNCE, AdamW 2e-5, fp32, all of the box's cores as torch threads.
Seconds per step: the median over steps after the first. Writes bench/results/ray_tax.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# As in bench/train.py: Ray's workers at the child's priority (Ray's default niceness is 15).
os.environ.setdefault("RAY_worker_niceness", "0")

VARIANTS = ("alone", "ray")


def child_step_time(groups: str, batch: int, steps: int, max_length: int) -> dict:
    from synrank.config import EncoderConfig, TrainConfig
    from synrank.train.loop import run

    cfg = TrainConfig(encoder=EncoderConfig(max_query_length=max_length, max_passage_length=max_length),
                      loss="infonce", loss_params={"temperature": 0.05}, batch_size=batch, max_steps=steps,
                      lr=2e-5, warmup_ratio=0.1, checkpoint_every=10_000, amp=False,
                      cpus_per_worker=os.cpu_count() or 1)
    start_usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result, _ = run(cfg, groups)
    usage, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
    history = result["history"]
    return {"step_s": statistics.median(h["step_time_s"] for h in history[1:] or history),
            "preempted_per_s": (usage.ru_nivcsw - start_usage.ru_nivcsw) / wall}


def run_child(args: argparse.Namespace, groups: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", groups, "--batch", str(args.batch),
                          "--steps", str(args.steps), "--max-length", str(args.max_length)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the step process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ray_processes() -> list:
    """This driver and every process of its Ray session (raylet, GCS, workers, agents)."""
    import psutil

    me = psutil.Process()
    session = [p for p in psutil.process_iter(["cmdline"])
               if p.pid != me.pid and any("ray" in part for part in p.info["cmdline"] or [])
               and not any(part.endswith("ray_tax.py") for part in p.info["cmdline"] or [])]
    return [me, *session]


def voluntary_switches(processes: list) -> int:
    total = 0
    for proc in processes:
        try:
            total += proc.num_ctx_switches().voluntary
        except Exception:  # a process that ended meanwhile
            pass
    return total


class IdleTrainRun:
    """An embedded Ray with a one-worker Ray Train run whose worker waits until `stop`."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ray-tax-")
        self.ready, self.release = Path(self.dir, "ready"), Path(self.dir, "release")
        self.thread: threading.Thread | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        from synrank.runtime import init_ray

        init_ray(num_cpus=os.cpu_count())
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        ready, release = str(self.ready), str(self.release)

        def wait_loop(_config):
            Path(ready).touch()
            while not os.path.exists(release):
                time.sleep(0.2)

        trainer = TorchTrainer(wait_loop, scaling_config=ScalingConfig(num_workers=1),
                               run_config=RunConfig(storage_path=self.dir, name="idle"))
        self.thread = threading.Thread(target=trainer.fit, daemon=True)
        self.thread.start()
        deadline = time.time() + timeout_s
        while not self.ready.exists():
            if time.time() > deadline:
                raise RuntimeError(f"the idle Ray Train worker did not start within {timeout_s:.0f} s")
            time.sleep(0.5)
        time.sleep(3)  # let the controller settle into its polling

    def stop(self) -> None:
        import ray

        self.release.touch()
        if self.thread is not None:
            self.thread.join(timeout=60)
        ray.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)


def one_repeat(args: argparse.Namespace, groups: str) -> dict:
    results = {"alone": run_child(args, groups)}
    idle = IdleTrainRun()
    idle.start()
    try:
        processes = ray_processes()
        before = voluntary_switches(processes)
        time.sleep(5)
        results["ray_processes"] = len(processes)
        results["ray_wakeups_per_s"] = (voluntary_switches(processes) - before) / 5
        results["ray"] = run_child(args, groups)
    finally:
        idle.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "ray_tax.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child_step_time(args.child, args.batch, args.steps, args.max_length)))
        return 0
    if not sys.platform.startswith("linux"):
        parser.error("bench/ray_tax.py counts context switches through /proc: it runs on Linux only")

    sys.path.insert(0, str(REPO / "bench"))
    from train import build_groups

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        groups = os.path.join(tmp, "groups.parquet")
        n_groups = build_groups(Path(args.data), 4, groups)
        repeats = []
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats} ...", flush=True)
            repeats.append(one_repeat(args, groups))

    median = {v: statistics.median(r[v]["step_s"] for r in repeats) for v in VARIANTS}
    summary = {
        "step_s": median,
        "ray_vs_alone": median["ray"] / median["alone"],
        "ray_wakeups_per_s": statistics.median(r["ray_wakeups_per_s"] for r in repeats),
        "preempted_per_s": {v: statistics.median(r[v]["preempted_per_s"] for r in repeats) for v in VARIANTS},
    }
    print(f"\n{'variant':16s} {'s/step':>8s} {'vs alone':>9s} {'preempted/s':>12s}")
    for v in VARIANTS:
        print(f"{v:16s} {median[v]:8.3f} {median[v] / median['alone']:8.2f}x "
              f"{summary['preempted_per_s'][v]:12.0f}")
    print(f"Ray's processes while idle: {summary['ray_wakeups_per_s']:.0f} wake-ups/s "
          f"({repeats[0]['ray_processes']} processes)")
    out = {
        "benchmark": "ray_tax",
        "settings": {"batch": args.batch, "steps": args.steps, "max_length": args.max_length,
                     "repeats": args.repeats, "groups": n_groups, "k": 4},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "summary": summary,
        "repeats": repeats,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out} (load average before/after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
