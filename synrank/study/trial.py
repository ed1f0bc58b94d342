"""One study trial: groups -> Ray Train (TorchTrainer inside the Tune trial) -> evaluation -> files.

``run_trial(config, study=...)`` is the Tune function trainable (the driver passes the study with
``tune.with_parameters``). For its :class:`~synrank.study.space.TrialSpec` it

1. builds the training groups for (source, levels, seed) -- or reuses them: they are cached in the
   study directory under a key of the full groups config, built once under a file lock, and shared
   by every trial (and every loss) with the same key;
2. builds the training stage's ``TorchTrainer`` (``synrank.train.trainer.build_trainer``) and fits
   it in a helper thread. A Ray Train callback puts every report of rank 0 (and its checkpoint) on a
   queue; this thread forwards each one to Tune with ``tune.report`` (so Tune's schedulers see the
   training metrics), and, when early stopping is on, first scores the checkpoint on the dev
   collections (``dev/<measure>``, ``dev_evals``). The Train run lives at
   ``<study>/train/<trial_id>`` and resumes from its last checkpoint if the trial is started again;
3. exports the final checkpoint, evaluates it with the evaluation stage (``evaluate_model``) on the
   study's dev and test collections (query subsets taken from the per-query values, means
   recomputed over them), and writes ``result.json``, ``history.json`` and the per-query files;
4. reports the final metrics to Tune (``test/<collection>/<measure>``, ``dev/<measure>``, ...).

A trial whose ``result.json`` says completed only re-reports it: a study restored after an
interruption never trains a finished configuration twice. Unless its recorded run config
(``trial.json``) differs from the one it would get now (a base config changed before ``--fresh``):
then it is trained again, and the log names the keys that changed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import math
import os
import threading
import time
import traceback
from typing import Any

from synrank import storage
from synrank.config import GroupsConfig, SynrankConfig, TrainConfig, changed_keys
from synrank.storage import join
from synrank.study.collections import View, quick_evaluate
from synrank.study.config import StudyConfig
from synrank.study.space import TrialSpec
from synrank.study.store import StudyStore

log = logging.getLogger(__name__)

RESULT = "result.json"
HISTORY = "history.json"
DEV_HISTORY = "dev_history.json"
TRIAL = "trial.json"
_DONE = "__synrank_train_done__"


# --------------------------------------------------------------------------------------------------
# groups, cached per key


def groups_key(cfg: GroupsConfig) -> str:
    data = cfg.model_dump(mode="json")
    data.pop("out", None)
    digest = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.source}-L{cfg.n_levels}-s{cfg.seed}-{digest}"


@contextlib.contextmanager
def _lock(store: StudyStore, path: str):
    if store.local:
        from filelock import FileLock

        os.makedirs(os.path.dirname(path), exist_ok=True)
        with FileLock(path + ".lock", timeout=3600):
            yield
    else:  # object stores: no lock; a concurrent build writes the same bytes atomically
        yield


def ensure_groups(cfg: GroupsConfig, store: StudyStore) -> str:
    """The groups file for `cfg` in the study directory, built if missing; returns its path."""
    from synrank.data.groups import build_groups_to

    path = store.groups_path(groups_key(cfg))
    with _lock(store, path):
        if not store.exists(path):
            t0 = time.perf_counter()
            stats = build_groups_to(cfg, path)
            log.info("built %d groups (%s) in %.1f s -> %s", stats.n_groups, groups_key(cfg),
                     time.perf_counter() - t0, path)
    return path


# --------------------------------------------------------------------------------------------------
# Ray Train -> queue -> Tune


def _callback_class():
    from ray.train.v2.api.callback import UserCallback

    class QueueReportCallback(UserCallback):
        """Puts rank 0's metrics of every ``ray.train.report`` (and the checkpoint) on a Ray queue,
        which the trial thread drains into ``tune.report``."""

        def __init__(self, queue) -> None:
            self.queue = queue

        def after_report(self, run_context, metrics, checkpoint) -> None:
            self.queue.put({"metrics": dict(metrics[0]) if metrics else {}, "checkpoint": checkpoint})

    return QueueReportCallback


def _train_config(run: SynrankConfig, study: StudyConfig, spec: TrialSpec, groups_path: str, out_dir: str) -> TrainConfig:
    data = run.train.model_dump(mode="json")
    data["groups"] = groups_path
    data["out"] = out_dir
    if study.asha.enabled:
        data["checkpoint_every"] = study.asha.eval_every
    if any(fnmatch.fnmatchcase(spec.trial_id, pat) for pat in study.fail_trials):
        data["fail_at_step"] = 1
        data["max_failures"] = 0
    return TrainConfig.model_validate(data)


def _fit(spec: TrialSpec, train: TrainConfig, groups_path: str, fault_dir: str, store: StudyStore,
         report, extra_resources: dict[str, float] | None = None) -> Any:
    """Fit a TorchTrainer (the training stage's ``build_trainer``, as a plain run gets it, with the
    trial's name, storage and report queue); `report(item)` is called (in this thread) for every
    rank-0 report."""
    import ray
    from ray.util.queue import Queue

    from synrank.train.trainer import build_trainer

    queue = Queue(actor_options={"num_cpus": 0})
    trainer = build_trainer(train, groups_path, fault_dir, name=spec.trial_id, storage_url=store.train_storage,
                            callbacks=[_callback_class()(queue)], extra_resources=extra_resources)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the trial thread
            box["error"] = exc
        finally:
            queue.put(_DONE)

    thread = threading.Thread(target=target, name=f"fit-{spec.trial_id}", daemon=True)
    thread.start()
    stopped = True
    try:
        while True:
            item = queue.get(block=True)
            if item == _DONE:
                break
            report(item)
        stopped = False
    finally:
        # Stopped by Tune (tune.report raised): do not wait for the training; the trial actor goes
        # away and takes the Train controller and workers (its children) with it.
        if not stopped:
            thread.join()
            with contextlib.suppress(Exception):
                ray.kill(queue.actor)
    if "error" in box:
        raise box["error"]
    return box["result"]


# --------------------------------------------------------------------------------------------------
# evaluation


def _subset_means(per_query: dict[str, dict[str, float]], ids: tuple[str, ...] | None,
                  key: str) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    from synrank.evaluate.metrics import mean_metrics

    if ids is not None:
        missing = [q for q in ids if q not in per_query]
        if missing:
            raise RuntimeError(f"{key}: {len(missing)} selected queries were not evaluated, e.g. {missing[:3]}")
        per_query = {q: per_query[q] for q in ids}
    return per_query, mean_metrics(per_query)


def evaluate_views(model_dir: str, views: dict[str, list[View]], out_dir: str, study: StudyConfig,
                   num_encoders: int, threads: int = 1) -> dict[str, dict[str, dict[str, Any]]]:
    """{split: {view key: {"metrics", "per_query", "run_path", "metrics_path", "num_queries"}}} of the
    exported model on every view; ``study.evaluation`` picks the evaluation stage or this process."""
    if study.evaluation == "local":
        return evaluate_local(model_dir, views, out_dir, study.top_k, threads)
    return evaluate_stage(model_dir, views, out_dir, study, num_encoders)


def evaluate_stage(model_dir: str, views: dict[str, list[View]], out_dir: str, study: StudyConfig,
                   num_encoders: int) -> dict[str, dict[str, dict[str, Any]]]:
    """With the evaluation stage (``evaluate_model``: Ray Data encoder actors, faiss): one call per
    qrels split covers every view of it; a view's query subset is taken from the per-query values."""
    from synrank.evaluate.stage import evaluate_model, unique_names

    wanted: dict[str, list[str]] = {}
    for vs in views.values():
        for v in vs:
            wanted.setdefault(v.split, [])
            if v.path not in wanted[v.split]:
                wanted[v.split].append(v.path)
    raw: dict[tuple[str, str], dict[str, Any]] = {}
    for split, paths in wanted.items():
        got = evaluate_model(model_dir, paths, join(out_dir, split), split=split, top_k=study.top_k,
                             num_encoders=num_encoders, progress=False)
        for path, name in zip(paths, unique_names(paths)):
            raw[(split, path)] = got[name]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for part, vs in views.items():
        for v in vs:
            r = raw[(v.split, v.path)]
            per_query, metrics = _subset_means(r["per_query"], v.query_ids, v.key)
            out.setdefault(part, {})[v.key] = {"metrics": metrics, "per_query": per_query,
                                               "run_path": r["run_path"], "metrics_path": r["metrics_path"],
                                               "num_queries": len(per_query)}
    return out


def evaluate_local(model_dir: str, views: dict[str, list[View]], out_dir: str, top_k: int,
                   threads: int) -> dict[str, dict[str, dict[str, Any]]]:
    """In this process, with `threads` torch threads (the trial's own CPU share): each corpus is
    encoded once, each view's queries are searched exactly (dot products) and scored with the
    evaluation stage's measures; ``run.trec`` and ``metrics.json`` per view as the stage writes them."""
    import torch

    from synrank.storage import write_json
    from synrank.encoder import BiEncoder
    from synrank.evaluate.metrics import MEASURES, mean_metrics
    from synrank.evaluate.runfile import write_run
    from synrank.study.collections import search

    torch.set_num_threads(max(1, threads))
    encoder = BiEncoder.load(model_dir)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    corpus_cache: dict[str, Any] = {}
    for part, vs in views.items():
        for v in vs:
            t0 = time.perf_counter()
            run, per_query = search(encoder, v, list(MEASURES), top_k, corpus_cache)
            metrics = mean_metrics(per_query, MEASURES)
            base = join(out_dir, part, v.key)
            run_path = write_run(run, join(base, "run.trec"), tag=storage.name(model_dir))
            metrics_path = join(base, "metrics.json")
            write_json({"collection": v.key, "collection_path": v.path, "split": v.split,
                        "num_queries": len(per_query), "measures": list(MEASURES), "metrics": metrics,
                        "per_query": per_query, "run_path": run_path, "top_k": top_k,
                        "query_subset": v.query_ids is not None, "seconds": time.perf_counter() - t0}, metrics_path)
            out.setdefault(part, {})[v.key] = {"metrics": metrics, "per_query": per_query, "run_path": run_path,
                                               "metrics_path": metrics_path, "num_queries": len(per_query)}
    return out


def dev_score(checkpoint, train: TrainConfig, views: list[View], measure: str) -> dict[str, float]:
    """Mean `measure` over the dev views of a Train checkpoint (scored in this process)."""
    import torch

    from synrank.encoder import BiEncoder
    from synrank.train.loop import MODEL_FILE

    torch.set_num_threads(max(1, train.cpus_per_worker))
    encoder = BiEncoder(train.encoder)
    with checkpoint.as_directory() as d:
        encoder.load_state_dict(torch.load(os.path.join(d, MODEL_FILE), map_location="cpu"))
    values = {}
    for v in views:
        per_query = quick_evaluate(encoder, v, [measure])
        values[v.key] = sum(x[measure] for x in per_query.values()) / max(1, len(per_query))
    out = {f"dev/{k}/{measure}": val for k, val in values.items()}
    out[f"dev/{measure}"] = sum(values.values()) / max(1, len(values))
    return out


def flat_metrics(evals: dict[str, dict[str, dict[str, Any]]], measure: str) -> dict[str, float]:
    """Tune's view of a finished trial: ``<split>/<collection>/<m>`` and ``<split>/<m>`` (the mean
    over that split's collections) for every measure."""
    flat: dict[str, float] = {}
    for part, colls in evals.items():
        if not colls:
            continue
        measures = list(next(iter(colls.values()))["metrics"])
        for key, r in colls.items():
            for m, v in r["metrics"].items():
                flat[f"{part}/{key}/{m}"] = float(v)
        for m in measures:
            flat[f"{part}/{m}"] = float(sum(r["metrics"][m] for r in colls.values()) / len(colls))
    return flat


# --------------------------------------------------------------------------------------------------
# the trial


def _tune_report(metrics: dict[str, Any]) -> None:
    from ray import tune

    tune.report(metrics)


def trained_differently(store: StudyStore, trial_id: str, run: SynrankConfig) -> list[str]:
    """The run-config keys (dotted) in which the trial's recorded run (``trial.json``) differs from
    `run`; empty when they agree or nothing was recorded. A study rerun with ``--fresh`` after a
    change to its base config must not re-report results trained under the old one."""
    recorded = (store.read_json_or(store.trial_file(trial_id, TRIAL)) or {}).get("run")
    if recorded is None:
        return []
    now = run.model_dump(mode="json")
    defaults = SynrankConfig.model_construct().model_dump(mode="json")
    for data in (recorded, now, defaults):
        data.pop("runtime", None)  # where it runs, not what it trains
    return changed_keys(recorded, now, defaults)


def run_trial(config: dict[str, Any], study: dict[str, Any], views: dict[str, list[dict[str, Any]]]) -> None:
    """The Tune trainable (see the module doc)."""
    study_cfg = StudyConfig.model_validate(study)
    spec = TrialSpec.from_tune(study_cfg, config)
    store = StudyStore(study_cfg.study_dir)
    resolved = {part: [View.from_dict(v) for v in vs] for part, vs in views.items()}
    measure = study_cfg.report.measure

    run = spec.run_config(study_cfg.base)
    done = store.read_json_or(store.trial_file(spec.trial_id, RESULT))
    if done and done.get("status") == "completed":
        changed = trained_differently(store, spec.trial_id, run)
        if not changed:
            log.info("trial %s already completed; re-reporting its result", spec.trial_id)
            _tune_report({**done["flat"], "trial_id_study": spec.trial_id, "dev_evals": done.get("dev_evals", 0),
                          "reused": 1})
            return
        log.warning("trial %s completed with another configuration (changed: %s); training it again",
                    spec.trial_id, ", ".join(changed[:8]))
        store.remove(store.trial_file(spec.trial_id, RESULT))
        store.remove(join(store.train_storage, spec.trial_id))  # its checkpoints belong to the old run

    tdir = store.trial_dir(spec.trial_id)
    for stale in ("error.txt", "status.json"):  # a retried trial starts clean
        store.remove(store.trial_file(spec.trial_id, stale))
    store.write_json({"trial_id": spec.trial_id, "config_id": spec.config_id, "axes": spec.axes, "seed": spec.seed,
                      "spec": spec.to_dict(), "run": run.model_dump(mode="json")}, store.trial_file(spec.trial_id, TRIAL))
    t_start = time.perf_counter()
    groups_path = ensure_groups(run.groups, store)
    t_groups = time.perf_counter() - t_start

    # Everything the trial makes lives under its storage URL, never in a node-local temp dir:
    # evaluation actors on other nodes read the exported model from there.
    fault_dir = tdir
    train = _train_config(run, study_cfg, spec, groups_path, tdir)
    dev_views = resolved.get("dev", [])
    dev_key = f"dev/{measure}"
    state = {"dev_evals": 0, "dev": {dev_key: math.nan}, "dev_history": []}

    def forward(item: dict[str, Any]) -> None:
        metrics = {k: v for k, v in item["metrics"].items() if isinstance(v, (int, float))}
        if study_cfg.asha.enabled and item.get("checkpoint") is not None and dev_views:
            t0 = time.perf_counter()
            state["dev"] = dev_score(item["checkpoint"], train, dev_views, measure)
            state["dev_evals"] += 1
            state["dev_history"].append({"step": metrics.get("step"), **state["dev"],
                                         "seconds": time.perf_counter() - t0})
        if dev_views:  # a scheduler or searcher on the dev metric needs it in every result
            metrics.update(state["dev"])
            metrics["dev_evals"] = state["dev_evals"]
        _tune_report(metrics)

    try:
        t0 = time.perf_counter()
        result = _fit(spec, train, groups_path, fault_dir, store, forward, study_cfg.worker_resources)
        t_train = time.perf_counter() - t0
        if result.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint")
        history = list((result.return_value or {}).get("history") or [])
        store.write_json({"steps": history}, store.trial_file(spec.trial_id, HISTORY))
        if state["dev_history"]:
            store.write_json(state["dev_history"], store.trial_file(spec.trial_id, DEV_HISTORY))

        from synrank.train.export import export_model

        t0 = time.perf_counter()
        with result.checkpoint.as_directory() as ckpt:
            model_dir = export_model(ckpt, train, tdir)  # <trial>/model
        eval_dir = store.trial_file(spec.trial_id, "eval")
        store.remove(eval_dir)  # a retried trial starts clean
        evals = evaluate_views(model_dir, resolved, eval_dir, study_cfg, num_encoders=max(1, train.num_workers),
                               threads=train.num_workers * train.cpus_per_worker)
        t_eval = time.perf_counter() - t0

        for part, colls in evals.items():
            for key, r in colls.items():
                store.write_json(r["per_query"], store.trial_file(spec.trial_id, "per_query", part, f"{key}.json"))
        if not study_cfg.keep_models:
            store.remove(model_dir)
        flat = flat_metrics(evals, measure)
        if dev_views:
            state["dev_evals"] += 1
        final = {"status": "completed", "trial_id": spec.trial_id, "config_id": spec.config_id, "axes": spec.axes,
                 "seed": spec.seed, "groups": groups_path, "steps": len(history),
                 "final_loss": history[-1]["loss"] if history else None,
                 "metrics": {part: {k: r["metrics"] for k, r in colls.items()} for part, colls in evals.items()},
                 "num_queries": {part: {k: r["num_queries"] for k, r in colls.items()} for part, colls in evals.items()},
                 "flat": flat, "dev_evals": state["dev_evals"], "finished_at": time.time(),
                 "seconds": {"groups": t_groups, "train": t_train, "evaluate": t_eval,
                             "total": time.perf_counter() - t_start}}
        store.write_json(final, store.trial_file(spec.trial_id, RESULT))
        if not study_cfg.keep_checkpoints:
            store.remove(join(store.train_storage, spec.trial_id))
    except Exception:
        store.write_text(traceback.format_exc(), store.trial_file(spec.trial_id, "error.txt"))
        raise
    _tune_report({**flat, "trial_id_study": spec.trial_id, "dev_evals": state["dev_evals"], "reused": 0})
