"""Pools leave room for the tasks that feed them, and a stage that cannot make progress says what
it waits for and what the cluster has (synrank.runtime.watch_progress) instead of hanging."""

from __future__ import annotations

import logging
import time


from synrank.llm.pool import cpus_per_engine_for
from synrank.runtime import watch_progress


def test_cpu_engines_leave_room_for_the_ray_data_tasks():
    assert cpus_per_engine_for(1) == 0.5
    assert cpus_per_engine_for(2) == 1.0
    assert cpus_per_engine_for(3) == 2.0
    assert cpus_per_engine_for(16) == 15.0
    for n in (1, 2, 4, 64):  # a map task fits beside the engines (the generate_shard feeders ask for no CPU)
        assert n - cpus_per_engine_for(n) >= 0.3


def test_a_stall_warning_names_what_is_waited_for_and_what_the_cluster_has(ray_session, caplog):
    import ray

    class _Hog:  # defined here: pickled by value (Ray workers may not see tests/)
        def ping(self) -> int:
            return 1

    free = ray.available_resources().get("CPU", 0.0)
    total = ray.cluster_resources()["CPU"]
    hog = ray.remote(_Hog)
    blocker = hog.options(num_cpus=free).remote() if free > 0 else None
    if blocker is not None:
        ray.get(blocker.ping.remote())
    waiting = hog.options(num_cpus=1).remote()  # cannot be placed while the blocker holds every CPU
    caplog.set_level(logging.WARNING, logger="synrank.runtime")
    try:
        started = time.monotonic()
        with watch_progress("test stage: 1 shard", stall_s=2) as watch:
            while time.monotonic() - started < 30:
                if any("{CPU: 1}" in r.getMessage() for r in caplog.records):
                    break
                time.sleep(0.2)
        took = time.monotonic() - started
        messages = [r.getMessage() for r in caplog.records if r.name == "synrank.runtime"]
        assert messages, "no stall warning within 30 s"
        text = next((m for m in messages if "{CPU: 1}" in m), messages[-1])
        assert "{CPU: 1}" in text, text  # the request that waits
        assert "test stage: 1 shard" in text and "nothing finished for" in text
        assert "_Hog (PENDING_CREATION)" in text
        assert f"{{CPU: {total:g}}} in total, {{CPU: 0}} available" in text and "CPU 0/" in text  # what the cluster has, per node
        assert took < 20 and watch.warnings <= took / 2 + 1  # no more often than every stall_s
    finally:
        for actor in (waiting, blocker):
            if actor is not None:
                ray.kill(actor)


def test_ticks_keep_the_watch_quiet(ray_session, caplog):
    caplog.set_level(logging.WARNING, logger="synrank.runtime")
    with watch_progress("busy stage", stall_s=1) as watch:
        for _ in range(15):
            time.sleep(0.2)
            watch.tick()
    assert watch.warnings == 0 and not [r for r in caplog.records if r.name == "synrank.runtime"]
    with watch_progress("off", stall_s=0) as watch:
        time.sleep(0.5)
    assert watch.warnings == 0
