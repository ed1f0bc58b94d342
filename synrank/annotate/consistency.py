"""Consistency of synthetic data: the annotation judge grades `synrank generate` output, and the
judged grade is compared with the level each passage was written for.

>>> result = check_consistency(synthetic, queries, "runs/consistency", judge, n_levels=4)
>>> print(result.report.format())       # intended level (rows) x judged grade (columns)
>>> cleaner, stats = filter_synthetic(synthetic, result.judgments, mode="drop", tolerance=0)

Judging goes through the same resumable, sharded `judge_pairs` as annotation (output folder
layout alike; the intended `level` is passed through to the judgments). The report is an
`AgreementReport` with rows = intended level and columns = judged grade: the per-row match rate is
"how often a passage written for level g is judged g", and the kappas measure how well the
generator follows the level instructions beyond chance.

`filter_synthetic` makes weak generators yield cleaner training groups:

- ``drop``: keep a passage only when |judged - level| <= tolerance;
- ``relabel``: keep every judged passage, with level := judged grade (the intended one is kept in
  ``intended_level``).

Passages the judge failed to grade are dropped in both modes unless ``keep_failed`` (then they
keep their intended level): an unverified label is not a verified one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synrank.annotate.agreement import AgreementReport, confusion_matrix, positive_grades
from synrank.annotate.pipeline import Judge, JudgeResult, judge_pairs, read_judgments
from synrank.data import schemas

FILTER_MODES = ("drop", "relabel")


def synthetic_pairs(synthetic: pa.Table, queries: pa.Table) -> pa.Table:
    """Judging pairs of synthetic passages: query_id, doc_id, query, passage and the pass-through
    `level` (plus the generator's model and prompt version, renamed to generator_*)."""
    synthetic = schemas.conform(synthetic, schemas.SYNTHETIC_PASSAGES, "synthetic passages")
    texts = dict(zip(queries.column("query_id").to_pylist(), queries.column("text").to_pylist()))
    qids = synthetic.column("query_id").to_pylist()
    missing = sorted({q for q in qids if q not in texts})
    if missing:
        raise ValueError(f"synthetic passages of {len(missing)} query id(s) not in the queries, e.g. {missing[:5]}")
    return pa.table({
        "query_id": synthetic.column("query_id"),
        "doc_id": synthetic.column("doc_id"),
        "query": pa.array([texts[q] for q in qids], pa.string()),
        "passage": synthetic.column("text"),
        "level": synthetic.column("level").cast(pa.int8()),
        "generator_model": synthetic.column("model"),
        "generator_prompt_version": synthetic.column("prompt_version"),
    })


@dataclass
class ConsistencyResult:
    report: AgreementReport
    failed_per_level: dict[int, int]
    judged: JudgeResult | None
    judgments: pa.Table

    def as_dict(self) -> dict[str, Any]:
        d = self.report.as_dict()
        d["failed_per_level"] = {str(k): v for k, v in self.failed_per_level.items()}
        return d

    def format(self) -> str:
        text = self.report.format()
        failed = sum(self.failed_per_level.values())
        if failed:
            text += "\nnot graded by the judge (failures), per intended level: " + ", ".join(
                f"{k}: {v}" for k, v in sorted(self.failed_per_level.items()) if v)
        return text

    def write(self, out_dir: str) -> dict[str, str]:
        from synrank.storage import write_json

        paths = self.report.write(out_dir, "_consistency")
        write_json(self.as_dict(), paths["json"])  # with the failures per level
        return paths


def consistency_report(judgments: pa.Table, n_levels: int) -> tuple[AgreementReport, dict[int, int]]:
    """Intended level x judged grade from judgments with a `level` column (failed rows counted apart)."""
    if "level" not in judgments.column_names:
        raise ValueError("judgments have no 'level' column: they are not judgments of synthetic passages")
    levels = judgments.column("level").to_pylist()
    grades = judgments.column("grade").to_pylist()
    for lv in set(levels):
        if lv is None or not 0 <= lv < n_levels:
            raise ValueError(f"intended level {lv!r} is off the {n_levels}-level scale; set n_levels to the "
                             "scale the passages were generated on")
    ok = [(lv, g) for lv, g in zip(levels, grades) if g is not None]
    failed = {lv: 0 for lv in range(n_levels)}
    for lv, g in zip(levels, grades):
        if g is None:
            failed[lv] += 1
    report = AgreementReport(
        n_levels=n_levels,
        confusion=confusion_matrix([a for a, _ in ok], [b for _, b in ok], n_levels),
        row_name="intended",
        col_name="judged",
        positive=tuple(sorted(positive_grades(n_levels))),
        coverage={"passages": len(levels), "graded": len(ok), "failed": len(levels) - len(ok)},
        scales={"intended": n_levels, "judged": n_levels, "common": n_levels},
    )
    return report, failed


def check_consistency(synthetic: pa.Table, queries: pa.Table, out: str, judge: Judge, *, n_levels: int = 4,
                      prompt_version: str = "v1", max_retries: int = 2, shard_size: int = 16,
                      overwrite: bool = False) -> ConsistencyResult:
    """Judge every synthetic passage with `judge` (resumably, into `out`) and compare with its
    intended level."""
    pairs = synthetic_pairs(synthetic, queries)
    result = judge_pairs(pairs, out, judge, n_levels=n_levels, prompt_version=prompt_version,
                         max_retries=max_retries, shard_size=shard_size, overwrite=overwrite,
                         identity={"kind": "consistency"})
    return _result(result, out, n_levels)


def run_consistency(cfg, synthetic: pa.Table, queries: pa.Table, out: str, *, pool: Any | None = None,
                    address: str | None = None, overwrite: bool | None = None) -> ConsistencyResult:
    """`check_consistency` with the judge of an AnnotateConfig: the engine pool `pool`, the named
    pool `cfg.engine_pool`, or engines started for the run (model, prompt, scale, retries, shard
    size from `cfg`; `cfg.n_levels` must be the scale the passages were generated on)."""
    from synrank.annotate.pipeline import _judge_with

    pairs = synthetic_pairs(synthetic, queries)
    cfg = cfg.model_copy(update={"out": out})
    result = _judge_with(cfg, pairs, judge=None, pool=pool, address=address,
                         overwrite=cfg.overwrite if overwrite is None else overwrite,
                         identity={"kind": "consistency"}, on_shard=None)
    return _result(result, out, cfg.n_levels)


def _result(result: JudgeResult, out: str, n_levels: int) -> ConsistencyResult:
    judgments = read_judgments(out)
    report, failed = consistency_report(judgments, n_levels)
    return ConsistencyResult(report, failed, result, judgments)


@dataclass
class FilterStats:
    mode: str
    tolerance: int
    keep_failed: bool
    passages: int = 0
    kept: int = 0
    dropped_disagree: int = 0
    dropped_failed: int = 0
    dropped_unjudged: int = 0
    relabelled: int = 0
    kept_per_level: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def filter_synthetic(synthetic: pa.Table, judgments: pa.Table, *, mode: str = "drop", tolerance: int = 0,
                     keep_failed: bool = False) -> tuple[pa.Table, FilterStats]:
    """Synthetic passages filtered or relabelled by their judged grade (see the module docstring).

    Returns the SYNTHETIC_PASSAGES columns (with `level` changed in relabel mode) followed by
    ``intended_level`` and ``judged_grade`` (null where the judge failed), and the counts.
    A passage without any judgment is dropped and counted (the judgments are of another set).
    """
    if mode not in FILTER_MODES:
        raise ValueError(f"mode must be one of {FILTER_MODES}, got {mode!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    synthetic = schemas.conform(synthetic, schemas.SYNTHETIC_PASSAGES, "synthetic passages")
    judged: dict[tuple[str, str], int | None] = {}
    for q, d, g in zip(*(judgments.column(c).to_pylist() for c in ("query_id", "doc_id", "grade"))):
        judged[(q, d)] = g
    stats = FilterStats(mode=mode, tolerance=tolerance, keep_failed=keep_failed, passages=synthetic.num_rows)
    keep_idx: list[int] = []
    new_levels: list[int] = []
    judged_col: list[int | None] = []
    keys = zip(synthetic.column("query_id").to_pylist(), synthetic.column("doc_id").to_pylist())
    levels = synthetic.column("level").to_pylist()
    for i, (key, level) in enumerate(zip(keys, levels)):
        if key not in judged:
            stats.dropped_unjudged += 1
            continue
        grade = judged[key]
        if grade is None:
            if not keep_failed:
                stats.dropped_failed += 1
                continue
            new = level
        elif mode == "drop":
            if abs(grade - level) > tolerance:
                stats.dropped_disagree += 1
                continue
            new = level
        else:
            new = grade
            stats.relabelled += int(grade != level)
        keep_idx.append(i)
        new_levels.append(new)
        judged_col.append(grade)
    kept = synthetic.take(pa.array(keep_idx, pa.int64()))
    intended = kept.column("level")
    level_pos = kept.column_names.index("level")
    kept = kept.set_column(level_pos, pa.field("level", pa.int8()), pa.array(new_levels, pa.int8()))
    kept = kept.append_column("intended_level", intended.cast(pa.int8()))
    kept = kept.append_column("judged_grade", pa.array(judged_col, pa.int32()))
    stats.kept = kept.num_rows
    counts = np.bincount(np.asarray(new_levels, dtype=np.int64), minlength=1) if new_levels else np.zeros(0, int)
    stats.kept_per_level = {str(g): int(c) for g, c in enumerate(counts) if c}
    return kept, stats


def failed_mask(judgments: pa.Table) -> pa.ChunkedArray:
    return pc.is_null(judgments.column("grade"))
