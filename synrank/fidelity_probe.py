"""Level fidelity by an LLM judge (`synrank probe`): does a passage written for level g read as level g?

It joins two stages' outputs, a generation folder and the annotation judge, hence its place among
the entry points (docs/layout.md).

The generation report's level fidelity (`synrank.generate.report.level_fidelity`) is the Spearman
correlation of level and MiniLM similarity. Similarity cannot tell "answers the query" from "on
topic but does not answer": both are close to the query. This probe asks the annotation judge
(`synrank.annotate`: same prompts, choice decoding, strict parser, retries) to grade every
generated passage against its own query, on the scale the passages were generated on, and compares
the judged grade with the intended level.

>>> summary = probe("runs/syn", "runs/syn-probe", cfg=AnnotateConfig(model="default"))
>>> summary["overall"]["exact_agreement"], summary["per_level"]["1"]["mean_judged"]

Judging goes through `synrank.annotate.consistency.check_consistency` / `run_consistency`, so the
judgments folder OUT has the annotation layout and a rerun resumes it (a different judge model or
judging prompt in the same OUT is refused; `overwrite` starts over). The summary is written
atomically to ``OUT/_probe.json`` (`PROBE_FILE`), schema version `SCHEMA_VERSION`:

- ``schema_version``, ``generated`` (the folder probed), ``generator_model``, ``prompt_version``
  (the generation's), ``n_levels``, ``level0_strategy``;
- ``judge``: ``model``, ``prompt_version`` (judging prompt), ``prompt_fingerprint``;
- ``n_passages``, ``n_queries``, ``graded``, ``failed`` (passages the judge never graded);
- ``overall``: over graded passages, intended level vs judged grade: ``exact_agreement``,
  ``within_one_agreement``, ``mean_abs_difference``, ``spearman`` (intended, judged), ``kappa``,
  ``kappa_linear``, ``kappa_quadratic`` (Cohen's, `synrank.annotate.agreement.cohens_kappa`),
  ``confusion`` (rows intended, columns judged), ``judged`` (the judge's grade distribution: a
  judge that gives one grade to everything agrees by chance only); ``overall_prompted``: ``exact_agreement`` and
  ``spearman`` without the level-0 passages of the swap strategy (written for another query);
- ``per_level``: for each intended level (key "0".."n-1"): ``n``, ``graded``, ``failed``,
  ``judged`` (distribution: {"grade": count}, every grade of the scale), ``mean_judged``,
  ``exact_agreement``, ``within_one_agreement``;
- ``minilm``: from the generation's ``_report.json``: ``overall``, ``overall_prompted``,
  ``per_query_mean`` (Spearman of level vs MiniLM similarity), or null without a report;
- ``limit``: the query limit of the probe (null: all).

Any undefined number (no graded passages, a constant side) is null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synrank import storage
from synrank.generate.layout import MANIFEST, REPORT

PROBE_FILE = "_probe.json"
SCHEMA_VERSION = 1


class ProbeError(ValueError):
    """A generated folder or probe setting that cannot be probed."""


@dataclass(frozen=True)
class GeneratedRun:
    """What the probe needs of a generation output folder."""

    path: str
    passages: pa.Table
    queries: pa.Table
    n_levels: int
    report: dict[str, Any]


def _read_optional_json(path: str) -> dict[str, Any]:
    return storage.read_json(path) if storage.exists(path) else {}


def read_generated(path: str, *, queries: str | None = None, limit: int | None = None) -> GeneratedRun:
    """The passages of a `synrank generate` folder (the first `limit` queries), their query texts
    (`queries`, else the queries path in the run's report) and the scale they were generated on."""
    from synrank.data.readers import read_queries, read_table
    from synrank.data.readers.paths import collection_file

    path = path.rstrip("/")
    report = _read_optional_json(storage.join(path, REPORT))
    manifest = _read_optional_json(storage.join(path, MANIFEST))
    n_levels = report.get("n_levels") or manifest.get("n_levels")
    if not n_levels:
        raise ProbeError(f"{path} has neither {REPORT} nor {MANIFEST}: not a synrank generate folder")
    passages = read_table(path, "synthetic")
    if limit is not None:
        if limit < 1:
            raise ProbeError(f"limit must be >= 1, got {limit}")
        keep = list(dict.fromkeys(passages.column("query_id").to_pylist()))[:limit]
        passages = passages.filter(pc.is_in(passages.column("query_id"), value_set=pa.array(keep, pa.string())))
    if passages.num_rows == 0:
        raise ProbeError(f"{path} holds no generated passages")
    source = queries or (report.get("config") or {}).get("queries")
    if not source:
        raise ProbeError(f"{path}/{REPORT} does not say which queries were used: give --queries PATH")
    query_table = read_queries(collection_file(source, "queries") or source)
    return GeneratedRun(path, passages, query_table, int(n_levels), report)


# --------------------------------------------------------------------------------------------
# numbers


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def agreement_numbers(levels: Any, grades: Any, n_levels: int) -> dict[str, Any]:
    """Intended `levels` vs judged `grades` (graded pairs only): agreement, Spearman, kappas."""
    from synrank.annotate.agreement import cohens_kappa, confusion_matrix
    from synrank.generate.report import spearman

    levels, grades = np.asarray(levels, dtype=int), np.asarray(grades, dtype=int)
    diff = np.abs(levels - grades)
    confusion = confusion_matrix(levels.tolist(), grades.tolist(), n_levels)
    return {
        "n": int(len(levels)),
        "exact_agreement": _ratio(int((diff == 0).sum()), len(levels)),
        "within_one_agreement": _ratio(int((diff <= 1).sum()), len(levels)),
        "mean_abs_difference": _ratio(float(diff.sum()), len(levels)),
        "spearman": spearman(levels, grades),
        "kappa": cohens_kappa(confusion),
        "kappa_linear": cohens_kappa(confusion, "linear"),
        "kappa_quadratic": cohens_kappa(confusion, "quadratic"),
        "confusion": confusion.tolist(),
        "judged": {str(g): int(c) for g, c in enumerate(confusion.sum(axis=0))},
    }


def per_level_numbers(levels: list[int], grades: list[int | None], n_levels: int) -> dict[str, dict[str, Any]]:
    """For each intended level: counts, judged-grade distribution, mean judged grade, agreement."""
    out: dict[str, dict[str, Any]] = {}
    for level in range(n_levels):
        mine = [g for lv, g in zip(levels, grades) if lv == level]
        graded = np.asarray([g for g in mine if g is not None], dtype=int)
        out[str(level)] = {
            "n": len(mine),
            "graded": int(len(graded)),
            "failed": len(mine) - int(len(graded)),
            "judged": {str(g): int((graded == g).sum()) for g in range(n_levels)},
            "mean_judged": float(graded.mean()) if len(graded) else None,
            "exact_agreement": _ratio(int((graded == level).sum()), len(graded)),
            "within_one_agreement": _ratio(int((np.abs(graded - level) <= 1).sum()), len(graded)),
        }
    return out


def fidelity_summary(levels: list[int], grades: list[int | None], n_levels: int, *,
                     swapped_level0: bool = False) -> dict[str, Any]:
    """The `overall`, `overall_prompted` and `per_level` parts of the probe summary; a None grade
    is a passage the judge failed to grade (counted, not compared)."""
    for lv in set(levels):
        if not 0 <= lv < n_levels:
            raise ProbeError(f"intended level {lv} is off the {n_levels}-level scale")
    pairs = [(lv, g) for lv, g in zip(levels, grades) if g is not None]
    overall = agreement_numbers([a for a, _ in pairs], [b for _, b in pairs], n_levels)
    prompted = [(a, b) for a, b in pairs if a > 0 or not swapped_level0]
    p = agreement_numbers([a for a, _ in prompted], [b for _, b in prompted], n_levels)
    return {
        "graded": len(pairs),
        "failed": len(levels) - len(pairs),
        "overall": overall,
        "overall_prompted": {"n": p["n"], "exact_agreement": p["exact_agreement"], "spearman": p["spearman"]},
        "per_level": per_level_numbers(levels, grades, n_levels),
    }


def minilm_fidelity(report: dict[str, Any]) -> dict[str, Any] | None:
    """The MiniLM level fidelity of a generation report, or None when it has none."""
    fid = report.get("fidelity") or {}
    if not fid.get("computed"):
        return None
    return {"overall": fid.get("overall"), "overall_prompted": fid.get("overall_prompted"),
            "per_query_mean": (fid.get("per_query") or {}).get("mean"), "encoder": fid.get("encoder"),
            "passages": fid.get("passages")}


# --------------------------------------------------------------------------------------------
# the probe


def probe(generated: str, out: str, *, judge: Any = None, cfg: Any = None, pool: Any = None,
          address: str | None = None, queries: str | None = None, limit: int | None = None,
          overwrite: bool = False) -> dict[str, Any]:
    """Judge the passages of the generation folder `generated` against their queries, into `out`
    (resumable), and write the summary (module docstring) to OUT/_probe.json; returns it.

    The judge: `judge` (any `synrank.annotate.pipeline.Judge`, judged in this process), else an
    engine judge as `cfg` (an AnnotateConfig: model, judging prompt, retries, engines) configures
    it, on `pool` or engines started for the probe. The scale is always the generation's."""
    from synrank.annotate.consistency import check_consistency, run_consistency
    from synrank.annotate.prompts import fingerprint
    from synrank.config import AnnotateConfig

    run = read_generated(generated, queries=queries, limit=limit)
    cfg = (cfg or AnnotateConfig()).model_copy(update={"n_levels": run.n_levels, "out": out})
    if judge is not None:
        result = check_consistency(run.passages, run.queries, out, judge, n_levels=run.n_levels,
                                   prompt_version=cfg.prompt_version, max_retries=cfg.max_retries,
                                   shard_size=cfg.shard_size, overwrite=overwrite)
        judge_model = judge.model
    else:
        from synrank.llm.engine import spec_from_config

        result = run_consistency(cfg, run.passages, run.queries, out, pool=pool, address=address, overwrite=overwrite)
        judge_model = spec_from_config(cfg).label
    judged = dict(zip(zip(result.judgments.column("query_id").to_pylist(), result.judgments.column("doc_id").to_pylist()),
                      result.judgments.column("grade").to_pylist()))
    keys = zip(run.passages.column("query_id").to_pylist(), run.passages.column("doc_id").to_pylist())
    grades = [judged.get(k) for k in keys]
    levels = [int(x) for x in run.passages.column("level").to_pylist()]
    strategy = run.report.get("level0_strategy")
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "generated": run.path,
        "generator_model": run.report.get("model") or run.passages.column("model")[0].as_py(),
        "prompt_version": run.report.get("prompt_version") or run.passages.column("prompt_version")[0].as_py(),
        "n_levels": run.n_levels,
        "level0_strategy": strategy,
        "judge": {"model": judge_model, "prompt_version": cfg.prompt_version,
                  "prompt_fingerprint": fingerprint(cfg.prompt_version, run.n_levels)},
        "n_passages": run.passages.num_rows,
        "n_queries": len(set(run.passages.column("query_id").to_pylist())),
        "limit": limit,
    }
    summary.update(fidelity_summary(levels, grades, run.n_levels, swapped_level0=strategy == "swap"))
    summary["minilm"] = minilm_fidelity(run.report)
    storage.write_json(summary, storage.join(out.rstrip("/"), PROBE_FILE))
    return summary


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def format_summary(s: dict[str, Any]) -> str:
    o, m = s["overall"], s.get("minilm") or {}
    lines = [
        f"fidelity probe of {s['generated']} (prompts {s['prompt_version']}, {s['n_levels']} levels), "
        f"judge {s['judge']['model']}: {s['n_passages']} passages of {s['n_queries']} queries, "
        f"{s['graded']} graded, {s['failed']} failed",
        f"  judged vs intended: exact {_fmt(o['exact_agreement'])}, within one {_fmt(o['within_one_agreement'])}, "
        f"Spearman {_fmt(o['spearman'])}, kappa {_fmt(o['kappa'])} (linear {_fmt(o['kappa_linear'])}); "
        f"MiniLM Spearman {_fmt(m.get('overall'))} (without swapped level 0: {_fmt(m.get('overall_prompted'))})",
    ]
    for level, d in s["per_level"].items():
        dist = " ".join(f"{g}:{c}" for g, c in d["judged"].items())
        lines.append(f"  level {level}: n {d['n']}, judged [{dist}], mean {_fmt(d['mean_judged'])}, "
                     f"exact {_fmt(d['exact_agreement'])}, within one {_fmt(d['within_one_agreement'])}")
    return "\n".join(lines)
