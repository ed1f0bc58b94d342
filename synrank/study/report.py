"""`synrank study report DIR`: what won, by how much, and whether it is significant.

Reads only the study directory (``trials/*/trial.json``, ``result.json``, ``status.json``,
``per_query/``, ``history.json``), so a report can be rebuilt at any time, also for a study that
is still running or was interrupted. Writes ``<study_dir>/report/``:

- ``report.md``: the results table (one row per configuration: mean and 95 % interval over seeds of
  the main measure per test collection and averaged over them, with significance markers against
  the baseline), the significance table, the other measures, the dev results, failures, plots;
- ``results.csv``: one row per configuration, every measure: ``<split>/<collection>/<measure>/
  {mean,ci_low,ci_high,n}`` (``<collection>`` also ``average``: per seed, the mean over the
  split's collections), and for test collections ``.../{baseline,delta,p,p_holm,significant}``;
- reference rows: systems that were not trained (``report.references``: the untrained encoder,
  BM25, ...), scored once on the same test views and cached in ``references/`` (see
  synrank.study.references); in ``results.csv`` with ``reference`` set to their model spec;
- ``trials.csv``: one row per trial (status, error, every metric);
- ``plots/``: ``<measure>_by_objective.png`` (per collection, per objective), ``heatmap_objective_levels.png``
  (objective x number of levels), ``training_curves.png`` (loss per step, mean over seeds).

Statistics:

- interval: Student-t over seeds, ``mean ± t(0.975, n-1)·s/√n``; none with a single seed;
- significance: a configuration is compared with its *baseline*, the configuration equal to it
  except for the axes named in ``report.baseline`` (``{loss: infonce}``: InfoNCE on the same labels
  and levels). Per test collection and measure, each query's value is averaged over the seeds of a
  configuration, and the two configurations are compared on their common queries with the
  evaluation stage's paired test (``synrank.evaluate.compare``: randomization or t-test), with
  Holm's correction across the configurations compared on that collection and measure.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synrank.study.config import StudyConfig
from synrank.study.errors import summarize_error
from synrank.study.results import Configuration, Trial, group_configurations, load_trials, pretty, seed_values
from synrank.study.store import StudyStore

log = logging.getLogger(__name__)

UP, DOWN = "▲", "▼"


# --------------------------------------------------------------------------------------------------
# statistics


def mean_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a Student-t interval over `values`; low = high = nan with fewer than 2."""
    if not values:
        return math.nan, math.nan, math.nan
    arr = np.asarray(values, dtype=np.float64)
    m = float(arr.mean())
    if len(arr) < 2:
        return m, math.nan, math.nan
    from scipy import stats

    half = float(stats.t.ppf(0.5 + confidence / 2, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr)))
    return m, m - half, m + half


def per_query_mean(store: StudyStore, config: Configuration, part: str, coll: str, measure: str) -> dict[str, float]:
    """{query: mean over the configuration's completed seeds of `measure`} (queries every seed has)."""
    per_seed = []
    for t in config.completed:
        pq = store.read_json_or(store.trial_file(t.trial_id, "per_query", part, f"{coll}.json"))
        if pq is None:
            continue
        per_seed.append({q: float(v[measure]) for q, v in pq.items() if measure in v})
    if not per_seed:
        return {}
    common = set(per_seed[0]).intersection(*per_seed[1:])
    return {q: float(np.mean([s[q] for s in per_seed])) for q in sorted(common)}


def _matches(axes: dict[str, Any], wanted: dict[str, Any]) -> bool:
    for k, v in wanted.items():
        have = axes.get(k)
        if k == "loss":
            if str(have) != str(v) and str(have).split("(", 1)[0] != str(v):
                return False
        elif have != v and not (_num(have) is not None and _num(have) == _num(v)):
            return False
    return True


def _num(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def find_baseline(config: Configuration, configs: list[Configuration], baseline: dict[str, Any]) -> Configuration | None:
    """The configuration equal to `config` except for the baseline's axes, which take the baseline's
    values; `config` itself when it already has them; None when there is none."""
    if _matches(config.axes, baseline):
        return config
    others = {k: v for k, v in config.axes.items() if k not in baseline}
    found = [c for c in configs if _matches(c.axes, baseline) and {k: c.axes.get(k) for k in others} == others]
    if len(found) > 1:  # e.g. two infonce variants: prefer the plain name
        plain = [c for c in found if str(c.axes.get("loss")) == str(baseline.get("loss"))]
        found = plain or found
    return found[0] if found else None


def significance(store: StudyStore, configs: list[Configuration], study: StudyConfig, colls: list[str],
                 part: str = "test") -> dict[tuple[str, str, str], dict[str, Any]]:
    """{(config_id, collection, measure): {baseline, delta, p, p_holm, significant, n}} for every
    configuration that has a baseline other than itself."""
    from synrank.evaluate.compare import holm, paired_ttest, randomization_test

    rep = study.report
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    cache: dict[tuple[str, str, str], dict[str, float]] = {}

    def pq(c: Configuration, coll: str, m: str) -> dict[str, float]:
        key = (c.config_id, coll, m)
        if key not in cache:
            cache[key] = per_query_mean(store, c, part, coll, m)
        return cache[key]

    for coll in colls:
        for m in rep.measures:
            family = []
            for c in configs:
                b = find_baseline(c, configs, rep.baseline)
                if b is None or b is c or not c.completed or not b.completed:
                    continue
                a_vals, b_vals = pq(c, coll, m), pq(b, coll, m)
                common = sorted(set(a_vals) & set(b_vals))
                if not common:
                    continue
                a = np.array([a_vals[q] for q in common])
                bb = np.array([b_vals[q] for q in common])
                if rep.test == "ttest":
                    p = paired_ttest(a, bb)
                else:
                    p = randomization_test(a, bb, n_resamples=rep.trials, seed=0)
                family.append((c.config_id, {"baseline": b.config_id, "delta": float(a.mean() - bb.mean()),
                                             "p": float(p), "n": len(common)}))
            adjusted = holm([r["p"] for _, r in family]) if family else []
            for (cid, r), ph in zip(family, adjusted):
                r["p_holm"] = float(ph)
                r["significant"] = bool(ph < rep.alpha)
                out[(cid, coll, m)] = r
    return out


# --------------------------------------------------------------------------------------------------
# tables


def _axis_names(configs: list[Configuration]) -> list[str]:
    names: list[str] = []
    for c in configs:
        for k in c.axes:
            if k not in names:
                names.append(k)
    return names


def _label(axis: str) -> str:
    return {"loss": "objective", "n_levels": "levels", "source": "labels"}.get(axis, axis.rsplit(".", 1)[-1])


def _fmt_axis(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _cell(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(lo):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


@dataclass
class Tables:
    rows: list[dict[str, Any]]  # results.csv rows
    fieldnames: list[str]
    test_colls: list[str]
    dev_colls: list[str]
    sig: dict[tuple[str, str, str], dict[str, Any]]
    configs: list[Configuration]
    axes: list[str]
    references: list[Any] = field(default_factory=list)  # synrank.study.references.Reference, in order
    reference_rows: list[dict[str, Any]] = field(default_factory=list)  # results.csv rows of the completed ones


def _collections(trials: list[Trial], part: str, study: StudyConfig | None) -> list[str]:
    if study is not None:
        names = [c.key for c in (study.test if part == "test" else study.dev)]
        if names:
            return names
    seen: list[str] = []
    for t in trials:
        for c in (t.result or {}).get("metrics", {}).get(part, {}):
            if c not in seen:
                seen.append(c)
    return seen


def build_tables(store: StudyStore, study: StudyConfig, trials: list[Trial], references: list[Any] | None = None) -> Tables:
    configs = group_configurations(trials)
    test_colls = _collections(trials, "test", study)
    dev_colls = _collections(trials, "dev", study)
    axes = _axis_names(configs)
    rep = study.report
    sig = significance(store, configs, study, test_colls) if test_colls else {}

    fieldnames = ["config_id", *axes, "seeds_completed", "seeds_total", "seeds_failed"]
    rows = []
    for c in configs:
        row: dict[str, Any] = {"config_id": c.config_id, **{a: c.axes.get(a, "") for a in axes},
                               "seeds_completed": len(c.completed), "seeds_total": len(c.trials),
                               "seeds_failed": sum(t.status == "failed" for t in c.trials)}
        for part, colls in (("test", test_colls), ("dev", dev_colls)):
            if not colls:
                continue
            for coll in [*colls, "average"] if len(colls) > 1 or part == "test" else colls:
                for m in rep.measures:
                    vals = seed_values(c, part, colls, m, coll)
                    mean, lo, hi = mean_ci(vals, rep.confidence)
                    prefix = f"{part}/{coll}/{m}"
                    row.update({f"{prefix}/mean": mean, f"{prefix}/ci_low": lo, f"{prefix}/ci_high": hi,
                                f"{prefix}/n": len(vals)})
                    if part == "test" and coll != "average":
                        s = sig.get((c.config_id, coll, m))
                        b = find_baseline(c, configs, rep.baseline)
                        row.update({f"{prefix}/baseline": (b.config_id if b is not None else ""),
                                    f"{prefix}/delta": s["delta"] if s else math.nan,
                                    f"{prefix}/p": s["p"] if s else math.nan,
                                    f"{prefix}/p_holm": s["p_holm"] if s else math.nan,
                                    f"{prefix}/significant": (s["significant"] if s else "")})
        for k in row:
            if k not in fieldnames:
                fieldnames.append(k)
        rows.append(row)
    key = f"test/average/{rep.measure}/mean" if test_colls else f"dev/{dev_colls[0]}/{rep.measure}/mean" if dev_colls else None

    def order(r: dict[str, Any]) -> tuple:
        v = r.get(key, math.nan) if key else math.nan
        return (1 if (v is None or (isinstance(v, float) and math.isnan(v))) else 0, -(v if isinstance(v, float) and not math.isnan(v) else 0.0), r["config_id"])

    rows.sort(key=order)
    rank = {r["config_id"]: i for i, r in enumerate(rows)}
    configs.sort(key=lambda c: rank[c.config_id])
    references = list(references or [])
    ref_rows = [_reference_row(ref, axes, test_colls, rep.measures) for ref in references if ref.status == "completed"]
    fieldnames.insert(1, "reference")
    for row in ref_rows:
        for k in row:
            if k not in fieldnames:
                fieldnames.append(k)
    return Tables(rows, fieldnames, test_colls, dev_colls, sig, configs, axes, references, ref_rows)


def _reference_row(ref: Any, axes: list[str], colls: list[str], measures: list[str]) -> dict[str, Any]:
    """A results.csv row of a reference system: one value per collection (no seeds, no interval, no
    test); ``average`` is the mean over the collections, as for a trained configuration's seed."""
    row: dict[str, Any] = {"config_id": f"reference:{ref.name}", "reference": ref.spec,
                           **{a: (ref.label if a == "loss" else "") for a in axes},
                           "seeds_completed": "", "seeds_total": "", "seeds_failed": ""}
    for coll in [*colls, "average"]:
        for m in measures:
            if coll == "average":
                vals = [ref.metric(c, m) for c in colls]
                v = float(np.mean(vals)) if vals and all(x is not None for x in vals) else math.nan
            else:
                x = ref.metric(coll, m)
                v = math.nan if x is None else x
            prefix = f"test/{coll}/{m}"
            row.update({f"{prefix}/mean": v, f"{prefix}/ci_low": math.nan, f"{prefix}/ci_high": math.nan,
                        f"{prefix}/n": 0 if math.isnan(v) else 1})
    return row


def _csv(rows: list[dict[str, Any]], fieldnames: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fieldnames, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_value(r.get(k, "")) for k in fieldnames})
    return buf.getvalue()


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def _md_table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right if right is not None else set(range(1, len(header)))
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---:" if i in right else "---" for i in range(len(header))) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(store: StudyStore, study: StudyConfig, trials: list[Trial], t: Tables,
                    plots: dict[str, str]) -> str:
    rep = study.report
    m = rep.measure
    counts = {s: sum(x.status == s for x in trials) for s in ("completed", "failed", "stopped", "incomplete")}
    seeds = sorted({x.seed for x in trials})
    lines = [f"# Study report: {study.name}", ""]
    lines.append(f"Study directory `{store.root}`, report written {time.strftime('%Y-%m-%d %H:%M:%S')}. "
                 f"{len(t.configs)} configuration(s) × {len(seeds)} seed(s) = {len(trials)} trial(s): "
                 + ", ".join(f"{n} {s}" for s, n in counts.items() if n or s in ("completed", "failed")) + ".")
    lines.append("")
    nq = _query_counts(trials)
    coll_desc = ", ".join(f"{c} ({nq.get(('test', c), '?')} queries)" for c in t.test_colls)
    avg = "; *average* is the mean over them" if len(t.test_colls) > 1 else ""
    lines.append(f"**Measure**: {pretty(m)} on the test collection(s) {coll_desc}{avg}. Cells: mean over seeds "
                 f"[{rep.confidence:.0%} Student-t interval over seeds; none with one seed].")
    lines.append("")
    base = ", ".join(f"{_label(k)} = {v}" for k, v in rep.baseline.items())
    test_name = "paired randomization test" if rep.test == "randomization" else "paired t-test"
    lines.append(f"**Significance**: each configuration against the one that differs only in {base} "
                 f"(same everything else), {test_name} on per-query values (each query averaged over seeds), "
                 f"Holm-corrected across the configurations per collection and measure; {UP} / {DOWN}: "
                 f"significantly better / worse at α = {rep.alpha}; *(base)*: is its own baseline.")
    lines.append("")
    b = study.base
    lines.append(f"**Training**: encoder `{b.train.encoder.model}`, {b.train.max_steps or f'{b.train.epochs} epoch(s) of'} "
                 f"steps, {b.train.batch_size} queries × group size {b.groups.group_size} per step and worker, "
                 f"lr {b.train.lr:g}, max lengths {b.train.encoder.max_query_length}/{b.train.encoder.max_passage_length} tokens.")
    lines.append("")

    # main table
    lines.append(f"## Results: {pretty(m)}")
    lines.append("")
    with_avg = len(t.test_colls) > 1  # one collection: its column is the average
    header = [_label(a) for a in t.axes] + ["seeds"] + t.test_colls + (["average"] if with_avg else [])
    body = []
    for r, c in zip(t.rows, t.configs):
        cells = [_fmt_axis(c.axes.get(a, "")) for a in t.axes]
        cells.append(f"{r['seeds_completed']}/{r['seeds_total']}")
        for coll in t.test_colls:
            p = f"test/{coll}/{m}"
            cell = _cell(r[f"{p}/mean"], r[f"{p}/ci_low"], r[f"{p}/ci_high"])
            s = t.sig.get((c.config_id, coll, m))
            if s and s["significant"]:
                cell += f" {UP if s['delta'] > 0 else DOWN}"
            elif r.get(f"{p}/baseline") == c.config_id:
                cell += " *(base)*"
            cells.append(cell)
        if with_avg:
            p = f"test/average/{m}"
            cells.append(_cell(r[f"{p}/mean"], r[f"{p}/ci_low"], r[f"{p}/ci_high"]))
        body.append(cells)
    for r in t.reference_rows:
        cells = [_ref_axis_cell(r, a, i) for i, a in enumerate(t.axes)] + ["—"]
        cells += [_num_cell(r.get(f"test/{coll}/{m}/mean")) for coll in t.test_colls]
        if with_avg:
            cells.append(_num_cell(r.get(f"test/average/{m}/mean")))
        body.append(cells)
    lines.append(_md_table(header, body, right=set(range(len(t.axes), len(header)))))
    lines.append("")
    if t.references:
        lines.extend(_reference_notes(t))
        lines.append("")

    # significance details
    if t.sig:
        lines.append(f"## Against the baseline ({base}): {pretty(m)}")
        lines.append("")
        lines.append("Other measures' tests: `results.csv` (`<split>/<collection>/<measure>/p_holm`).")
        lines.append("")
        hdr = ["configuration", "baseline", "collection", "measure", "Δ", "p", "p (Holm)", ""]
        rows = []
        for c in t.configs:
            for coll in t.test_colls:
                for meas in [m]:
                    s = t.sig.get((c.config_id, coll, meas))
                    if not s:
                        continue
                    mark = (UP if s["delta"] > 0 else DOWN) if s["significant"] else ""
                    rows.append([c.config_id, s["baseline"], coll, pretty(meas), f"{s['delta']:+.4f}",
                                 f"{s['p']:.4f}", f"{s['p_holm']:.4f}", mark])
        lines.append(_md_table(hdr, rows, right={4, 5, 6}))
        lines.append("")

    # other measures
    others = [x for x in rep.measures if x != m]
    if others and t.test_colls:
        lines.append("## Other measures (test, mean over seeds)")
        lines.append("")
        colls = [*t.test_colls, "average"] if with_avg else t.test_colls
        hdr = ["configuration"] + [f"{coll} {pretty(x)}" for x in others for coll in colls]
        rows = []
        for r, c in zip(t.rows, t.configs):
            rows.append([c.config_id] + [_num_cell(r.get(f"test/{coll}/{x}/mean")) for x in others for coll in colls])
        for r in t.reference_rows:
            rows.append([_ref_label(r)] + [_num_cell(r.get(f"test/{coll}/{x}/mean")) for x in others for coll in colls])
        lines.append(_md_table(hdr, rows))
        lines.append("")

    if t.dev_colls:
        lines.append(f"## Dev collections ({pretty(m)})")
        lines.append("")
        hdr = ["configuration"] + t.dev_colls
        rows = [[c.config_id] + [_cell(r[f"dev/{d}/{m}/mean"], r[f"dev/{d}/{m}/ci_low"], r[f"dev/{d}/{m}/ci_high"])
                                 for d in t.dev_colls] for r, c in zip(t.rows, t.configs)]
        lines.append(_md_table(hdr, rows))
        lines.append("")

    bad = [x for x in trials if x.status != "completed"]
    if bad:
        lines.append("## Trials without results")
        lines.append("")
        rows = [[x.trial_id, x.status, _first_line(summarize_error(x.error)) if x.error else
                 (_stopped_reason(x, m) if x.status == "stopped" else "not finished (interrupted?)")]
                for x in bad]
        lines.append(_md_table(["trial", "status", "reason"], rows, right=set()))
        lines.append("")

    if plots:
        lines.append("## Plots")
        lines.append("")
        for title, rel in plots.items():
            lines.append(f"**{title}**")
            lines.append("")
            lines.append(f"![{title}]({rel})")
            lines.append("")
    lines.append("Files: `results.csv` (one row per configuration, every measure, interval and test), "
                 "`trials.csv` (one row per trial). Rebuild with `synrank study report " + store.root + "`.")
    return "\n".join(lines) + "\n"


def _ref_label(row: dict[str, Any]) -> str:
    return str(row.get("loss") or row["config_id"])


def _ref_axis_cell(row: dict[str, Any], axis: str, i: int) -> str:
    """The reference's label in the objective column (the first column without one), "—" elsewhere."""
    if axis == "loss" or (i == 0 and "loss" not in row):
        return _ref_label(row).replace("|", "\\|")
    return "—"


def _reference_notes(t: Tables) -> list[str]:
    ok = [r for r in t.references if r.status == "completed"]
    out = []
    if ok:
        out.append("*(reference)* rows: systems that were not trained ("
                   + ", ".join(f"{r.label.removesuffix(' (reference)')} = `{r.spec}`" for r in ok)
                   + "), scored once on the same test queries; no interval, no significance test.")
    for r in t.references:
        if r.status != "completed":
            if out:
                out.append("")
            out.append(f"Reference `{r.spec}` could not be evaluated: {_first_line(r.error or 'unknown error')}")
    return out


def _stopped_reason(trial: Trial, measure: str) -> str:
    last = trial.last or {}
    dev, step = last.get(f"dev/{measure}"), last.get("step")
    if isinstance(dev, (int, float)) and not math.isnan(dev):
        return f"stopped early by the scheduler at step {step}, dev {pretty(measure)} {dev:.3f}"
    return "stopped early by the scheduler"


def _num_cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}"


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        line = line.strip()
        if line:
            return (line[:200] + "…") if len(line) > 200 else line.replace("|", "\\|")
    return ""


def _query_counts(trials: list[Trial]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for t in trials:
        for part, colls in ((t.result or {}).get("num_queries") or {}).items():
            for c, n in colls.items():
                out.setdefault((part, c), n)
    return out


def trials_csv(trials: list[Trial]) -> str:
    rows, fields = [], ["trial_id", "config_id", "seed", "status", "error"]
    for t in trials:
        row: dict[str, Any] = {"trial_id": t.trial_id, "config_id": t.config_id, "seed": t.seed, "status": t.status,
                               "error": _first_line(summarize_error(t.error)) if t.error else ""}
        for k, v in t.axes.items():
            row[k] = v
            if k not in fields:
                fields.insert(fields.index("seed"), k)
        for k, v in ((t.result or {}).get("flat") or {}).items():
            row[k] = v
            if k not in fields:
                fields.append(k)
        if t.result:
            row["steps"], row["final_loss"] = t.result.get("steps"), t.result.get("final_loss")
            row["train_s"] = (t.result.get("seconds") or {}).get("train")
            row["total_s"] = (t.result.get("seconds") or {}).get("total")
            for k in ("steps", "final_loss", "train_s", "total_s"):
                if k not in fields:
                    fields.append(k)
        rows.append(row)
    return _csv(rows, fields)


# --------------------------------------------------------------------------------------------------
# entry point


def write_report(study_dir: str, study: StudyConfig | None = None) -> dict[str, str]:
    """Write the report of the study in `study_dir`; returns {"markdown", "csv", "trials_csv", plot names: path}.

    The reference systems of ``report.references`` missing from ``references/`` (or whose cached
    views differ) are evaluated first (see synrank.study.references)."""
    store = StudyStore(study_dir)
    if study is None:
        study = load_saved_study(store)
    trials = load_trials(store)
    if not trials:
        raise FileNotFoundError(f"{store.root}: no trials yet (trials/*/trial.json)")
    from synrank.study.references import ensure_references

    references = ensure_references(store, study) if study.report.references and _collections(trials, "test", study) else []
    tables = build_tables(store, study, trials, references)
    out = store.report_dir
    from synrank.study.plots import write_plots

    plot_files = write_plots(store, study, tables, trials)
    md = render_markdown(store, study, trials, tables,
                         {title: os.path.relpath(path, out) if store.local else path.rsplit("/report/", 1)[-1]
                          for title, path in plot_files.items()})
    paths = {"markdown": store.path("report", "report.md"), "csv": store.path("report", "results.csv"),
             "trials_csv": store.path("report", "trials.csv")}
    store.write_text(_csv(tables.rows + tables.reference_rows, tables.fieldnames), paths["csv"])
    store.write_text(trials_csv(trials), paths["trials_csv"])
    store.write_text(md, paths["markdown"])
    paths.update({f"plot:{p.rstrip('/').rsplit('/', 1)[-1]}": p for p in plot_files.values()})
    log.info("report: %s", paths["markdown"])
    return paths


def load_saved_study(store: StudyStore, overrides: list[str] | None = None) -> StudyConfig:
    """The StudyConfig saved in the study directory, with optional dotted overrides."""
    from synrank.config import apply_overrides, build

    if not store.exists(store.config_path):
        raise FileNotFoundError(f"{store.root}: not a study directory (no study.yaml)")
    import yaml

    from synrank import storage

    data = yaml.safe_load(storage.read_text(store.config_path)) or {}
    where = store.config_path
    if overrides:
        data = apply_overrides(data, overrides, StudyConfig)
        where += " + overrides"
    return build(StudyConfig, data, where=where)
