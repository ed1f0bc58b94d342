"""Ray Train: the TorchTrainer around the per-worker loop, checkpoints, faults and export.

>>> result = fit(TrainConfig(loss="wasserstein", num_workers=2), "groups.parquet", "runs/w2")
>>> result.model_dir            # a sentence-transformers directory
>>> result.metrics_history[-1]  # {"step": ..., "loss": ..., "lr": ..., "examples_per_s": ...}

Inside a Ray Tune trial (a function trainable) call ``fit`` as above: when the run config names no
callbacks, ``build_trainer`` adds Ray Tune's ``TuneReportCallback``, so every Train report (loss,
lr, examples/s, checkpoint path) reaches Tune and ASHA-style schedulers. To control the pieces,
build the trainer yourself::

    trainer = build_trainer(config, groups, out, storage_url=trial_dir)
    result = trainer.fit()
    finish(result, config, groups, out)          # export model, config, curve -> TrainResult

(``resolve(config, groups, out)`` first checks the config and fills in group size and steps.)

Checkpoints go to ``<storage_path>/<name>/checkpoint_<step>`` (default ``<out_dir>/ray/train``),
every ``checkpoint_every`` steps and at the end, keeping ``keep_checkpoints``. A worker that dies
costs at most the steps since the last checkpoint (``max_failures`` restarts); running ``fit`` again
on the same output directory resumes the run from its latest checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

from synrank import storage
from synrank.config import TrainConfig

log = logging.getLogger(__name__)

RUN_NAME = "train"


@dataclass
class TrainResult:
    model_dir: str
    checkpoint: Any  # ray.train.Checkpoint of the final state
    metrics_history: list[dict[str, Any]]
    resumes: list[int] = field(default_factory=list)  # the step each restart resumed from
    config: TrainConfig | None = None
    out_dir: str = ""


def _abs(path: str) -> str:
    return storage.absolute(path)


def ray_storage(url: str) -> dict[str, Any]:
    """``RunConfig`` storage arguments for `url`: a local absolute path, or for a remote URL its
    path with the pyarrow filesystem that reaches it (same credentials and endpoint as storage)."""
    if storage.is_local(url):
        return {"storage_path": storage.absolute(url)}
    fs, path = storage.pyarrow_filesystem(url)
    return {"storage_path": path, "storage_filesystem": fs}


def resolve(config: TrainConfig, groups_path: str, out_dir: str) -> TrainConfig:
    """Check the config against the groups before any worker starts, and fill in what the run will
    use: the groups path, the output directory, the positive threshold, the group size and the
    number of steps."""
    from synrank.train.ingest import groups_shape, with_positive_threshold
    from synrank.train.loop import build_loss

    n, k = groups_shape(groups_path)
    config = with_positive_threshold(config, groups_path)
    config = with_graded_target(config, config.group_size or k, groups_path)
    build_loss(config)  # unknown loss or parameter: a clear error now, not in a worker
    global_batch = config.batch_size * config.num_workers
    per_epoch = (n // global_batch) // config.grad_accumulation
    if per_epoch == 0:
        raise ValueError(f"{n} training groups are fewer than one optimizer step needs: batch_size "
                         f"{config.batch_size} x {config.num_workers} worker(s) x grad_accumulation "
                         f"{config.grad_accumulation} = {global_batch * config.grad_accumulation}")
    if config.fail_at_step is not None and config.max_failures == 0:
        log.warning("fail_at_step=%s with max_failures=0: the run will fail", config.fail_at_step)
    return config.model_copy(update={
        "groups": str(groups_path),
        "out": str(out_dir),
        "group_size": config.group_size or k,
        "max_steps": config.max_steps or config.epochs * per_epoch,
    })


#: above this share of the graded target on non-relevant candidates, resolve warns
FLAT_TARGET_SHARE = 0.5


def with_graded_target(config: TrainConfig, group_size: int, groups_path: str, announce: bool = True) -> TrainConfig:
    """For a list-wise loss (`synrank.losses.targets`): ``config`` with the target temperature that
    ``target_nonrelevant_share`` asks for, if set; then the share of its target on non-relevant
    candidates, for a group with one passage per grade (best first) at this run's gathered batch,
    is logged (if `announce`), with a warning above FLAT_TARGET_SHARE. Other losses: ``config`` unchanged."""
    from synrank.losses._common import DEFAULT_TARGET_TEMPERATURE
    from synrank.losses.targets import GRADED_TARGET_LOSSES, target_mass_on_nonrelevant, target_temperature_for_share
    from synrank.train.ingest import groups_scale

    if config.loss not in GRADED_TARGET_LOSSES:
        return config
    n_levels, _ = groups_scale(groups_path)
    grades = list(range(n_levels - 1, -1, -1))[:group_size]
    candidates = config.batch_size * config.num_workers * group_size
    if config.target_nonrelevant_share is not None:
        tau_t = target_temperature_for_share(grades, candidates, config.target_nonrelevant_share)
        given = config.loss_params.get("target_temperature")
        if given is not None and not math.isclose(float(given), tau_t, rel_tol=1e-6):  # not one this set before
            raise ValueError("train.target_nonrelevant_share and train.loss_params.target_temperature both set the "
                             "list-wise target's temperature; keep one")
        config = config.model_copy(update={"loss_params": {**config.loss_params, "target_temperature": tau_t}})
    if not announce:
        return config
    tau_t = float(config.loss_params.get("target_temperature", DEFAULT_TARGET_TEMPERATURE))
    share = target_mass_on_nonrelevant(grades, candidates, tau_t)
    what = (f"train.loss={config.loss} at target_temperature {tau_t:.3g}: the target puts {share:.0%} of a query's "
            f"mass on non-relevant candidates (a group graded {grades} among {candidates} in-batch candidates)")
    if share > FLAT_TARGET_SHARE:
        log.warning("%s, so the loss pulls them towards the query; a lower train.loss_params.target_temperature "
                    "(or train.target_nonrelevant_share) concentrates the target on the graded passages", what)
    else:
        log.info(what)
    return config


def loop_config(config: TrainConfig, groups_path: str, out_dir: str) -> dict[str, Any]:
    """The ``train_loop_config`` of ``train_loop_per_worker``, with the group size set: every worker
    pads to it, so it cannot come from one worker's shard."""
    from synrank.train.ingest import groups_shape, with_positive_threshold

    if config.group_size is None:
        config = config.model_copy(update={"group_size": groups_shape(groups_path)[1]})
    resolved = config.groups == str(groups_path)  # by `resolve`, which has announced the target already
    config = with_positive_threshold(config, groups_path)
    config = with_graded_target(config, config.group_size, groups_path, announce=not resolved)
    return {"train": config.model_dump(mode="json"), "groups_path": _abs(groups_path), "out_dir": _abs(out_dir)}


def groups_inputs(config: TrainConfig, groups_path: str, out_dir: str) -> dict[str, Any]:
    """The ``TorchTrainer`` arguments that carry the groups: the loop config, and the groups as a Ray
    Dataset that Ray Train shares out, one equal shard per worker (``synrank.train.ingest``)."""
    from synrank.runtime import with_progress_bars
    from synrank.train.ingest import DATASET, groups_dataset, shard_config

    # Ray Data's bars would show the groups streaming out to the workers (seconds, before the first
    # step); the run's progress is the loop's line per report.
    groups = with_progress_bars(groups_dataset(groups_path), False)
    return {"train_loop_config": loop_config(config, groups_path, out_dir),
            "datasets": {DATASET: groups}, "dataset_config": shard_config()}


def _in_tune_trial() -> bool:
    try:
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session
    except ImportError:  # pragma: no cover - Ray without Tune
        return False
    return bool(_in_tune_session())


def worker_resources(config: TrainConfig, extra: dict[str, float] | None = None) -> dict[str, float]:
    """What one Train worker asks of Ray: its CPUs, a GPU when training on GPUs, the training stage's
    custom resource (`runtime.stage_resources.train`, which brings up a training node on an
    autoscaling cluster) and `extra` (a study's `worker_resources`)."""
    from synrank.runtime import stage_options

    resources: dict[str, float] = {"CPU": config.cpus_per_worker}
    if config.use_gpu:
        resources["GPU"] = 1
    resources.update(stage_options("train").get("resources", {}))
    resources.update(extra or {})
    return resources


def build_trainer(config: TrainConfig, groups_path: str, out_dir: str, run_config_overrides: dict | None = None, *,
                  name: str = RUN_NAME, storage_url: str | None = None, callbacks: list | None = None,
                  extra_resources: dict[str, float] | None = None):
    """A ``TorchTrainer`` for ``config`` (gloo on CPU, NCCL on GPU); not started.

    The one place a Ray Train run is set up, for ``fit`` and for a study trial alike: both get the
    same workers, checkpoints (``keep_checkpoints``) and restarts (``max_failures``). What a trial
    sets differently: the run's ``name`` and ``storage_url`` (the run lives at
    ``<storage_url>/<name>``, default ``<out_dir>/ray/train``), its Train ``callbacks`` (default none,
    or Tune's ``TuneReportCallback`` inside a Tune trial) and ``extra_resources`` per worker.
    ``run_config_overrides`` replaces any ``RunConfig`` argument (a ``storage_path`` URL included).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    from synrank.train.loop import train_loop_per_worker
    from synrank.train.torch_trainer import SynrankTorchTrainer

    resources = worker_resources(config, extra_resources)
    run_kwargs: dict[str, Any] = {
        "name": name,
        **ray_storage(storage_url or storage.join(out_dir, "ray")),
        "checkpoint_config": CheckpointConfig(num_to_keep=config.keep_checkpoints),
        "failure_config": FailureConfig(max_failures=config.max_failures),
    }
    if callbacks is not None:
        run_kwargs["callbacks"] = list(callbacks)
    overrides = dict(run_config_overrides or {})
    if "storage_path" in overrides and "storage_filesystem" not in overrides:
        run_kwargs.pop("storage_filesystem", None)
        overrides.update(ray_storage(str(overrides["storage_path"])))
    run_kwargs.update(overrides)
    if "callbacks" not in run_kwargs and _in_tune_trial():
        # Inside a Ray Tune trial: forward every Train report to Tune (the current Train/Tune pattern).
        from ray.tune.integration.ray_train import TuneReportCallback

        run_kwargs["callbacks"] = [TuneReportCallback()]
    return SynrankTorchTrainer(
        train_loop_per_worker,
        **groups_inputs(config, groups_path, out_dir),
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        run_config=RunConfig(**run_kwargs),
    )


def _saved_state(checkpoint) -> dict[str, Any]:
    import torch

    from synrank.train.loop import STATE_FILE

    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=False)


def finish(result, config: TrainConfig, groups_path: str, out_dir: str, export: bool = True) -> TrainResult:
    """Turn a finished Ray Train ``Result`` into a TrainResult: export the model from the final
    checkpoint, write the resolved config and the training curve."""
    from synrank.train.export import export_model, write_config, write_curve

    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"training in {out_dir} finished without a checkpoint")
    returned = result.return_value or {}
    history = returned.get("history")
    resumes = returned.get("resumes", [])
    if history is None:  # e.g. an already finished run resumed: read it from the final checkpoint
        saved = _saved_state(result.checkpoint)
        history, resumes = saved["history"], saved["resumes"]
    storage.makedirs(out_dir)
    model_dir = ""
    if export:
        with result.checkpoint.as_directory() as d:
            model_dir = export_model(d, config, out_dir)
    write_config(config, out_dir)
    write_curve(history, out_dir, title=f"{config.loss} on {storage.name(str(groups_path))}")
    return TrainResult(model_dir, result.checkpoint, list(history), list(resumes), config, str(out_dir))


def fit(config: TrainConfig, groups_path: str, out_dir: str, run_config_overrides: dict | None = None, *,
        export: bool = True) -> TrainResult:
    """Train on Ray Train and export; see the module doc. Starts an embedded Ray if none is
    connected (``synrank.runtime.init_ray``)."""
    import ray

    from synrank.runtime import ensure_node, init_ray

    config = resolve(config, groups_path, out_dir)
    if not ray.is_initialized():
        init_ray()
    ensure_node(worker_resources(config), f"training ({config.num_workers} worker(s))")
    trainer = build_trainer(config, groups_path, out_dir, run_config_overrides)
    log.info("training %s on %s with %d worker(s), %d steps, out %s", config.loss, groups_path,
             config.num_workers, config.max_steps, out_dir)
    result = trainer.fit()
    return finish(result, config, groups_path, out_dir, export=export)
