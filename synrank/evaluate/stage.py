"""`synrank evaluate`: a model (an encoder directory, ``default`` or ``bm25``) on real collections.

For each collection: the judged queries of the split are retrieved from the whole corpus (top k,
default 100) and scored with pytrec_eval (see `metrics`). Outputs under ``<out>/<collection>/``:

- ``run.trec``      the TREC run (``qid Q0 docid rank score tag``)
- ``metrics.json``  means and per-query values of every measure, and how they were obtained
- ``embeddings/``   query and passage embedding shards (Parquet), kept only with keep_embeddings

and ``<out>/summary.json`` / ``summary.md``: the table across collections.

Nothing corpus-sized happens in the driver (a job's driver runs on the cluster's small head):
collections that share a corpus file share one corpus (`corpora`), read and checked once by Ray
tasks over its parts. Dense models: the queries of every collection and each corpus, once, go
through one Ray Data actor pool (`encode.encode_sources`); then a Ray task per corpus builds its
faiss index from the shards and searches the queries of every collection that shares it
(`search.dense_search`). BM25: a Ray task per corpus (`search.bm25_search`). The driver holds
queries, qrels and runs.

Every collection is checked before any encoding starts: a model that is not an encoder, a
collection without the asked split (the message lists those it has), no corpus or an empty
corpus, a bad corpus line (named by file and line), qrels naming no query of the queries file,
qrels naming no document of the corpus.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synrank.config import EncoderConfig, EvaluateConfig
from synrank import storage
from synrank.storage import write_json, write_text
from synrank.data.errors import DataError, DataWarning, MissingFileError
from synrank.evaluate.bm25 import BM25_NAME
from synrank.evaluate.corpora import CorpusScan, corpus_identity, scan_corpus
from synrank.evaluate.index import IndexOptions
from synrank.evaluate.metrics import MEASURES, evaluate_run, mean_metrics
from synrank.evaluate.runfile import write_run
from synrank.evaluate.search import CorpusRuns, QuerySet

log = logging.getLogger(__name__)

RUN_FILE = "run.trec"
METRICS_FILE = "metrics.json"


class ModelError(ValueError):
    """The model argument does not name a usable encoder."""


# ---------------------------------------------------------------------------------------------
# inputs


@dataclass
class PreparedCollection:
    """A checked collection: its judged queries (in queries-file order) and qrels; `num_docs` once
    its corpus is checked (`check_corpus`)."""

    name: str
    path: str
    split: str
    corpus_path: str
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    qrels_file: str
    num_docs: int = 0
    notes: list[str] = field(default_factory=list)

    def judged_docs(self) -> set[str]:
        return {did for qid in self.query_ids for did in self.qrels[qid]}


@dataclass
class SharedCorpus:
    """A corpus file and the collections that search it."""

    path: str
    collections: list[PreparedCollection]
    scan: CorpusScan | None = None


def _note(prepared_notes: list[str], message: str) -> None:
    prepared_notes.append(message)
    warnings.warn(DataWarning(message), stacklevel=3)


def prepare_collection(path: str, split: str = "test", name: str | None = None) -> PreparedCollection:
    """Read and check one collection folder's queries and qrels for evaluation (see the module doc
    for the errors); its corpus is checked by `check_corpus`, in Ray tasks."""
    from synrank.data import readers

    path = os.fspath(path)
    splits = readers.available_splits(path)  # raises MissingFileError for a missing path
    if split not in splits:
        if splits:
            raise MissingFileError(path, f"no qrels for split {split!r}; this collection has: {', '.join(splits)} "
                                   f"(pass --split {splits[0]})")
        raise MissingFileError(path, f"no qrels at all (looked for qrels/{split}.tsv, qrels/{split}.parquet, "
                               f"qrels-{split}.parquet): it is a query set, not a test collection")
    corpus_path = readers.collection_file(path, "corpus")
    if corpus_path is None:
        raise MissingFileError(path, "no corpus (corpus.jsonl, corpus.jsonl.gz or corpus.parquet): retrieval "
                               "needs one; this folder holds queries and qrels only")
    queries = readers.read_queries(path)
    qrels_table = readers.read_qrels(path, split=split)
    qrels_file = readers.collection_file(path, "qrels", split) or path
    notes: list[str] = []

    qrels: dict[str, dict[str, int]] = {}
    for qid, did, grade in zip(*(qrels_table.column(c).to_pylist() for c in ("query_id", "doc_id", "grade"))):
        qrels.setdefault(qid, {})[did] = int(grade)
    if not qrels:
        raise DataError(qrels_file, f"the qrels of split {split!r} are empty")

    texts = dict(zip(queries.column("query_id").to_pylist(), queries.column("text").to_pylist()))
    judged = [qid for qid in texts if qid in qrels]
    missing_queries = [qid for qid in qrels if qid not in texts]
    if not judged:
        raise DataError(qrels_file, f"no judged query is in the queries file ({len(qrels)} judged query id(s), e.g. "
                        f"{missing_queries[0]!r}, none of the {len(texts)} queries): do the qrels belong to this "
                        "collection?")
    if missing_queries:
        _note(notes, f"{qrels_file}: {len(missing_queries)} judged query id(s) have no text in the queries file "
              f"(e.g. {missing_queries[0]!r}); they are not evaluated")
    return PreparedCollection(
        name=name or storage.name(path) or path,
        path=path,
        split=split,
        corpus_path=corpus_path,
        query_ids=judged,
        query_texts=[texts[q] for q in judged],
        qrels={q: qrels[q] for q in judged},
        qrels_file=qrels_file,
        notes=notes,
    )


def group_by_corpus(collections: list[PreparedCollection]) -> list[SharedCorpus]:
    """The distinct corpus files of `collections` (`corpora.corpus_identity`), in first-use order."""
    corpora: dict[Any, SharedCorpus] = {}
    for col in collections:
        corpus = corpora.setdefault(corpus_identity(col.corpus_path), SharedCorpus(col.corpus_path, []))
        corpus.collections.append(col)
    return list(corpora.values())


def check_corpus(corpus: SharedCorpus) -> None:
    """One pass over the corpus in Ray tasks (`corpora.scan_corpus`): its size, its lines checked,
    and for each collection which of its judged documents it holds (errors and notes as in the
    module doc). Ray must be initialised."""
    scan = scan_corpus(corpus.path, set().union(*(col.judged_docs() for col in corpus.collections)))
    if scan.num_docs == 0:
        raise DataError(corpus.path, "the corpus is empty: there is nothing to retrieve")
    for col in corpus.collections:
        _check_judged_docs(col, scan)
    corpus.scan = scan


def _check_judged_docs(col: PreparedCollection, scan: CorpusScan) -> None:
    judged_docs = col.judged_docs()
    found = judged_docs & scan.found
    if not found:
        raise DataError(col.qrels_file, f"no judged document is in the corpus ({len(judged_docs)} judged doc id(s), "
                        f"none among the {scan.num_docs} documents of {col.corpus_path}): the qrels have no judged "
                        "query with a document in this corpus; do the qrels belong to it?")
    if len(found) < len(judged_docs):
        _note(col.notes, f"{col.qrels_file}: {len(judged_docs) - len(found)} of {len(judged_docs)} judged doc id(s) "
              f"are not in the corpus; they stay in the qrels (relevant but unretrievable, as in trec_eval)")
    no_doc = [qid for qid in col.query_ids if not any(d in found for d in col.qrels[qid])]
    if no_doc:
        _note(col.notes, f"{col.qrels_file}: {len(no_doc)} judged query(ies) have no judged document in the corpus "
              f"(e.g. {no_doc[0]!r}); they score 0")
    col.num_docs = scan.num_docs


def _parts(path: str) -> tuple[str, ...]:
    if storage.is_local(path):
        return Path(path.rstrip("/")).parts or (path,)
    return tuple(x for x in path.split("://", 1)[1].split("/") if x) or (path,)


def unique_names(paths: list[str]) -> list[str]:
    """Collection names for output folders: the folder name, with parents added on a clash."""
    parts = [_parts(os.fspath(p)) for p in paths]
    depth = {i: 1 for i in range(len(paths))}
    while True:
        names = ["__".join(parts[i][-depth[i]:]) for i in range(len(paths))]
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


# ---------------------------------------------------------------------------------------------
# the model


def is_bm25(model: str) -> bool:
    return model.strip().lower() == BM25_NAME


def model_label(model: str) -> str:
    """A short name for run tags and tables."""
    from synrank.models import DEFAULT, DEFAULT_ENCODER_NAME

    if is_bm25(model):
        return BM25_NAME
    if model in (DEFAULT, DEFAULT_ENCODER_NAME):
        return DEFAULT_ENCODER_NAME.rsplit("/", 1)[-1]
    return storage.name(model) or model


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_encoder(model: str) -> str:
    """Resolve `model` to an encoder path (or hub name) and check that it loads as one, cheaply:
    a Hugging Face config, a tokenizer and weights. Raises ModelError saying what is wrong."""
    from synrank.models import ModelNotFound, resolve_encoder

    try:
        path = resolve_encoder(model)
    except ModelNotFound as exc:
        raise ModelError(f"model {model!r} is not an encoder: {exc} (or pass 'bm25' or 'default')") from None
    from transformers import AutoConfig, AutoTokenizer

    local = Path(path)
    if not local.is_dir():  # a hub name: its config must be reachable (cache or network) from here too
        try:
            AutoConfig.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"model {model!r} is not a local directory and not a loadable hub model ({exc}); "
                             "pass an encoder directory, 'default' or 'bm25'") from None
        return path
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise ModelError(f"model {model!r} is not an encoder: its config.json does not load ({exc})") from None
    if not any((local / w).exists() for w in _WEIGHTS):
        raise ModelError(f"model {model!r} is not an encoder: no weights in {path} (expected one of "
                         f"{', '.join(_WEIGHTS)})")
    try:
        AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"model {model!r} is not an encoder: its tokenizer does not load ({exc})") from None
    if not getattr(config, "hidden_size", None):
        raise ModelError(f"model {model!r} is not an encoder: its config has no hidden_size")
    return path


def encoder_overrides(encoder: EncoderConfig) -> dict[str, Any]:
    """The encoder settings given explicitly (YAML / overrides); they win over a model's own."""
    values = encoder.model_dump(exclude_unset=True)
    values.pop("model", None)
    return values


# ---------------------------------------------------------------------------------------------
# the stage


def _embedding_dir(out: str, col: PreparedCollection) -> str:
    return storage.join(out, col.name, "embeddings")


def evaluate(
    config: EvaluateConfig,
    *,
    address: str | None = None,
    keep_embeddings: bool = False,
    index_options: IndexOptions | None = None,
    relevance_level: int = 1,
    progress: bool = True,
    encoder_gpus: bool | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the evaluation `config` describes; returns ``{collection: {"metrics", "per_query",
    "run_path", "metrics_path", ...}}`` and writes the files listed in the module doc.
    `encoder_gpus`: encoder actors take a GPU each (default: `config.encoder_gpus`, else when the
    cluster has a GPU now; say True on a cluster that scales GPU nodes from zero)."""
    if not config.collections:
        raise ValueError("evaluate: no collection given (--collection DIR [DIR ...])")
    if not config.out:
        raise ValueError("evaluate: no output folder given (--out DIR)")
    from synrank.runtime import init_ray

    model = config.model
    bm25 = is_bm25(model)
    model_path = None if bm25 else check_encoder(model)
    # Encoder actors may run on other nodes: a remote model goes to them as its URL (each node
    # makes its own local copy); a local one as the resolved path.
    actor_model = model if not bm25 and not storage.is_local(model) else model_path
    names = unique_names(config.collections)
    started = time.perf_counter()
    prepared = [prepare_collection(p, config.split, n) for p, n in zip(config.collections, names)]
    resources = init_ray(address)
    corpora = group_by_corpus(prepared)
    for corpus in corpora:
        check_corpus(corpus)
    label = model_label(model)
    out = os.fspath(config.out)
    options = dataclasses.replace(index_options or IndexOptions(), kind=config.index)
    settings: dict[str, Any] = {"model": model, "label": label, "split": config.split, "top_k": config.top_k,
                                "relevance_level": relevance_level}
    if bm25:
        searched = _bm25_runs(corpora, config.top_k)
        timings: dict[str, Any] = {}
        task_settings = "bm25"
    else:
        if encoder_gpus is None:
            encoder_gpus = config.encoder_gpus
        searched, timings = _dense_runs(corpora, config, out, actor_model, options, resources, progress, encoder_gpus)
        settings.update(encoder=encoder_overrides(config.encoder), model_path=model_path, index=options.kind)
        task_settings = "search"
    by_collection = {name: (run, result) for result in searched for name, run in result.runs.items()}
    results: dict[str, dict[str, Any]] = {}
    for col in prepared:
        run, result = by_collection[col.name]
        results[col.name] = _finish(col, run, out, label, {**settings, task_settings: result.settings},
                                    {**timings, "index_s": result.index_s, "search_s": result.search_s[col.name]},
                                    relevance_level)
    if not bm25 and not keep_embeddings:
        for col in prepared:
            storage.remove(_embedding_dir(out, col))
    summary = summary_table(results)
    write_text(summary + "\n", storage.join(out, "summary.md"))
    write_json({"model": model, "label": label, "split": config.split, "top_k": config.top_k,
                "seconds": time.perf_counter() - started,
                "collections": {n: {"metrics": r["metrics"], "num_queries": r["num_queries"], "num_docs": r["num_docs"],
                                    "metrics_path": r["metrics_path"], "run_path": r["run_path"]}
                                for n, r in results.items()}},
               storage.join(out, "summary.json"))
    log.debug("%s on %d collection(s):\n%s", label, len(results), summary)
    return results


def _bm25_runs(corpora: list[SharedCorpus], top_k: int) -> list[CorpusRuns]:
    from synrank.evaluate.search import bm25_search, gather

    refs = [bm25_search(c.path, c.scan.num_docs, c.scan.text_bytes,
                        {col.name: QuerySet(col.query_ids, texts=col.query_texts) for col in c.collections}, top_k)
            for c in corpora]
    return gather(refs, f"evaluation: BM25 over {len(refs)} corpus(es)")


def _dense_runs(corpora: list[SharedCorpus], config: EvaluateConfig, out: str, actor_model: str,
                options: IndexOptions, resources, progress: bool,
                encoder_gpus: bool | None) -> tuple[list[CorpusRuns], dict[str, Any]]:
    """Encode every corpus once and every collection's queries, then search each corpus in its task."""
    from synrank.evaluate.encode import EncodeSource, EncodeStats, embedding_dim, encode_sources
    from synrank.evaluate.search import dense_search, gather

    sources: list[EncodeSource] = []
    for i, corpus in enumerate(corpora):
        # A shared corpus's passages go with its first collection's embeddings.
        sources.append(EncodeSource(f"corpus:{i}", _embedding_dir(out, corpus.collections[0]), [], [], corpus.path,
                                    corpus.scan.num_docs))
        sources += [EncodeSource(f"queries:{col.name}", _embedding_dir(out, col), col.query_ids, col.query_texts, None)
                    for col in corpus.collections]
    for emb_dir in {s.emb_dir for s in sources}:
        storage.remove(emb_dir)
    total_docs = sum(c.scan.num_docs for c in corpora)
    log.info("encoding %d queries of %d collection(s) and %d documents of %d corpus(es) with %s",
             sum(len(s.query_ids) for s in sources), len(sources) - len(corpora), total_docs, len(corpora),
             model_label(config.model))
    started = time.perf_counter()
    stats = EncodeStats()
    shards = encode_sources(sources, actor_model, overrides=encoder_overrides(config.encoder),
                            batch_size=config.batch_size, num_encoders=config.num_encoders, use_gpus=encoder_gpus,
                            resources=resources, progress=progress, stats=stats)
    encode_s = time.perf_counter() - started
    log.info("encoded in %.1f s (%.1f docs/s; %d actor(s), model load %.1f s, busiest actor encoding %.1f s)",
             encode_s, total_docs / max(encode_s, 1e-9), len(stats.busy_s),
             max(stats.init_s.values(), default=0.0), stats.busiest_s)
    for source in sources:
        got = shards[source.key]
        if got.rows("passage") != (source.num_docs or 0) or got.rows("query") != len(source.query_ids):
            raise RuntimeError(f"{source.corpus_path or source.key}: encoded {got.rows('passage')} documents and "
                               f"{got.rows('query')} queries, expected {source.num_docs or 0} and "
                               f"{len(source.query_ids)}")
    refs = []
    for i, corpus in enumerate(corpora):
        passages = shards[f"corpus:{i}"].paths("passage")
        queries = {col.name: QuerySet(col.query_ids, shards[f"queries:{col.name}"].paths("query"))
                   for col in corpus.collections}
        refs.append(dense_search(corpus.path, passages, corpus.scan.num_docs, embedding_dim(passages[0]), queries,
                                 config.top_k, options, resources.num_gpus))
    searched = gather(refs, f"evaluation: search of {len(refs)} corpus(es)")
    return searched, {"encode_s_all_collections": encode_s, "encoder_actors": stats.as_dict()}


def _finish(col: PreparedCollection, run, out: str, label: str, settings: dict, timings: dict,
            relevance_level: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    per_query = evaluate_run(col.qrels, run, relevance_level=relevance_level)
    metrics = mean_metrics(per_query, MEASURES)
    timings = {**timings, "metrics_s": time.perf_counter() - t0}
    run_path = storage.join(out, col.name, RUN_FILE)
    metrics_path = storage.join(out, col.name, METRICS_FILE)
    write_run(run, run_path, tag=label)
    write_json({
        "collection": col.name, "collection_path": col.path, "split": col.split, "name": label,
        "num_queries": len(col.query_ids), "num_docs": col.num_docs, "measures": list(MEASURES),
        "metrics": metrics, "per_query": per_query, "run_path": run_path, "settings": settings,
        "timings": timings, "notes": col.notes,
        "relevance": f"nDCG: graded qrels as given; recall, MRR, MAP: grade >= {relevance_level} is relevant",
    }, metrics_path)
    return {"metrics": metrics, "per_query": per_query, "run_path": run_path, "metrics_path": metrics_path,
            "num_queries": len(col.query_ids), "num_docs": col.num_docs, "timings": timings}


def summary_table(results: dict[str, dict[str, Any]], measures=MEASURES) -> str:
    """A Markdown table: one row per collection, one column per measure, and their mean."""
    header = ["collection", "queries", "docs", *measures]
    rows = [[name, str(r["num_queries"]), str(r["num_docs"]), *(f"{r['metrics'][m]:.4f}" for m in measures)]
            for name, r in results.items()]
    if len(results) > 1:
        means = [sum(r["metrics"][m] for r in results.values()) / len(results) for m in measures]
        rows.append(["mean", "", "", *(f"{v:.4f}" for v in means)])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                          for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "| " + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)) + " |"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def evaluate_model(
    model: str,
    collections: list[str],
    out_dir: str,
    split: str = "test",
    top_k: int = 100,
    encoder_batch_size: int = 64,
    index: str = "flat",
    *,
    encoder: EncoderConfig | dict | None = None,
    num_encoders: int | None = None,
    address: str | None = None,
    keep_embeddings: bool = False,
    index_options: IndexOptions | None = None,
    relevance_level: int = 1,
    progress: bool = True,
    encoder_gpus: bool | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate `model` (encoder path, hub name, ``default`` or ``bm25``) on `collections`.

    Returns ``{collection_name: {"metrics": {measure: mean}, "per_query": {qid: {measure: v}},
    "run_path": str, "metrics_path": str, "num_queries", "num_docs", "timings"}}``.
    """
    if isinstance(encoder, dict):
        encoder = EncoderConfig(**encoder)
    fields: dict[str, Any] = dict(model=model, collections=[os.fspath(c) for c in collections], split=split,
                                  out=os.fspath(out_dir), top_k=top_k, index=index, batch_size=encoder_batch_size,
                                  num_encoders=num_encoders)
    if encoder is not None:
        fields["encoder"] = encoder
    config = EvaluateConfig(**fields)
    results = evaluate(config, address=address, keep_embeddings=keep_embeddings, index_options=index_options,
                       relevance_level=relevance_level, progress=progress, encoder_gpus=encoder_gpus)
    log.info("%s on %d collection(s):\n%s", model_label(model), len(results), summary_table(results))
    return results
