"""Evaluation: distributed encoding, faiss retrieval, pytrec_eval metrics, run files, significance.

Public API:

- `evaluate_model(model, collections, out_dir, split="test", top_k=100, encoder_batch_size=64,
  index="flat")` -> ``{collection: {"metrics", "per_query", "run_path", "metrics_path", ...}}``
- `evaluate(EvaluateConfig)`: the same from a config (what ``synrank evaluate`` runs)
- `compare_runs(systems, baseline=None, collection=None, ...)`: paired significance tests
- `evaluate_run(qrels, run)`, `read_run`, `write_run`, `MEASURES`

Heavy imports (Ray, faiss, torch) happen only when a function needs them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MEASURES", "compare_runs", "evaluate", "evaluate_model", "evaluate_run", "read_run", "write_run"]


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "evaluate_model"):
        from synrank.evaluate import stage

        return getattr(stage, name)
    if name == "compare_runs":
        from synrank.evaluate.compare import compare_runs

        return compare_runs
    if name in ("evaluate_run", "MEASURES"):
        from synrank.evaluate import metrics

        return getattr(metrics, name)
    if name in ("read_run", "write_run"):
        from synrank.evaluate import runfile

        return getattr(runfile, name)
    raise AttributeError(f"module 'synrank.evaluate' has no attribute {name!r}")
