"""Training: groups -> batches (collate), the per-worker loop (loop), Ray Train (trainer), export.

>>> from synrank.train import fit
>>> result = fit(config, "groups.parquet", "runs/x")     # TrainResult(model_dir, checkpoint, metrics_history)

The names below load their modules on first use: a Ray process that only reads groups
(synrank.train.ingest) does not import torch and the losses.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {"train_loop_per_worker": "synrank.train.loop", "TrainResult": "synrank.train.trainer",
            "build_trainer": "synrank.train.trainer", "finish": "synrank.train.trainer", "fit": "synrank.train.trainer"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'synrank.train' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
