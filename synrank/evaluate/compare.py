"""`synrank compare`: is one system really better than another, query by query?

Inputs are TREC run files (scored against a collection's qrels with `metrics.evaluate_run`) or
metrics JSON files written by `synrank evaluate` (their per-query values are used as they are).
Every system is compared with one baseline (default: the first input), per measure, over the
queries both have values for:

- paired t-test (scipy ``ttest_rel``, two-sided);
- paired randomization test (scipy ``permutation_test``: sign flipping of the per-query
  differences, two-sided, on the mean difference): exact over all 2^n sign patterns when
  2^n <= `n_resamples`, else `n_resamples` seeded random patterns,
  p = (1 + #{|mean| >= observed}) / (1 + n_resamples);
- Holm's step-down correction (statsmodels ``multipletests``) of each test's p-values, per
  measure, across the systems compared with the baseline (the family is "system vs baseline on
  this measure").

A difference is significant when the Holm-adjusted p-value of the decision test (default the
randomization test) is below `alpha`. The table marks a significant win ``W`` and loss ``L``; the
PNG plots each system's per-query differences (sorted) per measure.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from synrank import storage
from synrank.evaluate.metrics import MEASURES, PerQuery, evaluate_run, qrels_from_table
from synrank.evaluate.runfile import read_run

log = logging.getLogger(__name__)

TESTS = ("randomization", "ttest")


# ---------------------------------------------------------------------------------------------
# statistics


def paired_ttest(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value of mean(a - b) != 0; 1.0 when the differences are all equal
    to zero, 0.0 when they are constant and non-zero (no variance: the difference is certain)."""
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) < 2 or np.allclose(d, 0.0, atol=1e-12):
        return 1.0
    if np.allclose(d, d[0], atol=1e-12):
        return 0.0
    p = float(stats.ttest_rel(a, b).pvalue)
    return 1.0 if math.isnan(p) else p


def randomization_test(a: np.ndarray, b: np.ndarray, n_resamples: int = 10_000, seed: int = 0,
                       chunk: int = 1000) -> float:
    """Two-sided paired randomization (sign-flip) test p-value of mean(a - b), by scipy's
    ``permutation_test`` on |mean difference|: exact when 2^n <= `n_resamples`, else over
    `n_resamples` sign patterns drawn from `seed`, `chunk` patterns at a time."""
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) < 2 or np.allclose(d, 0.0, atol=1e-12):
        return 1.0  # with one query every sign pattern has the observed |mean|
    observed = abs(float(d.mean()))
    # scipy counts a pattern as a tie within 100 ulp of the observed value; an observed mean that is
    # zero up to rounding (1e-17) needs an absolute tolerance, so near-ties are snapped onto it.
    tol = 1e-12 * max(1.0, observed)

    def abs_mean(x: np.ndarray, axis: int) -> np.ndarray:
        value = np.abs(np.mean(x, axis=axis))
        return np.where(np.abs(value - observed) <= tol, observed, value)

    result = stats.permutation_test((d,), abs_mean, permutation_type="samples", vectorized=True,
                                    n_resamples=n_resamples, batch=chunk, alternative="greater",
                                    rng=np.random.default_rng(seed))
    return float(result.pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given), by statsmodels' ``multipletests``."""
    if len(pvalues) == 0:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(np.asarray(pvalues, dtype=np.float64), method="holm")[1]]


# ---------------------------------------------------------------------------------------------
# inputs


@dataclass
class System:
    name: str
    source: str
    per_query: PerQuery


def _looks_like_json(path: str) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(64).lstrip()
    return head.startswith(b"{")


def _load_qrels(collection: str, split: str) -> dict[str, dict[str, int]]:
    from synrank.data import readers

    return qrels_from_table(readers.read_qrels(collection, split=split))


def _is_file(path: str) -> bool:
    return os.path.isfile(path) if storage.is_local(path) else storage.exists(path) and not storage.isdir(path)


def load_system(item: str | Mapping, *, name: str | None = None, qrels: dict | None = None,
                collection: str | None = None, split: str = "test", relevance_level: int = 1) -> System:
    """A run file, a metrics JSON, or an in-memory ``{qid: {measure: value}}`` as a System."""
    if isinstance(item, Mapping):
        return System(name or "system", "<memory>", {q: dict(v) for q, v in item.items()})
    path = os.fspath(item)
    if not _is_file(path):
        raise FileNotFoundError(f"compare: {path}: no such run or metrics file")
    if _looks_like_json(path):
        try:
            data = json.loads(storage.read_text(path))
        except json.JSONDecodeError as exc:
            raise ValueError(f"compare: {path}: not valid JSON: {exc}") from None
        per_query = data.get("per_query") if isinstance(data, dict) else None
        if not isinstance(per_query, dict) or not per_query:
            raise ValueError(f"compare: {path}: a metrics JSON needs a non-empty 'per_query' mapping "
                             "(the metrics.json that `synrank evaluate` writes)")
        label = data.get("name") or storage.name(storage.parent(path))
        return System(name or label, path, {q: {m: float(v) for m, v in vals.items()} for q, vals in per_query.items()})
    if qrels is None:
        if collection is None:
            raise ValueError(f"compare: {path} is a run file: scoring it needs the collection's qrels (--collection DIR)")
        qrels = _load_qrels(collection, split)
    run = read_run(path)
    stem = storage.name(path)
    return System(name or (stem.rsplit(".", 1)[0] if "." in stem[1:] else stem), path,
                  evaluate_run(qrels, run, relevance_level=relevance_level))


def _names(systems: list[System]) -> None:
    """Make names unique: add the parent folder, then a counter."""
    counts: dict[str, int] = {}
    for s in systems:
        counts[s.name] = counts.get(s.name, 0) + 1
    for s in systems:
        if counts[s.name] > 1 and s.source != "<memory>":
            parent = storage.name(storage.parent(s.source))
            s.name = f"{s.name}@{parent}" if parent else s.name
    seen: dict[str, int] = {}
    for s in systems:
        seen[s.name] = seen.get(s.name, 0) + 1
        if seen[s.name] > 1:
            s.name = f"{s.name}#{seen[s.name]}"


# ---------------------------------------------------------------------------------------------
# the comparison


def compare_runs(
    systems: Sequence[str | Mapping] | Mapping[str, str | Mapping],
    baseline: str | int | None = None,
    collection: str | None = None,
    split: str = "test",
    measures: Sequence[str] | None = None,
    out_dir: str | None = None,
    *,
    alpha: float = 0.05,
    test: str = "randomization",
    n_resamples: int = 10_000,
    seed: int = 0,
    relevance_level: int = 1,
    plot: bool = True,
) -> dict[str, Any]:
    """Compare systems with a baseline, per measure, with paired tests and Holm's correction.

    `systems`: run files / metrics JSON paths, or ``{name: path or per_query mapping}``.
    `baseline`: a system's name, its path, or its position (default: the first).
    Returns ``{"baseline", "measures", "alpha", "test", "systems": {name: {"mean": {m: v}}},
    "comparisons": [{"system", "measure", "n_queries", "baseline_mean", "system_mean", "delta",
    "p_ttest", "p_randomization", "p_ttest_holm", "p_randomization_holm", "significant",
    "outcome"}], "table": str, "table_path", "json_path", "plot_path"}`` (paths when `out_dir`).
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {', '.join(TESTS)}, got {test!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    items = list(systems.items()) if isinstance(systems, Mapping) else [(None, s) for s in systems]
    if len(items) < 2:
        raise ValueError("compare: give at least two runs or metrics files")
    qrels = None
    needs_qrels = any(not isinstance(v, Mapping) and _is_file(os.fspath(v)) and not _looks_like_json(os.fspath(v))
                      for _, v in items)
    if needs_qrels and collection is not None:
        qrels = _load_qrels(collection, split)
    loaded = [load_system(v, name=n, qrels=qrels, collection=collection, split=split,
                          relevance_level=relevance_level) for n, v in items]
    _names(loaded)
    base_index = _baseline_index(loaded, items, baseline)
    base = loaded[base_index]
    others = [s for i, s in enumerate(loaded) if i != base_index]

    available = set.intersection(*(set(next(iter(s.per_query.values())).keys()) for s in loaded if s.per_query))
    if measures is None:
        measures = [m for m in MEASURES if m in available] or sorted(available)
    missing = [m for m in measures if m not in available]
    if missing:
        raise ValueError(f"compare: measure(s) {missing} are not in every input (common: {', '.join(sorted(available))})")

    comparisons: list[dict[str, Any]] = []
    diffs: dict[tuple[str, str], np.ndarray] = {}
    for m in measures:
        rows = []
        for s in others:
            common = [q for q in base.per_query if q in s.per_query]
            if not common:
                raise ValueError(f"compare: {s.name} and {base.name} have no query in common")
            a = np.array([s.per_query[q][m] for q in common], dtype=np.float64)
            b = np.array([base.per_query[q][m] for q in common], dtype=np.float64)
            diffs[(s.name, m)] = a - b
            rows.append({
                "system": s.name, "measure": m, "n_queries": len(common),
                "baseline_mean": float(b.mean()), "system_mean": float(a.mean()), "delta": float((a - b).mean()),
                "p_ttest": paired_ttest(a, b),
                "p_randomization": randomization_test(a, b, n_resamples=n_resamples, seed=seed),
            })
        for key in ("p_ttest", "p_randomization"):
            for row, adj in zip(rows, holm([r[key] for r in rows])):
                row[f"{key}_holm"] = adj
        for row in rows:
            p = row["p_randomization_holm" if test == "randomization" else "p_ttest_holm"]
            row["significant"] = bool(p < alpha)
            row["outcome"] = ("win" if row["delta"] > 0 else "loss") if row["significant"] and row["delta"] != 0 else "tie"
        comparisons.extend(rows)

    result: dict[str, Any] = {
        "baseline": base.name, "measures": list(measures), "alpha": alpha, "test": test,
        "correction": "holm (per measure, across systems vs the baseline)",
        "n_resamples": n_resamples, "seed": seed,
        "systems": {s.name: {"source": s.source, "n_queries": len(s.per_query),
                             "mean": {m: float(np.mean([v[m] for v in s.per_query.values()])) for m in measures}}
                    for s in loaded},
        "comparisons": comparisons,
    }
    result["table"] = format_table(result)
    if out_dir is not None:
        from synrank.storage import write_json, write_text

        out = os.fspath(out_dir)
        storage.makedirs(out)
        result["table_path"] = storage.join(out, "compare.md")
        result["json_path"] = storage.join(out, "compare.json")
        write_text(result["table"] + "\n", result["table_path"])
        if plot:
            result["plot_path"] = storage.join(out, "compare.png")
            plot_differences(diffs, comparisons, base.name, result["plot_path"])
        write_json({k: v for k, v in result.items() if k != "table"}, result["json_path"])
    return result


def _baseline_index(loaded: list[System], items, baseline) -> int:
    if baseline is None:
        return 0
    if isinstance(baseline, int):
        if not 0 <= baseline < len(loaded):
            raise ValueError(f"compare: baseline index {baseline} out of range (0..{len(loaded) - 1})")
        return baseline
    for i, s in enumerate(loaded):
        if baseline in (s.name, s.source) or (items[i][0] is None and os.fspath(items[i][1]) == baseline):
            return i
    for i, s in enumerate(loaded):
        if s.source != "<memory>" and storage.absolute(s.source) == storage.absolute(baseline):
            return i
    raise ValueError(f"compare: baseline {baseline!r} is none of the inputs: {', '.join(s.name for s in loaded)}")


def format_table(result: Mapping[str, Any]) -> str:
    """Markdown: one row per system, mean per measure; others also the difference and W/L marks."""
    measures = result["measures"]
    by_key = {(c["system"], c["measure"]): c for c in result["comparisons"]}
    header = ["system", *measures]
    rows = []
    for name, info in result["systems"].items():
        cells = [name + (" (baseline)" if name == result["baseline"] else "")]
        for m in measures:
            c = by_key.get((name, m))
            if c is None:
                cells.append(f"{info['mean'][m]:.4f}")
            else:
                mark = {"win": " W", "loss": " L"}.get(c["outcome"], "")
                p = c["p_randomization_holm" if result["test"] == "randomization" else "p_ttest_holm"]
                cells.append(f"{c['system_mean']:.4f} ({c['delta']:+.4f}, p={p:.3g}){mark}")
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    lines = [fmt(header), "| " + " | ".join("-" * w for w in widths) + " |", *(fmt(r) for r in rows)]
    test = "randomization test" if result["test"] == "randomization" else "paired t-test"
    lines.append("")
    lines.append(f"W / L: significantly better / worse than {result['baseline']} (paired {test}, Holm-corrected "
                 f"across systems per measure, alpha={result['alpha']}); p = Holm-adjusted p-value; "
                 "baseline row: mean over its queries; other rows: mean and difference over the queries shared with "
                 "the baseline.")
    return "\n".join(lines)


def plot_differences(diffs: Mapping[tuple[str, str], np.ndarray], comparisons: list[dict], baseline: str,
                     path: str) -> str:
    """One panel per (system, measure): per-query differences to the baseline, sorted."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    systems = list(dict.fromkeys(c["system"] for c in comparisons))
    measures = list(dict.fromkeys(c["measure"] for c in comparisons))
    by_key = {(c["system"], c["measure"]): c for c in comparisons}
    fig, axes = plt.subplots(len(systems), len(measures), squeeze=False,
                             figsize=(3.2 * len(measures), 2.6 * len(systems)), sharey=True)
    for i, s in enumerate(systems):
        for j, m in enumerate(measures):
            ax = axes[i][j]
            d = np.sort(diffs[(s, m)])[::-1]
            colors = np.where(d > 0, "tab:green", np.where(d < 0, "tab:red", "tab:gray"))
            ax.bar(np.arange(len(d)), d, width=1.0, color=colors)
            ax.axhline(0.0, color="black", linewidth=0.6)
            c = by_key[(s, m)]
            mark = {"win": " (W)", "loss": " (L)"}.get(c["outcome"], "")
            ax.set_title(f"{m}: {c['delta']:+.3f}{mark}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{s}\n- {baseline}", fontsize=8)
            ax.set_xticks([])
            ax.set_xlabel(f"{len(d)} queries", fontsize=8)
    fig.suptitle(f"per-query differences to {baseline}", fontsize=10)
    fig.tight_layout()
    try:
        with storage.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path
