"""Training groups: one query with k passages and their grades, from one of four label sources.

>>> table, stats = build_groups(GroupsConfig(source="human", collection="../shared/data/cranfield",
...                                          qrels_levels=5, n_levels=5))
>>> write_groups(table, "groups.parquet")

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
  (default 1: on topic, does not answer); without it real passages keep their collapsed grades and
  BM25 negatives get 0.

When a passage has both a human and an LLM label, ``precedence`` decides: ``human`` (the human
grade), ``llm`` (the LLM grade), or ``add`` (human grade; LLM labels only add pairs to queries that
people judged, never new queries).

Group size ``k`` (``group_size``): a query with more than k candidates keeps one passage of its
highest grade (so the best passage is always present) and fills the rest by ``sampling``:
``stratified`` (default) takes one passage per grade, grades visited in a random order each round,
so every group spans the grades it has; ``uniform`` draws the rest uniformly. The random draw is
seeded per query from (``seed``, query id), so a group does not depend on which other queries are
built with it. Passages in a group are ordered by grade, highest first. A query with no candidate
is left out and counted.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from synrank.config import GroupsConfig, QuerySplitConfig
from synrank.data import schemas
from synrank.data.levels import collapse_mapping

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "human", "llm", "mixed")


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


def _read_synthetic(cfg: GroupsConfig) -> dict[str, list[Candidate]]:
    from synrank.data.readers import read_table

    if not cfg.synthetic:
        raise GroupsError(f"source={cfg.source} needs groups.synthetic: the passages written by `synrank generate`")
    table = read_table(cfg.synthetic, "synthetic")
    if table.num_rows == 0:
        raise GroupsError(f"{cfg.synthetic}: no synthetic passages (0 rows)")
    mapping = _mapping(cfg.from_levels, cfg.n_levels, "groups.n_levels")
    out: dict[str, list[Candidate]] = {}
    seen: set[tuple[str, str]] = set()
    cols = [table.column(c).to_pylist() for c in ("query_id", "doc_id", "level", "text")]
    for row, (qid, did, level, text) in enumerate(zip(*cols)):
        if level is None or text is None or qid is None or did is None:
            raise GroupsError(f"{cfg.synthetic}: row {row}: null query_id, doc_id, level or text")
        if (qid, did) in seen:
            continue
        seen.add((qid, did))
        grade = _collapse_grade(int(level), mapping, cfg.from_levels, f"{cfg.synthetic}: row {row}",
                                "set groups.from_levels to the scale the passages were generated on")
        out.setdefault(qid, []).append(Candidate(did, text, float(grade), "synthetic"))
    return out


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
        from synrank.encoder import format_passage

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


def _real_candidates(labels: dict[str, dict[str, tuple[int, str]]], qids: list[str], texts: dict[str, str],
                     corpus: _Corpus, n_negatives: int, negative_grade: float, stats: "GroupStats",
                     relabel: tuple[float, float] | None = None) -> dict[str, list[Candidate]]:
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
        judged = {q: set(labels.get(q, {})) for q in qids}
        depth = n_negatives + max(len(j) for j in judged.values())
        hits = corpus.bm25().search([texts[q] for q in qids], k=depth)
        for qid, row in zip(qids, hits):
            negs = [d for d, _ in row if d not in judged[qid]][:n_negatives]
            stats.bm25_negatives += len(negs)
            out[qid].extend(Candidate(d, corpus.text(d) or "", float(negative_grade), "bm25") for d in negs)
    return out


# --------------------------------------------------------------------------------------------------
# building


@dataclass
class GroupStats:
    source: str
    n_groups: int = 0
    n_passages: int = 0
    dropped_queries: int = 0
    missing_docs: int = 0
    bm25_negatives: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    grades: dict[float, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    qrels_split: str | None = None
    train_queries: int | None = None
    held_out_queries: int | None = None

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["sizes"] = {str(k): v for k, v in sorted(self.sizes.items())}
        d["grades"] = {f"{k:g}": v for k, v in sorted(self.grades.items())}
        return d


def _check_source(cfg: GroupsConfig) -> None:
    if cfg.source not in SOURCES:
        raise GroupsError(f"unknown label source {cfg.source!r}; valid: {', '.join(SOURCES)}")
    if cfg.source in ("human", "llm", "mixed") and not cfg.collection:
        needs = "qrels and a corpus" if cfg.source != "llm" else "a corpus for the passage texts"
        raise GroupsError(f"source={cfg.source} needs groups.collection (a BEIR folder with {needs})")
    if cfg.source == "mixed":
        top = cfg.n_levels - 1
        pos = top if cfg.real_positive_level is None else cfg.real_positive_level
        if pos > top or cfg.negative_level > top:
            raise GroupsError(f"groups.real_positive_level={pos} / negative_level={cfg.negative_level} must be "
                              f"levels of the {cfg.n_levels}-level scale (0..{top})")


def build_groups(cfg: GroupsConfig) -> tuple[pa.Table, GroupStats]:
    """Build the training groups of ``cfg`` as a TRAINING_GROUPS table, with counts."""
    _check_source(cfg)
    stats = GroupStats(source=cfg.source)
    cands: dict[str, list[Candidate]] = {}
    order: list[str] = []

    if cfg.source == "synthetic":
        cands = _read_synthetic(cfg)
        order = list(cands)
        texts = _query_texts(cfg)
    else:
        texts = _query_texts(cfg)
        corpus = _Corpus(cfg.collection)
        human: Labels = {}
        train_ids: set[str] | None = None
        if cfg.source in ("human", "mixed"):
            from synrank.data.readers import read_qrels

            split = human_split(cfg.collection, cfg.qrels_split, cfg.query_split)
            stats.qrels_split = split.qrels_split
            qrels = read_qrels(cfg.collection, split=split.qrels_split, source="human")
            if split.by_queries:
                train_ids = set(split.train_ids)
                stats.train_queries, stats.held_out_queries = len(split.train_ids), len(split.test_ids)
            human = _grades(qrels, cfg, f"{cfg.collection} qrels/{split.qrels_split}", train_ids)
            if not human and cfg.source == "human":
                raise GroupsError(f"{cfg.collection}: no qrels for training in split {split.qrels_split!r}")
        elif cfg.query_split is not None:
            # llm: hold out the same test queries the human split would.
            split = human_split(cfg.collection, cfg.qrels_split, cfg.query_split)
            train_ids = set(split.train_ids or [])
            stats.train_queries, stats.held_out_queries = len(split.train_ids or []), len(split.test_ids or [])
        llm: Labels = {}
        if cfg.source == "llm" or (cfg.source == "mixed" and cfg.llm_qrels):
            llm = _grades(_llm_qrels(cfg), cfg, str(cfg.llm_qrels), train_ids)
            if not llm and cfg.source == "llm":
                raise GroupsError(f"{cfg.llm_qrels}: no source=llm qrels for the training queries")
        labels = _merge(human, llm, cfg.precedence)
        synthetic: dict[str, list[Candidate]] = {}
        if cfg.source == "mixed":
            synthetic = _read_synthetic(cfg)
            if train_ids is not None:
                synthetic = {q: c for q, c in synthetic.items() if q in train_ids}
        order = list(dict.fromkeys([*synthetic, *labels]))
        unknown = [q for q in order if q not in texts]
        if unknown:
            raise GroupsError(f"{len(unknown)} query id(s) of the labels are not in the queries "
                              f"({cfg.queries or cfg.collection}), e.g. {unknown[:3]}")
        if cfg.limit:
            order = order[: cfg.limit]
        relabel = None
        negative_grade = 0.0
        if cfg.source == "mixed" and cfg.relabel:
            top = cfg.n_levels - 1
            relabel = (float(top if cfg.real_positive_level is None else cfg.real_positive_level),
                       float(cfg.negative_level))
            negative_grade = float(cfg.negative_level)
        real = _real_candidates(labels, order, texts, corpus, cfg.bm25_negatives, negative_grade, stats, relabel)
        for qid in order:
            cands[qid] = synthetic.get(qid, []) + real.get(qid, [])

    missing = [q for q in order if q not in texts]
    if missing:
        raise GroupsError(f"{len(missing)} query id(s) have passages but no query text in "
                          f"{cfg.queries or cfg.collection}, e.g. {missing[:3]}")
    if cfg.limit:
        order = order[: cfg.limit]

    rows: dict[str, list] = {name: [] for name in schemas.TRAINING_GROUPS.names}
    for qid in order:
        group = sample_group(cands.get(qid, []), cfg.group_size, _rng(cfg.seed, qid), cfg.sampling)
        if not group:
            stats.dropped_queries += 1
            continue
        rows["query_id"].append(qid)
        rows["query"].append(texts[qid])
        rows["doc_ids"].append([c.doc_id for c in group])
        rows["texts"].append([c.text for c in group])
        rows["grades"].append([float(c.grade) for c in group])
        rows["sources"].append([c.source for c in group])
        stats.sizes[len(group)] = stats.sizes.get(len(group), 0) + 1
        for c in group:
            stats.grades[c.grade] = stats.grades.get(c.grade, 0) + 1
            stats.sources[c.source] = stats.sources.get(c.source, 0) + 1
    stats.n_groups = len(rows["query_id"])
    stats.n_passages = sum(stats.sizes.get(s, 0) * s for s in stats.sizes)
    if stats.n_groups == 0:
        raise GroupsError(f"source={cfg.source}: no training groups (every query had no passage)")
    table = pa.Table.from_pydict(rows, schema=schemas.TRAINING_GROUPS)
    return table, stats


# --------------------------------------------------------------------------------------------------
# files


def write_groups(table: pa.Table, path: str, stats: GroupStats | None = None) -> None:
    """Write groups Parquet atomically, and ``<path>.stats.json`` beside it when stats are given."""
    from synrank.storage import write_json, write_parquet

    write_parquet(schemas.conform(table, schemas.TRAINING_GROUPS, str(path)), path)
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
