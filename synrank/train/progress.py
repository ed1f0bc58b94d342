"""The line a training run logs at each report (rank 0 only): where it is and how long is left.

>>> progress_line({"step": 5, "epoch": 1.25, "loss": 0.5742, "lr": 8e-06, "examples_per_s": 5.87}, total=6,
...               elapsed_s=20.0, steps_done=4)
'step 5/6 (epoch 1.25): loss 0.5742, lr 8e-06, 5.9 queries/s, about 5 s left'
"""

from __future__ import annotations

from typing import Any


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_line(metrics: dict[str, Any], total: int, elapsed_s: float, steps_done: int) -> str:
    """`metrics` of the step just taken; `elapsed_s` and `steps_done` since this run (or resume)
    began, from which the time left is estimated at the average pace so far."""
    step = metrics["step"]
    left = (total - step) * elapsed_s / steps_done if steps_done > 0 else float("nan")
    when = "done" if step >= total else (f"about {_duration(left)} left" if left == left else "")
    parts = [f"loss {metrics['loss']:.4f}", f"lr {metrics['lr']:.3g}", f"{metrics['examples_per_s']:.1f} queries/s",
             when]
    return f"step {step}/{total} (epoch {metrics['epoch']:.2f}): " + ", ".join(p for p in parts if p)
