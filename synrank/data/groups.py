"""Training groups: one query with k passages and their grades, from one of four label sources.

>>> stats = build_groups_to(GroupsConfig(source="human", collection="../shared/data/cranfield",
...                                      qrels_levels=5, n_levels=5), "groups.parquet")
>>> table, stats = build_groups(cfg)          # small data: every group in this process

Sources (``GroupsConfig.source``):

- ``synthetic``: the passages ``synrank generate`` wrote (``groups.synthetic``); grade = level,
  collapsed from ``from_levels`` to ``n_levels``. Query texts from ``groups.queries`` or the
  collection.
- ``human``: a collection's qrels with their (collapsed) grades, plus BM25 negatives: the BM25
  top-``bm25_negatives`` passages with every judged passage removed, grade 0. The qrels are the
  collection's ``qrels_split`` (BEIR ``qrels/train.tsv``); a collection with a single qrels file
  (Cranfield) is split by query: ``split_queries`` with ``query_split`` (default 50 % / seed 13),
  and only the train part is used. Judged non-relevant passages (grade 0) stay in as hard negatives.
- ``llm``: qrels with ``source=llm`` (``groups.llm_qrels``, the annotation stage's output) and the
  collection's corpus; plus BM25 negatives as for ``human``. A merged label set from ``synrank
  annotate merge`` (human + LLM rows, Paper B's mixtures) is taken as it is, each row keeping its
  source. With ``query_split`` only the train queries are used.
- ``mixed``: per query, the synthetic passages and the real labelled passages (human qrels of the
  train queries, and LLM qrels when ``llm_qrels`` is given) and BM25 negatives. With ``relabel``
  (Paper A's setting) a real passage judged relevant takes ``real_positive_level`` (default: the
  top level) and BM25 negatives and judged non-relevant real passages take ``negative_level``
  (default 0). Every negative must stay strictly below every positive on the ``n_levels`` scale:
  ``negative_level < positive_threshold(n_levels) <= real_positive_level``
  (`synrank.data.levels.positive_threshold`), else the config is an error naming the keys. Without
  relabelling real passages keep their collapsed grades and BM25 negatives get 0.

The scale of the groups (``n_levels``) is written into the Parquet file's metadata
(``synrank.n_levels``) and the stats, so that training takes its positives from the same rule.
Groups with synthetic passages (sources ``synthetic`` and ``mixed``) also carry ``origins``
(`schemas.ORIGINS`): per passage, the other query it was written for (a swap level-0 passage,
from generate's ``for_query_id``), else null; training masks such a passage for that query.
Groups with real labels (sources ``human``, ``llm`` and ``mixed``) carry ``known_positives``
(`schemas.KNOWN_POSITIVES`): every passage judged relevant to the query (grade > 0), whether or
not the group holds it. Training never uses one of them as that query's in-batch negative. On
Cranfield this matters: in 76 % of its judged-relevant (query, passage) pairs the passage is
judged relevant to another query too.

Test queries: ``query_split`` holds out the test queries before anything else, ``train_queries``
(the pipeline's training split) keeps only those ids, and ``limit`` then keeps the ``limit``
smallest query ids (`limit_queries`): the same queries for every label source.

When a passage has both a human and an LLM label, ``precedence`` decides: ``human`` (the human
grade), ``llm`` (the LLM grade), or ``add`` (human grade; LLM labels only add pairs to queries that
people judged, never new queries).

Group size ``k`` (``group_size``): a query with more than k candidates keeps one passage of its
highest grade (so the best passage is always present) and fills the rest by ``sampling``:
``stratified`` (default) takes one passage per grade, grades visited in a random order each round,
so every group spans the grades it has; ``uniform`` draws the rest uniformly. The random draw is
seeded per query from (``seed``, query id), so a group does not depend on which other queries are
built with it. Passages in a group are ordered by grade, highest first. A query with no candidate
is left out and counted. With ``require_positive`` a query whose candidates hold no positive
(`synrank.data.levels.positive_threshold` of ``n_levels``) is left out too (``no_positive_queries``):
InfoNCE and the multi-positive losses learn nothing from such a group, the list-wise losses would
train on it, so without it every objective sees the same queries.

Where it runs: in Ray (the connected cluster, or else an embedded one from
`synrank.runtime.init_ray`, shut down after the build); the calling process only orchestrates and
receives counts. A planning task reads the label sources
and query texts and hands out the queries, in order, ``queries_per_part`` to a part. A part whose
passages are all synthetic is built by a task; otherwise by one actor that holds the collection's
corpus and its BM25 index on a worker. `build_groups_to(cfg, out)` sends the parts, in
query order, to a writer actor that makes them the row groups of one Parquet file at `out`
(atomically), then writes ``<out>.stats.json``. Tasks and actors ask for the ``cpu`` stage
resources (`synrank.runtime.stage_options`), and for memory sized to their inputs when that is
large. Groups do not depend on how the queries are cut into parts: a query's draw is seeded by its
id, and every query searches BM25 to the same depth.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synrank import storage
from synrank.config import GroupsConfig, QuerySplitConfig
from synrank.data import schemas
from synrank.data.levels import collapse_mapping, positive_threshold
from synrank.runtime import get_result

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "human", "llm", "mixed")
QUERIES_PER_PART = 2000


class GroupsError(ValueError):
    """A label source that cannot give training groups (missing, empty, or inconsistent)."""


# --------------------------------------------------------------------------------------------------
# query splits


def split_queries(
    query_ids: Iterable[str], train_fraction: float = 0.5, seed: int = 13
) -> tuple[list[str], list[str]]:
    """Deterministic seeded split of query ids into (train, test).

    The unique ids are sorted, permuted with ``numpy.random.default_rng(seed)`` and the first
    ``round(n * train_fraction)`` (at least 1 and at most n-1 when n >= 2) go to train. The result
    depends only on the set of ids, the fraction and the seed, not on their input order. Both lists
    come back sorted.
    """
    if not 0.0 < float(train_fraction) < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    ids = sorted(set(query_ids))
    if not ids:
        raise ValueError("split_queries: no query ids to split")
    n = len(ids)
    n_train = int(round(n * float(train_fraction)))
    if n >= 2:
        n_train = min(max(n_train, 1), n - 1)
    order = np.random.default_rng(int(seed)).permutation(n)
    train = sorted(ids[i] for i in order[:n_train])
    test = sorted(ids[i] for i in order[n_train:])
    return train, test


@dataclass(frozen=True)
class HumanSplit:
    """Which qrels of a collection are for training: the qrels split read, and the train/test query
    ids when the queries were split (None when the whole qrels split is for training)."""

    qrels_split: str
    train_ids: list[str] | None
    test_ids: list[str] | None

    @property
    def by_queries(self) -> bool:
        return self.train_ids is not None


def human_split(collection: str, qrels_split: str = "train", query_split: QuerySplitConfig | None = None) -> HumanSplit:
    """Resolve the training qrels of a collection the way the groups do, so evaluation and studies
    can hold out exactly the complementary queries.

    - the collection has ``qrels_split`` and no ``query_split`` is asked: that split, all queries;
    - ``query_split`` given: the queries of ``qrels_split`` (or of the only split there is) are split;
    - the collection has a single qrels file (Cranfield): it is split with ``query_split`` or the
      default ``QuerySplitConfig()``;
    - otherwise: an error naming the splits the collection has.
    """
    from synrank.data.readers import available_splits, read_qrels

    splits = available_splits(collection)
    if not splits:
        raise GroupsError(f"{collection}: the collection has no qrels (qrels/<split>.tsv); human labels need them")
    if qrels_split in splits and query_split is None:
        return HumanSplit(qrels_split, None, None)
    if qrels_split in splits:
        chosen = qrels_split
    elif len(splits) == 1:
        chosen = splits[0]
    else:
        raise GroupsError(f"{collection}: no qrels split {qrels_split!r}; it has {', '.join(splits)} "
                          "(set groups.qrels_split, or groups.query_split to split one file's queries)")
    qs = query_split or QuerySplitConfig()
    qrels = read_qrels(collection, split=chosen, source="human")
    judged = pc.unique(qrels.column("query_id")).to_pylist()
    train, test = split_queries(judged, qs.train_fraction, qs.seed)
    return HumanSplit(chosen, train, test)


# --------------------------------------------------------------------------------------------------
# candidates and sampling


@dataclass
class Candidate:
    doc_id: str
    text: str
    grade: float
    source: str
    origin: str | None = None  # another query the passage was written for (a swap passage)


def _rng(seed: int, query_id: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(query_id.encode("utf-8"))])


def sample_group(cands: Sequence[Any], k: int, rng: np.random.Generator, strategy: str = "stratified",
                 grade=lambda c: c.grade) -> list[Any]:
    """At most k of ``cands``: one of the highest grade, the rest by ``strategy`` (see module doc).

    Works on any items; ``grade`` reads an item's grade. The result is ordered by grade, highest
    first (ties in input order).
    """
    if k < 1:
        raise ValueError(f"group size must be >= 1, got {k}")
    if strategy not in ("stratified", "uniform"):
        raise ValueError(f"sampling must be 'stratified' or 'uniform', got {strategy!r}")
    items = list(cands)
    if len(items) > k:
        top = max(grade(c) for c in items)
        tops = [i for i, c in enumerate(items) if grade(c) == top]
        first = tops[int(rng.integers(len(tops)))]
        rest = [i for i in range(len(items)) if i != first]
        if strategy == "uniform":
            chosen = [first] + [rest[int(j)] for j in rng.choice(len(rest), size=k - 1, replace=False)]
        else:
            buckets: dict[float, list[int]] = {}
            for i in rest:
                buckets.setdefault(grade(items[i]), []).append(i)
            queues = {g: [members[int(j)] for j in rng.permutation(len(members))] for g, members in buckets.items()}
            chosen = [first]
            while len(chosen) < k:
                live = sorted(g for g, q in queues.items() if q)
                for j in rng.permutation(len(live)):
                    if len(chosen) == k:
                        break
                    chosen.append(queues[live[int(j)]].pop())
        items = [items[i] for i in sorted(chosen)]
    order = sorted(range(len(items)), key=lambda i: -grade(items[i]))
    return [items[i] for i in order]


# --------------------------------------------------------------------------------------------------
# reading the sources


def _mapping(from_levels: int, to_levels: int, what: str) -> dict[int, int]:
    try:
        return collapse_mapping(from_levels, to_levels)
    except ValueError as exc:
        raise GroupsError(f"{what}: {exc}") from exc


def _collapse_grade(grade: int, mapping: dict[int, int], n_from: int, where: str, hint: str) -> int:
    if grade < 0:  # TREC: -1 / -2 are judged non-relevant (or junk)
        grade = 0
    if grade not in mapping:
        raise GroupsError(f"{where}: grade {grade} is not on the {n_from}-level scale 0..{n_from - 1} ({hint})")
    return mapping[grade]


def _query_texts(cfg: GroupsConfig) -> dict[str, str]:
    from synrank.data.readers import read_queries

    path = cfg.queries or cfg.collection
    if path is None:
        raise GroupsError(f"source={cfg.source}: query texts are needed; set groups.queries (a queries file) "
                          "or groups.collection")
    table = read_queries(path)
    return dict(zip(table.column("query_id").to_pylist(), table.column("text").to_pylist()))


@dataclass(frozen=True)
class _Synthetic:
    """Synthetic passages as read: `table` (query_id, doc_id, text, grade on the final scale) and,
    per query in file order, the rows to use (the first row of each (query, doc) pair)."""

    table: pa.Table
    rows: dict[str, list[int]]

    def only(self, query_ids: set[str]) -> "_Synthetic":
        return _Synthetic(self.table, {q: r for q, r in self.rows.items() if q in query_ids})

    def take(self, query_ids: Sequence[str]) -> pa.Table:
        return self.table.take(pa.array([i for q in query_ids for i in self.rows.get(q, ())], pa.int64()))


_SYNTHETIC_ROWS = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("text", pa.string()),
                             ("grade", pa.float64()), ("origin", pa.string())])
_NO_SYNTHETIC = _Synthetic(_SYNTHETIC_ROWS.empty_table(), {})


def _read_synthetic(cfg: GroupsConfig) -> _Synthetic:
    from synrank.data.readers import read_table

    if not cfg.synthetic:
        raise GroupsError(f"source={cfg.source} needs groups.synthetic: the passages written by `synrank generate`")
    table = read_table(cfg.synthetic, "synthetic")
    if table.num_rows == 0:
        raise GroupsError(f"{cfg.synthetic}: no synthetic passages (0 rows)")
    mapping = _mapping(cfg.from_levels, cfg.n_levels, "groups.n_levels")
    rows: dict[str, list[int]] = {}
    grades: list[float | None] = [None] * table.num_rows
    seen: set[tuple[str, str]] = set()
    cols = [table.column(c).to_pylist() for c in ("query_id", "doc_id", "level")]
    no_text = pc.is_null(table.column("text")).to_pylist()
    for row, (qid, did, level, text_missing) in enumerate(zip(*cols, no_text)):
        if level is None or text_missing or qid is None or did is None:
            raise GroupsError(f"{cfg.synthetic}: row {row}: null query_id, doc_id, level or text")
        if (qid, did) in seen:
            continue
        seen.add((qid, did))
        grades[row] = float(_collapse_grade(int(level), mapping, cfg.from_levels, f"{cfg.synthetic}: row {row}",
                                            "set groups.from_levels to the scale the passages were generated on"))
        rows.setdefault(qid, []).append(row)
    kept = table.select(["query_id", "doc_id", "text"]).append_column("grade", pa.array(grades, pa.float64()))
    return _Synthetic(kept.append_column("origin", _origins(table)), rows)


def _origins(table: pa.Table) -> pa.Array:
    """Per synthetic passage, the other query it was written for (a swap level-0 passage: generate's
    `for_query_id`), else null."""
    name = schemas.WRITTEN_FOR.name
    if name not in table.column_names:
        return pa.nulls(table.num_rows, pa.string())
    written_for = table.column(name).cast(pa.string())
    other = pc.and_kleene(pc.is_valid(written_for), pc.not_equal(written_for, table.column("query_id")))
    return pc.if_else(pc.fill_null(other, False), written_for, pa.scalar(None, pa.string())).combine_chunks()


def _qrels_scale(cfg: GroupsConfig) -> int:
    return cfg.qrels_levels or cfg.from_levels


def _llm_qrels(cfg: GroupsConfig) -> pa.Table:
    from synrank.data.readers import read_qrels

    if not cfg.llm_qrels:
        raise GroupsError(f"source={cfg.source} needs groups.llm_qrels: qrels with source=llm (`synrank annotate`)")
    table = read_qrels(cfg.llm_qrels, split=cfg.qrels_split, source="llm")
    if pc.sum(pc.equal(table.column("source"), "llm")).as_py() in (None, 0):
        raise GroupsError(f"{cfg.llm_qrels}: no qrels rows with source=llm")
    return table


def _grades(table: pa.Table, cfg: GroupsConfig, where: str, keep: set[str] | None
            ) -> dict[str, dict[str, tuple[int, str]]]:
    """{query: {doc: (grade on the final scale, source)}}, rows of `keep` queries only (None: all).

    Mixed groups with relabelling only ask whether a real passage is relevant (grade > 0): grades
    are then checked against their scale but not collapsed."""
    n_from = _qrels_scale(cfg)
    if cfg.source == "mixed" and cfg.relabel:
        mapping = {g: g for g in range(n_from)}
    else:
        mapping = _mapping(n_from, cfg.n_levels, "groups.n_levels")
    out: dict[str, dict[str, tuple[int, str]]] = {}
    cols = [table.column(c).to_pylist() for c in ("query_id", "doc_id", "grade", "source")]
    for row, (qid, did, grade, source) in enumerate(zip(*cols)):
        if keep is not None and qid not in keep:
            continue
        g = _collapse_grade(int(grade), mapping, n_from, f"{where}: row {row}",
                            "set groups.qrels_levels to the scale of these qrels")
        out.setdefault(qid, {})[did] = (g, source or "human")
    return out


Labels = dict[str, dict[str, tuple[int, str]]]


def _merge(human: Labels, llm: Labels, precedence: str) -> Labels:
    """{query: {doc: (grade, source)}} from the human labels and the LLM label set under `precedence`.

    The LLM label set is ``groups.llm_qrels`` as written: annotation output (source=llm), or a
    merged human + LLM set from ``synrank annotate merge`` (Paper B's mixtures), whose rows keep
    the source they carry."""
    out: Labels = {qid: dict(docs) for qid, docs in human.items()}
    for qid, docs in llm.items():
        if precedence == "add" and qid not in human:
            continue
        target = out.setdefault(qid, {})
        for d, label in docs.items():
            if d not in target or precedence == "llm":
                target[d] = label
    return out


_LABEL_ROWS = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("grade", pa.int32()),
                         ("source", pa.string())])


def _labels_table(labels: Labels, query_ids: Sequence[str]) -> pa.Table:
    rows = [(q, d, g, s) for q in query_ids for d, (g, s) in labels.get(q, {}).items()]
    return pa.Table.from_arrays([pa.array([r[i] for r in rows], f.type) for i, f in enumerate(_LABEL_ROWS)],
                                schema=_LABEL_ROWS)


def _labels_of(table: pa.Table) -> Labels:
    out: Labels = {}
    cols = [table.column(c).to_pylist() for c in _LABEL_ROWS.names]
    for qid, did, grade, source in zip(*cols):
        out.setdefault(qid, {})[did] = (grade, source)
    return out


class _Corpus:
    def __init__(self, collection: str) -> None:
        from synrank.data.readers import read_corpus

        self.path = collection
        self.table = read_corpus(collection)
        if self.table.num_rows == 0:
            raise GroupsError(f"{collection}: the corpus is empty")
        self.row = {d: i for i, d in enumerate(self.table.column("doc_id").to_pylist())}
        self._titles = self.table.column("title")
        self._texts = self.table.column("text")
        self._bm25 = None

    def text(self, doc_id: str) -> str | None:
        from synrank.text import format_passage

        i = self.row.get(doc_id)
        if i is None:
            return None
        return format_passage(self._titles[i].as_py(), self._texts[i].as_py())

    def bm25(self):
        if self._bm25 is None:
            from synrank.data.bm25 import BM25Index

            log.info("indexing %d passages of %s with BM25", len(self.row), self.path)
            self._bm25 = BM25Index.from_corpus(self.table)
        return self._bm25


def _real_grading(cfg: GroupsConfig) -> tuple[tuple[float, float] | None, float]:
    """(relabel, grade of BM25 negatives). Mixed groups with relabelling: relabel = (grade of a real
    passage judged relevant, of one judged non-relevant), negatives at the negative level; otherwise
    real passages keep their grades (relabel None) and negatives get 0."""
    if cfg.source == "mixed" and cfg.relabel:
        top = cfg.n_levels - 1
        positive = float(top if cfg.real_positive_level is None else cfg.real_positive_level)
        return (positive, float(cfg.negative_level)), float(cfg.negative_level)
    return None, 0.0


def _real_candidates(labels: Labels, qids: list[str], texts: dict[str, str], corpus: _Corpus, n_negatives: int,
                     bm25_depth: int, cfg: GroupsConfig, stats: "GroupStats") -> dict[str, list[Candidate]]:
    """Per query, its labelled corpus passages (in label order) and then its BM25 negatives: the
    first `n_negatives` of the top-`bm25_depth` hits that are not labelled for the query."""
    relabel, negative_grade = _real_grading(cfg)
    out: dict[str, list[Candidate]] = {}
    for qid in qids:
        cands = []
        for did, (grade, source) in labels.get(qid, {}).items():
            text = corpus.text(did)
            if text is None:
                stats.missing_docs += 1
                continue
            g = float(grade)
            if relabel is not None:
                g = relabel[0] if grade > 0 else relabel[1]
            cands.append(Candidate(did, text, g, source))
        out[qid] = cands
    if n_negatives > 0 and qids:
        hits = corpus.bm25().search([texts[q] for q in qids], k=bm25_depth)
        for qid, row in zip(qids, hits):
            judged = labels.get(qid, {})
            negs = [d for d, _ in row if d not in judged][:n_negatives]
            stats.bm25_negatives += len(negs)
            out[qid].extend(Candidate(d, corpus.text(d) or "", negative_grade, "bm25") for d in negs)
    return out


# --------------------------------------------------------------------------------------------------
# building


@dataclass
class GroupStats:
    source: str
    n_groups: int = 0
    n_passages: int = 0
    dropped_queries: int = 0
    no_positive_queries: int = 0  # left out by require_positive
    missing_docs: int = 0
    bm25_negatives: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    grades: dict[float, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    qrels_split: str | None = None
    train_queries: int | None = None
    held_out_queries: int | None = None
    n_levels: int | None = None  # the scale of the grades

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["sizes"] = {str(k): v for k, v in sorted(self.sizes.items())}
        d["grades"] = {f"{k:g}": v for k, v in sorted(self.grades.items())}
        return d

    def add(self, part: "GroupStats") -> None:
        """Count the groups of `part` (built from other queries) in these counts."""
        for name in ("n_groups", "n_passages", "dropped_queries", "no_positive_queries", "missing_docs",
                     "bm25_negatives"):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        for totals, counts in ((self.sizes, part.sizes), (self.grades, part.grades), (self.sources, part.sources)):
            for key, n in counts.items():
                totals[key] = totals.get(key, 0) + n


def _check_source(cfg: GroupsConfig) -> None:
    if cfg.source not in SOURCES:
        raise GroupsError(f"unknown label source {cfg.source!r}; valid: {', '.join(SOURCES)}")
    if cfg.source in ("human", "llm", "mixed") and not cfg.collection:
        needs = "qrels and a corpus" if cfg.source != "llm" else "a corpus for the passage texts"
        raise GroupsError(f"source={cfg.source} needs groups.collection (a BEIR folder with {needs})")
    if cfg.source == "mixed" and cfg.relabel:
        from synrank.config import check_mixed_levels

        try:
            check_mixed_levels(cfg.n_levels, cfg.real_positive_level, cfg.negative_level)
        except ValueError as exc:
            raise GroupsError(str(exc)) from exc


@dataclass(frozen=True)
class _Plan:
    """What planning tells the driver: the split counts, and how many BM25 hits each query needs so
    that `bm25_negatives` remain once the passages labelled for it are removed (one depth for every
    query, so that a group does not depend on which part it is built in)."""

    qrels_split: str | None = None
    train_queries: int | None = None
    held_out_queries: int | None = None
    bm25_depth: int = 0


@dataclass(frozen=True)
class _Chunk:
    """The queries of one part of the groups, in order, with their labelled passages."""

    queries: pa.Table  # query_id, query
    synthetic: pa.Table  # _SYNTHETIC_ROWS of these queries, query by query
    labels: pa.Table  # _LABEL_ROWS of these queries (real passages), query by query


def _real_labels(cfg: GroupsConfig) -> tuple[Labels, _Synthetic, _Plan]:
    """The labels of a human, llm or mixed source (human and LLM merged under `precedence`), the
    synthetic passages of a mixed one, both of the training queries only, and the split counts."""
    from synrank.data.readers import read_qrels

    plan = _Plan()
    human: Labels = {}
    train_ids: set[str] | None = None
    if cfg.source in ("human", "mixed"):
        split = human_split(cfg.collection, cfg.qrels_split, cfg.query_split)
        plan = _Plan(qrels_split=split.qrels_split)
        qrels = read_qrels(cfg.collection, split=split.qrels_split, source="human")
        if split.by_queries:
            train_ids = set(split.train_ids)
            plan = replace(plan, train_queries=len(split.train_ids), held_out_queries=len(split.test_ids))
        human = _grades(qrels, cfg, f"{cfg.collection} qrels/{split.qrels_split}", train_ids)
        if not human and cfg.source == "human":
            raise GroupsError(f"{cfg.collection}: no qrels for training in split {split.qrels_split!r}")
    elif cfg.query_split is not None:
        # llm: hold out the same test queries the human split would.
        split = human_split(cfg.collection, cfg.qrels_split, cfg.query_split)
        train_ids = set(split.train_ids or [])
        plan = _Plan(train_queries=len(split.train_ids or []), held_out_queries=len(split.test_ids or []))
    llm: Labels = {}
    if cfg.source == "llm" or (cfg.source == "mixed" and cfg.llm_qrels):
        llm = _grades(_llm_qrels(cfg), cfg, str(cfg.llm_qrels), train_ids)
        if not llm and cfg.source == "llm":
            raise GroupsError(f"{cfg.llm_qrels}: no source=llm qrels for the training queries")
    synthetic = _NO_SYNTHETIC
    if cfg.source == "mixed":
        synthetic = _read_synthetic(cfg)
        if train_ids is not None:
            synthetic = synthetic.only(train_ids)
    return _merge(human, llm, cfg.precedence), synthetic, plan


def limit_queries(query_ids: Sequence[str], limit: int | None) -> list[str]:
    """``groups.limit``: the ``limit`` smallest query ids (string order), kept in their given order.

    The choice depends only on the ids a source has, not on the order its files list them in, so
    label sources with labels for the same training queries train on the same queries (a study
    compares them on one query set), and the study's synthetic passages are generated for them."""
    if not limit:
        return list(query_ids)
    chosen = set(sorted(set(query_ids))[: int(limit)])
    return [q for q in query_ids if q in chosen]


def _only_train_queries(order: list[str], cfg: GroupsConfig) -> list[str]:
    """``groups.train_queries`` (a queries file, e.g. the pipeline's training split): only its ids."""
    if not cfg.train_queries:
        return order
    from synrank.data.readers import read_queries

    keep = set(read_queries(cfg.train_queries).column("query_id").to_pylist())
    return [q for q in order if q in keep]


def _plan(cfg: GroupsConfig, queries_per_part: int) -> Iterator[_Plan | _Chunk]:
    """Read the label sources and query texts; yield the _Plan, then the queries in order,
    `queries_per_part` to a _Chunk. A Ray generator task: labels and texts stay on its worker."""
    if cfg.source == "synthetic":
        synthetic = _read_synthetic(cfg)
        texts = _query_texts(cfg)
        labels: Labels = {}
        plan = _Plan()
        order = _only_train_queries(list(synthetic.rows), cfg)
        missing = [q for q in order if q not in texts]
        if missing:
            raise GroupsError(f"{len(missing)} query id(s) have passages but no query text in "
                              f"{cfg.queries or cfg.collection}, e.g. {missing[:3]}")
    else:
        texts = _query_texts(cfg)
        labels, synthetic, plan = _real_labels(cfg)
        order = _only_train_queries(list(dict.fromkeys([*synthetic.rows, *labels])), cfg)
        unknown = [q for q in order if q not in texts]
        if unknown:
            raise GroupsError(f"{len(unknown)} query id(s) of the labels are not in the queries "
                              f"({cfg.queries or cfg.collection}), e.g. {unknown[:3]}")
    if cfg.limit:
        order = limit_queries(order, cfg.limit)
    if cfg.source != "synthetic" and cfg.bm25_negatives > 0 and order:
        plan = replace(plan, bm25_depth=cfg.bm25_negatives + max(len(labels.get(q, {})) for q in order))
    yield plan
    for start in range(0, len(order), queries_per_part):
        qids = order[start : start + queries_per_part]
        queries = pa.table({"query_id": pa.array(qids, pa.string()),
                            "query": pa.array([texts[q] for q in qids], pa.string())})
        yield _Chunk(queries, synthetic.take(qids), _labels_table(labels, qids))


def _synthetic_candidates(table: pa.Table) -> dict[str, list[Candidate]]:
    out: dict[str, list[Candidate]] = {}
    cols = [table.column(c).to_pylist() for c in _SYNTHETIC_ROWS.names]
    for qid, did, text, grade, origin in zip(*cols):
        out.setdefault(qid, []).append(Candidate(did, text, grade, "synthetic", origin))
    return out


def _build_part(chunk: _Chunk, corpus: _Corpus | None, cfg: GroupsConfig, bm25_depth: int
                ) -> tuple[pa.Table, GroupStats]:
    """The groups of the chunk's queries, in order, and their counts. Passages: the synthetic ones,
    then (with a corpus) the labelled corpus passages and the BM25 negatives."""
    stats = GroupStats(source=cfg.source)
    qids = chunk.queries.column("query_id").to_pylist()
    texts = dict(zip(qids, chunk.queries.column("query").to_pylist()))
    cands = _synthetic_candidates(chunk.synthetic)
    judged = _labels_of(chunk.labels) if corpus is not None else {}
    if corpus is not None:
        real = _real_candidates(judged, qids, texts, corpus, cfg.bm25_negatives, bm25_depth, cfg, stats)
        for qid, passages in real.items():
            cands.setdefault(qid, []).extend(passages)
    rows: dict[str, list] = {name: [] for name in groups_schema(cfg).names}
    for qid in qids:
        group = sample_group(cands.get(qid, []), cfg.group_size, _rng(cfg.seed, qid), cfg.sampling)
        if not group:
            stats.dropped_queries += 1
            continue
        if cfg.require_positive and max(c.grade for c in group) < positive_threshold(cfg.n_levels):
            stats.no_positive_queries += 1
            continue
        rows["query_id"].append(qid)
        rows["query"].append(texts[qid])
        rows["doc_ids"].append([c.doc_id for c in group])
        rows["texts"].append([c.text for c in group])
        rows["grades"].append([float(c.grade) for c in group])
        rows["sources"].append([c.source for c in group])
        if schemas.ORIGINS.name in rows:
            rows[schemas.ORIGINS.name].append([c.origin for c in group])
        if schemas.KNOWN_POSITIVES.name in rows:
            rows[schemas.KNOWN_POSITIVES.name].append(
                [did for did, (grade, _) in judged.get(qid, {}).items() if grade > 0])
        stats.sizes[len(group)] = stats.sizes.get(len(group), 0) + 1
        for c in group:
            stats.grades[c.grade] = stats.grades.get(c.grade, 0) + 1
            stats.sources[c.source] = stats.sources.get(c.source, 0) + 1
    stats.n_groups = len(rows["query_id"])
    stats.n_passages = sum(stats.sizes.get(s, 0) * s for s in stats.sizes)
    return pa.Table.from_pydict(rows, schema=groups_schema(cfg)), stats


def groups_schema(cfg: GroupsConfig) -> pa.Schema:
    """TRAINING_GROUPS, for sources with synthetic passages the `schemas.ORIGINS` column, and for
    sources with real labels the `schemas.KNOWN_POSITIVES` column."""
    schema = schemas.TRAINING_GROUPS
    if cfg.source in ("synthetic", "mixed"):
        schema = schema.append(schemas.ORIGINS)
    if cfg.source != "synthetic":
        schema = schema.append(schemas.KNOWN_POSITIVES)
    return schema


def _synthetic_part(chunk: _Chunk, cfg: GroupsConfig, bm25_depth: int) -> tuple[pa.Table, GroupStats]:
    """A Ray task: a part whose passages are all synthetic (no corpus)."""
    return _build_part(chunk, None, cfg, bm25_depth)


class _CorpusParts:
    """A Ray actor that holds the collection's corpus (and its BM25 index, once negatives are asked
    for) on a worker and builds the parts whose passages come from it."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self.corpus: _Corpus | None = None

    def build(self, chunk: _Chunk, cfg: GroupsConfig, bm25_depth: int) -> tuple[pa.Table, GroupStats]:
        if self.corpus is None:  # read here, not in __init__, so that a bad corpus raises its own error
            self.corpus = _Corpus(self.collection)
        return _build_part(chunk, self.corpus, cfg, bm25_depth)


class _GroupsWriter:
    """A Ray actor writing the parts, in the order given, as the row groups of one Parquet file,
    which appears at `out` only once `close` is called (`synrank.storage.atomic_path`)."""

    def __init__(self, out: str, schema: pa.Schema, n_levels: int | None = None) -> None:
        import pyarrow.parquet as pq

        from synrank.storage import atomic_path

        self._file = contextlib.ExitStack()  # holds atomic_path open across calls
        self._writer = pq.ParquetWriter(self._file.enter_context(atomic_path(out)), with_scale(schema, n_levels))

    def write(self, part: pa.Table) -> None:
        self._writer.write_table(part)

    def close(self) -> None:
        self._writer.close()
        self._file.close()

    def abort(self) -> None:
        self._writer.close()
        self._file.__exit__(GroupsError, GroupsError("groups building failed"), None)  # the file is dropped


# Ray `memory=` requests: peak bytes held per byte of input, measured on Cranfield x10 and x20
# (~24 for labels read from TSV into Python dicts; ~9 for a JSONL corpus with its BM25 index), with
# some margin. Below the floor no request is made: any worker has that much to spare.
_PLAN_BYTES_PER_INPUT_BYTE = 30
_CORPUS_BYTES_PER_INPUT_BYTE = 12
_MEMORY_REQUEST_FLOOR = 256 * 2**20




def _corpus_file(cfg: GroupsConfig) -> str | None:
    from synrank.data.readers import collection_file

    return collection_file(cfg.collection, "corpus") if cfg.collection else None


def _memory(nbytes: int) -> dict[str, int]:
    return {"memory": int(nbytes)} if nbytes >= _MEMORY_REQUEST_FLOOR else {}


def _plan_options(cfg: GroupsConfig) -> dict[str, Any]:
    labels = (storage.size(cfg.collection) - storage.size(_corpus_file(cfg)) + storage.size(cfg.queries)
              + storage.size(cfg.synthetic) + storage.size(cfg.llm_qrels))
    return _memory(_PLAN_BYTES_PER_INPUT_BYTE * labels)




def _run(cfg: GroupsConfig, queries_per_part: int, deliver: Callable[[Any], Any]) -> tuple[list, GroupStats]:
    """Plan in a Ray task, build the parts in tasks or the corpus actor. Each part's table (an
    ObjectRef) goes to `deliver`, in query order; what `deliver` returns comes back resolved, with
    the summed counts."""
    import ray

    from synrank.runtime import task_options, watch_progress

    if queries_per_part < 1:
        raise ValueError(f"queries_per_part must be >= 1, got {queries_per_part}")
    cpu = task_options("cpu")
    chunks = ray.remote(_plan).options(num_returns="streaming", **cpu, **_plan_options(cfg)).remote(
        cfg, queries_per_part)
    plan: _Plan = get_result(next(chunks))
    # Started once planning runs, so that on a one-CPU machine the actor waits for the planner
    # instead of holding the only CPU it needs.
    corpus = None
    if cfg.source == "synthetic":
        build = ray.remote(_synthetic_part).options(num_returns=2, **cpu).remote
    else:
        memory = _memory(_CORPUS_BYTES_PER_INPUT_BYTE * storage.size(_corpus_file(cfg)))
        corpus = ray.remote(_CorpusParts).options(num_cpus=1, **cpu, **memory).remote(cfg.collection)
        build = corpus.build.options(num_returns=2).remote
    counts, delivered = [], []
    for chunk in chunks:
        table, part_stats = build(chunk, cfg, plan.bm25_depth)
        counts.append(part_stats)
        delivered.append(deliver(table))
    stats = GroupStats(source=cfg.source, qrels_split=plan.qrels_split, train_queries=plan.train_queries,
                       held_out_queries=plan.held_out_queries, n_levels=cfg.n_levels)
    try:
        with watch_progress(f"groups: {len(counts)} part(s)") as watch:
            for part_stats in counts:
                stats.add(get_result(part_stats))
                watch.tick()
            results = [get_result(ref) for ref in delivered]
    finally:
        if corpus is not None:
            ray.kill(corpus)
    if stats.n_groups == 0:
        raise GroupsError(f"source={cfg.source}: no training groups (every query had no passage)")
    return results, stats


def _writer_placement(out: str) -> dict[str, Any]:
    """Ray options placing the writer: on this node for a local file (the file is this machine's;
    the writer takes no CPU, so any node can hold it), else where the `cpu` stage work goes."""
    import ray

    from synrank.runtime import task_options
    from synrank.storage import is_local

    if is_local(out):
        return {"scheduling_strategy": "DEFAULT",
                "label_selector": {"ray.io/node-id": ray.get_runtime_context().get_node_id()}}
    return task_options("cpu")


@contextlib.contextmanager
def _ray() -> Iterator[None]:
    """The connected Ray, else an embedded one for the duration of the build (so that a caller that
    connects to its cluster afterwards, such as `synrank train --address`, still can)."""
    import ray

    from synrank.runtime import init_ray, shutdown

    if ray.is_initialized():
        yield
        return
    init_ray()
    try:
        yield
    finally:
        shutdown()


def build_groups(cfg: GroupsConfig, *, queries_per_part: int = QUERIES_PER_PART) -> tuple[pa.Table, GroupStats]:
    """Build the training groups of ``cfg`` as a TRAINING_GROUPS table, with counts. Every group
    comes back to this process: for small data and tests; `build_groups_to` keeps them on the workers."""
    _check_source(cfg)
    with _ray():
        tables, stats = _run(cfg, queries_per_part, deliver=lambda table: table)
    return pa.concat_tables(tables), stats


def build_groups_to(cfg: GroupsConfig, out: str, *, queries_per_part: int = QUERIES_PER_PART) -> GroupStats:
    """Build the training groups of ``cfg`` into the Parquet file `out` (one row group per part,
    queries in order) and ``<out>.stats.json``; returns the counts. Each is replaced atomically, the
    stats last; a build that fails leaves both as they were."""
    import ray

    from synrank.storage import write_json

    _check_source(cfg)
    with _ray():
        writer = ray.remote(_GroupsWriter).options(num_cpus=0, **_writer_placement(out)).remote(
            out, groups_schema(cfg), cfg.n_levels)
        try:
            _, stats = _run(cfg, queries_per_part, deliver=writer.write.remote)
            get_result(writer.close.remote())
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stopped the build is the one to raise
                ray.get(writer.abort.remote())
            raise
        finally:
            ray.kill(writer)
    write_json(stats.as_dict(), f"{out}.stats.json")
    return stats


# --------------------------------------------------------------------------------------------------
# files


SCALE_KEY = b"synrank.n_levels"


def with_scale(schema: pa.Schema, n_levels: int | None) -> pa.Schema:
    """`schema` with the groups' relevance scale in its metadata (unchanged when it is None)."""
    if n_levels is None:
        return schema
    return schema.with_metadata({**(schema.metadata or {}), SCALE_KEY: str(int(n_levels)).encode()})


def scale_of(schema: pa.Schema) -> int | None:
    """The relevance scale written into a groups file's schema metadata, or None."""
    value = (schema.metadata or {}).get(SCALE_KEY)
    return int(value) if value else None


def write_groups(table: pa.Table, path: str, stats: GroupStats | None = None, n_levels: int | None = None) -> None:
    """Write groups Parquet atomically, and ``<path>.stats.json`` beside it when stats are given. The
    scale (``n_levels``, default the stats') goes into the file's metadata."""
    from synrank.storage import write_json, write_parquet

    table = schemas.conform(table, schemas.TRAINING_GROUPS, str(path))
    n_levels = n_levels if n_levels is not None else (stats.n_levels if stats is not None else None)
    if n_levels is not None:
        table = table.replace_schema_metadata(with_scale(table.schema, n_levels).metadata)
    write_parquet(table, path)
    if stats is not None:
        write_json(stats.as_dict(), f"{path}.stats.json")


def read_groups(path: str) -> pa.Table:
    """Read and check a training-groups Parquet: per row, doc_ids/texts/grades/sources of equal,
    non-zero length, finite grades >= 0. Errors name the file and the row."""
    from synrank.data.readers import read_table

    table = read_table(path, "groups")
    if table.num_rows == 0:
        raise GroupsError(f"{path}: no training groups (0 rows)")
    lengths = [pc.list_value_length(table.column(c)).to_pylist() for c in ("doc_ids", "texts", "grades", "sources")]
    for row, ls in enumerate(zip(*lengths)):
        if ls[0] is None or ls[0] == 0:
            raise GroupsError(f"{path}: row {row}: a group without passages")
        if len(set(ls)) != 1:
            raise GroupsError(f"{path}: row {row}: doc_ids, texts, grades and sources differ in length {ls}")
    flat = pc.list_flatten(table.column("grades")).to_numpy(zero_copy_only=False)
    if flat.size and (not np.all(np.isfinite(flat)) or flat.min() < 0):
        raise GroupsError(f"{path}: grades must be finite and >= 0")
    return table


def groups_summary(table: pa.Table) -> dict[str, Any]:
    sizes = Counter(pc.list_value_length(table.column("doc_ids")).to_pylist())
    grades = Counter(pc.list_flatten(table.column("grades")).to_pylist())
    return {"groups": table.num_rows, "sizes": dict(sorted(sizes.items())),
            "grades": {f"{k:g}": v for k, v in sorted(grades.items())}}
