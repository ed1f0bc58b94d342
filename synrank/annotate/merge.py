"""Merging human and LLM qrels into one label set, for the training stage's `llm` and `mixed`
sources and for Paper B's (arXiv 2602.12727) heterogeneous mixtures.

>>> merged, stats = merge_qrels(human, llm, precedence="human", human_fraction=0.5,
...                             human_levels=5, llm_levels=4)

Steps, in order:

1. Scales: both tables are collapsed onto one scale (`n_levels`, default the coarser of the two)
   with `synrank.data.levels.collapse_mapping`; LLM rows are those with ``source == "llm"``
   (annotation output), or all rows of a table without a source column.
2. Human fraction (the mixture): of the queries that have human labels, a seeded
   `human_fraction` keeps them; the others lose their human labels and are labelled by the LLM
   alone. Which queries keep them depends only on (seed, query id): queries are ordered by a hash
   of both and the first round(fraction * n) kept, so the kept set of a larger fraction contains
   the kept set of a smaller one (same seed), and adding queries to the input does not reshuffle
   the others much.
3. Precedence, for the remaining human labels:
   - ``human``: a pair labelled by both keeps the human grade; every LLM pair is added otherwise.
   - ``llm``: a pair labelled by both takes the LLM grade; human pairs the LLM did not label stay.
   - ``add``: human labels are kept as they are, the LLM only adds new pairs, and only to queries
     that (still) have human labels, never whole new queries (the training stage's
     ``groups.precedence=add`` reads it the same way).

The output is a QRELS table (query_id, doc_id, grade, source) with source saying whose grade each
row carries, sorted by query then document; `MergeStats` counts what happened.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from synrank.data import schemas
from synrank.data.levels import collapse_mapping

PRECEDENCES = ("human", "llm", "add")


@dataclass
class MergeStats:
    precedence: str
    human_fraction: float
    n_levels: int
    human_queries: int = 0
    human_queries_kept: int = 0
    llm_queries: int = 0
    queries: int = 0
    rows: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    conflicts: int = 0  # pairs labelled by both with different grades (after collapsing)
    overlaps: int = 0  # pairs labelled by both
    llm_dropped: int = 0  # LLM rows left out (add: new queries; human: overridden)
    human_dropped: int = 0  # human rows left out (fraction; llm: overridden)
    kept_queries: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _key(seed: int, query_id: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{query_id}".encode()).hexdigest()


def select_queries(query_ids: list[str], fraction: float, seed: int = 0) -> set[str]:
    """round(fraction * n) of the distinct query ids, chosen by a seeded hash (nested in fraction)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"human_fraction must be in [0, 1], got {fraction}")
    distinct = sorted(set(query_ids))
    n_keep = int(round(fraction * len(distinct)))
    if fraction > 0 and n_keep == 0 and distinct:
        n_keep = 1  # a positive fraction of a small set keeps at least one query
    return set(sorted(distinct, key=lambda q: _key(seed, q))[:n_keep])


def _grades(table: pa.Table, levels: int, target: int, name: str, llm: bool) -> dict[tuple[str, str], int]:
    if llm and "source" in table.column_names:
        table = table.filter(pc.equal(table.column("source"), "llm"))
    mapping = collapse_mapping(levels, target)
    out: dict[tuple[str, str], int] = {}
    cols = [table.column(c).to_pylist() for c in ("query_id", "doc_id", "grade")]
    for row, (q, d, g) in enumerate(zip(*cols)):
        if g is None:
            continue
        if int(g) not in mapping:
            raise ValueError(f"{name} qrels row {row}: grade {g} is not on the {levels}-level scale "
                             f"0..{levels - 1}; set {name}_levels")
        key = (str(q), str(d))
        if key in out and out[key] != mapping[int(g)]:
            raise ValueError(f"{name} qrels: pair {key} labelled twice with different grades")
        out[key] = mapping[int(g)]
    return out


def merge_qrels(
    human: pa.Table,
    llm: pa.Table,
    *,
    precedence: str = "human",
    human_fraction: float = 1.0,
    seed: int = 0,
    human_levels: int = 4,
    llm_levels: int = 4,
    n_levels: int | None = None,
) -> tuple[pa.Table, MergeStats]:
    """Merge human and LLM qrels; see the module docstring for the rules."""
    if precedence not in PRECEDENCES:
        raise ValueError(f"precedence must be one of {PRECEDENCES}, got {precedence!r}")
    target = n_levels or min(human_levels, llm_levels)
    if target > min(human_levels, llm_levels):
        raise ValueError(f"n_levels={target} is finer than an input scale ({human_levels}, {llm_levels})")
    h = _grades(human, human_levels, target, "human", llm=False)
    l_ = _grades(llm, llm_levels, target, "llm", llm=True)
    stats = MergeStats(precedence=precedence, human_fraction=human_fraction, n_levels=target)

    human_queries = sorted({q for q, _ in h})
    kept = select_queries(human_queries, human_fraction, seed)
    stats.human_queries = len(human_queries)
    stats.human_queries_kept = len(kept)
    stats.kept_queries = sorted(kept)
    stats.llm_queries = len({q for q, _ in l_})
    h_kept = {k: g for k, g in h.items() if k[0] in kept}
    stats.human_dropped = len(h) - len(h_kept)

    merged: dict[tuple[str, str], tuple[int, str]] = {k: (g, "human") for k, g in h_kept.items()}
    for k, g in l_.items():
        if k in h_kept:
            stats.overlaps += 1
            stats.conflicts += int(h_kept[k] != g)
            if precedence == "llm":
                merged[k] = (g, "llm")
                stats.human_dropped += 1
            else:
                stats.llm_dropped += 1
        elif precedence == "add" and k[0] not in kept:
            stats.llm_dropped += 1
        else:
            merged[k] = (g, "llm")

    keys = sorted(merged)
    table = pa.table(
        {
            "query_id": [k[0] for k in keys],
            "doc_id": [k[1] for k in keys],
            "grade": pa.array([merged[k][0] for k in keys], pa.int32()),
            "source": [merged[k][1] for k in keys],
        },
        schema=schemas.QRELS,
    )
    stats.rows = table.num_rows
    stats.queries = len({k[0] for k in keys})
    for _, src in merged.values():
        stats.by_source[src] = stats.by_source.get(src, 0) + 1
    return table, stats
