"""How far LLM labels agree with human labels (or a judge with intended levels).

>>> report = agreement(human_qrels, llm_qrels, human_levels=5, llm_levels=4)
>>> print(report.format())            # confusion matrix, kappas, positive precision/recall
>>> report.write("reports/agreement")  # agreement.json and agreement.png (heatmap)

Both label sets are brought onto one scale first: the coarser of the two, by
`synrank.data.levels.collapse_mapping` (Cranfield's 5 levels become 4 as {0,1},{2},{3},{4}).
Only pairs labelled by both are compared; the pairs only one side labelled are counted. Optionally
the LLM's pairs that people never judged can be counted as human grade 0 (`unjudged_as=0`, the TREC
convention), which is what a retrieval metric would assume.

Cohen's kappa (Cohen 1960; weighted, Cohen 1968), computed by scikit-learn's `cohen_kappa_score`:
with observed proportions O[i][j], expected proportions E[i][j] = row_i * col_j (product of the
marginals) and disagreement weights w[i][j], kappa = 1 - sum(w * O) / sum(w * E). Unweighted: w = 1
off the diagonal; linear: |i - j|; quadratic: (i - j)^2 (any common scale gives the same kappa).
Undefined (None) when sum(w * E) is 0, i.e. both raters used one and the same grade for everything.

"Positive" is the upper half of the scale, as the 2-level collapse defines it (4 levels: grades 2
and 3), unless `positive_threshold` says otherwise: precision = P(human positive | LLM positive),
recall = P(LLM positive | human positive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from synrank.data.levels import collapse_mapping
from synrank.data.levels import positive_grades as levels_positive_grades

WEIGHTINGS = ("none", "linear", "quadratic")


def confusion_matrix(rows: Iterable[int], cols: Iterable[int], n_levels: int) -> np.ndarray:
    """counts[i][j] = how often the row rater said i and the column rater said j."""
    m = np.zeros((n_levels, n_levels), dtype=np.int64)
    for i, j in zip(rows, cols):
        if not (0 <= i < n_levels and 0 <= j < n_levels):
            raise ValueError(f"grade pair ({i}, {j}) is off the scale 0..{n_levels - 1}")
        m[i, j] += 1
    return m


def cohens_kappa(confusion: np.ndarray | Sequence[Sequence[int]], weighting: str = "none") -> float | None:
    """Cohen's kappa of a square confusion matrix of counts, by scikit-learn's ``cohen_kappa_score``;
    None when undefined (no data, or chance disagreement is 0)."""
    from sklearn.metrics import cohen_kappa_score

    m = np.asarray(confusion, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {m.shape}")
    if m.sum() <= 0 or m.shape[0] < 2:
        return None
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if np.count_nonzero(m) == 1 and np.count_nonzero(np.diag(m)) == 1:
        return None  # both raters used one and the same grade for everything: no chance disagreement
    # one labelled pair per cell, weighted by its count: the matrix itself, without expanding it
    rows, cols = np.indices(m.shape)
    kappa = cohen_kappa_score(rows.ravel(), cols.ravel(), labels=np.arange(m.shape[0]), sample_weight=m.ravel(),
                              weights=None if weighting == "none" else weighting)
    return None if math.isnan(kappa) else float(kappa)


def positive_grades(n_levels: int, threshold: int | None = None) -> set[int]:
    if threshold is None:  # the one rule of synrank.data.levels
        return set(levels_positive_grades(n_levels))
    return {g for g in range(n_levels) if g >= threshold}


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


@dataclass
class AgreementReport:
    """Agreement of a row rater (`row_name`, e.g. human) with a column rater (e.g. llm)."""

    n_levels: int
    confusion: np.ndarray
    row_name: str = "human"
    col_name: str = "llm"
    positive: tuple[int, ...] = ()
    coverage: dict[str, int] = field(default_factory=dict)
    scales: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    def kappa(self, weighting: str = "none") -> float | None:
        return cohens_kappa(self.confusion, weighting)

    def binary(self) -> dict[str, float | int | None]:
        pos = np.zeros(self.n_levels, dtype=bool)
        pos[list(self.positive)] = True
        m = self.confusion
        tp = int(m[np.ix_(pos, pos)].sum())
        fp = int(m[np.ix_(~pos, pos)].sum())
        fn = int(m[np.ix_(pos, ~pos)].sum())
        tn = int(m[np.ix_(~pos, ~pos)].sum())
        precision = _ratio(tp, tp + fp)
        recall = _ratio(tp, tp + fn)
        f1 = _ratio(2 * precision * recall, precision + recall) if precision and recall else (
            0.0 if precision is not None and recall is not None else None)
        binary = np.array([[tn, fp], [fn, tp]])
        return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall, "f1": f1,
                "accuracy": _ratio(tp + tn, self.n), "kappa": cohens_kappa(binary)}

    def per_row(self) -> dict[int, dict[str, float | int | None]]:
        """Per row grade: how many, and the share the column rater put on the same grade."""
        out = {}
        for g in range(self.n_levels):
            count = int(self.confusion[g].sum())
            out[g] = {"n": count, "match": _ratio(self.confusion[g, g], count)}
        return out

    def as_dict(self) -> dict[str, Any]:
        m = self.confusion
        diffs = np.abs(np.subtract.outer(np.arange(self.n_levels), np.arange(self.n_levels)))
        return {
            "rows": self.row_name,
            "cols": self.col_name,
            "n_levels": self.n_levels,
            "n": self.n,
            "confusion": m.tolist(),
            "exact_agreement": _ratio(np.trace(m), self.n),
            "mean_abs_difference": _ratio(float((diffs * m).sum()), self.n),
            "kappa": self.kappa("none"),
            "kappa_linear": self.kappa("linear"),
            "kappa_quadratic": self.kappa("quadratic"),
            "positive_grades": list(self.positive),
            "positive": self.binary(),
            "per_grade": {str(g): v for g, v in self.per_row().items()},
            "coverage": self.coverage,
            "scales": self.scales,
        }

    def format(self) -> str:
        d = self.as_dict()

        def f(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f}"

        width = max(6, len(self.row_name) + 2)
        lines = [f"{self.row_name} (rows) vs {self.col_name} (columns), {self.n} pairs, grades 0..{self.n_levels - 1}"]
        lines.append(" " * width + "".join(f"{g:>7d}" for g in range(self.n_levels)) + "    total  match")
        for g in range(self.n_levels):
            row = self.confusion[g]
            lines.append(f"{g:>{width}d}" + "".join(f"{int(c):>7d}" for c in row)
                         + f"{int(row.sum()):>9d}  {f(d['per_grade'][str(g)]['match'])}")
        lines.append(" " * width + "".join(f"{int(c):>7d}" for c in self.confusion.sum(0)))
        b = d["positive"]
        lines += [
            f"exact agreement {f(d['exact_agreement'])}   mean |difference| {f(d['mean_abs_difference'])}",
            f"Cohen's kappa {f(d['kappa'])}   linear-weighted {f(d['kappa_linear'])}   "
            f"quadratic-weighted {f(d['kappa_quadratic'])}",
            f"positive = grades {list(self.positive)}: precision {f(b['precision'])}  recall {f(b['recall'])}  "
            f"F1 {f(b['f1'])}  binary kappa {f(b['kappa'])}  (tp {b['tp']} fp {b['fp']} fn {b['fn']} tn {b['tn']})",
        ]
        if self.coverage:
            lines.append("coverage: " + ", ".join(f"{k} {v}" for k, v in self.coverage.items()))
        return "\n".join(lines)

    def plot(self, path: str, title: str | None = None) -> str:
        """A PNG heatmap of the confusion matrix (row-normalised colour, counts written in)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        from synrank.storage import atomic_path

        m = self.confusion.astype(float)
        share = m / np.maximum(m.sum(1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(1.2 * self.n_levels + 2.2, 1.1 * self.n_levels + 1.6), dpi=120)
        im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(self.n_levels):
            for j in range(self.n_levels):
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center",
                        color="white" if share[i, j] > 0.6 else "black", fontsize=10)
        ax.set_xticks(range(self.n_levels))
        ax.set_yticks(range(self.n_levels))
        ax.set_xlabel(f"{self.col_name} grade")
        ax.set_ylabel(f"{self.row_name} grade")
        kq = self.kappa("quadratic")
        ax.set_title(title or f"{self.row_name} vs {self.col_name}: n={self.n}, "
                     f"kappa_q={'n/a' if kq is None else f'{kq:.2f}'}", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of row")
        fig.tight_layout()
        try:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png")
        finally:
            plt.close(fig)
        return path

    def write(self, out_dir: str, name: str = "agreement") -> dict[str, str]:
        """`out_dir/<name>.json`, `<name>.txt` and `<name>.png`; returns the paths."""
        from synrank.storage import join, write_json, write_text

        base = join(out_dir, name)
        write_json(_json_safe(self.as_dict()), base + ".json")
        write_text(self.format() + "\n", base + ".txt")
        self.plot(base + ".png")
        return {"json": base + ".json", "text": base + ".txt", "png": base + ".png"}


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _labels(table: pa.Table, levels: int, target: int, name: str) -> dict[tuple[str, str], int]:
    mapping = collapse_mapping(levels, target)
    out: dict[tuple[str, str], int] = {}
    cols = [table.column(c).to_pylist() for c in ("query_id", "doc_id", "grade")]
    for row, (q, d, g) in enumerate(zip(*cols)):
        if g is None:
            continue
        if int(g) not in mapping:
            raise ValueError(f"{name} row {row}: grade {g} is not on its {levels}-level scale 0..{levels - 1}; "
                             f"set the {name} scale size")
        out[(str(q), str(d))] = mapping[int(g)]
    return out


def agreement(
    human: pa.Table,
    llm: pa.Table,
    *,
    human_levels: int,
    llm_levels: int,
    n_levels: int | None = None,
    positive_threshold: int | None = None,
    unjudged_as: int | None = None,
    row_name: str = "human",
    col_name: str = "llm",
) -> AgreementReport:
    """Agreement of two qrels tables (query_id, doc_id, grade) on a common scale.

    `n_levels`: the common scale (default: the coarser of the two). `unjudged_as`: a grade (on the
    common scale) for pairs the LLM labelled and people did not (default: leave them out).
    """
    target = n_levels or min(human_levels, llm_levels)
    if target > min(human_levels, llm_levels):
        raise ValueError(f"common scale {target} is finer than a rater's scale ({human_levels}, {llm_levels})")
    h = _labels(human, human_levels, target, row_name)
    l_ = _labels(llm, llm_levels, target, col_name)
    both = [k for k in l_ if k in h]
    only_llm = [k for k in l_ if k not in h]
    # Only pairs of queries both sides labelled count as "human did not judge this passage".
    human_queries = {q for q, _ in h}
    rows = [h[k] for k in both]
    cols = [l_[k] for k in both]
    unjudged_used = 0
    if unjudged_as is not None:
        if not 0 <= unjudged_as < target:
            raise ValueError(f"unjudged_as={unjudged_as} is off the common scale 0..{target - 1}")
        for k in only_llm:
            if k[0] in human_queries:
                rows.append(unjudged_as)
                cols.append(l_[k])
                unjudged_used += 1
    coverage = {
        f"{row_name}_pairs": len(h),
        f"{col_name}_pairs": len(l_),
        "both": len(both),
        f"{col_name}_only": len(only_llm),
        f"{row_name}_only": len(h) - len(both),
        "unjudged_counted": unjudged_used,
    }
    return AgreementReport(
        n_levels=target,
        confusion=confusion_matrix(rows, cols, target),
        row_name=row_name,
        col_name=col_name,
        positive=tuple(sorted(positive_grades(target, positive_threshold))),
        coverage=coverage,
        scales={row_name: human_levels, col_name: llm_levels, "common": target,
                "unjudged_as": unjudged_as},
    )


def report_from_json(path: str) -> dict[str, Any]:
    from synrank.storage import read_json

    return read_json(path)
