"""Shared fixtures: the real collections in ../shared/data and one embedded Ray per test session.

`ray.init()` costs ~8 s here, so every test that needs Ray shares `ray_session`. Area-specific
fixtures live in tests/fixtures_*.py and are registered in `pytest_plugins` below.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins: list[str] = ["fixtures_generate", "fixtures_s3", "fixtures_cluster", "fixtures_autoscaling",
                             "fixtures_minilm"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SYNRANK_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def remove_checkpoint_staging_left_behind():
    """A training worker killed mid-checkpoint (node-loss and kill tests) never removes its local
    staging folder (synrank-ckpt-* in the system temp dir, synrank.train.loop); remove what the
    session left there."""
    staging = lambda: set(Path(tempfile.gettempdir()).glob("synrank-ckpt-*"))  # noqa: E731
    before = staging()
    yield
    for path in staging() - before:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared test collections are missing: {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray (loopback, 2 CPUs) for the whole session."""
    from synrank.runtime import init_ray, shutdown

    resources = init_ray(num_cpus=max(2, os.cpu_count() or 2))
    yield resources
    shutdown()
