"""Retrieval measures with pytrec_eval, per query and as means.

Measures (names used in metrics JSON, tables and `compare`):

==============  ===================================================================================
``ndcg@10``     nDCG cut at 10 (pytrec_eval ``ndcg_cut.10``), gains = the qrels grades as given
``ndcg@100``    nDCG cut at 100 (``ndcg_cut.100``)
``recall@100``  recall of the top 100 (``recall.100``), binary
``mrr@10``      reciprocal rank of the first relevant document within the top 10, binary;
                pytrec_eval's ``recip_rank`` has no cut, so it is computed on the run truncated to
                10 documents (in trec_eval order, see `runfile.ranked`)
``map``         average precision over the whole retrieved list (``map``; the run holds top_k
                documents, 100 by default, so this is MAP@top_k), binary
==============  ===================================================================================

Relevance. nDCG uses the grades as given (graded; grade 0 and negative grades add no gain).
The binary measures count a document as relevant when its grade is >= `relevance_level`
(default 1, pytrec_eval's default): on Cranfield (grades 0-4) every grade >= 1 is relevant. TREC
DL conventionally uses 2 for its binary measures; pass ``relevance_level=2`` for that.

Queries. Every query of the qrels given is scored. A judged query absent from the run (or with
no retrieved document) scores 0 on every measure, as with ``trec_eval -c``; the means are over
all judged queries, so a system cannot gain by not answering.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import pytrec_eval

from synrank.evaluate.runfile import Run, truncate

MEASURES: tuple[str, ...] = ("ndcg@10", "ndcg@100", "recall@100", "mrr@10", "map")

# synrank name -> (pytrec_eval measure to request, key in its output)
_PYTREC = {
    "ndcg@10": ("ndcg_cut.10", "ndcg_cut_10"),
    "ndcg@100": ("ndcg_cut.100", "ndcg_cut_100"),
    "recall@100": ("recall.100", "recall_100"),
    "map": ("map", "map"),
}
_RR_CUT = 10

Qrels = dict[str, dict[str, int]]
PerQuery = dict[str, dict[str, float]]


def qrels_from_table(table) -> Qrels:
    """{query_id: {doc_id: grade}} from a QRELS table (pyarrow)."""
    out: Qrels = {}
    cols = [table.column(c).to_pylist() for c in ("query_id", "doc_id", "grade")]
    for qid, did, grade in zip(*cols):
        out.setdefault(qid, {})[did] = int(grade)
    return out


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    measures: Iterable[str] = MEASURES,
    *,
    relevance_level: int = 1,
) -> PerQuery:
    """Per-query values ``{qid: {measure: value}}`` for every query of `qrels`, in qrels order."""
    measures = list(measures)
    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise ValueError(f"unknown measure(s) {unknown}; known: {', '.join(MEASURES)}")
    qrels = {qid: {did: int(g) for did, g in docs.items()} for qid, docs in qrels.items()}
    # Only judged queries with at least one retrieved document go to pytrec_eval; the rest are 0.
    judged_run: Run = {qid: {d: float(s) for d, s in run[qid].items()} for qid in qrels if run.get(qid)}
    per_query: PerQuery = {qid: {m: 0.0 for m in measures} for qid in qrels}
    plain = [m for m in measures if m in _PYTREC]
    if plain and judged_run:
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {_PYTREC[m][0] for m in plain},
                                                   relevance_level=relevance_level)
        for qid, values in evaluator.evaluate(judged_run).items():
            for m in plain:
                per_query[qid][m] = float(values[_PYTREC[m][1]])
    if "mrr@10" in measures and judged_run:
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}, relevance_level=relevance_level)
        for qid, values in evaluator.evaluate(truncate(judged_run, _RR_CUT)).items():
            per_query[qid]["mrr@10"] = float(values["recip_rank"])
    return per_query


def mean_metrics(per_query: Mapping[str, Mapping[str, float]], measures: Iterable[str] | None = None) -> dict[str, float]:
    """Arithmetic mean of each measure over the queries of `per_query`."""
    if not per_query:
        return {}
    if measures is None:
        measures = next(iter(per_query.values())).keys()
    return {m: float(np.mean([values[m] for values in per_query.values()])) for m in measures}
