"""Training: groups -> batches (collate), the per-worker loop (loop), Ray Train (trainer), export.

>>> from synrank.train import fit
>>> result = fit(config, "groups.parquet", "runs/x")     # TrainResult(model_dir, checkpoint, metrics_history)
"""

from synrank.train.loop import train_loop_per_worker
from synrank.train.trainer import TrainResult, build_trainer, finish, fit

__all__ = ["TrainResult", "build_trainer", "finish", "fit", "train_loop_per_worker"]
