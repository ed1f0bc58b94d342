"""Reference systems of a study report: models that were not trained (``report.references``).

Each entry is a model spec the evaluation stage understands: ``default`` (the packaged
all-MiniLM-L6-v2, untrained), ``bm25``, or an encoder directory / hub name. A reference is scored on
exactly the test views the trials were scored on (``data/views.json``: same collections, same query
subsets), once per study, and cached under ``<study_dir>/references/<safe name>/``::

    reference.json                  status, model, cache key, mean metrics and query counts per view
    per_query/test/<coll>.json      {query_id: {measure: value}} (as trials write them)
    eval/                           the run files and metrics.json of the evaluation

The cache key covers the model spec, the view definitions (collection, qrels split, query ids) and
``top_k``, and for encoders their settings: a changed view evaluates the reference again. An
encoder reference gets the study's encoder settings (``base.train.encoder``: max lengths, pooling,
prefixes), so it reads as much of each passage as the trained models do, and is scored as the
trials are (``evaluation: local`` in this process, ``stage`` with the evaluation stage); BM25 always
goes through the evaluation stage (the only path that has it). A reference that fails is reported,
not cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from synrank.study.config import StudyConfig
from synrank.study.store import StudyStore

log = logging.getLogger(__name__)

REFERENCE = "reference.json"
PART = "test"


@dataclass
class Reference:
    spec: str  # the model spec as configured
    label: str  # the name in tables, e.g. "BM25 (reference)"
    name: str  # the folder under references/
    status: str  # completed | failed
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # {collection: {measure: mean}}
    num_queries: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    evaluated: bool = False  # evaluated in this call (False: read from the cache)

    def metric(self, coll: str, measure: str) -> float | None:
        v = self.metrics.get(coll, {}).get(measure)
        return None if v is None else float(v)


def _is_bm25(spec: str) -> bool:
    return spec.strip().lower() == "bm25"


def _is_default(spec: str) -> bool:
    from synrank.models import DEFAULT, DEFAULT_ENCODER_NAME

    return spec in (DEFAULT, DEFAULT_ENCODER_NAME, "all-MiniLM-L6-v2")


def reference_label(spec: str) -> str:
    if _is_bm25(spec):
        return "BM25 (reference)"
    if _is_default(spec):
        return "untrained encoder (reference)"
    return f"{os.path.basename(spec.rstrip('/')) or spec} (reference)"


def safe_name(spec: str) -> str:
    """A folder name for `spec`: `default`, `bm25`, or the spec's characters with a short hash."""
    if _is_bm25(spec):
        return "bm25"
    if spec == "default":
        return "default"
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.strip("/")).strip("._-")[-60:] or "model"
    return f"{base}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"


def reference_views(store: StudyStore, study: StudyConfig) -> list:
    """The test views the trials were scored on (``data/views.json``); resolved from the study when
    the directory has none (a study that never started)."""
    from synrank.study.collections import View, resolve_views

    saved = store.read_json_or(store.views_path)
    if saved is not None:
        return [View.from_dict(v) for v in saved.get(PART, [])]
    return list(resolve_views(study)[PART])


def encoder_settings(spec: str, study: StudyConfig) -> dict[str, Any] | None:
    """The settings an encoder reference is scored with: the study's own encoder settings
    (``base.train.encoder``: max lengths, pooling, prefixes, similarity), so it reads exactly as
    much text as the trained models it is compared with; None for BM25."""
    if _is_bm25(spec):
        return None
    return study.base.train.encoder.model_copy(update={"model": spec}).model_dump(mode="json")


def cache_key(spec: str, views: list, top_k: int, encoder: dict[str, Any] | None = None) -> str:
    data = {"model": spec, "top_k": top_k, "views": [v.to_dict() for v in views]}
    if encoder is not None:
        data["encoder"] = encoder
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _evaluate(spec: str, views: list, work: str, study: StudyConfig, model_url: str) -> dict[str, dict[str, Any]]:
    from synrank.config import EncoderConfig
    from synrank.encoder import BiEncoder
    from synrank.study.trial import evaluate_local, evaluate_stage

    by_part = {PART: views}
    if _is_bm25(spec):
        return evaluate_stage(spec, by_part, work, study, num_encoders=max(1, study.base.train.num_workers))[PART]
    # Exported with the study's encoder settings, then scored exactly as a trial's model is.
    from synrank.train.export import save_encoder

    model_dir = save_encoder(BiEncoder(EncoderConfig(**encoder_settings(spec, study))), model_url)
    if study.evaluation == "stage":
        return evaluate_stage(model_dir, by_part, work, study, num_encoders=max(1, study.base.train.num_workers))[PART]
    return evaluate_local(model_dir, by_part, work, study.top_k, threads=max(1, os.cpu_count() or 1))[PART]


def ensure_reference(store: StudyStore, study: StudyConfig, spec: str, views: list) -> Reference:
    """The reference `spec` on `views`: read from its cache when the key matches, else evaluated
    (and cached). Never raises for an evaluation error: the Reference says failed."""
    from synrank.study.trial import _lock

    name, label = safe_name(spec), reference_label(spec)
    settings = encoder_settings(spec, study)
    key = cache_key(spec, views, study.top_k, settings)
    path = store.path("references", name, REFERENCE)
    try:
        with _lock(store, path):
            cached = store.read_json_or(path)
            if cached and cached.get("status") == "completed" and cached.get("key") == key:
                return Reference(spec, label, name, "completed", cached["metrics"][PART],
                                 cached.get("num_queries", {}).get(PART, {}))
            log.info("evaluating the reference %s on %d test view(s)", spec, len(views))
            t0 = time.perf_counter()
            # In the study's storage, not a node-local temp dir: encoder actors may run on other nodes.
            eval_dir, model_dir = store.path("references", name, "eval"), store.path("references", name, "model")
            store.remove(eval_dir)
            try:
                evals = _evaluate(spec, views, eval_dir, study, model_dir)
                for coll, r in evals.items():
                    store.write_json(r["per_query"], store.path("references", name, "per_query", PART, f"{coll}.json"))
            finally:
                store.remove(model_dir)
            metrics = {coll: r["metrics"] for coll, r in evals.items()}
            num_queries = {coll: r["num_queries"] for coll, r in evals.items()}
            store.write_json({"status": "completed", "model": spec, "label": label, "key": key, "top_k": study.top_k,
                              "method": "stage" if _is_bm25(spec) or study.evaluation == "stage" else "local",
                              "views": [v.to_dict() for v in views], "encoder": settings, "metrics": {PART: metrics},
                              "num_queries": {PART: num_queries}, "seconds": time.perf_counter() - t0,
                              "finished_at": time.time()}, path)
            return Reference(spec, label, name, "completed", metrics, num_queries, evaluated=True)
    except Exception as exc:  # noqa: BLE001 - the report is written without it
        log.warning("reference %s failed: %s", spec, exc)
        log.debug("%s", traceback.format_exc())
        return Reference(spec, label, name, "failed", error=f"{type(exc).__name__}: {exc}")


def ensure_references(store: StudyStore, study: StudyConfig) -> list[Reference]:
    """Every reference of ``study.report.references`` (evaluated where its cache is missing or stale)."""
    specs = list(dict.fromkeys(study.report.references))
    if not specs:
        return []
    try:
        views = reference_views(store, study)
        if not views:
            raise ValueError("the study has no test collections")
    except Exception as exc:  # noqa: BLE001
        return [Reference(s, reference_label(s), safe_name(s), "failed", error=f"{type(exc).__name__}: {exc}")
                for s in specs]
    return [ensure_reference(store, study, s, views) for s in specs]
