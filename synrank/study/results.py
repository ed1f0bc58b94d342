"""A study's trials as its directory holds them, grouped into configurations: what the report
(``synrank.study.report``) and its plots (``synrank.study.plots``) read.

A trial's status is ``completed`` (its ``result.json``), ``failed`` or ``stopped`` (its
``status.json``, or an ``error.txt``), else ``incomplete``; a configuration is every seed of one
point of the study's space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synrank.study.store import StudyStore


@dataclass
class Trial:
    trial_id: str
    config_id: str
    axes: dict[str, Any]
    seed: int
    status: str  # completed | failed | stopped | incomplete
    error: str | None = None
    result: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] | None = None  # the last metrics Tune saw (early-stopped trials)

    def metric(self, part: str, coll: str, measure: str) -> float | None:
        if not self.result:
            return None
        v = self.result.get("metrics", {}).get(part, {}).get(coll, {}).get(measure)
        return None if v is None else float(v)


@dataclass
class Configuration:
    config_id: str
    axes: dict[str, Any]
    trials: list[Trial]

    @property
    def completed(self) -> list[Trial]:
        return sorted((t for t in self.trials if t.status == "completed"), key=lambda t: t.seed)


def load_trials(store: StudyStore) -> list[Trial]:
    from synrank.study.trial import HISTORY, RESULT, TRIAL

    trials = []
    for tid in store.trial_ids():
        meta = store.read_json_or(store.trial_file(tid, TRIAL))
        if meta is None:
            continue
        result = store.read_json_or(store.trial_file(tid, RESULT))
        status_file = store.read_json_or(store.trial_file(tid, "status.json")) or {}
        error = None
        if result and result.get("status") == "completed":
            status = "completed"
        elif status_file.get("status") in ("failed", "stopped"):
            status = status_file["status"]
            error = status_file.get("error")
        elif store.exists(store.trial_file(tid, "error.txt")):
            status = "failed"
        else:
            status = "incomplete"
        if status == "failed" and not error:
            with_error = store.trial_file(tid, "error.txt")
            if store.exists(with_error):
                from synrank import storage

                error = storage.read_text(with_error)
        history = (store.read_json_or(store.trial_file(tid, HISTORY)) or {}).get("steps", [])
        trials.append(Trial(tid, meta["config_id"], meta["axes"], int(meta["seed"]), status, error, result, history,
                            status_file.get("last_metrics")))
    return trials


def group_configurations(trials: list[Trial]) -> list[Configuration]:
    by: dict[str, Configuration] = {}
    for t in trials:
        by.setdefault(t.config_id, Configuration(t.config_id, t.axes, [])).trials.append(t)
    return list(by.values())


def seed_values(config: Configuration, part: str, colls: list[str], measure: str, coll: str) -> list[float]:
    """One value per completed seed: the collection's measure, or for ``average`` the mean over `colls`."""
    out = []
    for t in config.completed:
        if coll == "average":
            vals = [t.metric(part, c, measure) for c in colls]
            if vals and all(v is not None for v in vals):
                out.append(float(np.mean(vals)))
        else:
            v = t.metric(part, coll, measure)
            if v is not None:
                out.append(v)
    return out


# how the report and its plots name a measure
_PRETTY = {"ndcg@10": "nDCG@10", "ndcg@100": "nDCG@100", "recall@100": "R@100", "mrr@10": "MRR@10", "map": "MAP"}


def pretty(measure: str) -> str:
    return _PRETTY.get(measure, measure)
