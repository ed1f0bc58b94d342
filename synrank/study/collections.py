"""Evaluation collections of a study: which queries of which qrels split each one scores.

A :class:`~synrank.study.config.CollectionSpec` is resolved once per study into a
:class:`View` (a collection folder, a qrels split and an optional query subset), so every trial
scores exactly the same queries and a held-out view never contains a training query:

- ``queries: all``: every judged query of ``split`` (default ``test``, or the only split there is);
- ``queries: held_out``: the queries the training groups leave out, the same rule as
  :func:`synrank.data.groups.human_split` with ``base.groups.query_split``; with ``part: dev`` /
  ``part: test`` those are divided by ``split_queries(held_out, holdout.dev_fraction, holdout.seed)``
  (dev is the first share);
- ``queries: train``: the training queries (to measure fit, not generalisation).

``quick_evaluate`` scores a model on a view in this process (exact dot-product search over the
whole corpus with numpy, the evaluation stage's measures): the dev metric a study reports while
training runs, for early stopping.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from synrank.study.config import CollectionSpec, StudyConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class View:
    key: str  # the name in tables
    path: str
    split: str
    query_ids: tuple[str, ...] | None  # None: every judged query of the split

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "path": self.path, "split": self.split,
                "query_ids": list(self.query_ids) if self.query_ids is not None else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "View":
        ids = d.get("query_ids")
        return cls(d["key"], d["path"], d["split"], tuple(ids) if ids is not None else None)


def _default_split(path: str, wanted: str | None) -> str:
    from synrank.data.readers import available_splits

    splits = available_splits(path)
    if wanted:
        if splits and wanted not in splits:
            raise ValueError(f"{path}: no qrels split {wanted!r}; it has {', '.join(splits)}")
        return wanted
    if "test" in splits or not splits:
        return "test"
    if len(splits) == 1:
        return splits[0]
    raise ValueError(f"{path}: several qrels splits ({', '.join(splits)}); name one with split:")


def resolve_view(spec: CollectionSpec, study: StudyConfig) -> View:
    from synrank.data.groups import human_split, split_queries

    g = study.base.groups
    if spec.queries == "all":
        split = _default_split(spec.path, spec.split)
        ids: list[str] | None = None
    else:
        hs = human_split(spec.path, spec.split or g.qrels_split, g.query_split)
        if spec.queries == "train":
            split, ids = hs.qrels_split, hs.train_ids  # None: the whole training split
        else:
            if hs.by_queries:
                split, ids = hs.qrels_split, list(hs.test_ids or [])
            else:  # a collection with its own train split: held out = its test split
                split, ids = _default_split(spec.path, "test" if spec.split in (None, g.qrels_split) else spec.split), None
            if spec.part != "all":
                if ids is None:
                    from synrank.data.readers import read_qrels

                    ids = sorted(set(read_qrels(spec.path, split=split).column("query_id").to_pylist()))
                h = study.holdout
                dev, test = split_queries(ids, h.dev_fraction, h.seed)
                ids = dev if spec.part == "dev" else test
    if ids is not None:
        ids = sorted(ids)
        if spec.limit:
            ids = ids[: spec.limit]
        if not ids:
            raise ValueError(f"evaluation collection {spec.key}: no queries selected")
    elif spec.limit:
        from synrank.data.readers import read_qrels

        ids = sorted(set(read_qrels(spec.path, split=split).column("query_id").to_pylist()))[: spec.limit]
    return View(spec.key, spec.path, split, tuple(ids) if ids is not None else None)


def resolve_views(study: StudyConfig) -> dict[str, list[View]]:
    """{"dev": [...], "test": [...]}"""
    return {"dev": [resolve_view(c, study) for c in study.dev],
            "test": [resolve_view(c, study) for c in study.test]}


# --------------------------------------------------------------------------------------------------
# qrels and in-process evaluation


def view_qrels(view: View) -> dict[str, dict[str, int]]:
    from synrank.data.readers import read_qrels
    from synrank.evaluate.metrics import qrels_from_table

    qrels = qrels_from_table(read_qrels(view.path, split=view.split))
    if view.query_ids is not None:
        keep = set(view.query_ids)
        qrels = {q: d for q, d in qrels.items() if q in keep}
    return qrels


_CORPUS_CACHE: dict[str, tuple[list[str], list[str]]] = {}
_QUERY_CACHE: dict[str, dict[str, str]] = {}


def _corpus(path: str) -> tuple[list[str], list[str]]:
    if path not in _CORPUS_CACHE:
        from synrank.data.readers import read_corpus
        from synrank.text import format_passage

        table = read_corpus(path)
        ids = table.column("doc_id").to_pylist()
        texts = [format_passage(t, x) for t, x in zip(table.column("title").to_pylist(), table.column("text").to_pylist())]
        _CORPUS_CACHE[path] = (ids, texts)
    return _CORPUS_CACHE[path]


def _queries(path: str) -> dict[str, str]:
    if path not in _QUERY_CACHE:
        from synrank.data.readers import read_queries

        table = read_queries(path)
        _QUERY_CACHE[path] = dict(zip(table.column("query_id").to_pylist(), table.column("text").to_pylist()))
    return _QUERY_CACHE[path]


def search(encoder, view: View, measures: list[str], top_k: int = 100, corpus_cache: dict | None = None,
           batch_size: int = 64) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(run, per-query measures) of `encoder` (a BiEncoder) on `view`: exact dot-product search over
    the whole corpus in this process. `corpus_cache` ({path: embeddings}) saves re-encoding a corpus
    shared by several views of one model."""
    from synrank.evaluate.metrics import evaluate_run

    qrels = view_qrels(view)
    texts = _queries(view.path)
    qids = [q for q in qrels if q in texts]
    doc_ids, passages = _corpus(view.path)
    if corpus_cache is not None and view.path in corpus_cache:
        p = corpus_cache[view.path]
    else:
        p = encoder.encode(passages, "passage", batch_size=batch_size)
        if corpus_cache is not None:
            corpus_cache[view.path] = p
    q = encoder.encode([texts[x] for x in qids], "query", batch_size=batch_size)
    scores = q @ p.T
    k = min(top_k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    run = {qid: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(qids)}
    return run, evaluate_run(qrels, run, measures)


def quick_evaluate(encoder, view: View, measures: list[str], top_k: int = 100) -> dict[str, dict[str, float]]:
    """Per-query measures of `encoder` on `view` (see `search`)."""
    return search(encoder, view, measures, top_k)[1]
