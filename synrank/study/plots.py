"""The study report's PNG plots (matplotlib, Agg): written by `report.write_report`.

- ``<measure>_by_objective.png``: one panel per test collection (and the average); x = objective,
  one bar per (levels, labels, tunables) variant, height = mean over seeds, whisker = the 95 %
  interval over seeds (none with one seed), dots = the individual seeds;
- ``heatmap_objective_levels.png``: objective × number of levels, the measure averaged over the test
  collections (one panel per label source; other axes averaged), annotated;
- ``training_curves.png``: training loss per step, mean over seeds, one panel per objective (the
  losses live on different scales), one line per variant.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from synrank.study.config import StudyConfig
from synrank.study.store import StudyStore


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, store: StudyStore, name: str) -> str:
    from synrank import storage

    path = store.path("report", "plots", name)
    try:
        with storage.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        _plt().close(fig)
    return path


def _variant(axes: dict[str, Any], drop: set[str]) -> str:
    parts = []
    for k, v in axes.items():
        if k in drop:
            continue
        if k == "n_levels":
            parts.append(f"{v} levels")
        elif k == "source":
            parts.append(f"{v} labels")
        else:
            parts.append(f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}")
    return ", ".join(parts) or "all"


def _objectives(study: StudyConfig, configs) -> list[str]:
    """Objectives in the order the study lists them (then any others, e.g. from an older config)."""
    listed = [l.display for losses, *_ in study.space.grids() for l in losses]
    present = {c.axes["loss"] for c in configs}
    ordered = [o for o in dict.fromkeys(listed) if o in present]
    return ordered + sorted(present - set(ordered))


def _variant_key(axes: dict[str, Any]) -> tuple:
    return (int(axes.get("n_levels", 0)), str(axes.get("source", "")),
            tuple(sorted((k, str(v)) for k, v in axes.items() if k not in ("loss", "n_levels", "source"))))


def _variants(configs) -> list[str]:
    firsts: dict[str, tuple] = {}
    for c in configs:
        firsts.setdefault(_variant(c.axes, {"loss"}), _variant_key(c.axes))
    return sorted(firsts, key=lambda v: firsts[v])


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def plot_by_objective(store: StudyStore, study: StudyConfig, tables, trials) -> str | None:
    from synrank.study.results import pretty, seed_values

    plt = _plt()
    m = study.report.measure
    colls = list(tables.test_colls) + (["average"] if len(tables.test_colls) > 1 else [])
    if not colls:
        return None
    objectives = _objectives(study, tables.configs)
    variants = _variants(tables.configs)
    by = {(c.axes["loss"], _variant(c.axes, {"loss"})): c for c in tables.configs}
    row = {r["config_id"]: r for r in tables.rows}
    n_var = len(variants)
    # each objective's bars are its own variants, side by side and centred on its tick
    present = {obj: [v for v in variants if (obj, v) in by] for obj in objectives}
    width = 0.8 / max(1, max(len(v) for v in present.values()))
    cmap = plt.get_cmap("tab10" if n_var <= 10 else "tab20")
    panel_w = min(11.0, max(4.5, 0.55 * len(objectives) * max(1, n_var) ** 0.5 + 1.5))
    cols = 1 if panel_w > 7 else min(2, len(colls))
    rows = math.ceil(len(colls) / cols)
    fig, axs = plt.subplots(rows, cols, figsize=(panel_w * cols, 3.4 * rows + 0.6), squeeze=False, sharey=True)
    for k in range(len(colls), rows * cols):
        axs.flat[k].axis("off")
    for ax, coll in zip(axs.flat, colls):
        for j, var in enumerate(variants):
            xs, means, lo_err, hi_err = [], [], [], []
            for i, obj in enumerate(objectives):
                c = by.get((obj, var))
                if c is None:
                    continue
                r = row[c.config_id]
                mean = r.get(f"test/{coll}/{m}/mean", math.nan)
                if not _finite(mean):
                    continue
                lo, hi = r.get(f"test/{coll}/{m}/ci_low", math.nan), r.get(f"test/{coll}/{m}/ci_high", math.nan)
                mine = present[obj]
                x = i + width * (mine.index(var) - (len(mine) - 1) / 2)
                xs.append(x)
                means.append(mean)
                lo_err.append(mean - lo if _finite(lo) else 0.0)
                hi_err.append(hi - mean if _finite(hi) else 0.0)
                seeds = seed_values(c, "test", tables.test_colls, m, coll)
                if len(seeds) > 1:
                    ax.scatter([x] * len(seeds), seeds, s=9, color="black", alpha=0.55, zorder=3, linewidths=0)
            if xs:
                bars = ax.bar(xs, means, width=width * 0.92, color=cmap(j % cmap.N), label=var,
                              yerr=[lo_err, hi_err] if any(lo_err) or any(hi_err) else None, capsize=3,
                              error_kw={"elinewidth": 1, "alpha": 0.8})
                if sum(len(v) for v in present.values()) <= 16:
                    ax.bar_label(bars, labels=[f"{v:.3f}" for v in means], padding=2, fontsize=7,
                                 label_type="edge")
        for k, ref in enumerate(getattr(tables, "reference_rows", [])):  # untrained systems: dashed lines
            v = ref.get(f"test/{coll}/{m}/mean", math.nan)
            if _finite(v):
                ax.axhline(v, color="0.35", linestyle=("--", ":", "-.")[k % 3], linewidth=1, zorder=1)
                ax.annotate(f"{ref.get('loss') or ref['config_id']} {v:.3f}", xy=(1.0, v), xycoords=("axes fraction", "data"),
                            xytext=(-2, 2), textcoords="offset points", ha="right", va="bottom", fontsize=6,
                            color="0.25")
        ax.set_xticks(range(len(objectives)))
        ax.set_xticklabels(objectives, rotation=30 if len(objectives) > 3 else 0, ha="right" if len(objectives) > 3 else "center")
        ax.set_title(coll)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    for r in range(rows):
        axs[r][0].set_ylabel(f"{pretty(m)}\n(mean over seeds, 95% CI)")
    if n_var > 1:
        handles, labels = [], []
        for ax in axs.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        order = sorted(range(len(labels)), key=lambda i: variants.index(labels[i]))
        fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper center",
                   bbox_to_anchor=(0.5, 0.0), ncol=min(n_var, 4), frameon=False)
    fig.suptitle(f"{study.name}: {pretty(m)} per objective", y=1.02)
    fig.tight_layout()
    return _save(fig, store, f"{m.replace('@', '')}_by_objective.png")


def plot_heatmap(store: StudyStore, study: StudyConfig, tables, trials) -> str | None:
    from synrank.study.results import pretty

    plt = _plt()
    m = study.report.measure
    if not tables.test_colls:
        return None
    objectives = _objectives(study, tables.configs)
    levels = sorted({int(c.axes["n_levels"]) for c in tables.configs})
    sources = list(dict.fromkeys(c.axes["source"] for c in tables.configs))
    # a label source studied at a single number of levels says nothing about levels: left out
    varied = [src for src in sources if len({int(c.axes["n_levels"]) for c in tables.configs
                                             if c.axes["source"] == src}) > 1]
    sources = varied or sources
    row = {r["config_id"]: r for r in tables.rows}
    fig, axs = plt.subplots(1, len(sources), figsize=(max(5.5, (1.1 * len(levels) + 2.2) * len(sources) + 1.2),
                                                      0.45 * len(objectives) + 1.9), squeeze=False)
    values = [row[c.config_id].get(f"test/average/{m}/mean", math.nan) for c in tables.configs]
    finite = [v for v in values if _finite(v)]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.01, vmax + 0.01
    im = None
    for ax, src in zip(axs[0], sources):
        grid = np.full((len(objectives), len(levels)), np.nan)
        for i, obj in enumerate(objectives):
            for j, lv in enumerate(levels):
                vals = [row[c.config_id].get(f"test/average/{m}/mean", math.nan) for c in tables.configs
                        if c.axes["loss"] == obj and int(c.axes["n_levels"]) == lv and c.axes["source"] == src]
                vals = [v for v in vals if _finite(v)]
                if vals:
                    grid[i, j] = float(np.mean(vals))
        im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(len(objectives)):
            for j in range(len(levels)):
                v = grid[i, j]
                if np.isnan(v):
                    ax.text(j, i, "no result", ha="center", va="center", fontsize=8, color="0.45")
                    continue
                bright = (v - vmin) / (vmax - vmin) > 0.6
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=9, color="black" if bright else "white")
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels([str(lv) for lv in levels])
        ax.set_yticks(range(len(objectives)))
        ax.set_yticklabels(objectives if ax is axs[0][0] else [])
        ax.set_xlabel("relevance levels")
        ax.set_title(f"{src} labels")
    if im is not None:
        cbar = fig.colorbar(im, ax=axs[0].tolist(), shrink=0.85, label=f"{pretty(m)}, mean over test collections")
        cbar.ax.yaxis.set_major_formatter(plt.FormatStrFormatter("%.3f"))
    fig.suptitle(f"{study.name}: {pretty(m)}, objective × levels", y=1.06)
    return _save(fig, store, "heatmap_objective_levels.png")


def plot_training_curves(store: StudyStore, study: StudyConfig, tables, trials) -> str | None:
    plt = _plt()
    objectives = _objectives(study, tables.configs)
    curves = []
    for c in tables.configs:
        hist = [t.history for t in c.completed if t.history]
        if not hist:
            continue
        n = min(len(h) for h in hist)
        steps = np.array([h[i]["step"] for i in range(n) for h in hist[:1]])
        loss = np.array([[h[i]["loss"] for i in range(n)] for h in hist])
        curves.append((c, steps, loss.mean(0), loss.std(0) if len(hist) > 1 else None))
    if not curves:
        return None
    cols = min(4, len(objectives))
    rows = math.ceil(len(objectives) / cols)
    fig, axs = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    variants = _variants([c for c, *_ in curves])
    cmap = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    for k, obj in enumerate(objectives):
        ax = axs[k // cols][k % cols]
        for c, steps, mean, std in curves:
            if c.axes["loss"] != obj:
                continue
            var = _variant(c.axes, {"loss"})
            color = cmap(variants.index(var) % cmap.N)
            ax.plot(steps, mean, color=color, label=var, marker="." if len(steps) <= 30 else None)
            if std is not None:
                ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
        ax.set_title(obj)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    for k in range(len(objectives), rows * cols):
        axs[k // cols][k % cols].axis("off")
    handles, labels = [], []
    for ax in axs.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    order = sorted(range(len(labels)), key=lambda i: variants.index(labels[i]) if labels[i] in variants else 0)
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if len(labels) > 1 or (labels and labels[0] != "all"):
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 4),
                   frameon=False)
    fig.suptitle(f"{study.name}: training loss (mean over seeds ± 1 sd)", y=1.02)
    fig.tight_layout()
    return _save(fig, store, "training_curves.png")


def write_plots(store: StudyStore, study: StudyConfig, tables, trials) -> dict[str, str]:
    """{title: path} of the plots that have data."""
    from synrank.study.results import pretty

    out = {}
    for title, fn in ((f"{pretty(study.report.measure)} per objective and collection", plot_by_objective),
                      ("Objective × number of relevance levels", plot_heatmap),
                      ("Training curves", plot_training_curves)):
        path = fn(store, study, tables, trials)
        if path:
            out[title] = path
    return out
