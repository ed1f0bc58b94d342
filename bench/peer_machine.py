"""The peers run on a machine without Ray, as their users have it.

An idle embedded Ray wakes several hundred times a second (every Python Ray worker's task loop has a
10 ms timer); on a small CPU box that slows a CPU-bound process beside it by about 13 %
(bench/ray_tax.py). A peer measured beside synrank's idle Ray would pay that and flatter synrank's
ratio, so the benchmarks shut the embedded Ray down for the peer's run and start it again after.
"""

from __future__ import annotations

import time


def stop_embedded_ray(timeout_s: float = 30.0) -> None:
    """Shut this process's Ray down and wait until the raylet and GCS have exited."""
    import psutil
    import ray

    ray.shutdown()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not [p for p in psutil.process_iter(["name"]) if p.info["name"] in ("raylet", "gcs_server")]:
            return
        time.sleep(0.5)
    print(f"warning: Ray processes still running {timeout_s:.0f} s after shutdown", flush=True)
