"""`run_study(study)`: a Ray Tune experiment over the study's trials, then its report.

- Trials run ``synrank.study.trial.run_trial`` (a function trainable that fits its own
  ``TorchTrainer``). The trial driver itself holds no CPU; its Train workers do. At most
  ``max_concurrent_trials`` run at once: by default the cluster's CPUs (GPUs when training on GPUs)
  divided by one trial's workers, so the trials' Train workers never wait on each other.
- A failing trial is recorded (Tune's error, ``status.json``, ``error.txt``) and the study goes on
  (``fail_fast`` off; ``trial_retries`` retries first).
- Everything lives under ``study_dir`` (local path or fsspec URL). Running a study whose
  directory holds a Tune experiment resumes it with ``Tuner.restore``: finished and failed trials
  are kept, unfinished ones run (from their last Train checkpoint). A changed configuration is an
  error unless ``fresh=True``, which starts a new Tune experiment in the same directory; trials
  whose ``result.json`` is complete are not trained again either way.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from synrank.config import ConfigError, changed_keys, to_yaml
from synrank.study.config import StudyConfig
from synrank.study.errors import summarize_error
from synrank.study.space import TrialSpec, expand, tune_param_space
from synrank.study.store import StudyStore

log = logging.getLogger(__name__)

EXPERIMENT = "tune"
STATUS = "status.json"
TRIAL_DRIVER_MEMORY = 512 * 1024**2  # bytes: torch, the tokenizer and one encoder for export


@dataclass
class TrialOutcome:
    trial_id: str
    status: str  # completed | failed | stopped
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyResult:
    study_dir: str
    trials: list[TrialOutcome]
    report: dict[str, str]
    restored: bool
    new_trials: int  # trials that trained in this call (not re-reported ones)
    seconds: float

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.trials)


def max_concurrent(study: StudyConfig, cpus: float, gpus: float) -> int:
    """Trials that fit side by side: the cluster's CPUs (or GPUs) over one trial's workers."""
    if study.max_concurrent_trials:
        return study.max_concurrent_trials
    train = study.base.train
    if train.use_gpu:
        n = int(gpus // max(1, train.num_workers))
    else:
        n = int(cpus // max(1, train.num_workers * train.cpus_per_worker))
    return max(1, n)


def _comparable(study: StudyConfig) -> dict[str, Any]:
    """What must not change for a Tune experiment to be resumed: the trials and how they are made."""
    data = study.model_dump(mode="json")
    for key in ("max_concurrent_trials", "report", "keep_models", "keep_checkpoints", "trial_retries"):
        data.pop(key, None)
    data["base"].pop("runtime", None)
    return data


def _check_same_study(store: StudyStore, study: StudyConfig, fresh: bool) -> None:
    path = store.path("study.json")
    old = store.read_json_or(path)
    if old is None or fresh:
        return
    defaults = _comparable(StudyConfig.model_construct())
    changed = changed_keys(old, _comparable(study), defaults)
    if changed:
        raise ConfigError(f"{store.root} holds a study with a different configuration (changed: {', '.join(changed[:8])}"
                          f"{' ...' if len(changed) > 8 else ''}); use another study_dir, or --fresh to start a new "
                          "Tune experiment there (completed trials are reused unless trained under another base config)")


def _trainable(study: StudyConfig, views: dict[str, list[dict[str, Any]]]):
    from ray import tune

    from synrank.study.trial import run_trial

    # The trial driver only waits on its TorchTrainer and evaluates; the Train workers hold the CPUs.
    # Tune needs a non-empty request: the driver asks for the memory it uses, and no CPU.
    resources = {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY, **study.trial_resources}
    return tune.with_resources(tune.with_parameters(run_trial, study=study.model_dump(mode="json"), views=views),
                               resources)


def _scheduler_and_searcher(study: StudyConfig, concurrency: int):
    metric, mode = study.dev_measure_key, "max"
    kwargs: dict[str, Any] = {}
    if study.asha.enabled:
        from ray.tune.schedulers import ASHAScheduler

        train = study.base.train
        evals = math.ceil(train.max_steps / study.asha.eval_every) + 1 if train.max_steps else 10_000
        kwargs["scheduler"] = ASHAScheduler(time_attr="dev_evals", max_t=max(evals, study.asha.grace_period + 1),
                                            grace_period=study.asha.grace_period,
                                            reduction_factor=study.asha.reduction_factor,
                                            brackets=study.asha.brackets)
    algo = study.search.algorithm
    if algo in ("optuna", "hyperopt"):
        from ray.tune.search import ConcurrencyLimiter

        try:
            if algo == "optuna":
                from ray.tune.search.optuna import OptunaSearch

                searcher = OptunaSearch(seed=study.search.seed)
            else:
                from ray.tune.search.hyperopt import HyperOptSearch

                searcher = HyperOptSearch(random_state_seed=study.search.seed)
        except (ImportError, AssertionError) as exc:
            raise ConfigError(f"search.algorithm={algo}: the {algo} package is not installed ({exc}); "
                              "pip install it, or use grid / random") from None
        kwargs["search_alg"] = ConcurrencyLimiter(searcher, max_concurrent=concurrency)
    if kwargs:
        kwargs.update(metric=metric, mode=mode)
    return kwargs


def _trial_dirname(study: StudyConfig):
    def name(trial) -> str:
        spec = TrialSpec.from_tune(study, trial.config)
        if study.search.algorithm in ("grid", "random"):
            return spec.trial_id
        return f"{spec.trial_id}_{trial.trial_id}"

    return name


def ensure_synthetic(study: StudyConfig, store: StudyStore, address: str | None) -> None:
    """Generate the synthetic passages for the training queries once (cached at base.groups.synthetic).

    A finished generation leaves its report (``_report.json``); then nothing is generated. A missing
    or interrupted one is (re)started and resumes at the first unfinished shard."""
    from synrank.storage import exists
    from synrank.study.store import join

    g = study.base.groups
    if not ({"synthetic", "mixed"} & set(study.all_sources)) or not g.synthetic:
        return
    finished = exists(join(g.synthetic, "_report.json"))
    if finished or (exists(g.synthetic) and not study.synthetic.generate):
        return
    if not study.synthetic.generate:
        raise FileNotFoundError(f"base.groups.synthetic={g.synthetic} does not exist and synthetic.generate is off; "
                                "run `synrank generate` first")
    from synrank.study.synthetic import generate_for_study

    generate_for_study(study, store, address)


def run_study(study: StudyConfig, *, address: str | None = None, fresh: bool = False,
              retry_failed: bool = False, write_report: bool = True) -> StudyResult:
    """Run (or resume) `study`; returns what happened to each trial and the report's paths.

    Resuming keeps failed trials failed unless `retry_failed` (then they start over)."""
    from ray import tune

    from synrank.runtime import init_ray_for
    from synrank.study.collections import resolve_views

    from synrank.study.config import absolutize

    started = time.perf_counter()
    started_at = time.time()
    study = absolutize(study)
    specs = expand(study)  # validates every configuration before anything starts
    store = StudyStore(study.study_dir)
    _check_same_study(store, study, fresh)
    rt = study.base.runtime
    resources = init_ray_for(rt, address)
    store.write_text(to_yaml(study), store.config_path)
    store.write_json(_comparable(study), store.path("study.json"))

    ensure_synthetic(study, store, address)
    views = {part: [v.to_dict() for v in vs] for part, vs in resolve_views(study).items()}
    store.write_json(views, store.views_path)

    concurrency = max_concurrent(study, resources.num_cpus, resources.num_gpus)
    trainable = _trainable(study, views)
    from synrank.train.trainer import ray_storage

    tune_dir = store.tune_dir
    tune_storage = ray_storage(store.tune_storage)
    fs_arg = {k: v for k, v in tune_storage.items() if k == "storage_filesystem"}
    tune_path = ray_storage(tune_dir)["storage_path"]  # the path inside fs_arg's filesystem
    restored = False
    if not fresh and tune.Tuner.can_restore(tune_path, **fs_arg):
        log.info("resuming the Tune experiment in %s", tune_dir)
        tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=retry_failed, **fs_arg)
        restored = True
    else:
        if fresh and tune.Tuner.can_restore(tune_path, **fs_arg):
            old = f"{tune_dir}.{int(time.time())}"
            log.info("--fresh: moving the old Tune experiment to %s", old)
            _move(tune_dir, old)
        extra = _scheduler_and_searcher(study, concurrency)
        num_samples = study.search.num_samples if study.search.algorithm in ("optuna", "hyperopt") else 1
        log.info("study %s: %s trials, up to %d at a time (%d CPUs, %d GPUs)", study.name,
                 len(specs) if study.search.algorithm in ("grid", "random") else num_samples, concurrency,
                 resources.num_cpus, resources.num_gpus)
        tuner = tune.Tuner(
            trainable,
            param_space=tune_param_space(study),
            tune_config=tune.TuneConfig(num_samples=num_samples, max_concurrent_trials=concurrency,
                                        reuse_actors=False,  # a trial's actor owns its Train run: never reuse
                                        trial_dirname_creator=_trial_dirname(study),
                                        trial_name_creator=_trial_dirname(study), **extra),
            run_config=tune.RunConfig(name=EXPERIMENT, **tune_storage,
                                      failure_config=tune.FailureConfig(max_failures=study.trial_retries,
                                                                        fail_fast=False),
                                      verbose=1),
        )
    grid = tuner.fit()
    outcomes, new_trials = _record(grid, study, store, started_at)
    report_paths: dict[str, str] = {}
    if write_report:
        from synrank.study.report import write_report as _write

        report_paths = _write(study.study_dir, study)
    result = StudyResult(store.root, outcomes, report_paths, restored, new_trials, time.perf_counter() - started)
    log.info("study %s: %d completed, %d failed, %d stopped early, %d trained now, in %.0f s; report: %s",
             study.name, result.count("completed"), result.count("failed"), result.count("stopped"), new_trials,
             result.seconds, report_paths.get("markdown", "-"))
    return result


def _move(src: str, dst: str) -> None:
    from synrank import storage

    fs, p = storage.filesystem(src)
    _, q = storage.filesystem(dst)
    fs.mv(p, q, recursive=True)


def _trial_config(res) -> dict[str, Any]:
    """A Tune result's trial config; a trial that failed before reporting has none in its result,
    then it comes from the params.json Tune wrote when the trial started."""
    if res.config:
        return res.config
    fs = res.filesystem
    if fs is None:
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(res.path)
    else:
        path = res.path
    with fs.open_input_stream(f"{path.rstrip('/')}/params.json") as handle:
        return json.loads(handle.read().decode("utf-8"))


def _record(grid, study: StudyConfig, store: StudyStore, started_at: float) -> tuple[list[TrialOutcome], int]:
    """status.json (and error.txt for failures) per trial from Tune's results; also counts the
    trials that finished training in this call."""
    from synrank.study.trial import RESULT

    outcomes = []
    new_trials = 0
    for res in grid:
        spec = TrialSpec.from_tune(study, _trial_config(res))
        done = store.read_json_or(store.trial_file(spec.trial_id, RESULT))
        metrics = dict(res.metrics or {})
        if res.error is not None:
            status, error = "failed", _error_text(res.error)
            store.write_text(error + "\n", store.trial_file(spec.trial_id, "error.txt"))
        elif done and done.get("status") == "completed":
            status, error = "completed", None
        else:
            status, error = "stopped", None
        if status == "completed" and float(done.get("finished_at", 0.0)) >= started_at:
            new_trials += 1
        last = {k: v for k, v in metrics.items() if k.startswith("dev") or k in ("step", "loss", "training_iteration")}
        store.write_json({"trial_id": spec.trial_id, "status": status, "error": error,
                          "tune_trial_id": metrics.get("trial_id"), "axes": spec.axes, "seed": spec.seed,
                          "last_metrics": last}, store.trial_file(spec.trial_id, STATUS))
        if status == "stopped" and not study.keep_checkpoints:  # an early-stopped trial is final
            store.remove(store.path("train", spec.trial_id))
        outcomes.append(TrialOutcome(spec.trial_id, status, error, {k: v for k, v in metrics.items()
                                                                    if isinstance(v, (int, float, str))}))
    outcomes.sort(key=lambda o: o.trial_id)
    return outcomes, new_trials


def _error_text(error: BaseException) -> str:
    """The error of a failed trial: its summary line, then the full text Tune recorded."""
    text = str(error) or type(error).__name__
    return f"{summarize_error(text)}\n\n{text}"
